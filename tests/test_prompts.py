"""L2P, DualPrompt and CODA-Prompt against hand computations on a tiny random ViT: prefix attention,
L2P's query-key selection and prompt tokens, DualPrompt's and CODA-Prompt's prompt composition; the
frozen ViT (and frozen earlier prompts) bit-identical after training; refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from contract_examples import TRAINER, digits

from clight import ConfigError, ContinualCallback, SequenceRunner, TimmBackbone
from clight.methods.prompts import L2P, CODAPrompt, DualPrompt, attention_with_prefix
from clight.methods.prompts.coda import orthonormal_rows
from clight.models.backbones import SmallCNN

ROOT = Path(__file__).resolve().parents[1]


def tiny_vit() -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, image_size=8)


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


def l2p(**kwargs) -> L2P:
    return L2P(tiny_vit(), adam, **{"pool_size": 4, "length": 2, "top_k": 2, **kwargs})


def dualprompt(**kwargs) -> DualPrompt:
    return DualPrompt(tiny_vit(), adam, **{"g_layers": [0], "e_layers": [1], "g_length": 2, "e_length": 3, **kwargs})


def coda(**kwargs) -> CODAPrompt:
    return CODAPrompt(tiny_vit(), adam, **{"pool_size": 4, "length": 2, "layers": [0, 1], **kwargs})


def ready(model, task: int = 0):
    data = digits()
    model.setup_sequence(data.info)
    for t in range(task + 1):
        model.on_task_start(data.tasks[t])
    return model, data


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_prefix_attention_is_attention_over_the_prepended_keys_and_values():
    block = tiny_vit().model.blocks[0].eval()
    attn = block.attn
    x = torch.randn(2, 5, 16)
    empty = torch.zeros(2, 0, 16)
    torch.testing.assert_close(attention_with_prefix(attn, x, empty, empty), attn(x))
    pk, pv = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    out = attention_with_prefix(attn, x, pk, pv).detach().numpy()
    w, b = attn.qkv.weight.detach().numpy(), attn.qkv.bias.detach().numpy()
    q, k, v = np.split(x.numpy() @ w.T + b, 3, axis=-1)
    k, v = np.concatenate([pk.numpy(), k], 1), np.concatenate([pv.numpy(), v], 1)
    heads = [
        softmax(q[..., h * 8 : h * 8 + 8] @ k[..., h * 8 : h * 8 + 8].transpose(0, 2, 1) / np.sqrt(8)) @ v[..., h * 8 : h * 8 + 8]
        for h in range(2)
    ]
    expected = np.concatenate(heads, -1) @ attn.proj.weight.detach().numpy().T + attn.proj.bias.detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T


def test_l2p_selects_the_nearest_keys_and_prepends_their_prompts():
    model, _ = ready(l2p(match_weight=0.5))
    query = torch.randn(3, 16)
    keys = model.prompts.keys.detach().numpy()
    sims = cosine(query.numpy(), keys)
    chosen = np.argsort(-sims, axis=1)[:, :2]
    prompting, loss = model.compose(query, None)
    prompts = model.prompts.prompts.detach().numpy()
    expected = np.stack([np.concatenate([prompts[i] for i in row]) for row in chosen])
    np.testing.assert_allclose(prompting.tokens.detach().numpy(), expected)
    assert prompting.prefixes == {}
    np.testing.assert_allclose(
        loss.item(), 0.5 * np.mean([sum(1 - sims[b, i] for i in row) for b, row in enumerate(chosen)]), rtol=1e-5
    )
    # the released code's batch-wise selection: the batch's most frequent choices for every sample
    model.prompts.batchwise = True
    counts = np.bincount(chosen.ravel(), minlength=4)
    majority = sorted(range(4), key=lambda i: (-counts[i], i))[:2]
    tokens = model.compose(query, None)[0].tokens.detach().numpy()
    np.testing.assert_allclose(tokens, np.stack([np.concatenate([prompts[i] for i in majority])] * 3))


def test_l2p_head_reads_the_mean_of_the_prompt_outputs():
    model, data = ready(l2p())
    model.eval()
    x = next(iter(data.evaluation_loader(0)))["input"][:4]
    vit = model.vit
    xp = model.backbone.preprocess(x)
    with torch.no_grad():
        prompting, _ = model.compose(vit.forward_head(vit.forward_features(xp), pre_logits=True), None)
        tokens = torch.cat([prompting.tokens, vit._pos_embed(vit.patch_embed(xp))], 1)
        expected = vit.norm(vit.blocks(tokens))[:, :4].mean(1)
        torch.testing.assert_close(model.features(x), expected)


def test_dualprompt_uses_the_task_prompt_in_training_and_the_nearest_seen_key_at_test():
    model, _ = ready(dualprompt(), task=1)
    g, e, keys = (t.detach().numpy() for t in (model.prompts.general, model.prompts.expert, model.prompts.keys))
    query = torch.randn(4, 16)
    prompting, loss = model.compose(query, torch.tensor([1, 0, 1, 1]))
    (gk, gv), (ek, ev) = prompting.prefixes[0], prompting.prefixes[1]
    np.testing.assert_allclose(gk.detach().numpy(), np.stack([g[0, 0]] * 4))
    np.testing.assert_allclose(gv.detach().numpy(), np.stack([g[0, 1]] * 4))
    np.testing.assert_allclose(ek.detach().numpy(), np.stack([e[0, t, 0] for t in (1, 0, 1, 1)]))
    np.testing.assert_allclose(ev.detach().numpy(), np.stack([e[0, t, 1] for t in (1, 0, 1, 1)]))
    sims = cosine(query.numpy(), keys)
    np.testing.assert_allclose(float(loss), np.mean([1 - sims[b, t] for b, t in enumerate((1, 0, 1, 1))]), rtol=1e-5)
    prompting, loss = model.compose(query, None)
    nearest = sims[:, :2].argmax(1)  # only tasks 0 and 1 are seen
    assert loss is None
    np.testing.assert_allclose(prompting.prefixes[1][0].detach().numpy(), np.stack([e[0, t, 0] for t in nearest]))


def test_coda_prompt_is_the_attention_weighted_sum_of_the_components_in_use():
    model, _ = ready(coda(), task=1)
    query = torch.randn(3, 16)
    for layer in range(2):
        p, k, a = (t[layer].detach().numpy() for t in (model.prompts.components, model.prompts.keys, model.prompts.attention))
        attended = query.numpy()[:, None, :] * a[None]
        alpha = np.einsum(
            "bmd,md->bm",
            attended / np.linalg.norm(attended, axis=-1, keepdims=True),
            k / np.linalg.norm(k, axis=-1, keepdims=True),
        )
        prompt = np.einsum("bm,mld->bld", alpha, p)  # 4 components: 2 per task, both tasks' in use
        model.eval()
        keys, values = model.compose(query, None)[0].prefixes[layer]
        np.testing.assert_allclose(keys.detach().numpy(), prompt[:, :1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(values.detach().numpy(), prompt[:, 1:], rtol=1e-5, atol=1e-6)
    flat = model.prompts.keys[0].detach()
    torch.testing.assert_close(flat @ flat.T, torch.eye(4), atol=1e-5, rtol=0)  # orthonormal at the start
    rows = orthonormal_rows(flat[:2], 2)
    torch.testing.assert_close(rows @ flat[:2].T, torch.zeros(2, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [dualprompt, coda], ids=["DualPrompt", "CODAPrompt"])
def test_the_vit_never_moves_and_old_prompts_stay_frozen(tmp_path, make):
    model = make()
    vit_before = copy.deepcopy(model.vit.state_dict())
    history = []

    class Snapshot(ContinualCallback):
        def on_task_end(self, module, task):
            history.append({k: v.detach().clone() for k, v in module.prompts.state_dict().items()})

    SequenceRunner(model, digits(), methods=[Snapshot()], trainer=TRAINER, run_dir=str(tmp_path / "run")).run()
    assert all(torch.equal(v, model.vit.state_dict()[k]) for k, v in vit_before.items())
    assert any(not torch.equal(history[0][k], history[1][k]) for k in history[0])  # prompts trained
    if isinstance(model, DualPrompt):  # task 0's E-prompt untouched while task 1 trains
        assert torch.equal(history[0]["expert"][:, 0], history[1]["expert"][:, 0])
    if isinstance(model, CODAPrompt):  # task 0's components, keys and attention vectors untouched
        for name in ("components", "keys", "attention"):
            assert torch.equal(history[0][name][:, :2], history[1][name][:, :2]), name


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L2P(TimmBackbone("resnet18", image_size=8)), "Vision Transformer"),
        (lambda: L2P(SmallCNN((4,))), "Vision Transformer"),
        (lambda: DualPrompt(tiny_vit()), "distinct blocks"),  # the paper's E-prompt blocks 2-4 on a 2-block ViT
        (lambda: coda(pool_size=32), "orthogonal"),
    ],
)
def test_prompt_methods_refuse_what_does_not_apply(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        SequenceRunner(make(), digits(), trainer=TRAINER, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


CONFIGS = sorted((ROOT / "configs" / "vit_cifar100").glob("*.yaml")) + sorted(
    (ROOT / "configs" / "pretrained_fmnist").glob("*.yaml")
)


def test_the_paper_setting_configs_parse():
    """The GPU configs no run here exercises: class paths and init arguments resolve (nothing is
    built: the ViT-B weights are not offline)."""
    from clight.cli import build_fit_parser

    parser = build_fit_parser()
    configs = sorted((ROOT / "configs" / "vit_cifar100").glob("*.yaml"))
    assert len(configs) == 6
    for config in configs:
        assert parser.parse_args(["--config", str(config)]).model.class_path.startswith("clight."), config
