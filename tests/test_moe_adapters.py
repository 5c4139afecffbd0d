"""MoE adapters: the block's output against a hand computation, the gate, DDAS on synthetic
features, the pretrained output at initialisation, and refused configurations."""

import copy
import math

import pytest
import torch
from contract_examples import digits, text, tiny_lm
from torch.nn import functional as F

from clight import MLP, ConfigError, ContinualClassifier, TimmBackbone
from clight.contract import RunContext
from clight.methods.moe_adapters import DDAS, MoEAdapters, MoEBlock, MoELayer, RouteState, network_routing, top_k_gates
from clight.methods.moe_adapters.experts import cv_squared


def tiny_vit(**kwargs) -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(
        TimmBackbone(
            "vit_tiny_patch16_224", image_size=16, img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, **kwargs
        )
    )


def set_up(model, data, method):
    model.setup_sequence(data.info)
    method.check_compatible(model, data, data.info)
    method.setup_sequence(model, data, RunContext(seed=3))
    return method


def randomise_experts(layer: MoELayer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*layer.experts.parameters(), *layer.routers.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# -- the layer, by hand -------------------------------------------------------------------------
def expected_block(block, layer, x, task, per_token):
    """block(x) + sum_i w_i E_i(x_mid), x_mid = the residual stream entering the MLP (timm Block)."""
    x_mid = x + block.attn(block.norm1(x))
    out = block(x)
    logits = (x_mid if per_token else x_mid[:, :1]) @ layer.routers[str(task)]
    top, idx = logits.topk(layer.top_k, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, -1))
    experts = torch.stack([0.1 * e.up(F.relu(e.down(x_mid))) for e in layer.experts], -1)  # [B, L, d, E]
    return out + (experts * weights.unsqueeze(-2)).sum(-1)


@pytest.mark.parametrize("router_input", ["first", "token"])
def test_moe_block_adds_the_gated_experts_and_leaves_unrouted_samples_alone(router_input):
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    block = Block(8, num_heads=2, mlp_ratio=2.0).eval()
    state = RouteState()
    layer = MoELayer(
        8,
        num_tasks=2,
        state=state,
        num_experts=3,
        top_k=2,
        bottleneck=4,
        dropout=0.0,
        router_input=router_input,
        generator=torch.Generator().manual_seed(1),
    ).eval()
    randomise_experts(layer)
    wrapped = MoEBlock(copy.deepcopy(block), layer, "norm2").eval()
    x = torch.randn(2, 5, 8)
    state.rows = torch.tensor([1, -1])
    with torch.no_grad():
        out = wrapped(x)
        expected = expected_block(block, layer, x, 1, router_input == "token")
    torch.testing.assert_close(out[0], expected[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[0], block(x)[0])  # the experts did contribute
    assert torch.equal(out[1], block(x)[1])  # routed to none: the pretrained block, bit for bit


def test_top_k_gates_without_noise_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])  # logits [[3,1,2], [0,5,4]]
    gates, balance = top_k_gates(x, weight, None, k=2, noisy=False)
    a, b = math.exp(3) / (math.exp(3) + math.exp(2)), math.exp(5) / (math.exp(5) + math.exp(4))
    expected = torch.tensor([[a, 0.0, 1 - a], [0.0, b, 1 - b]])
    torch.testing.assert_close(gates, expected)
    importance, load = expected.sum(0), torch.tensor([1.0, 1.0, 2.0])
    torch.testing.assert_close(balance, cv_squared(importance) + cv_squared(load))
    torch.testing.assert_close(cv_squared(load), load.var() / load.mean() ** 2)


def test_noisy_gates_pick_k_experts_and_the_smooth_load_is_a_probability():
    g = torch.Generator().manual_seed(0)
    x, w, wn = torch.randn(64, 6, generator=g), torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.manual_seed(0)
    gates, balance = top_k_gates(x, w, wn, k=2, noisy=True)
    assert ((gates > 0).sum(1) == 2).all() and torch.allclose(gates.sum(1), torch.ones(64))
    assert torch.isfinite(balance) and balance > 0
    clean_top = (x @ w).topk(2, 1).indices
    assert not torch.equal(gates.topk(2, 1).indices.sort(1).values, clean_top.sort(1).values)  # the noise changed picks


# -- DDAS -------------------------------------------------------------------------------------------
def clusters(n: int, seed: int, centres: torch.Tensor, spread: float = 0.3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [c + spread * torch.randn(n, len(c), generator=g) for c in centres]


def test_ddas_picks_each_samples_task_and_sends_unlike_samples_to_none():
    g = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.randn(3, 16, generator=g)
    ddas = DDAS(num_tasks=3, dim=16, code_dims=8)
    for t, feats in enumerate(clusters(400, 1, centres)):  # 300 fit, 100 calibrate the threshold
        ddas.fit(t, feats, torch.Generator().manual_seed(t), steps=300)
    held_out = clusters(40, 2, centres)
    for t, feats in enumerate(held_out):
        assert (ddas.route(feats) == t).float().mean() >= 0.95
    mixed = torch.cat([held_out[2][:5], held_out[0][:5], held_out[1][:5]])  # one batch, three tasks
    assert (ddas.route(mixed) == torch.tensor([2] * 5 + [0] * 5 + [1] * 5)).float().mean() >= 0.9
    unlike = -6.0 * torch.ones(4, 16) + torch.randn(4, 16, generator=g)
    assert (ddas.route(unlike) == -1).all()
    assert (ddas.route(torch.full((2, 16), float("nan"))) == -1).all()


def test_ddas_routes_nothing_before_a_task_is_fitted_and_thresholds_follow_the_option():
    ddas = DDAS(num_tasks=2, dim=4, code_dims=3)
    assert (ddas.route(torch.randn(5, 4)) == -1).all()
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    auto = ddas.fit(0, feats, torch.Generator().manual_seed(0), steps=20)
    held_out = feats[torch.randperm(50, generator=torch.Generator().manual_seed(0))[:12]]  # the fit's first draw
    errors = ddas.errors(held_out)[:, 0].double().sort().values
    assert auto["calibration_samples"] == 12 and auto["samples"] == 38  # a quarter held out
    # the k-th smallest of n = 12 held-out errors, k = min(n, ceil(q (n + 1))): q 0.99 -> the largest, rejecting 1/13
    assert auto["threshold"] == pytest.approx(float(errors[11]), rel=1e-6) and auto["expected_rejection"] == 1 / 13
    median = DDAS(num_tasks=1, dim=4, code_dims=3, threshold_quantile=0.5).fit(
        0, feats, torch.Generator().manual_seed(0), steps=20
    )
    assert median["threshold"] == pytest.approx(float(errors[6]), rel=1e-6) and median["expected_rejection"] == 6 / 13
    fixed = DDAS(num_tasks=2, dim=4, code_dims=3, threshold=0.5)
    assert fixed.fit(1, feats, torch.Generator().manual_seed(0), steps=5)["threshold"] == 0.5
    with pytest.raises(FloatingPointError, match="NaN"):
        fixed.fit(0, torch.full((3, 4), float("nan")), torch.Generator())


# -- the pretrained model at initialisation ------------------------------------------------------
@pytest.mark.parametrize("train", [False, True])
def test_at_initialisation_the_output_is_the_pretrained_models_bit_for_bit(train):
    model, data = tiny_lm(), text()
    reference = copy.deepcopy(model.net).eval()
    set_up(model, data, MoEAdapters(num_experts=4))
    batch = next(iter(data.train_dataloader()))
    routing = network_routing(model.net)
    model.train(train)
    with torch.no_grad(), routing.forced(torch.zeros(len(batch["input_ids"]), dtype=torch.long)):
        routed = model(batch["input_ids"], batch["attention_mask"])[0]
    expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(routed, expected)


def test_vit_at_initialisation_and_ddas_features_are_the_frozen_backbones():
    model, data = tiny_vit(), digits()
    reference = copy.deepcopy(model.backbone).eval()
    set_up(model, data, MoEAdapters(num_experts=3, bottleneck=8))
    model.eval()
    x = next(iter(data.evaluation_loader(0)))["input"]
    routing = network_routing(model.backbone)
    with torch.no_grad():
        assert torch.equal(routing.frozen_features(model.backbone, (x,), {}), reference(x))
        with routing.forced(torch.ones(len(x), dtype=torch.long)):
            assert torch.equal(model.features(x), reference(x))


# -- refused -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ContinualClassifier(MLP([8])), "MLP"),
        (lambda: tiny_lm(lora={"r": 2, "target_modules": ["q_proj"]}), "LoRA"),
    ],
)
def test_unsupported_models_are_refused_by_name(make, message):
    model = make()
    data = digits() if isinstance(model, ContinualClassifier) else text()
    with pytest.raises(ConfigError, match=message):
        MoEAdapters().check_compatible(model, data, data.info)


def test_bad_options_are_refused():
    model, data = tiny_lm(), text()
    with pytest.raises(ConfigError, match="no transformer block matches"):
        MoEAdapters(blocks=["nope"]).check_compatible(model, data, data.info)
    for kwargs in ({"top_k": 5, "num_experts": 4}, {"tap": "attention"}, {"threshold": -1.0}, {"feature_transform": "log"}):
        with pytest.raises(ValueError):
            MoEAdapters(**kwargs)


def test_ddp_without_unused_parameter_detection_is_refused():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    trainer = SimpleNamespace(strategy=DDPStrategy(), world_size=2)
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        MoEAdapters().setup(trainer, None, "fit")
    MoEAdapters().setup(SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True), world_size=2), None, "fit")
