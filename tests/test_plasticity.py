"""Plasticity methods: chains, continual backprop, ReDo, shrink & perturb, monitor (CPU, fast)."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from torch import nn

from clight.contract import RunContext
from clight.data.task import SequenceInfo, Task
from clight.methods.plasticity import ChainError, ContinualBackprop, PlasticityMonitor, ReDo, ShrinkPerturb, find_chains, measure
from clight.methods.plasticity.statistics import dead_fraction, dormant_fraction, effective_rank, stable_rank, weight_magnitude
from clight.methods.plasticity.units import replace_units
from clight.models.backbones import MLP, SmallCNN
from clight.models.classifier import ContinualClassifier
from clight.optim import AdamPerEntryStep
from clight.seeding import seeded_generator

INFO = SequenceInfo(
    setting="domain_incremental", num_tasks=2, num_classes=4, task_classes=[[0, 1, 2, 3]] * 2, input_shape=(1, 6, 6)
)
TASK0 = Task(0, "t0", None, None, None, [0, 1, 2, 3])
TASK1 = Task(1, "t1", None, None, None, [0, 1, 2, 3])


def make_model(backbone: nn.Module, optimizer=None) -> ContinualClassifier:
    torch.manual_seed(0)
    kwargs = {"optimizer": optimizer} if optimizer else {}
    model = ContinualClassifier(backbone, **kwargs)
    model.setup_sequence(INFO)
    model.on_task_start(TASK0)
    return model


def make_batch(n: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.rand(n, 1, 6, 6, generator=g),
        "target": torch.randint(0, 4, (n,), generator=g),
        "task_id": torch.zeros(n, dtype=torch.long),
    }


class DictData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, seed: int = 0) -> None:
        self.batch = make_batch(n, seed)

    def __len__(self) -> int:
        return len(self.batch["target"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def loader(n: int = 64, batch_size: int = 16) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(DictData(n), batch_size=batch_size, shuffle=False)


def trainer(callbacks, **kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    args.update(kw)
    return L.Trainer(**args)


# -- chains ---------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_mlp_chains_found_with_norms(norm):
    model = make_model(MLP([5, 7], norm=norm))
    chains, skipped = find_chains(model, make_batch())
    assert [(c.unit_name, c.consumer_name) for c in chains] == [
        ("backbone.layers.0", f"backbone.layers.{3 if norm else 2}"),
        (f"backbone.layers.{3 if norm else 2}", "heads.all"),
    ]
    assert all((c.norm is not None) == (norm is not None) for c in chains)
    assert all(c.exact == (norm != "layer") for c in chains)  # a LayerNorm mixes units: replacement is not exact
    assert "heads.all" in skipped  # the output layer is never a unit layer


def test_resnet18_chains_skip_residual_layers():
    from clight.models.backbones import TimmBackbone

    model = make_model(TimmBackbone("resnet18", image_size=16))
    chains, skipped = find_chains(model, make_batch(2))
    names = [c.unit_name for c in chains]
    assert names == [f"backbone.model.layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    assert all(isinstance(c.norm, nn.BatchNorm2d) for c in chains)
    # the stem and every block's conv2 feed a residual addition: never chosen, reason recorded
    assert "backbone.model.conv1" in skipped and "backbone.model.layer1.0.conv2" in skipped
    # the last block's conv2 reaches the head through global pooling, but its output is changed
    # in place by the residual `x += shortcut` first: replacing its channels would cut the shortcut too
    assert "changed in place" in skipped["backbone.model.layer4.1.conv2"]
    with pytest.raises(ChainError, match="layer1.0.conv2"):
        find_chains(model, make_batch(2), layers=["backbone.model.layer1.0.conv2"])
    batch = make_batch(2)
    model.train()
    with torch.no_grad():
        for chain in chains:
            chain.consumer.weight[:, :3] = 0
        before = model(batch["input"])
        for k, chain in enumerate(chains):
            replace_units(chain, torch.arange(3), seeded_generator(0, k), init="kaiming_normal_fan_out")
        torch.testing.assert_close(model(batch["input"]), before, rtol=0, atol=1e-5)


def test_declared_and_bad_layers_raise_clear_errors():
    model = make_model(MLP([5, 7]))
    with pytest.raises(ChainError, match="heads.all"):
        find_chains(model, make_batch(), layers=["heads.all"])
    with pytest.raises(ChainError, match="not a module"):
        find_chains(model, make_batch(), declared=[{"unit": "nope", "consumer": "heads.all"}])
    chains, _ = find_chains(model, make_batch(), declared=[{"unit": "backbone.layers.0", "consumer": "backbone.layers.2"}])
    assert chains[0].unit_name == "backbone.layers.0"


@pytest.mark.parametrize("backbone", [lambda: MLP([5, 7]), lambda: MLP([5, 7], norm="batch"), lambda: SmallCNN([4, 6])])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_unchanged_at_replacement(backbone, mode):
    model = make_model(backbone())
    batch = make_batch()
    chains, _ = find_chains(model, batch)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norm state, so a reset would show if wrong
            p.add_(0.1)
    getattr(model, mode)()
    with torch.no_grad():
        # the units leave the function the moment their outgoing weights are 0; the fresh incoming
        # weights, bias and norm entries must add nothing on top of that
        for chain in chains:
            chain.consumer.weight[:, [0, 2]] = 0
        before = model(batch["input"])
        for k, chain in enumerate(chains):
            replace_units(chain, torch.tensor([0, 2]), seeded_generator(0, k))
        after = model(batch["input"])
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    units = {id(c.unit) for c in chains}
    for chain in chains:
        w_out = chain.consumer.weight
        if id(chain.consumer) in units:  # its own rows 0 and 2 were replaced afterwards: fresh values
            w_out = w_out[[r for r in range(w_out.shape[0]) if r not in (0, 2)]]
        assert (w_out[:, [0, 2]] == 0).all() and (w_out[:, 1] != 0).any()
        if chain.norm is not None:
            assert (chain.norm.weight[[0, 2]] == 1).all() and (chain.norm.bias[[0, 2]] == 0).all()


def test_fresh_weights_follow_the_layers_default_initialiser():
    layer = nn.Linear(400, 3000)
    from clight.methods.plasticity.units import draw_incoming

    w = draw_incoming(layer, 3000, seeded_generator(0, 1))
    bound = 1 / math.sqrt(400)
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert abs(w.std().item() - layer.weight.std().item()) < 0.01 * bound
    assert torch.equal(w, draw_incoming(layer, 3000, seeded_generator(0, 1)))


# -- a conv map flattened into a Linear: one unit = one channel = a block of columns --------
class FlatCNN(nn.Module):
    """conv -> ReLU -> flatten -> Linear, as the last conv of the continual-ImageNet network feeds its first fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)  # 6x6 inputs -> 4 channels of 4x4: 16 columns per channel
        self.act = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 16, 5)
        self.fc_act = nn.ReLU()
        self.num_features = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_act(self.fc(self.flatten(self.act(self.conv(x)))))


def test_conv_flatten_linear_chain_is_found_and_verified():
    model = make_model(FlatCNN())
    chains, skipped = find_chains(model, make_batch())  # verified: find_chains drops chains that fail
    chain = chains[0]
    assert (chain.unit_name, chain.consumer_name, chain.block_size) == ("backbone.conv", "backbone.fc", 16)
    assert chain.path == ["backbone.act", "backbone.flatten"] and chain.describe()["columns_per_unit"] == 16
    assert [c.unit_name for c in chains] == ["backbone.conv", "backbone.fc"] and "backbone.conv" not in skipped
    torch.testing.assert_close(
        chain.consumer_columns(torch.tensor([1, 3])), torch.cat([torch.arange(16, 32), torch.arange(48, 64)])
    )


def test_replacing_dead_channels_of_a_flattened_map_keeps_the_output():
    model = make_model(FlatCNN())
    optimizer = AdamPerEntryStep(model.parameters(), lr=1e-2)
    batch = make_batch()
    for _ in range(3):  # non-zero optimizer state everywhere
        optimizer.zero_grad()
        model.task_loss(batch)[0].backward()
        optimizer.step()
    conv, fc = model.backbone.conv, model.backbone.fc
    with torch.no_grad():  # inputs are >= 0: channels 1 and 3 now output 0 everywhere (dead)
        conv.weight[[1, 3]] = -1.0
        conv.bias[[1, 3]] = -1.0
    model.eval()
    with torch.no_grad():
        h = conv(batch["input"]).relu()
        before = model(batch["input"])
    assert (h[:, [1, 3]] == 0).all() and (h[:, 0] != 0).any()
    stats = measure(model, batch)
    assert stats["layers"]["backbone.conv"] == 0.5  # per channel: 2 of 4
    chain = find_chains(model, batch)[0][0]
    fc_before = fc.weight.detach().clone()
    state_before = {k: v.clone() for k, v in optimizer.state[fc.weight].items()}
    replace_units(chain, torch.tensor([1, 3]), seeded_generator(0), optimizer)
    with torch.no_grad():
        after = model(batch["input"])
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # dead units: bit for bit
    dead = torch.cat([torch.arange(16, 32), torch.arange(48, 64)])
    live = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])
    assert (fc.weight[:, dead] == 0).all() and torch.equal(fc.weight[:, live], fc_before[:, live])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        value = optimizer.state[fc.weight][key]
        assert (value[:, dead] == 0).all() and torch.equal(value[:, live], state_before[key][:, live])
        assert (state_before[key][:, dead] != 0).any()
    assert (conv.bias[[1, 3]] == 0).all() and (conv.weight[[1, 3]] != -1).all()
    # a live channel's contribution is removed with its outgoing weights: the output moves
    replace_units(chain, torch.tensor([0]), seeded_generator(1), optimizer)
    with torch.no_grad():
        assert not torch.allclose(model(batch["input"]), before)


def tiny_flat_net() -> nn.Module:
    """1x1 conv with 2 channels on 1x2 images -> flatten -> Linear(4, 2): channel c owns columns 2c, 2c+1."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        net[0].bias.zero_()
        net[3].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]]))
    return net


def test_outgoing_weights_and_utility_of_a_flattened_map_by_hand():
    net = tiny_flat_net()
    x = torch.tensor([[1.0, 3.0], [2.0, 0.0]]).view(2, 1, 1, 2)  # h: channel 0 = x, channel 1 = 2x
    chain = find_chains(net, x, forward=lambda m, b: m(b))[0][0]
    assert chain.block_size == 2
    torch.testing.assert_close(chain.outgoing_abs_sum(), torch.tensor([1 + 2 + 0.5 + 0, 3 + 4 + 1 + 2.0]))
    torch.testing.assert_close(chain.outgoing_abs_mean(), torch.tensor([3.5 / 4, 10 / 4]))
    declared = find_chains(net, x, forward=lambda m, b: m(b), declared=[{"unit": "0", "consumer": "3"}])[0][0]
    assert declared.block_size == 2
    cb = ContinualBackprop(replacement_rate=0.0, decay=0.9, forward=lambda m, b: m(b))
    cb.discover(net, x)
    cb._attach()
    cbp_step(cb, net, x)
    # mean |h| over batch and positions: channel 0 (1, 3, 2, 0) -> 1.5; channel 1 (2, 6, 4, 0) -> 3
    torch.testing.assert_close(cb.unit_state["0"]["utility"], 0.1 * torch.tensor([1.5 * 3.5, 3.0 * 10.0]))
    bad = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(5, 2))
    with pytest.raises(ChainError, match="whole number of positions"):
        find_chains(bad, x, forward=lambda m, b: m(b), declared=[{"unit": "0", "consumer": "2"}])


@pytest.mark.parametrize("method", ["cbp", "redo"])
def test_methods_replace_channels_of_a_flattened_map_in_trainer(method):
    model = make_model(FlatCNN(), optimizer=lambda p: AdamPerEntryStep(p, lr=1e-2))
    if method == "cbp":
        cb = ContinualBackprop(replacement_rate=0.2, maturity_threshold=1, layers=["backbone.conv"])
    else:
        with torch.no_grad():  # a dead channel for ReDo to find
            model.backbone.conv.weight[2] = -1.0
            model.backbone.conv.bias[2] = -1.0
        cb = ReDo(threshold=0.025, frequency=2, layers=["backbone.conv"])
    trainer(cb, max_epochs=2).fit(model, loader())
    assert cb.replaced["backbone.conv"] > 0
    if method == "cbp":
        assert cb.unit_state["backbone.conv"]["utility"].shape == (4,)


# -- continual backprop: hand-computed utility and counts -----------------------------------
def tiny_chain_model() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -0.5]]))
    return net


def cbp_step(cb: ContinualBackprop, net: nn.Module, x: torch.Tensor):
    net.train()
    cb._in_step = True
    with torch.enable_grad():
        net(x)
    cb._in_step = False
    cb.step_count += 1
    return cb.after_step(cb._reduced_stats(None), None)


def test_cbp_utility_and_replacement_counts_by_hand():
    net = tiny_chain_model()
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # h = relu([[1,2,3],[3,0,3]]): mean |h| = [2, 1, 3]
    cb = ContinualBackprop(replacement_rate=0.3, maturity_threshold=1, decay=0.9, forward=lambda m, b: m(b))
    cb.discover(net, x)
    cb._attach()
    out_sum = torch.tensor([4.0, 3.0, 1.0])  # sum_k |w_out[k, i]|
    expected_u = torch.zeros(3)
    # step 1: ages 1, nobody eligible (age > 1 needed)
    assert cbp_step(cb, net, x) == 0
    expected_u = 0.9 * expected_u + 0.1 * torch.tensor([2.0, 1.0, 3.0]) * out_sum
    st = cb.unit_state["0"]
    torch.testing.assert_close(st["utility"], expected_u)
    assert st["age"].tolist() == [1, 1, 1] and float(st["accumulator"]) == 0
    # step 2: 3 eligible -> acc 0.9, none replaced
    assert cbp_step(cb, net, x) == 0
    expected_u = 0.9 * expected_u + 0.1 * torch.tensor([2.0, 1.0, 3.0]) * out_sum
    torch.testing.assert_close(st["utility"], expected_u)  # [1.52, 0.57, 0.57]: tie between 1 and 2
    assert math.isclose(float(st["accumulator"]), 0.9)
    # step 3: utilities [2.168, 0.813, 0.813] -> acc 1.8: one unit, the lowest (tie -> lower index 1)
    w_out_before = net[2].weight.detach().clone()
    assert cbp_step(cb, net, x) == 1
    assert math.isclose(float(st["accumulator"]), 0.8, abs_tol=1e-9)
    assert st["age"].tolist() == [3, 0, 3] and st["utility"][1] == 0
    assert (net[2].weight[:, 1] == 0).all()
    torch.testing.assert_close(net[2].weight[:, [0, 2]], w_out_before[:, [0, 2]])
    assert net[0].bias[1] == 0 and not torch.equal(net[0].weight[1], torch.tensor([0.0, 1.0]))
    # step 4: eligible are units 0 and 2 only (unit 1 is young): acc 0.8 + 0.6 = 1.4 -> one more
    assert cbp_step(cb, net, x) == 1
    assert math.isclose(float(st["accumulator"]), 0.4, abs_tol=1e-9)
    assert cb.replaced == {"0": 2}


def test_cbp_variants_and_bias_compensation():
    net = tiny_chain_model()
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    cb = ContinualBackprop(
        replacement_rate=0.0,
        maturity_threshold=0,
        decay=0.9,
        utility="adaptable_contribution",
        bias_correction=True,
        forward=lambda m, b: m(b),
    )
    cb.discover(net, x)
    cb._attach()
    cbp_step(cb, net, x)
    st = cb.unit_state["0"]
    # first step: reference mean 0, so |h - m| = |h|; adaptable divides by mean |w_in| = [0.5, 0.5, 1]
    expected = 0.1 * torch.tensor([2.0, 1.0, 3.0]) * torch.tensor([2.0, 1.5, 0.5]) / torch.tensor([0.5, 0.5, 1.0])
    torch.testing.assert_close(st["utility"], expected)
    torch.testing.assert_close(st["mean_activation"], 0.1 * torch.tensor([2.0, 1.0, 3.0]))
    assert cb.describe()["utility"] == "adaptable_contribution" and cb.describe()["variant"] == "released_code_options"
    # bias compensation keeps the expected output: b += w_out[:, i] * mean_h_i
    net.eval()
    mean = torch.tensor([2.0, 1.0, 3.0])
    chain = cb.chains[0]
    expected_out = net(x).mean(0)
    replace_units(chain, torch.tensor([0, 1, 2]), seeded_generator(0), None, mean_activation=mean)
    torch.testing.assert_close(net(x).mean(0), expected_out)


# -- optimizer state -------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_optimizer_state_of_replaced_entries_zero_others_untouched(opt):
    net = tiny_chain_model()
    optimizer = (
        torch.optim.Adam(net.parameters(), lr=0.01) if opt == "adam" else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    )
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(5, 2)).pow(2).sum().backward()
        optimizer.step()
    keys = ["exp_avg", "exp_avg_sq"] if opt == "adam" else ["momentum_buffer"]
    before = {id(p): {k: optimizer.state[p][k].clone() for k in keys} for p in net.parameters()}
    chains, _ = find_chains(net, torch.randn(4, 2), forward=lambda m, b: m(b))
    replace_units(chains[0], torch.tensor([1]), seeded_generator(0), optimizer)
    rows = [0, 2]
    for k in keys:
        for p, dim in ((net[0].weight, 0), (net[0].bias, 0), (net[2].weight, 1)):
            s, b = optimizer.state[p][k], before[id(p)][k]
            assert (s.select(dim, 1) == 0).all()
            torch.testing.assert_close(
                s.index_select(dim, torch.tensor(rows)), b.index_select(dim, torch.tensor(rows)), rtol=0, atol=0
            )
        torch.testing.assert_close(optimizer.state[net[2].bias][k], before[id(net[2].bias)][k], rtol=0, atol=0)
        assert (before[id(net[0].weight)][k][1] != 0).any()


# -- inside a Lightning fit ------------------------------------------------------------------
def test_cbp_in_trainer_replaces_and_checkpoints(tmp_path):
    model = make_model(MLP([16, 16]), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    model.eval()  # Lightning >= 2.2 keeps eval mode during fit: the callback must still collect statistics
    cb = ContinualBackprop(replacement_rate=0.05, maturity_threshold=2)
    trainer(cb, max_epochs=3).fit(model, loader())
    assert sum(cb.replaced.values()) > 0 and cb.step_count == 12
    state = cb.state_dict()
    torch.save(state, tmp_path / "s.pt")
    cb2 = ContinualBackprop()
    cb2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert cb2.replaced == cb.replaced and torch.equal(
        cb2.unit_state["backbone.layers.0"]["age"], cb.unit_state["backbone.layers.0"]["age"]
    )
    assert [layer["unit"] for layer in cb.describe()["layers"]] == ["backbone.layers.0", "backbone.layers.2"]


@pytest.mark.parametrize(
    "make_optimizer, kind",
    [
        (lambda p: torch.optim.Adam(p, lr=1e-2), "per_tensor"),
        (lambda p: AdamPerEntryStep(p, lr=1e-2), "per_entry"),
        (lambda p: torch.optim.SGD(p, lr=1e-2), "none"),
    ],
)
def test_cbp_records_how_the_optimizer_counted_steps(make_optimizer, kind):
    model = make_model(MLP([16, 16]), optimizer=make_optimizer)
    cb = ContinualBackprop(replacement_rate=0.05, maturity_threshold=2)
    assert cb.describe()["optimizer_step_count"] == "no replacement with an optimizer yet"
    trainer(cb, max_epochs=2).fit(model, loader())
    assert sum(cb.replaced.values()) > 0
    assert list(cb.describe()["optimizer_step_count"]) == [kind]
    restored = ContinualBackprop()
    restored.load_state_dict(cb.state_dict())
    assert restored.optimizer_step_counts == {kind}


def test_resume_reproduces_replacements(tmp_path):
    def run(split: bool):
        model = make_model(MLP([16, 16]), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
        cb = ContinualBackprop(replacement_rate=0.05, maturity_threshold=2, seed=3)
        if not split:
            trainer(cb, max_epochs=4).fit(model, loader())
            return model, cb
        t = trainer(cb, max_epochs=2)
        t.fit(model, loader())
        t.save_checkpoint(tmp_path / "mid.ckpt")
        model2 = make_model(MLP([16, 16]), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
        cb2 = ContinualBackprop(replacement_rate=0.05, maturity_threshold=2, seed=3)
        trainer(cb2, max_epochs=4).fit(model2, loader(), ckpt_path=tmp_path / "mid.ckpt")
        return model2, cb2

    (m1, c1), (m2, c2) = run(False), run(True)
    assert c1.replaced == c2.replaced and sum(c1.replaced.values()) > 0
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def test_redo_recycles_dead_units():
    model = make_model(MLP([16, 16]), optimizer=lambda p: torch.optim.SGD(p, lr=1e-3))
    layer = model.backbone.layers[0]
    with torch.no_grad():
        layer.weight[:3] = -1.0  # inputs are >= 0: these three units never fire
        layer.bias[:3] = -1.0
    cb = ReDo(threshold=0.025, frequency=2, layers=["backbone.layers.0"])
    trainer(cb, max_steps=2).fit(model, loader())
    assert cb.replaced["backbone.layers.0"] >= 3
    assert (layer.weight[:3] > -1).all() and (layer.bias[:3] == 0).all()
    assert (model.backbone.layers[2].weight[:, :3].abs() < 1e-2).all()  # zeroed, then one small SGD step at most


def test_shrink_perturb_boundary_and_step():
    from clight.methods.plasticity.shrink_perturb import fresh_parameters

    model = make_model(MLP([8]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sp = ShrinkPerturb(shrink=0.4, perturb=0.1, seed=5)
    sp.on_task_start(model, TASK0)  # nothing at the first task
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    sp.on_task_start(model, TASK1)
    fresh = fresh_parameters(model, seeded_generator(5, 1))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, 0.4 * before[n] + 0.1 * fresh[n])
    assert sp.describe()["only_shrunk"] == []
    step = ShrinkPerturb(mode="step", weight_decay=0.1, noise_std=0.0)
    model2 = make_model(MLP([8]), optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    w = model2.backbone.layers[0].weight.detach().clone()
    trainer(step, max_steps=3).fit(model2, loader())
    torch.testing.assert_close(model2.backbone.layers[0].weight, w * 0.9**3)
    with pytest.raises(ValueError, match="mode"):
        ShrinkPerturb(mode="sometimes")


# -- statistics and the monitor --------------------------------------------------------------
def test_statistics_by_hand():
    h = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    h[0, 2] = 5.0
    assert dead_fraction(h) == pytest.approx(1 / 3)
    assert dormant_fraction(h, active_share=0.5) == pytest.approx(2 / 3)  # unit 2 is active on 1/3 < 0.5
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert effective_rank(torch.ones(5, 3)) == pytest.approx(1.0)
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    assert weight_magnitude(net) == pytest.approx(2.5)


def test_stable_rank_of_known_singular_values():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(8, 6, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    sigma = torch.tensor([50.0, 30.0, 15.0, 4.5, 0.3, 0.2], dtype=torch.float64)  # sum 100
    m = u @ torch.diag(sigma) @ v.T
    # cumulative shares 0.50, 0.80, 0.95, 0.995, 0.998, 1.0
    assert stable_rank(m) == 4  # delta 0.01: the first share >= 0.99 is 0.995
    assert stable_rank(m, delta=0.1) == 3 and stable_rank(m, delta=0.3) == 2 and stable_rank(m, delta=0.0) == 6
    assert stable_rank(m.float().view(8, 6, 1, 1)) == 4  # a conv map: averaged over (here one) position
    assert stable_rank(torch.zeros(4, 3)) == 0


def test_monitor_writes_history_and_plot(tmp_path):
    model = make_model(MLP([8, 8]))

    class DM:
        collate_fn = staticmethod(torch.utils.data.default_collate)
        tasks = [Task(0, "t0", DictData(40), None, None, [0, 1, 2, 3])]

    mon = PlasticityMonitor(probe_size=32)
    mon.setup_sequence(model, DM(), RunContext(tmp_path))
    mon.on_task_end(model, TASK0)
    hist = json.loads((tmp_path / "plasticity.json").read_text())
    assert set(hist[0]) >= {"dead_fraction", "dormant_fraction", "effective_rank", "stable_rank", "weight_magnitude", "task"}
    assert 1 <= hist[0]["effective_rank"] <= 8 and 1 <= hist[0]["stable_rank"] <= 8
    assert (tmp_path / "plots" / "plasticity.png").stat().st_size > 0


def test_monitor_ranks_are_those_of_the_features_computed_apart_and_leave_no_tap_behind():
    """The monitor takes the penultimate representation from its hooked forward (one forward, one SVD);
    it must equal a separate ``features`` call's, and ``features`` must be the class's again afterwards."""
    model = make_model(MLP([16, 12]))
    batch = make_batch(40, seed=3)
    stats = measure(model, batch)
    with torch.no_grad():
        features = model.eval().features(batch["input"], batch["task_id"])
    assert stats["effective_rank"] == pytest.approx(effective_rank(features), abs=1e-12)
    assert stats["stable_rank"] == stable_rank(features)
    assert "features" not in model.__dict__

    def forward_on_a_copy(module, b):  # not the batch's own input: the monitor makes its own features call
        x = b["input"].clone()
        return module.heads["all"](module.features(x, b["task_id"]))

    fallback = measure(model, batch, forward=forward_on_a_copy)
    assert fallback["effective_rank"] == pytest.approx(stats["effective_rank"], abs=1e-12)


def test_measuring_and_discovery_run_in_eval_mode_and_leave_every_submodule_s_mode_as_it_was():
    model = make_model(SmallCNN([4, 6]))
    model.train()
    model.backbone.blocks[1].eval()  # a frozen norm kept in eval mode by its owner
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    measure(model, make_batch())
    find_chains(model, make_batch(), verify=False)
    assert seen and not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_cbp_on_a_cnn_with_batchnorm_in_trainer():
    model = make_model(SmallCNN([4, 6]), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    cb = ContinualBackprop(replacement_rate=0.1, maturity_threshold=1, init="kaiming_normal_fan_out")
    trainer(cb, max_epochs=2).fit(model, loader())
    assert cb.replaced["backbone.blocks.0"] > 0
    assert [c.norm_name for c in cb.chains] == ["backbone.blocks.1"]


def test_monitor_draws_its_plot_after_the_last_task_and_every_plot_every_s_only(tmp_path, monkeypatch):
    from clight.methods.plasticity import monitor as monitor_module

    drawn = []
    monkeypatch.setattr(monitor_module, "plot_history", lambda history, path: drawn.append(len(history["run"])))
    model = make_model(MLP([8, 8]))

    class DM:
        collate_fn = staticmethod(torch.utils.data.default_collate)
        tasks = [Task(t, f"t{t}", DictData(40), None, None, [0, 1, 2, 3]) for t in range(4)]

    mon = PlasticityMonitor(probe_size=16, plot_every_s=3600.0)
    mon.setup_sequence(model, DM(), RunContext(tmp_path))
    for task in DM.tasks:
        mon.on_task_end(model, task)
    assert drawn == [4]  # the last task's plot, none before: under an hour since the run started
    assert len(json.loads((tmp_path / "plasticity.json").read_text())) == 4  # the history is written every time
    drawn.clear()
    mon = PlasticityMonitor(probe_size=16, plot_every_s=0.0)
    mon.setup_sequence(model, DM(), RunContext(tmp_path))
    for task in DM.tasks:
        mon.on_task_end(model, task)
    assert drawn == [1, 2, 3, 4]
