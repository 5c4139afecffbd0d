"""CLR: identity at initialisation, per-task isolation (BWT == 0), budget, adapters, pretrained weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clight.data.task import SequenceInfo, Task
from clight.methods.reprogramming import (
    ChannelAffine,
    CLRClassifier,
    ReprogrammedConv,
    TaskNorm,
    conv_targets,
    inject,
    load_task_adapter,
    save_task_adapter,
    set_task,
)
from clight.methods.reprogramming import add_task as add_task_state
from clight.models.backbones import SmallCNN, TimmBackbone


def _task(index: int, classes: list[int]) -> Task:
    return Task(index, f"t{index}", None, None, None, classes)


def _clr_model(backbone, num_tasks=3, classes_per_task=2, **kwargs) -> CLRClassifier:
    model = CLRClassifier(backbone, **kwargs)
    info = SequenceInfo(
        "task_incremental",
        num_tasks,
        num_tasks * classes_per_task,
        [list(range(t * classes_per_task, (t + 1) * classes_per_task)) for t in range(num_tasks)],
        (1, 16, 16),
    )
    model.setup_sequence(info)
    return model


@pytest.mark.parametrize("name", ["resnet50", "tf_efficientnet_lite0"])
@pytest.mark.parametrize("variant", ["CLR", "CLR-full", "CLR+1x1", "1x1-only"])
def test_output_equals_backbone_at_initialisation(name, variant):
    torch.manual_seed(0)
    if name == "tf_efficientnet_lite0":
        from clight.models.pretrained import PretrainedTimmBackbone

        backbone = PretrainedTimmBackbone(name, image_size=64)
    else:
        backbone = TimmBackbone(name, image_size=64)
    backbone.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = backbone(x)
        wrapped = inject(backbone, variant)
        assert wrapped
        add_task_state(backbone, "0")
        set_task(backbone, "0")
        out = backbone(x)
    assert (out - reference).abs().max().item() < 1e-5


def test_variants_choose_the_right_convolutions():
    backbone = TimmBackbone("resnet18")
    convs = {n: m for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)}
    big = [n for n, m in convs.items() if m.kernel_size != (1, 1)]
    one = [n for n, m in convs.items() if m.kernel_size == (1, 1)]
    assert conv_targets(backbone, "CLR") == big and "model.conv1" in big  # the 7x7 stem included
    assert conv_targets(backbone, "CLR-full") == list(convs)
    assert conv_targets(backbone, "CLR+1x1") == list(convs)
    assert conv_targets(backbone, "1x1-only") == one
    inject(backbone, "1x1-only")
    layer = backbone.get_submodule(one[0])
    assert isinstance(layer, ReprogrammedConv) and layer.kernel_size == 1
    assert conv_targets(backbone, "1x1-only") == []


def test_clr_plus_1x1_keeps_3x3_kernels_and_scales_1x1_convolutions():
    """The released code's Ghost_reduced_v2: a 3x3 kernel after every larger conv, a 1x1 scale after every 1x1 conv."""
    backbone = TimmBackbone("resnet18")
    inject(backbone, "CLR+1x1")
    sizes = {n: (m.conv.kernel_size, m.kernel_size) for n, m in backbone.named_modules() if isinstance(m, ReprogrammedConv)}
    assert sizes["model.conv1"] == ((7, 7), 3) and sizes["model.layer1.0.conv1"] == ((3, 3), 3)
    assert sizes["model.layer2.0.downsample.0"] == ((1, 1), 1)
    assert all(k == (1 if conv == (1, 1) else 3) for conv, k in sizes.values()) and len(sizes) == 20


def _released_reduced_v2_count(model: nn.Module) -> int:
    """What the released code's add_ghostnet(model_type="reduced_v2") adds: a depthwise kernel after
    every Conv2d, 1x1 (C weights) after a 1x1 conv and 3x3 (9 C weights) after any other."""
    return sum(m.out_channels * (1 if m.kernel_size == (1, 1) else 9) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "name, released, only_1x1",
    [
        # 9 x 3904 channels after the stem and the 16 3x3 convs + 896 after the three 1x1 downsample convs
        ("resnet18", 36032, 896),
        # 80,928 (CLR) + 12,016 after the 1x1 convs
        ("tf_efficientnet_lite0", 92944, 12016),
    ],
)
def test_released_reduced_variant_and_1x1_only_budgets(name, released, only_1x1):
    counts = {}
    for variant in ("CLR", "CLR+1x1", "1x1-only"):
        model = _clr_model(TimmBackbone(name), variant=variant)
        model.on_task_start(_task(0, [0, 1]))
        counts[variant] = model.parameter_budget(0)["kernels"]
    assert counts["CLR+1x1"] == released == _released_reduced_v2_count(TimmBackbone(name).model)
    assert counts["1x1-only"] == only_1x1
    assert counts["CLR+1x1"] == counts["CLR"] + counts["1x1-only"]


def test_old_1x1_scale_name_still_works_with_a_warning():
    with pytest.warns(FutureWarning, match="'1x1-only'.*'CLR\\+1x1'"):
        model = CLRClassifier(TimmBackbone("resnet18"), variant="1x1 scale")
    assert model.variant == "1x1-only"
    assert model.describe()["kernel_size"] == {"after_1x1_convolutions": 1, "after_larger_convolutions": None}


def test_resnet50_budget_matches_methods_md(capsys):
    """The paper's count: about 35k kernel weights (0.14% of ResNet-50) plus about 53k BatchNorm values."""
    import timm

    model = _clr_model(TimmBackbone("resnet50"))
    model.on_task_start(_task(0, [0, 1]))
    budget = model.parameter_budget(0)
    full_resnet50 = sum(p.numel() for p in timm.create_model("resnet50").parameters())  # with its 1000-class fc
    # 3x3 kernels after the 7x7 stem (64 ch) and every bottleneck's 3x3 conv: 3x64 + 4x128 + 6x256 + 3x512
    assert budget["kernels"] == 9 * (64 + 3 * 64 + 4 * 128 + 6 * 256 + 3 * 512) == 34560
    assert budget["norm_parameters"] == 53120 and budget["norm_statistics"] == 53120
    assert budget["backbone"] == 23508032 and full_resnet50 == 25557032
    assert budget["head"] == 2048 * 2 + 2
    ratio_full = budget["kernels"] / full_resnet50
    assert abs(ratio_full - 0.0014) < 0.00005  # "0.14%"
    assert (budget["kernels"] + budget["norm_parameters"]) / full_resnet50 < 0.006  # "under 0.6% per task"
    with capsys.disabled():
        print(
            f"\nResNet-50 CLR per task: kernels {budget['kernels']} ({100 * ratio_full:.3f}% of ResNet-50's "
            f"{full_resnet50}; {100 * budget['kernels_ratio']:.3f}% of the {budget['backbone']} backbone without fc), "
            f"BN affine {budget['norm_parameters']}, BN statistics {budget['norm_statistics']}, head {budget['head']}, "
            f"trainable {budget['trainable']} ({100 * budget['trainable_ratio']:.3f}% of the backbone)"
        )


def test_resnet18_kernel_budget():
    model = _clr_model(TimmBackbone("resnet18"))
    model.on_task_start(_task(0, [0, 1]))
    budget = model.parameter_budget(0)
    assert budget["kernels"] == 9 * (64 + 4 * 64 + 4 * 128 + 4 * 256 + 4 * 512) == 35136
    assert abs(budget["kernels"] / 11689512 - 0.0030) < 0.0001  # "~35k kernel weights (0.30%)"


def test_only_current_task_trains_and_penalty_is_unsquared_norm():
    torch.manual_seed(0)
    model = _clr_model(SmallCNN((4, 8)))
    model.on_task_start(_task(0, [0, 1]))
    model.on_task_end(_task(0, [0, 1]))
    model.on_task_start(_task(1, [2, 3]))
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.task_parameters(1)}
    assert not any(id(p) in trainable for p in model.task_parameters(0))
    # SmallCNN: two 3x3 convs (4, 8 channels) -> kernels; two BNs -> weight + bias; head 8 -> 2
    assert sorted(p.numel() for p in model.trainable_parameters()) == sorted([36, 72, 4, 4, 8, 8, 16, 2])
    expected = 1e-5 * sum(p.detach().flatten().square().sum().sqrt() for p in model.task_parameters(1))
    value = model.loss_terms["clr_norm"](model, {}, {})
    assert torch.allclose(value, expected)


def _fit_task(model, t, x, y, steps=15):
    task = _task(t, [2 * t, 2 * t + 1])
    model.on_task_start(task)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.05)
    model.train()
    batch = {"input": x, "target": y, "task_id": torch.full((len(y),), t)}
    for _ in range(steps):
        loss, _ = model.task_loss(batch)
        for term in model.loss_terms.values():
            loss = loss + term(model, batch, {})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.on_task_end(task)
    model.eval()


def test_old_tasks_bit_identical_after_later_tasks():
    """3 tasks: every old task's logits (hence accuracy) are bit-identical after later tasks; BWT == 0."""
    torch.manual_seed(0)
    model = _clr_model(SmallCNN((4, 8)))
    data = [(torch.rand(32, 1, 16, 16) + 0.3 * t, torch.randint(2 * t, 2 * t + 2, (32,))) for t in range(3)]
    logits_after = {}
    acc = torch.zeros(3, 3)
    for t, (x, y) in enumerate(data):
        _fit_task(model, t, x, y)
        with torch.no_grad():
            for j in range(t + 1):
                ids = torch.full((32,), j)
                logits = model(data[j][0], ids)
                logits_after[(t, j)] = logits
                acc[t, j] = (logits.argmax(1) == data[j][1] - 2 * j).float().mean()
    for j in range(2):
        for t in range(j + 1, 3):
            assert torch.equal(logits_after[(t, j)], logits_after[(j, j)])
            assert acc[t, j] == acc[j, j]
    bwt = sum(acc[2, j] - acc[j, j] for j in range(2)) / 2
    assert bwt == 0
    assert acc[0, 0] > 0.5  # it did learn something
    # the task's own batch-norm statistics moved away from the backbone's, the backbone's did not
    norm = next(m for m in model.modules() if isinstance(m, TaskNorm))
    assert not torch.equal(norm.norms["0"].running_mean, norm.base.running_mean)
    assert torch.equal(norm.base.running_mean, torch.zeros_like(norm.base.running_mean))


def _two_perturbed_tasks() -> CLRClassifier:
    """A CLR model with two tasks whose parameters are moved off the identity (so tasks differ)."""
    torch.manual_seed(0)
    model = _clr_model(SmallCNN((4, 8)))
    for t in range(2):
        model.on_task_start(_task(t, [2 * t, 2 * t + 1]))
        with torch.no_grad():
            for p in model.task_parameters(t):
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_mixed_task_batch_is_split_by_task():
    model = _two_perturbed_tasks()
    model.eval()
    x = torch.rand(6, 1, 16, 16)
    ids = torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        mixed = model(x, ids)
        for t in range(2):
            rows = ids == t
            assert torch.equal(mixed[rows], model(x[rows], ids[rows]))


def test_adapter_round_trip(tmp_path):
    model = _two_perturbed_tasks()
    path = save_task_adapter(model, 1, tmp_path / "task1.safetensors")
    assert path.stat().st_size < 4096
    fresh = copy.deepcopy(model)
    fresh.remove_task(1)
    key = load_task_adapter(fresh, path)
    assert key == "1"
    model.eval(), fresh.eval()
    x = torch.rand(4, 1, 16, 16)
    ids = torch.full((4,), 1)
    with torch.no_grad():
        assert torch.equal(model(x, ids), fresh(x, ids))
    with pytest.raises(ValueError, match="already has an adapter"):
        load_task_adapter(fresh, path)


def test_affine_variant_identity_on_transformers():
    import timm
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = vit(x)
        names = inject(vit, "affine")
        assert any(n.endswith("qkv") for n in names) and any(n.endswith("mlp.fc1") for n in names)
        add_task_state(vit, "0")
        set_task(vit, "0")
        assert (vit(x) - reference).abs().max() < 1e-5
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).eval()
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        reference = bert(input_ids=ids).last_hidden_state
        names = inject(bert, "affine")
        assert sum(isinstance(bert.get_submodule(n), ChannelAffine) for n in names) == 2 * 4
        add_task_state(bert, "0")
        set_task(bert, "0")
        assert (bert(input_ids=ids).last_hidden_state - reference).abs().max() < 1e-5


def test_clear_errors():
    with pytest.raises(ValueError, match="variant"):
        CLRClassifier(SmallCNN((4,), in_channels=1), variant="bogus")
    model = CLRClassifier(SmallCNN((4,), in_channels=1))
    with pytest.raises(ValueError, match="task_incremental"):
        model.setup_sequence(SequenceInfo("class_incremental", 2, 4, [[0, 1], [2, 3]], (1, 8, 8)))
    model = _clr_model(SmallCNN((4,)))
    with pytest.raises(KeyError, match="no CLR state"):
        model(torch.rand(1, 1, 16, 16), torch.tensor([2]))


def test_pretrained_efficientnet_lite0_classifies_coffee_as_espresso():
    import skimage.data

    from clight.models.pretrained import PretrainedTimmBackbone, imagenet_classifier

    model = imagenet_classifier("tf_efficientnet_lite0")
    image = torch.tensor(skimage.data.coffee()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    backbone = PretrainedTimmBackbone("tf_efficientnet_lite0").eval()
    with torch.no_grad():
        x = backbone.preprocess(image)  # resize to 224 and the model's own mean/std
        assert model(x).argmax(1).item() == 967  # espresso
        assert torch.allclose(backbone(image), model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-5)
