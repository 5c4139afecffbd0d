"""SI's path integral and MAS's importance over two tasks against computations written out here
(plain SGD steps on a tiny model, gradients taken one sample or one batch at a time)."""

import pytest
import torch

from clight import MLP, ContinualClassifier, RunContext, SplitClasses, TaskSequence
from clight.methods.regularization import MAS, SI
from clight.methods.regularization.linear_sums import abs_gradient_sums


def _setup(norm=None):
    torch.manual_seed(0)
    data = TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=8, seed=0)
    model = ContinualClassifier(MLP([8], norm=norm))
    model.setup_sequence(data.info)
    data.set_task(0)
    model.on_task_start(data.tasks[0])
    return data, model


def _batch(data, task, rows):
    return data.tasks[task].train.__getitems__(rows)


def _params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("gradient", ["unregularized", "total"])
def test_si_path_integral_and_importance_over_two_tasks(gradient):
    data, model = _setup()
    c, xi, lr = 0.5, 0.01, 0.1
    si = SI(c=c, xi=xi, gradient=gradient)
    si.setup_sequence(model, data, RunContext(seed=0))
    expected_importance: dict = {}
    anchor = {n: p.detach().clone() for n, p in _params(model).items()}
    for task, steps in ((0, 3), (1, 2)):
        if task:
            model.on_task_start(data.tasks[task])
        si.on_task_start(model, data.tasks[task])
        start = {n: p.detach().clone() for n, p in _params(model).items()}
        params = _params(model)
        optimizer = torch.optim.SGD(params.values(), lr=lr)
        omega = {n: torch.zeros_like(p) for n, p in params.items()}
        for k in range(steps):
            batch = _batch(data, task, list(range(8 * k, 8 * k + 8)))
            task_grads = dict(zip(params, torch.autograd.grad(model.task_loss(batch)[0], list(params.values()))))
            # SI's surrogate written out: c * sum Omega (theta - anchor)^2, gradient 2 c Omega (theta - anchor)
            penalty_grads = {n: 2 * c * expected_importance.get(n, 0) * (p.detach() - anchor[n]) for n, p in params.items()}
            optimizer.zero_grad()
            loss, outputs = model.task_loss(batch)
            (loss + si.penalty(model, batch, outputs)).backward()
            si.on_before_optimizer_step(None, model, optimizer)
            optimizer.step()
            si.on_train_batch_end(None, model, None, batch, k)
            for n in params:  # SGD moves by -lr * (g + penalty gradient)
                move = -lr * (task_grads[n] + penalty_grads[n])
                used = task_grads[n] if gradient == "unregularized" else task_grads[n] + penalty_grads[n]
                omega[n] -= used * move
        for n in omega:
            torch.testing.assert_close(si.omega[n], omega[n], rtol=1e-4, atol=1e-7)
        si.on_task_end(model, data.tasks[task])
        for n, p in _params(model).items():
            delta = p.detach() - start[n]
            expected_importance[n] = expected_importance.get(n, 0) + omega[n] / (delta**2 + xi)
            torch.testing.assert_close(si.quadratic.importance[n], expected_importance[n], rtol=1e-4, atol=1e-7)
        anchor = {n: p.detach().clone() for n, p in _params(model).items()}
    assert any(v.abs().sum() > 0 for v in si.quadratic.importance.values())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    written = c * sum((expected_importance[n] * (p - anchor[n]) ** 2).sum() for n, p in _params(model).items())
    assert si.penalty(model, None, None).item() == pytest.approx(written.item(), rel=1e-5)


def _sample_importance(model, data, task, rows, classes):
    """mean over samples of |d ||F(x)||^2 / d theta|, F the logits of the classes seen, one sample at a time."""
    params = _params(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in rows:
        out = model(*(lambda b: (b["input"], b["task_id"]))(_batch(data, task, [i])))[:, classes]
        for n, g in zip(params, torch.autograd.grad(out.pow(2).sum(), list(params.values()))):
            total[n] += g.abs() / len(rows)
    return total


def _batch_importance(model, data, task, batches, classes):
    """mean over batches of |d mean_batch ||F(x)||^2 / d theta| (the authors' code and Avalanche)."""
    params = _params(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for rows in batches:
        b = _batch(data, task, rows)
        out = model(b["input"], b["task_id"])[:, classes]
        for n, g in zip(params, torch.autograd.grad(out.pow(2).sum(1).mean(), list(params.values()))):
            total[n] += g.abs() / len(batches)
    return total


@pytest.mark.parametrize(
    "importance, accumulate, norm",
    [("per_sample", "sum", None), ("per_sample", "sum", "layer"), ("batch", "average", None)],
    ids=["per_sample-linear", "per_sample-layernorm", "batch-average"],
)
def test_mas_importance_accumulates_over_two_tasks(importance, accumulate, norm):
    # linear layers' sums come from one backward pass (|delta|^T |a|); a LayerNorm's from vmap
    data, model = _setup(norm)
    mas = MAS(lambda_=2.0, importance=importance, accumulate=accumulate, alpha=0.25, samples=6, batch_size=4)
    mas.setup_sequence(model, data, RunContext(seed=0))
    expected: dict = {}
    for task in (0, 1):
        if task:
            with torch.no_grad():  # as if task 1 had been trained
                for p in model.parameters():
                    p.add_(0.2 * torch.randn_like(p))
            model.on_task_start(data.tasks[1])
            mas.on_task_start(model, data.tasks[1])
        seen = sorted(c for t in range(task + 1) for c in data.tasks[t].classes)  # the masked head's outputs
        if importance == "per_sample":
            new = _sample_importance(model, data, task, range(6), seen)
        else:
            new = _batch_importance(model, data, task, [[0, 1, 2, 3], [4, 5]], seen)
        mas.on_task_end(model, data.tasks[task])
        for n, value in new.items():
            previous = expected.get(n)
            if previous is None:
                expected[n] = value
            else:
                expected[n] = previous + value if accumulate == "sum" else 0.25 * previous + 0.75 * value
            torch.testing.assert_close(mas.quadratic.importance[n], expected[n], rtol=1e-5, atol=1e-7)
    assert ("vmap" in mas.path) == (norm == "layer") or importance == "batch"
    anchor = {n: p.detach().clone() for n, p in _params(model).items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    written = 2.0 * sum((expected[n] * (p - anchor[n]) ** 2).sum() for n, p in _params(model).items())
    assert mas.penalty(model, None, None).item() == pytest.approx(written.item(), rel=1e-5)


def test_linear_sums_come_in_module_order_whatever_the_hash_seed():
    # each rank all-reduces MAS's sums in the order they come in: an order that hangs on string
    # hashes (a set's) differs between processes and pairs different tensors in the reduction
    torch.manual_seed(0)
    data = TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=8, seed=0)
    model = ContinualClassifier(MLP([8] * 10))
    model.setup_sequence(data.info)
    model.on_task_start(data.tasks[0])
    sums = abs_gradient_sums(model, data.tasks[0].train, range(4), lambda m, b: m(b["input"], b["task_id"]).pow(2).sum())
    assert len(sums) >= 20
    assert list(sums) == [n for n, _ in model.named_parameters() if n in sums]
