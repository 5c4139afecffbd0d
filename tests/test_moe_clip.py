"""MoE adapters on ContinualCLIP: both towers, the text tower following each image's route, and an
image unlike every task scored by zero-shot CLIP bit for bit."""

import copy

import torch
from contract_examples import TRAINER, digits, tiny_clip
from test_moe_adapters import randomise_experts, set_up

from clight import SequenceRunner
from clight.methods.moe_adapters import MoEAdapters, network_routing


def fitted_clip():
    model, data = tiny_clip(), digits()
    reference = copy.deepcopy(model)
    method = set_up(model, data, MoEAdapters(num_experts=4, bottleneck=8, ae_steps=100))
    reference.setup_sequence(data.info)
    for task in data.tasks:
        model.on_task_start(task)
        reference.on_task_start(task)
    for layer in method.layers.values():
        randomise_experts(layer)
    return model.eval(), reference.eval(), method, data


def test_both_towers_are_wrapped_and_the_output_starts_as_zero_shot_clip():
    model, data = tiny_clip(), digits()
    reference = copy.deepcopy(model)
    method = set_up(model, data, MoEAdapters(num_experts=3, bottleneck=8))
    assert sorted(method.layers) == [f"clip.{tower}_model.encoder.layers.{i}" for tower in ("text", "vision") for i in (0, 1)]
    assert not any(
        p.requires_grad for p in model.clip.parameters() if p not in {q for m in method.layers.values() for q in m.parameters()}
    )
    reference.setup_sequence(data.info)
    for m in (model, reference):
        m.on_task_start(data.tasks[0])
        m.eval()
    batch = next(iter(data.evaluation_loader(0)))
    with torch.no_grad(), network_routing(model.clip.vision_model).forced(torch.zeros(len(batch["input"]), dtype=torch.long)):
        assert torch.equal(model.output_logits(batch), reference.output_logits(batch))


def test_each_image_is_scored_against_prompts_encoded_under_its_own_route():
    model, reference, method, data = fitted_clip()
    batch = next(iter(data.evaluation_loader(1)))
    n = len(batch["input"])
    routes = torch.tensor([0, 1, -1]).repeat(n)[:n]
    routing = network_routing(model.clip.vision_model)
    with torch.no_grad():
        with routing.forced(routes):
            mixed = model.output_logits(batch)
        uniform = {}
        for r in (0, 1, -1):
            with routing.forced(torch.full((n,), r)):
                uniform[r] = model.output_logits(batch)
        zero_shot = reference.output_logits(batch)
    assert torch.equal(uniform[-1], zero_shot)
    for i, r in enumerate(routes.tolist()):
        torch.testing.assert_close(mixed[i], uniform[r][i], rtol=1e-5, atol=1e-5)
        assert torch.equal(mixed[i], zero_shot[i]) == (r == -1), (i, r)


def test_an_image_unlike_every_task_gets_zero_shot_clip_bit_for_bit():
    model, reference, method, data = fitted_clip()
    method.on_task_end(model, data.tasks[0])
    batch = next(iter(data.evaluation_loader(0)))
    unlike = {
        "input": torch.cat([batch["input"][:6], torch.ones(3, *batch["input"].shape[1:])]),
        "target": torch.cat([batch["target"][:6], batch["target"][:3]]),
    }
    routing = network_routing(model.clip.vision_model)
    with torch.no_grad():
        routes = routing.route(
            routing.frozen_features(model.clip.vision_model, (), {"pixel_values": model.preprocess(unlike["input"])})
        )
        logits, zero_shot = model.output_logits(unlike), reference.output_logits(unlike)
    assert (routes[6:] == -1).all() and (routes[:6] == 0).sum() >= 3
    for i, r in enumerate(routes.tolist()):
        assert torch.equal(logits[i], zero_shot[i]) == (r == -1), (i, r)


def test_a_clip_run_trains_only_experts_and_routers(tmp_path):
    model, data = tiny_clip(), digits()
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    method = MoEAdapters(num_experts=4, bottleneck=8, ae_steps=30)
    result = SequenceRunner(
        model, data, methods=[method], trainer={**TRAINER, "max_epochs": 1}, run_dir=str(tmp_path / "run")
    ).run()
    assert result.accuracy_matrix.shape == (2, 2)
    after = {
        k.replace(".block.", "."): v for k, v in model.clip.state_dict().items() if ".moe." not in k and "moe_routing" not in k
    }
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    history = method.describe()["history"]
    assert len(history) == 2 and all(any("text_model" in b for b in h["frozen_experts"]) for h in history)
    assert network_routing(model.clip.vision_model).selectors["0"].fitted.all()
