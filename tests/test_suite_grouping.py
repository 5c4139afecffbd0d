"""``--dist loadgroup`` keeps the tests of one ``xdist_group`` on one worker: the suite relies on it
so that a module fixture shared by several tests (test_scale's 2-process runs, test_ddp's,
test_kill_every_write's report) is made once. pytest-xdist 3.8 under pytest 9.2 drops the groups
without a word (pytest-dev/pytest-xdist#1386): each worker then builds its own copy."""

import os
import subprocess
import sys

SAMPLE = """
import os, pytest

@pytest.mark.parametrize("i", range(6))
@pytest.mark.xdist_group("shared")
def test_grouped(i):
    open(f"grouped_{i}", "w").write(os.environ["PYTEST_XDIST_WORKER"])

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
"""


def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # rootdir here: none of the project's conftest or options
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "test_sample.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    workers = {(tmp_path / f"grouped_{i}").read_text() for i in range(6)}
    assert len(workers) == 1, (
        f"one xdist_group ran on workers {sorted(workers)}: is pytest >= 9.2 installed (see pyproject.toml)?"
    )
