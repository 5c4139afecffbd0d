"""AdamPerEntryStep: torch's Adam until a reset; after a unit replacement, a 1x first update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clight.methods.plasticity import find_chains
from clight.methods.plasticity.optim_state import step_count_kind
from clight.methods.plasticity.units import replace_units
from clight.optim import AdamPerEntryStep
from clight.seeding import seeded_generator

LR = 1e-3


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))


def train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    for _ in range(steps):
        optimizer.zero_grad()
        (net(x) - y).pow(2).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1}, {"amsgrad": True}])
def test_same_as_torch_adam_without_resets(kwargs):
    a, b = tiny_net(), tiny_net()
    train(a, torch.optim.Adam(a.parameters(), lr=0.01, **kwargs), 50)
    train(b, AdamPerEntryStep(b.parameters(), lr=0.01, **kwargs), 50)
    for p, q in zip(a.parameters(), b.parameters()):  # float32 bias corrections: rounding apart after 50 steps
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def first_update_after_replacement(optimizer_class, steps: int) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """|change| / lr of the outgoing weights of a unit replaced after ``steps`` Adam steps."""
    net = tiny_net()
    optimizer = optimizer_class(net.parameters(), lr=LR)
    train(net, optimizer, steps)
    chain = find_chains(net, torch.randn(4, 2), forward=lambda m, b: m(b))[0][0]
    replace_units(chain, torch.tensor([1]), seeded_generator(0), optimizer)
    before = net[2].weight.detach().clone()
    train(net, optimizer, 1)
    return (net[2].weight - before)[:, 1].abs() / LR, optimizer


def test_first_update_of_a_replaced_entry_is_the_learning_rate():
    steps = 2000
    ratio, optimizer = first_update_after_replacement(AdamPerEntryStep, steps)
    # moments and step restart: m = 0.1 g, v = 0.001 g^2 at step 1 -> m_hat / sqrt(v_hat) = sign(g)
    torch.testing.assert_close(ratio, torch.ones(2), rtol=1e-4, atol=0)
    step = optimizer.state[optimizer.param_groups[0]["params"][2]]["step"]  # the consumer's weight
    assert step[:, 1].tolist() == [1.0, 1.0] and (step[:, [0, 2]] == steps + 1).all()
    assert step_count_kind(optimizer) == "per_entry"


def test_torch_adam_overshoots_on_a_replaced_entry():
    """torch's Adam keeps one step per tensor: the reset entry's zeroed moments are bias-corrected
    with step count 2001, so its first update is 0.1 / sqrt(0.001) * sqrt(1 - 0.999^2001) = 2.94x lr
    (3.16x once the step count is large)."""
    steps = 2000
    ratio, optimizer = first_update_after_replacement(torch.optim.Adam, steps)
    t = steps + 1
    expected = 0.1 / (1 - 0.9**t) * ((1 - 0.999**t) / 0.001) ** 0.5
    assert 2.9 < expected < 3.1
    torch.testing.assert_close(ratio, torch.full((2,), expected), rtol=1e-4, atol=0)
    assert step_count_kind(optimizer) == "per_tensor"


@pytest.mark.parametrize("momentum", [0.0, 0.9])  # plain SGD keeps no state at all
def test_sgd_keeps_no_step_count(momentum):
    net = tiny_net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=momentum)
    train(net, sgd, 1)
    assert step_count_kind(sgd) == "none"


def test_usable_from_yaml_as_the_models_optimizer():
    from jsonargparse import ArgumentParser
    from lightning.pytorch.cli import OptimizerCallable

    parser = ArgumentParser()
    parser.add_argument("--optimizer", type=OptimizerCallable)
    config = parser.parse_string("optimizer:\n  class_path: clight.optim.AdamPerEntryStep\n  init_args: {lr: 0.01}\n")
    optimizer = parser.instantiate(config).optimizer(tiny_net().parameters())
    assert isinstance(optimizer, AdamPerEntryStep) and optimizer.param_groups[0]["lr"] == 0.01
