import pytest
import torch

from clight import ContinualClassifier, SmallCNN, TimmBackbone
from clight.data.task import SequenceInfo, Task
from clight.models.weights import load_local_weights


def _info(setting="class_incremental"):
    return SequenceInfo(setting=setting, num_tasks=2, num_classes=4, task_classes=[[0, 1], [2, 3]], input_shape=(1, 8, 8))


def _task(index, classes):
    return Task(index, f"t{index}", None, None, None, classes)


def test_class_incremental_head_masks_unseen_classes():
    model = ContinualClassifier(SmallCNN([4]))
    model.setup_sequence(_info())
    model.on_task_start(_task(0, [0, 1]))
    logits = model(torch.rand(3, 1, 8, 8))
    assert torch.isinf(logits[:, 2:]).all() and torch.isfinite(logits[:, :2]).all()
    model.on_task_start(_task(1, [2, 3]))  # the mask changes in place: the next forward sees it
    assert torch.isfinite(model(torch.rand(3, 1, 8, 8))).all()
    model.load_state_dict({**model.state_dict(), "seen_mask": torch.tensor([True, False, False, False])})
    assert torch.isinf(model(torch.rand(3, 1, 8, 8))[:, 1:]).all()  # a restored mask, copied in place
    model.setup_sequence(_info())  # a new sequence, a new mask: nothing seen
    assert torch.isinf(model(torch.rand(3, 1, 8, 8))).all()


def test_task_incremental_scores_each_sample_with_its_own_head():
    torch.manual_seed(0)
    model = ContinualClassifier(SmallCNN([4]))
    model.setup_sequence(_info("task_incremental"))
    model.on_task_start(_task(0, [0, 1]))
    model.on_task_start(_task(1, [2, 3]))
    x = torch.rand(4, 1, 8, 8)
    mixed = model(x, torch.tensor([0, 1, 0, 1]))
    features = model.features(x)
    assert torch.allclose(mixed[0], model.heads["0"](features[0:1])[0])
    assert torch.allclose(mixed[1], model.heads["1"](features[1:2])[0])
    assert not model.heads["0"].weight.requires_grad and model.heads["1"].weight.requires_grad


def test_frozen_backbone_keeps_its_batchnorm_statistics():
    model = ContinualClassifier(SmallCNN([4]), train_backbone=False)
    model.setup_sequence(_info())
    model.on_task_start(_task(0, [0, 1]))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    loss, _ = model.task_loss(
        {"input": torch.rand(8, 1, 8, 8), "target": torch.randint(0, 2, (8,)), "task_id": torch.zeros(8, dtype=torch.long)}
    )
    loss.backward()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.backbone.parameters())


def test_timm_backbone_loads_a_full_local_checkpoint_strictly(tmp_path):
    import timm

    source = timm.create_model("test_resnet", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "full.pth")  # classifier keys included
    backbone = TimmBackbone("test_resnet", weights_file=str(tmp_path / "full.pth"))
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    out = backbone(torch.rand(2, 1, 28, 28))  # grey 28x28 resized and repeated to 3 channels
    assert out.shape == (2, backbone.num_features)


def test_local_weights_with_wrong_keys_fail_with_a_hint(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save({"lin.weight": torch.zeros(2, 3), "lin.bias": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="key_map"):
        load_local_weights(model, tmp_path / "w.pt")
    load_local_weights(model, tmp_path / "w.pt", key_map={r"^lin\.": ""})
    assert torch.equal(model.weight, torch.zeros(2, 3))
