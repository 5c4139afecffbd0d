"""Run a 3-task split-digits sequence with replay on N CPU processes; each rank dumps its state.

usage: python ddp_sequence.py OUT_DIR DEVICES [LR]

With LR given the optimizer is Adam at that learning rate (LR=0: the weights never move, so
every logged validation accuracy is the initial model's, which the test recomputes).
"""

import os
import sys

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from clight import MLP, ContinualClassifier, Replay, SequenceRunner, SplitClasses, TaskSequence  # noqa: E402

out, devices = sys.argv[1], int(sys.argv[2])
lr = float(sys.argv[3]) if len(sys.argv) > 3 else None
torch.manual_seed(0)
data = TaskSequence(SplitClasses("digits", 3), batch_size=32, seed=0, replay=Replay("reservoir", 60, 16))
model = ContinualClassifier(MLP([64])) if lr is None else ContinualClassifier(MLP([64]), optimizer=lambda p: torch.optim.Adam(p, lr=lr))
trainer = dict(accelerator="cpu", devices=devices, max_epochs=2, enable_progress_bar=False)
if devices > 1:
    trainer["strategy"] = "ddp"
result = SequenceRunner(model, data, trainer=trainer, run_dir=os.path.join(out, "run"), seed=0).run()
rank = int(os.environ.get("LOCAL_RANK", 0))
torch.save(
    {"matrix": torch.tensor(result.accuracy_matrix), "memory": data.memory.entries, "params": model.state_dict()},
    os.path.join(out, f"rank{rank}.pt"),
)
