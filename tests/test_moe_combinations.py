"""MoE adapters combined with methods that copy the model or edit its parameters: LwF (a
frozen_copy of the model), general replay on full weights (a frozen_network for the base
outputs) and shrink & perturb (edits every trainable parameter at a task start)."""

from types import SimpleNamespace

import torch
from contract_examples import TRAINER, digits, text, tiny_lm
from test_moe_adapters import tiny_vit
from test_moe_runs import Snapshots

from clight import SequenceRunner
from clight.methods.general_replay import GeneralReplay
from clight.methods.moe_adapters import MoEAdapters, network_routing
from clight.methods.plasticity import ShrinkPerturb
from clight.methods.regularization import LwF

ONE_EPOCH = {**TRAINER, "max_epochs": 1}


def small_moe(**kwargs) -> MoEAdapters:
    return MoEAdapters(num_experts=4, top_k=2, bottleneck=8, ae_steps=20, **kwargs)


def test_lwf_distils_the_previous_moe_model_through_its_own_ddas_routing(tmp_path):
    model, data = tiny_vit(), digits()
    moe, lwf = small_moe(), LwF()  # LwF after MoEAdapters: its copy holds the task's frozen experts and DDAS
    SequenceRunner(model, data, methods=[moe, lwf], trainer=ONE_EPOCH, run_dir=str(tmp_path / "run")).run()
    model.eval()
    x = next(iter(data.evaluation_loader(1)))["input"]
    with torch.no_grad():
        mine, copied = model.features(x), lwf.previous.model.features(x)
        routing = network_routing(model.backbone)
        routes = routing.route(routing.frozen_features(model.backbone, (x,), {}))
    assert torch.equal(mine, copied)  # the copy routes by its own copy of DDAS, exactly as the model
    assert (routes >= 0).any()  # and that routing reaches the experts (not only the pretrained model)
    assert network_routing(lwf.previous.model.backbone) is not network_routing(model.backbone)
    assert lwf.old_tasks == [0, 1]


def test_general_replay_on_full_weights_compares_with_the_pretrained_model(tmp_path):
    model, data = tiny_lm(), text()
    pretrained = model.frozen_network()
    moe, gere = small_moe(), GeneralReplay(loss="logit_kl")  # full weights: the base outputs come from a frozen copy
    SequenceRunner(model, data, methods=[moe, gere], trainer=ONE_EPOCH, run_dir=str(tmp_path / "run")).run()
    assert gere.describe()["base_outputs"] == "frozen_copy"
    batch = next(iter(data.general_loader(data.general_set, 4)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        base_logits, _ = gere.variant.base(model, batch, SimpleNamespace(rows=torch.ones(len(ids), dtype=torch.bool)))
        expected = pretrained(input_ids=ids, attention_mask=mask).logits
        with network_routing(model.net).forced(torch.zeros(len(ids), dtype=torch.long)):
            adapted = model(ids, mask)[0]
    assert torch.equal(base_logits, expected)  # the copy is the pretrained model, whatever the experts learnt
    assert not torch.allclose(adapted, expected)  # while the experts did learn


def test_shrink_and_perturb_leaves_frozen_experts_and_routers_alone(tmp_path):
    model, data = tiny_vit(), digits()
    shrink, moe, snaps = ShrinkPerturb(), small_moe(), Snapshots()
    # ShrinkPerturb first: it edits every trainable parameter at task 1's start, before MoEAdapters'
    # own on_task_start; task 0's frozen experts and its router must already be out of its reach
    SequenceRunner(model, data, methods=[shrink, moe, snaps], trainer=ONE_EPOCH, run_dir=str(tmp_path / "run")).run()
    assert shrink.applied_tasks == [1]
    after_task_0, final = snaps.states
    frozen = (
        [f"{block}.moe.experts.{e}." for block, experts in moe.history[0]["frozen_experts"].items() for e in experts]
        + [f"{block}.moe.routers.0" for block in moe.layers]
        + [f"{block}.moe.noise.0" for block in moe.layers]
    )
    kept = [k for k in final if any(k.startswith(prefix) for prefix in frozen)]
    assert kept and all(torch.equal(final[k], after_task_0[k]) for k in kept)
    trained = [k for k in final if k.startswith("heads.")]
    assert any(not torch.equal(final[k], after_task_0[k]) for k in trained)


def test_routing_shares_after_every_task_add_up_to_one_and_match_a_hand_count(tmp_path):
    from clight.compare.record import read_run
    from clight.compare.table import build_rows, to_markdown

    model, data = tiny_vit(), digits()
    moe = small_moe()
    SequenceRunner(model, data, methods=[moe], trainer=ONE_EPOCH, run_dir=str(tmp_path / "run")).run()
    recorded = moe.describe()["routing_shares"]
    assert recorded["columns"] == ["task 1", "task 2", "pretrained model"] and len(recorded["after_task"]) == 2
    assert all(abs(sum(row) - 1) < 1e-9 for matrix in recorded["after_task"] for row in matrix)
    routing, hand = network_routing(model.backbone), []
    model.eval()
    with torch.no_grad():
        for task in data.tasks:  # by hand: every test sample's route, counted
            x = torch.stack([task.test[i]["input"] for i in range(len(task.test))])
            routes = routing.route(routing.frozen_features(model.backbone, (x,), {}))
            hand.append([float((routes == t).sum()) / len(routes) for t in (0, 1, -1)])
    assert recorded["after_task"][-1] == hand
    record = read_run(tmp_path / "run")  # clight compare reads them from metrics.json
    rows, layout = build_rows([record])
    assert [rows[0]["routing_task_1_own"], rows[0]["routing_task_2_pretrained"]] == [hand[0][0], hand[1][2]]
    assert "routing: own task / pretrained (%)" in to_markdown(rows, layout)
