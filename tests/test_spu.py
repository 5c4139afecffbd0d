"""SPU: masks against a hand computation, bit-exact frozen entries, candidates by model family, state."""

import copy
import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from clight import ConfigError, Replay, SequenceRunner, SplitClasses, TaskSequence
from clight.contract import RunContext
from clight.methods.base import ContinualCallback
from clight.methods.selective_update import SPU, pack_bits, select, selected_count, unpack_bits
from clight.models.clip import ContinualCLIP

QUIET = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
)


def _clip(**optimizer):
    args = optimizer or dict(lr=1e-2, weight_decay=0.2)
    return ContinualCLIP("tiny", class_names="digits", optimizer=lambda p: torch.optim.AdamW(p, **args))


def _digits(**kwargs):
    return TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=64, seed=0, **kwargs)


def _start(model, data, spu, task):
    """What the runner does before task ``task``'s fit (without a Trainer)."""
    if task == 0:
        model.setup_sequence(data.info)
        spu.setup_sequence(model, data, RunContext())
    data.set_task(task)
    model.on_task_start(data.tasks[task])
    spu.on_task_start(model, data.tasks[task])


def _fit(model, data, spu, steps, **trainer):
    L.Trainer(accelerator="cpu", max_steps=steps, callbacks=[spu], **{**QUIET, **trainer}).fit(model, datamodule=data)


def _hand_importance(model, data, names, task, fraction_of_batches=0.25):
    """|sum of d/dw mean_i ||logits_i||^2| over the first batches, by torch.autograd, task rows only
    (not replayed samples, not general text)."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    loader = data.train_dataloader()
    use = math.ceil(fraction_of_batches * len(loader))
    total = {n: torch.zeros_like(params[n]) for n in names}
    for i, batch in enumerate(loader):
        if i == use:
            break
        rows = (batch["task_id"] == task) & ~batch.get("is_general", torch.zeros_like(batch["task_id"], dtype=torch.bool))
        logits = model.output_logits({k: v[rows] for k, v in batch.items()})
        grads = torch.autograd.grad((logits**2).sum(1).mean(), [params[n] for n in names])
        for n, g in zip(names, grads):
            total[n] += g
    return {n: t.abs() for n, t in total.items()}


def _assert_top_k(mask, importance, fraction):
    k = int(fraction * importance.numel())
    assert int(mask.sum()) == k
    expected = torch.zeros(importance.numel(), dtype=torch.bool)
    expected[importance.flatten().argsort(descending=True)[:k]] = True
    assert torch.equal(mask.flatten(), expected)


def test_bit_packing_matches_numpys_layout_and_round_trips():
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.7
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(91 / 8)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.numpy().flatten()))
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    assert selected_count(10, 0.1) == 1 and selected_count(5, 0.1) == 1 and selected_count(8192, 0.1) == 819


def test_masks_are_the_top_k_of_the_summed_gradient_computed_by_hand():
    torch.manual_seed(0)
    model, data, spu = _clip(), _digits(), SPU()
    _start(model, data, spu, 0)
    expected = _hand_importance(model, data, list(spu.selection.masked), task=0)
    _fit(model, data, spu, steps=1)
    assert spu.mask_task == 0 and set(spu.masks) == set(expected)
    for name, importance in expected.items():
        _assert_top_k(spu.masks[name], importance, 0.1)
    record = spu.records[0]
    assert record["importance_batches"] == math.ceil(0.25 * len(data.train_dataloader())) == 3
    assert record["selected_entries"] == 4 * 204 and record["importance_rows"] == 3 * 64


def test_with_replay_the_importance_uses_the_current_tasks_rows_only():
    torch.manual_seed(0)
    model, data, spu = _clip(), _digits(replay=Replay("reservoir", capacity=40, batch_size=16)), SPU(importance_batches=0.5)
    _start(model, data, spu, 0)
    _fit(model, data, spu, steps=2)
    data.on_task_end(0)  # the memory now holds task 0 samples, mixed into every task 1 batch
    _start(model, data, spu, 1)
    batch = next(iter(data.train_dataloader()))
    assert set(batch["task_id"].tolist()) == {0, 1}
    expected = _hand_importance(model, data, list(spu.selection.masked), task=1, fraction_of_batches=0.5)
    _fit(model, data, spu, steps=1)
    assert spu.mask_task == 1 and spu.records[-1]["importance_rows"] == spu.records[-1]["importance_batches"] * 64
    for name, importance in expected.items():
        _assert_top_k(spu.masks[name], importance, 0.1)


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_entries_outside_the_mask_stay_bit_identical(precision, optimizer):
    torch.manual_seed(0)
    model = ContinualCLIP("tiny", class_names="digits", optimizer=OPTIMIZERS[optimizer])
    data, spu = _digits(), SPU()
    _start(model, data, spu, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        precision=precision,
        gradient_clip_val=0.05,
        accumulate_grad_batches=2,
        callbacks=[spu],
        **QUIET,
    )
    trainer.fit(model, datamodule=data)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(spu.selection.masked) | set(spu.selection.full)
    assert len(trainer.optimizers[0].state) == len(trainable)  # optimizer state only for what trains
    for name, p in model.named_parameters():
        if name in spu.masks:
            mask = spu.masks[name]
            assert torch.equal(p[~mask], before[name][~mask]), name  # bit for bit
            assert (p[mask] != before[name][mask]).float().mean() > 0.9, name
        elif name in trainable:
            assert not torch.equal(p, before[name]), name  # biases and the visual projection train in full
        else:
            assert torch.equal(p, before[name]), name


def test_the_released_code_variant_lets_adamw_decay_shrink_masked_out_entries():
    torch.manual_seed(0)
    lr, wd, steps = 1e-2, 0.2, 3
    model, data, spu = _clip(lr=lr, weight_decay=wd), _digits(), SPU(variant="released_code")
    _start(model, data, spu, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _fit(model, data, spu, steps=steps)
    for name, mask in spu.masks.items():
        after = dict(model.named_parameters())[name].detach()
        # gradients and Adam moments are exactly 0 outside the mask: only the decoupled decay acts there
        torch.testing.assert_close(after[~mask], before[name][~mask] * (1 - lr * wd) ** steps, rtol=1e-6, atol=0)
        assert not torch.equal(after[~mask], before[name][~mask])
    assert "released code" in spu.describe()["masking"]


def test_candidates_by_model_family():
    from timm.models.vision_transformer import VisionTransformer
    from transformers import BertConfig, BertModel

    from clight.models.causal_lm import ContinualCausalLM

    lm = select(ContinualCausalLM("tiny"))
    assert sorted(lm.masked) == sorted(f"net.model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj"))
    assert lm.full == {} and "Llama" in lm.source[0]  # Llama's MLP has no biases
    bert = select(BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)))
    assert sorted(bert.masked) == [f"encoder.layer.{i}.intermediate.dense.weight" for i in range(2)]
    assert sorted(bert.full) == [f"encoder.layer.{i}.intermediate.dense.bias" for i in range(2)]
    vit = select(VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0))
    assert sorted(vit.masked) == [f"blocks.{i}.mlp.fc1.weight" for i in range(2)]
    clip = select(_clip())
    towers = [f"clip.{t}_model.encoder.layers.{i}.mlp.fc1" for t in ("text", "vision") for i in range(2)]
    assert sorted(clip.masked) == [f"{n}.weight" for n in towers]
    assert sorted(clip.full) == sorted([f"{n}.bias" for n in towers] + ["clip.visual_projection.weight"])


def test_a_classifiers_new_head_trains_in_full_and_the_rest_of_the_backbone_is_frozen():
    from clight import ContinualClassifier, TimmBackbone

    model = ContinualClassifier(TimmBackbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, image_size=32))
    data, spu = _digits(), SPU()
    _start(model, data, spu, 0)
    grad = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grad == {f"backbone.model.blocks.{i}.mlp.fc1.{w}" for i in range(2) for w in ("weight", "bias")} | {
        "heads.all.weight",
        "heads.all.bias",
    }
    _fit(model, data, spu, steps=1)  # -inf logits of unseen classes are left out of the objective
    assert all(torch.isfinite(torch.tensor(r["trainable_share"])) for r in spu.records)
    assert spu.records[0]["trainable_head_entries"] == model.heads["all"].weight.numel() + 10


def test_two_instances_do_not_freeze_each_others_layers():
    model, data = _clip(), _digits()
    vision, text = SPU(targets=[r"vision_model\..*fc1$"]), SPU(targets=[r"text_model\..*fc1$"], full=[])
    model.setup_sequence(data.info)
    model.on_task_start(data.tasks[0])
    for spu in (vision, text):
        spu.on_task_start(model, data.tasks[0])
    grad = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grad == vision.selection.trainable_names | text.selection.trainable_names
    assert "clip.visual_projection.weight" in grad and not any("text_projection" in n for n in grad)


def test_configuration_errors_name_the_problem_before_anything_runs(tmp_path):
    from contract_examples import text, tiny_lm

    from clight import ContinualClassifier, TimmBackbone

    trainer = dict(accelerator="cpu", max_epochs=1)
    cases = [
        (ContinualClassifier(TimmBackbone("test_resnet")), _digits(), SPU(), "no candidate layers in ContinualClassifier"),
        (_clip(), _digits(), SPU(targets=["mlp\\.fc9"]), r"targets \['mlp\\\\.fc9'\] match no layer"),
        (_clip(), _digits(), SPU(full=["text_projektion"]), "full .* match no parameter"),
        (tiny_lm(lora={"r": 4, "target_modules": ["q_proj"]}), text(), SPU(), "LoRA"),
    ]
    for i, (model, data, spu, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            SequenceRunner(model, data, methods=[spu], trainer=trainer, run_dir=str(tmp_path / f"run{i}")).run()
        assert not (tmp_path / f"run{i}").exists()
    for bad in (dict(fraction=0.0), dict(importance_batches=1.5)):
        with pytest.raises(ValueError, match="must be in"):
            SPU(**bad)
    with pytest.raises(ValueError, match="variant"):
        SPU(variant="gradient")


class MaskLog(ContinualCallback):
    """Keeps a copy of an SPU instance's masks after every task."""

    def __init__(self, spu):
        self.spu, self.masks = spu, []

    def on_task_end(self, module, task):
        self.masks.append({n: m.clone() for n, m in self.spu.masks.items()})


def test_a_killed_and_resumed_run_ends_with_the_same_masks_and_weights(tmp_path):
    from test_contract import KillAt, SimulatedKill

    trainer = dict(accelerator="cpu", max_epochs=2, limit_train_batches=4, enable_progress_bar=False, deterministic=True)

    def run(name, extra=(), resume=False):
        torch.manual_seed(0)
        spu = SPU()
        log = MaskLog(spu)
        runner = SequenceRunner(
            _clip(),
            _digits(replay=Replay(capacity=40, batch_size=16)),
            methods=[spu, log, *extra],
            trainer=trainer,
            run_dir=str(tmp_path / name),
            seed=0,
            resume=resume,
        )
        runner.run()
        return runner, spu, log

    reference, spu, log = run("reference")
    with pytest.raises(SimulatedKill):
        run("killed", extra=[KillAt(task=1, epoch=1, batch=2)])
    resumed, spu_again, log_again = run("killed", resume=True)
    assert len(log.masks) == 2 and not all(
        torch.equal(log.masks[0][n], log.masks[1][n]) for n in log.masks[0]
    )  # recomputed per task
    for name, mask in spu.masks.items():
        assert torch.equal(mask, spu_again.masks[name])
        assert torch.equal(log.masks[1][name], log_again.masks[-1][name])
    for name, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert spu_again.records == spu.records
    described = json.loads(json.dumps(spu.describe()))
    assert [r["task"] for r in described["per_task"]] == [0, 1] and described["variant"] == "exact"
    assert 0 < described["per_task"][0]["trainable_share"] < 0.05
    masked = sum(int(m.sum()) for m in spu.masks.values())  # the last task's selected entries, counted from the masks
    assert described["trainable_per_task"][-1] == described["per_task"][-1]["trainable_entries"] >= masked


def test_task_rows_drop_replayed_and_general_samples():
    from clight.methods.selective_update import task_rows

    batch = {
        "input_ids": torch.arange(8).view(4, 2),
        "task_id": torch.tensor([1, 0, 1, 1]),
        "is_general": torch.tensor([False, False, True, False]),
        "note": "kept",
    }
    rows = task_rows(batch, {1})
    assert rows["input_ids"].tolist() == [[0, 1], [6, 7]] and rows["task_id"].tolist() == [1, 1] and rows["note"] == "kept"
    assert task_rows(batch, {0, 1})["task_id"].tolist() == [1, 0, 1]
    assert task_rows(batch, {2}) is None
    plain = {"input": torch.zeros(3, 2), "task_id": torch.tensor([0, 0, 0])}
    assert task_rows(plain, {0}) is plain
