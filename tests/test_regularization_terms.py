"""EWC's penalty and LwF's distillation term against formulas written out here, across task
boundaries and state loads (both keep per-fit caches of what they read every step)."""

import pytest
import torch
from torch.nn import functional as F

from clight import MLP, ContinualClassifier, SplitClasses, TaskSequence
from clight.methods.regularization import EWC, LwF
from clight.methods.regularization.fisher import BATCHED, LOOPED, choose_path, diagonal_fisher


def _setup(setting="class_incremental"):
    torch.manual_seed(0)
    data = TaskSequence(SplitClasses("digits", num_tasks=3, setting=setting), batch_size=16, seed=0)
    model = ContinualClassifier(MLP([16]), train_old_heads=False)
    model.setup_sequence(data.info)
    data.set_task(0)
    return data, model, next(iter(data.train_dataloader()))


def _written_out(model, anchors, fishers, lambda_):
    params = dict(model.named_parameters())
    return float(
        0.5
        * lambda_
        * sum(
            (f * (params[k] - a[k]).pow(2)).sum()
            for a, fi in zip(anchors, fishers)
            for k, f in fi.items()
            if params[k].requires_grad
        )
    )


@pytest.mark.parametrize("mode", ["online", "separate"])
def test_ewc_penalty_follows_the_state_across_tasks(mode):
    data, model, batch = _setup("task_incremental")
    ewc = EWC(lambda_=3.0, fisher_samples=8, mode=mode)
    ewc.setup_sequence(model, data, None)
    for t in range(2):
        model.on_task_start(data.tasks[t])
        ewc.on_task_start(model, data.tasks[t])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))  # "training"
        value = ewc.penalty(model, batch, {})
        assert value.item() == pytest.approx(_written_out(model, ewc.anchors, ewc.fishers, 3.0), rel=1e-6)
        model.on_task_end(data.tasks[t])
        ewc.on_task_end(model, data.tasks[t])
    # task 2: a new head, the heads of tasks 0 and 1 frozen: their anchored terms drop out
    model.on_task_start(data.tasks[2])
    ewc.on_task_start(model, data.tasks[2])
    with torch.no_grad():
        model.heads["0"].weight.add_(1.0)
    frozen_only = ewc.penalty(model, batch, {})
    assert frozen_only.item() == pytest.approx(_written_out(model, ewc.anchors, ewc.fishers, 3.0), rel=1e-6)
    # the penalty moves with the parameters inside a fit, and a loaded state replaces the old one
    with torch.no_grad():
        model.backbone.layers[0].weight.add_(0.5)
    assert ewc.penalty(model, batch, {}).item() > frozen_only.item()
    state = ewc.state_dict()
    ewc.load_state_dict(
        {"anchors": [{k: torch.zeros_like(v) for k, v in a.items()} for a in state["anchors"]], "fishers": state["fishers"]}
    )
    assert ewc.penalty(model, batch, {}).item() == pytest.approx(_written_out(model, ewc.anchors, ewc.fishers, 3.0), rel=1e-6)


def test_lwf_term_is_the_distillation_from_the_previous_model(monkeypatch):
    data, model, batch = _setup()
    lwf = LwF(alpha=0.7, temperature=2.0)
    lwf.setup_sequence(model, data, None)
    model.on_task_start(data.tasks[0])
    model.on_task_end(data.tasks[0])
    lwf.on_task_end(model, data.tasks[0])
    model.on_task_start(data.tasks[1])
    lwf.on_task_start(model, data.tasks[1])
    teacher = ContinualClassifier(MLP([16]))
    teacher.setup_sequence(data.info)
    teacher.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moves = []
    real_to = type(lwf.previous.model).to
    monkeypatch.setattr(type(lwf.previous.model), "to", lambda self, *a, **k: (moves.append(a), real_to(self, *a, **k))[1])
    old = torch.tensor(data.tasks[0].classes)
    for _ in range(3):
        loss, outputs = model.task_loss(batch)
        value = lwf.penalty(model, batch, outputs)
        with torch.no_grad():
            target = teacher.heads["all"](teacher.features(batch["input"]))[:, old] / 2.0
        new = model.heads["all"](outputs["features"])[:, old] / 2.0
        written = 0.7 * 4.0 * F.kl_div(F.log_softmax(new, 1), F.log_softmax(target, 1), log_target=True, reduction="batchmean")
        assert value.item() == pytest.approx(written.item(), rel=1e-6)
    assert len(moves) == 1  # the previous model is put on the device once, not on every step


def test_both_fisher_paths_give_the_mean_squared_per_sample_gradient():
    data, model, _ = _setup()
    model.on_task_start(data.tasks[0])
    view = data.tasks[0].train
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    written = {k: torch.zeros_like(p) for k, p in params.items()}
    model.eval()
    for i in range(10):
        loss = model.task_loss({k: v.unsqueeze(0) for k, v in view[i].items()})[0]
        for (k, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            written[k] += g.pow(2) / 10
    model.train()
    for path, name in (("batched", BATCHED), ("looped", LOOPED)):
        fisher, used = diagonal_fisher(model, view, samples=10, path=path)
        assert used == name and model.training  # the model's mode is given back
        for k in written:
            torch.testing.assert_close(fisher[k], written[k], rtol=1e-5, atol=1e-9)
    assert diagonal_fisher(model, view, samples=10)[1] == choose_path(params) == BATCHED  # 64x16 weights: small tensors


def test_fisher_path_rule_loops_over_large_tensors_on_the_cpu_only():
    def tensors(*shapes, device="cpu"):
        return {str(i): torch.nn.Parameter(torch.empty(*s, device=device)) for i, s in enumerate(shapes)}

    assert choose_path(tensors((256, 784), (256,), (10, 256), (10,))) == LOOPED  # 53k elements per tensor
    assert choose_path(tensors((128, 128), (128,))) == BATCHED  # 8.3k
    assert choose_path(tensors((256, 784), (256,), device="meta")) == BATCHED  # not a CPU: one kernel per chunk
