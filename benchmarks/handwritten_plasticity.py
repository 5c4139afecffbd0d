"""The plasticity protocol written by hand in plain PyTorch: the baseline of ``overhead.py``'s
``plasticity`` part, doing the work ``configs/plasticity_backprop.yaml`` asks of clight.

Permuted Fashion-MNIST (the Debian IDX files): every task is the whole data set under its own
pixel permutation; per task 2% of the training set held out for validation, 1200 training and
1000 test samples. MLP 784-256-256-256-10, SGD (lr 0.3) with the gradient norm clipped at 20,
batch 16, 3 epochs per task (full batches only, a fresh optimizer per task). After every epoch
the validation accuracy; after every task the accuracy on its test samples and the plasticity
statistics of ``PlasticityMonitor`` on the first 1000 training samples (dead, dormant and ReDo-dormant
fractions of the hidden units, effective and stable rank of the last hidden layer, mean weight
magnitude); the losses of every 10th step are kept. The tasks' samples and permutations are drawn
before the clock starts (clight draws them when it builds the sequence); the gathering and
permuting of each task's tensors is timed with the task. Imports only torch and numpy:

    python benchmarks/handwritten_plasticity.py --tasks 100
"""

from __future__ import annotations

import argparse
import json
import time

import handwritten_cl as hand
import torch
from torch.nn import functional as F

clock = time.perf_counter  # overhead.py --clock cpu swaps in time.process_time


def load_data() -> dict:
    """Fashion-MNIST as float tensors [N, 784] in [0, 1] and targets."""
    x = hand.read_idx(hand.FASHION_MNIST / "train-images-idx3-ubyte.gz").flatten(1).float().div(255.0)
    y = hand.read_idx(hand.FASHION_MNIST / "train-labels-idx1-ubyte.gz").long()
    tx = hand.read_idx(hand.FASHION_MNIST / "t10k-images-idx3-ubyte.gz").flatten(1).float().div(255.0)
    ty = hand.read_idx(hand.FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").long()
    return {"x": x, "y": y, "test_x": tx, "test_y": ty}


def draw_tasks(data: dict, num_tasks: int, train: int = 1200, test: int = 1000, val_fraction: float = 0.02) -> list[dict]:
    """Per task: a pixel permutation, and the indices of its training, validation and test samples."""
    g = torch.Generator().manual_seed(0)
    n, n_val = len(data["y"]), round(val_fraction * len(data["y"]))
    tasks = []
    for _ in range(num_tasks):
        perm = torch.randperm(784, generator=g)
        order = torch.randperm(n, generator=g)
        tasks.append(
            {
                "perm": perm,
                "val": order[:n_val],
                "train": order[n_val:][torch.randperm(n - n_val, generator=g)[:train]].sort().values,
                "test": torch.randperm(len(data["test_y"]), generator=g)[:test].sort().values,
            }
        )
    return tasks


def make_model(hidden: tuple[int, ...] = (256, 256, 256)) -> torch.nn.Sequential:
    torch.manual_seed(0)
    layers, width = [], 784
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def _ranks(h: torch.Tensor) -> tuple[float, int]:
    """Effective rank and stable rank (delta 0.01) of a representation."""
    s = torch.linalg.svdvals(h.double())
    p = s / s.sum()
    effective = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return effective, int((p.cumsum(0) < 0.99).sum()) + 1


@torch.no_grad()
def plasticity_statistics(model: torch.nn.Sequential, x: torch.Tensor, tau: float = 0.025) -> dict:
    """The statistics of ``PlasticityMonitor`` over the hidden units (the ReLU outputs)."""
    hidden, h = [], x
    for layer in model:
        h = layer(h)
        if isinstance(layer, torch.nn.ReLU):
            hidden.append(h)
    units = torch.cat(hidden, 1)
    active = (units != 0).float().mean(0)
    scores = torch.cat([a / a.mean().clamp_min(1e-12) for a in (h.abs().mean(0) for h in hidden)])
    effective, stable = _ranks(hidden[-1])
    weights = [p for p in model.parameters() if p.dim() >= 2]
    return {
        "dead_fraction": float((active == 0).float().mean()),
        "dormant_fraction": float((active < 0.01).float().mean()),
        "dormant_redo_fraction": float((scores <= tau).float().mean()),
        "effective_rank": effective,
        "stable_rank": stable,
        "weight_magnitude": float(sum(w.abs().sum() for w in weights) / sum(w.numel() for w in weights)),
    }


def train_by_hand(model, x, y, epochs: int, batch_size: int, lr: float, g, after_epoch, losses: list) -> None:
    """``epochs`` epochs of SGD over full batches in a fresh random order; ``after_epoch()`` after each."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=g)
        for b in range(len(y) // batch_size):
            index = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 20.0)
            optimizer.step()
            if b % 10 == 0:
                losses.append(loss.item())
        model.eval()
        after_epoch()


def run(
    data: dict, tasks: list[dict], epochs: int = 3, batch_size: int = 16, lr: float = 0.3, probe: int = 1000, train=train_by_hand
) -> dict:
    """Train on every task in turn (``train``: how a task is trained, ``train_by_hand`` or
    ``bare_lightning.train_plasticity``); the accuracies, statistics and where the time went (seconds)."""
    model = make_model()
    g = torch.Generator().manual_seed(1)
    seconds = {"data_s": 0.0, "train_s": 0.0, "val_s": 0.0, "eval_s": 0.0, "monitor_s": 0.0}
    results: dict = {"test_accuracy": [], "val_accuracy": [], "statistics": [], "losses": []}
    began_run = clock()
    for task in tasks:
        began = clock()
        x, y = data["x"][task["train"]][:, task["perm"]], data["y"][task["train"]]
        vx, vy = data["x"][task["val"]][:, task["perm"]], data["y"][task["val"]]
        tx, ty = data["test_x"][task["test"]][:, task["perm"]], data["test_y"][task["test"]]
        seconds["data_s"] += clock() - began

        def validate(vx=vx, vy=vy) -> None:
            began = clock()
            results["val_accuracy"].append(accuracy(model, vx, vy))
            seconds["val_s"] += clock() - began

        began, val_before = clock(), seconds["val_s"]
        train(model, x, y, epochs, batch_size, lr, g, validate, results["losses"])
        seconds["train_s"] += clock() - began - (seconds["val_s"] - val_before)
        began = clock()
        results["test_accuracy"].append(accuracy(model, tx, ty))
        seconds["eval_s"] += clock() - began
        began = clock()
        results["statistics"].append(plasticity_statistics(model, x[:probe]))
        seconds["monitor_s"] += clock() - began
    return {**results, **seconds, "run_s": clock() - began_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data()
    result = run(data, draw_tasks(data, args.tasks))
    print(json.dumps({k: v for k, v in result.items() if k.endswith("_s")}))


if __name__ == "__main__":
    main()
