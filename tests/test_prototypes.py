"""SimpleCIL, APER and RanPAC against hand computations: prototypes are class means of the frozen
features, RanPAC's head is the closed-form ridge solution and its lambda the brute-force choice of
the grid; the frozen backbone is bit-identical after the run; the runner skips fits with nothing to
train; configurations that do not apply are refused before anything runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from contract_examples import TRAINER, digits

from clight import MLP, ConfigError, ContinualCallback, ContinualClassifier, SequenceRunner, TimmBackbone
from clight.contract import RunContext
from clight.methods.prompts import L2P
from clight.methods.prototypes import (
    APER,
    CosinePrototypeHead,
    FirstSessionBackbone,
    ParallelAdapter,
    RanPAC,
    SimpleCIL,
    insert_adapters,
    insert_ssf,
    validation_rows,
)
from clight.models.backbones import SmallCNN


def frozen_mlp(train_backbone: bool = False) -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(MLP([16], in_features=64), train_backbone=train_backbone)


def run(model, method, tmp_path, data=None, extra=()):
    data = data or digits()
    runner = SequenceRunner(model, data, methods=[method, *extra], trainer=TRAINER, run_dir=str(tmp_path / "run"), seed=0)
    return runner, runner.run(), data


def train_split(data, task: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [data.tasks[task].train[i] for i in range(len(data.tasks[task].train))]
    return torch.stack([item["input"] for item in items]), torch.stack([item["target"] for item in items])


def test_simplecil_prototypes_are_class_means_of_the_frozen_features_and_nothing_trains(tmp_path):
    model = frozen_mlp()
    backbone_before = copy.deepcopy(model.backbone.state_dict())
    method = SimpleCIL()
    runner, result, data = run(model, method, tmp_path)
    assert result.metrics["trainable_parameters_per_task"] == [0, 0] and runner.progress.step_offset == 0  # no fit ran
    backbone_after = model.backbone.state_dict()
    assert all(torch.equal(backbone_before[k], backbone_after[k]) for k in backbone_before)
    prototypes = model.heads["all"].prototypes
    model.eval()
    for task in range(2):
        inputs, targets = train_split(data, task)
        with torch.no_grad():
            features = model.backbone(inputs).double().numpy()
        for c in data.tasks[task].classes:
            expected = features[targets.numpy() == c].mean(0)
            np.testing.assert_allclose(prototypes[c].numpy(), expected, rtol=1e-5, atol=1e-6)
            assert method.counts[c] == (targets == c).sum()
    # logits: cosine similarity to the prototypes, unseen classes masked (all are seen here)
    batch = next(iter(data.evaluation_loader(1)))
    with torch.no_grad():
        f = model.backbone(batch["input"]).double().numpy()
    p = prototypes.double().numpy()
    expected = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(model(batch["input"]).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # task-aware accuracy never changes once a task is learned: old prototypes are never rewritten
    aware = np.array(result.matrices["correct_task_aware"])
    assert aware[1, 0] == aware[0, 0]


def test_cosine_prototype_head_is_cosine_similarity():
    head = CosinePrototypeHead(3, 2)
    head.prototypes.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    logits = head(torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 4.0]]))
    torch.testing.assert_close(logits, torch.tensor([[1.0, 2**-0.5], [0.0, 0.6 * 2**-0.5]]))


def projected(model, inputs):
    head = model.heads["all"]
    with torch.no_grad():
        return torch.relu(model.backbone(inputs) @ head.projection).double().numpy()


def test_ranpac_head_is_the_closed_form_ridge_solution(tmp_path):
    model = frozen_mlp()
    method = RanPAC(projection_dim=40, ridge=0.5)
    _, result, data = run(model, method, tmp_path)
    assert result.metrics["trainable_parameters_per_task"] == [0, 0]
    model.eval()
    rows = [train_split(data, t) for t in range(2)]
    h = np.concatenate([projected(model, x) for x, _ in rows])
    y = np.eye(10)[np.concatenate([t.numpy() for _, t in rows])]
    expected = np.linalg.solve(h.T @ h + 0.5 * np.eye(40), h.T @ y)
    np.testing.assert_allclose(method.gram.numpy(), h.T @ h, rtol=1e-9)
    np.testing.assert_allclose(model.heads["all"].weight.numpy().T, expected, rtol=1e-4, atol=1e-6)


def test_ranpac_chooses_the_ridge_parameter_of_least_validation_error(tmp_path):
    model = frozen_mlp()
    grid = [1e-3, 1e-1, 1e1, 1e3]
    method = RanPAC(projection_dim=30, ridge_grid=grid)
    _, _, data = run(model, method, tmp_path)
    model.eval()
    for task in range(2):
        inputs, targets = train_split(data, task)
        held = validation_rows(len(targets), 0.2, RunContext(seed=0).generator(RanPAC.salt, 1, task)).numpy()
        h, y = projected(model, inputs), np.eye(10)[targets.numpy()]
        errors = []
        for ridge in grid:
            w = np.linalg.solve(h[~held].T @ h[~held] + ridge * np.eye(30), h[~held].T @ y[~held])
            errors.append(((h[held] @ w - y[held]) ** 2).mean())
        record = method.history[task]
        np.testing.assert_allclose(record["validation_mse"], errors, rtol=1e-6)
        assert record["ridge"] == grid[int(np.argmin(errors))]
    assert held.sum() == len(held) - int(0.8 * len(held))


class Snapshot(ContinualCallback):
    """The model's state after task 0 (after the methods before it in the list)."""

    def __init__(self) -> None:
        self.state: dict = {}

    def on_task_end(self, module, task) -> None:
        if task.index == 0:
            self.state = copy.deepcopy(module.state_dict())


def tiny_vit() -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, image_size=8)


def test_petl_modules_start_from_the_pretrained_network():
    vit = tiny_vit().eval()
    x = torch.rand(3, 1, 8, 8)
    reference = vit(x)
    adapted = copy.deepcopy(vit)
    added = insert_adapters(adapted, torch.Generator().manual_seed(0))
    assert len([m for m in adapted.modules() if isinstance(m, ParallelAdapter)]) == 2 and len(added) == 8
    torch.testing.assert_close(adapted.eval()(x), reference)  # up-projections start at zero
    cnn = SmallCNN((4, 8), in_channels=1)
    ssf = insert_ssf(cnn, torch.Generator().manual_seed(0))
    assert len(ssf) == 2 * 4  # two convolutions, two batch norms


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (frozen_mlp(train_backbone=True), digits(), [SimpleCIL()]), "train_backbone: false"),
        (lambda: (frozen_mlp(), digits(setting="task_incremental"), [RanPAC()]), "class_incremental"),
        (lambda: (L2P(tiny_vit(), pool_size=2, length=1, top_k=1), digits(), [SimpleCIL()]), "features are its backbone"),
        (lambda: (ContinualClassifier(SmallCNN((4,)), train_backbone=False), digits(), [APER("adapter")]), "transformer"),
        (lambda: (frozen_mlp(), digits(), [SimpleCIL(), RanPAC()]), "both replace"),
    ],
)
def test_configurations_that_do_not_apply_are_refused_before_anything_runs(tmp_path, make, match):
    model, data, methods = make()
    with pytest.raises(ConfigError, match=match):
        SequenceRunner(model, data, methods=methods, trainer=TRAINER, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


class FreezeHead(ContinualCallback):
    def on_task_start(self, module, task) -> None:
        module.heads.requires_grad_(False)


def test_a_model_with_nothing_to_train_is_still_refused_without_a_gradient_free_method(tmp_path):
    with pytest.raises(ValueError, match="no trainable parameters"):
        run(frozen_mlp(), FreezeHead(), tmp_path)


def test_aper_adapts_a_copy_on_the_first_task_only_and_resumes_exactly_from_inside_it(tmp_path):
    from test_contract import KillAt, SimulatedKill, assert_same

    def start(folder, extra=(), resume=False):
        model = frozen_mlp()
        runner = SequenceRunner(
            model, digits(), methods=[APER("finetune"), *extra], trainer=TRAINER, run_dir=str(folder), seed=0, resume=resume
        )
        return runner, runner.run()

    pretrained = frozen_mlp().backbone
    snapshot = Snapshot()
    reference, expected = start(tmp_path / "reference", [snapshot])
    model, data = reference.model, reference.data
    trained = expected.metrics["trainable_parameters_per_task"]
    assert trained[0] == sum(p.numel() for p in pretrained.parameters()) + 10 * 16 + 1 and trained[1] == 0
    assert isinstance(model.backbone, FirstSessionBackbone)
    for name, value in pretrained.state_dict().items():
        assert torch.equal(model.backbone.pretrained.state_dict()[name], value), name
    after = model.state_dict()
    adapted = [k for k in after if k.startswith("backbone.adapted.")]
    assert any(not torch.equal(after[k], model.backbone.pretrained.state_dict()[k[len("backbone.adapted.") :]]) for k in adapted)
    assert all(torch.equal(after[k], snapshot.state[k]) for k in adapted)  # frozen after the first task
    inputs, targets = train_split(data, 0)
    model.eval()
    with torch.no_grad():
        features = torch.cat([pretrained(inputs), model.backbone.adapted(inputs)], 1).double().numpy()
    prototypes = model.heads["all"].classifier.prototypes.numpy()
    for c in data.tasks[0].classes:
        np.testing.assert_allclose(prototypes[c], features[targets.numpy() == c].mean(0), rtol=1e-5, atol=1e-6)

    with pytest.raises(SimulatedKill):
        start(tmp_path / "killed", [KillAt(task=0, epoch=1, batch=1)])
    resumed, result = start(tmp_path / "killed", resume=True)
    np.testing.assert_array_equal(result.accuracy_matrix, expected.accuracy_matrix)
    assert_same(reference.model.state_dict(), resumed.model.state_dict(), "model")
    assert_same(reference.methods[0].state_dict(), resumed.methods[0].state_dict(), "APER")
