"""Run a 3-task split-digits sequence with replay on N CPU processes; each rank dumps its state.

usage: python ddp_sequence.py OUT_DIR DEVICES [--lr LR] [--stop-at TASK,EPOCH,BATCH] [--resume]

``--lr``: Adam at that learning rate (0: the weights never move). ``--stop-at``: every rank
raises tests/kills.py's SimulatedKill before that training batch. ``--resume``: resume OUT_DIR's run.
"""

import argparse
import os
import sys

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kills import StepCounter, StopAt  # noqa: E402

from clight import MLP, ContinualClassifier, Replay, SequenceRunner, SplitClasses, TaskSequence  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("devices", type=int)
parser.add_argument("--lr", type=float)
parser.add_argument("--stop-at")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
data = TaskSequence(SplitClasses("digits", 3), batch_size=32, seed=0, replay=Replay("reservoir", 60, 16))
optimizer = {} if args.lr is None else {"optimizer": lambda p: torch.optim.Adam(p, lr=args.lr)}
model = ContinualClassifier(MLP([64]), **optimizer)
trainer = dict(accelerator="cpu", devices=args.devices, max_epochs=2, enable_progress_bar=False)
if args.devices > 1:
    trainer["strategy"] = "ddp"
counter = StepCounter()
methods = [counter] + ([StopAt(*map(int, args.stop_at.split(",")))] if args.stop_at else [])
result = SequenceRunner(
    model,
    data,
    methods=methods,
    trainer=trainer,
    run_dir=os.path.join(args.out, "run"),
    seed=0,
    resume=args.resume,
    epoch_checkpoint_min_s=0.0,  # every epoch's checkpoint, however short the epoch
).run()
rank = int(os.environ.get("LOCAL_RANK", 0))
torch.save(
    {
        "matrix": torch.tensor(result.accuracy_matrix),
        "memory": data.memory.entries,
        "params": model.state_dict(),
        "steps": counter.steps,
    },
    os.path.join(args.out, f"rank{rank}.pt"),
)
