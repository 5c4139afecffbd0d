import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from clight import MLP, ContinualClassifier, Replay, SplitClasses, TaskSequence  # noqa: E402


def small_sequence(
    num_tasks: int = 3, replay: bool = False, setting: str = "class_incremental", batch_size: int = 32
) -> TaskSequence:
    return TaskSequence(
        SplitClasses("digits", num_tasks=num_tasks, setting=setting),
        batch_size=batch_size,
        seed=0,
        replay=Replay("reservoir", capacity=60, batch_size=16) if replay else None,
    )


def small_model() -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(MLP([64]))


def fashion_mnist_installed() -> bool:
    """Whether Fashion-MNIST's four IDX files are on disk (Debian's package or clight's download cache)."""
    from clight.data.sources import DEBIAN_FASHION_MNIST, DEFAULT_DOWNLOAD_ROOT, FashionMNIST

    def has(folder, stem):
        return any((folder / sub / name).exists() for sub in ("", "raw") for name in (stem, f"{stem}.gz"))

    return any(
        all(has(folder, stem) for stem in FashionMNIST.stems.values())
        for folder in (DEBIAN_FASHION_MNIST, DEFAULT_DOWNLOAD_ROOT / "FashionMNIST")
    )


needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_installed(),
    reason="Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist, as .ci/run does)",
)

QUIET_TRAINER = dict(accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, deterministic=True)


@pytest.fixture
def quiet_trainer():
    return dict(QUIET_TRAINER)


def run_on_two_ranks(script: os.PathLike, out: os.PathLike, *args: str, timeout: int = 300) -> tuple[dict, dict]:
    """Run a DDP script in its own process (never inside pytest's), then load the states its two
    ranks saved as ``out/rank0.pt`` and ``out/rank1.pt``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, str(script), str(out), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=out
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return tuple(torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in (0, 1))


# -- scheduling the suite (pytest-xdist) ------------------------------------------------------------
HEAVY = ("notebook", "ddp", "lm", "slow")  # the markers, the heaviest kind of test first


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every ddp, lm and notebook test is slow too, so ``-m "not slow"`` leaves all of them out.
    Heavy tests run first: with ``-n 2`` both workers start on the long ones and the many short
    ones fill the gaps at the end, instead of one long test running alone at the end. Tests that
    share a module-scoped fixture carry one ``xdist_group`` (``--dist loadgroup`` runs them on one
    worker, so the fixture is made once) and stay together here."""
    for item in items:
        if any(item.get_closest_marker(name) for name in HEAVY[:3]):
            item.add_marker(pytest.mark.slow)

    def kind(item: pytest.Item) -> int:
        marked = [i for i, name in enumerate(HEAVY) if item.get_closest_marker(name)]
        return marked[0] if marked else len(HEAVY)

    def group(item: pytest.Item) -> str:
        mark = item.get_closest_marker("xdist_group")
        return str(mark.args[0]) if mark is not None else ""

    heaviest: dict[str, int] = {}
    for item in items:
        heaviest[group(item)] = min(heaviest.get(group(item), len(HEAVY)), kind(item))
    items.sort(key=lambda item: (heaviest[group(item)], group(item)) if group(item) else (kind(item), ""))  # stable
