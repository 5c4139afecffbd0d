"""A hand-written continual-learning script in plain PyTorch: the baseline of ``overhead.py``.

Split Fashion-MNIST (the Debian IDX files) into 5 class-incremental tasks of 2 classes, hold out
10% of each task's training samples as clight does, train an MLP one epoch per task with SGD over
tensors already in memory (no DataLoader), then score every task (the accuracy matrix). ``--method``:

- ``finetune``: cross-entropy on the current task, outputs of unseen classes masked;
- ``replay``: a class-balanced memory of 1000 samples, 64 of them added to every batch;
- ``ewc``: online EWC (lambda 100), the diagonal Fisher of 200 samples with torch.func;
- ``lwf``: distillation (T=2) from a frozen copy of the previous model on the old classes.

It imports only torch and numpy, as a script written for one experiment would. Run alone it
prints its timings as JSON:

    python benchmarks/handwritten_cl.py --method finetune --threads 2
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
METHODS = ("finetune", "replay", "ewc", "lwf")
clock = time.perf_counter  # overhead.py --clock cpu swaps in time.process_time


def read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int(s) for s in np.frombuffer(raw, ">u4", ndim, 4)]
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def load_tasks(num_tasks: int = 5, val_fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """Per task: training inputs / targets (validation part held out) and test inputs / targets."""
    x = read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz").flatten(1).float().div(255.0)
    y = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz").long()
    tx = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz").flatten(1).float().div(255.0)
    ty = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").long()
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for classes in torch.arange(10).tensor_split(num_tasks):
        index = torch.isin(y, classes).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=g)][round(val_fraction * len(index)) :]
        test = torch.isin(ty, classes).nonzero().flatten()
        tasks.append({"classes": classes, "x": x[index], "y": y[index], "test_x": tx[test], "test_y": ty[test]})
    return tasks


def make_model(hidden: list[int], seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers, width = [], 784
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def kd(new: torch.Tensor, old: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    return t * t * F.kl_div(F.log_softmax(new / t, 1), F.log_softmax(old / t, 1), log_target=True, reduction="batchmean")


def fisher(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seen: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient (torch.func, one vmap over the samples)."""
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi[None],)).masked_fill(~seen, float("-inf"))
        return F.cross_entropy(logits, yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return {k: g.pow(2).mean(0) for k, g in grads.items()}


def steps_per_task(num_samples: int, batch_size: int, max_steps: int = 0) -> int:
    """Whole batches of one epoch, at most ``max_steps`` if given."""
    return min(num_samples // batch_size, max_steps or num_samples)


@torch.no_grad()
def accuracy_row(model: torch.nn.Module, tasks: list[dict], seen: torch.Tensor) -> list[float]:
    """Accuracy on every task's test split, the outputs of classes not seen yet masked."""
    return [(model(s["test_x"]).masked_fill(~seen, float("-inf")).argmax(1) == s["test_y"]).float().mean().item() for s in tasks]


def run(method: str, tasks: list[dict], hidden: list[int], batch_size: int = 64, lr: float = 0.01, max_steps: int = 0) -> dict:
    """Train on every task in turn (at most ``max_steps`` steps each, if given); return the
    accuracy rows and where the time went."""
    model = make_model(hidden)
    seen = torch.zeros(10, dtype=torch.bool)
    memory_x, memory_y = torch.zeros(0, 784), torch.zeros(0, dtype=torch.long)
    anchor, fisher_diag, teacher, old = None, None, None, torch.zeros(0, dtype=torch.long)
    starts, train_s, between_s, eval_s, rows = [], 0.0, 0.0, 0.0, []
    g = torch.Generator().manual_seed(1)
    for task in tasks:
        seen[task["classes"]] = True
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        order = torch.randperm(len(task["y"]), generator=g)
        began = clock()
        model.train()
        for b in range(steps_per_task(len(order), batch_size, max_steps)):
            starts.append(clock())
            index = order[b * batch_size : (b + 1) * batch_size]
            x, y = task["x"][index], task["y"][index]
            if method == "replay" and len(memory_y):
                pick = torch.randperm(len(memory_y), generator=g)[:batch_size]
                x, y = torch.cat([x, memory_x[pick]]), torch.cat([y, memory_y[pick]])
            raw = model(x)
            loss = F.cross_entropy(raw.masked_fill(~seen, float("-inf")), y)
            if method == "ewc" and anchor is not None:
                loss = loss + 50.0 * sum((f * (p - a).pow(2)).sum() for p, a, f in zip(model.parameters(), anchor, fisher_diag))
            if method == "lwf" and teacher is not None:
                with torch.no_grad():
                    target = teacher(x)[:, old]
                loss = loss + kd(raw[:, old], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_s += clock() - began
        began = clock()
        model.eval()
        if method == "replay":  # class-balanced: an equal share of 1000 for every class seen
            memory_x, memory_y = torch.cat([memory_x, task["x"]]), torch.cat([memory_y, task["y"]])
            keep = torch.cat([(memory_y == c).nonzero().flatten()[: 1000 // int(seen.sum())] for c in seen.nonzero().flatten()])
            memory_x, memory_y = memory_x[keep], memory_y[keep]
        if method == "ewc":
            new = fisher(model, task["x"][:200], task["y"][:200], seen)
            fisher_diag = [new[k] + (fisher_diag[i] if fisher_diag else 0) for i, (k, _) in enumerate(model.named_parameters())]
            anchor = [p.detach().clone() for p in model.parameters()]
        if method == "lwf":
            teacher = copy.deepcopy(model).requires_grad_(False)
            old = seen.nonzero().flatten()
        between_s += clock() - began
        began = clock()
        rows.append(accuracy_row(model, tasks, seen))
        eval_s += clock() - began
    return {"rows": rows, "starts": starts, "train_s": train_s, "between_tasks_s": between_s, "eval_s": eval_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="finetune")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help="at most this many steps per task (0: one epoch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.method, load_tasks(), args.hidden, max_steps=args.max_steps)
    result.pop("starts")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
