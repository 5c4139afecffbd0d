"""The run of tests/test_resume.py, SIGKILLed just before its n-th atomic rename.

usage: python killed_run.py RUN_DIR N   (tests/ must be on PYTHONPATH)
"""

import sys

import torch

torch.set_num_threads(1)

from conftest import QUIET_TRAINER, small_model, small_sequence  # noqa: E402
from kills import kill_at_nth_commit  # noqa: E402

from clight import SequenceRunner  # noqa: E402

run_dir, n = sys.argv[1], int(sys.argv[2])
kill_at_nth_commit(n)
trainer = dict(QUIET_TRAINER, max_epochs=3)
SequenceRunner(small_model(), small_sequence(replay=True), trainer=trainer, run_dir=run_dir, seed=0).run()
sys.exit("the run finished: the kill never happened")
