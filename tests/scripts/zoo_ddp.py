"""The six classic methods on 2 CPU processes (gloo), two tasks of split digits each; every rank
dumps its methods' states and its weights. Rank 1 reads its training images inverted (1 - x), so
anything computed from data differs between the ranks unless it is gathered, reduced or
broadcast: identical states on both ranks show that it is.

usage: python zoo_ddp.py OUT_DIR
"""

import os
import sys

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from clight import AGEM, MAS, MLP, SI, ContinualClassifier, DERpp, GDumb, ICaRL, SequenceRunner, SplitClasses, TaskSequence  # noqa: E402


def inverted_on_rank_one(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1 else x


def data() -> TaskSequence:
    sequence = TaskSequence(SplitClasses("digits", 2), batch_size=16, seed=0)
    for task in sequence.tasks:
        task.train.transform = inverted_on_rank_one
    return sequence


RUNS = {
    "stream": lambda: [
        DERpp(capacity=40, batch_size=8),
        AGEM(samples_per_task=30, reference_batch_size=8),
        SI(),
        MAS(samples=40),
    ],
    "icarl": lambda: [ICaRL(memory_size=40, batch_size=32)],
    "gdumb": lambda: [GDumb(capacity=64)],
}

out = sys.argv[1]
trainer = dict(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=3, enable_progress_bar=False)
states = {}
for name, methods in RUNS.items():
    torch.manual_seed(0)
    model, methods = ContinualClassifier(MLP([16])), methods()
    SequenceRunner(model, data(), methods=methods, trainer=trainer, run_dir=os.path.join(out, name), seed=0).run()
    states[name] = {"methods": {m.state_key: m.state_dict() for m in methods}, "params": model.state_dict()}
torch.save(states, os.path.join(out, f"rank{torch.distributed.get_rank()}.pt"))
