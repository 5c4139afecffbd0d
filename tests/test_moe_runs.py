"""MoE adapters through the runner: activate-freeze keeps frozen parameters bit-identical, DDAS
sends general text to the pretrained model (bit for bit, also for perplexity), every candidate
answer of a question is routed alike, and a resumed run ends in the same state."""

import copy
import math

import pytest
import torch
from contract_examples import TRAINER, digits, tiny_lm
from test_moe_adapters import randomise_experts, set_up, tiny_vit

from clight import SequenceRunner
from clight.contract import RunContext
from clight.data.text import TextCollator, TextTaskSequence
from clight.methods import ContinualCallback
from clight.methods.general_replay import GeneralPerplexity
from clight.methods.moe_adapters import MoEAdapters, moe_blocks, network_routing
from clight.models.causal_lm import prompt_tokens, route_by, token_nll


def long_text(tasks=("rt_sentiment", "rt_subjectivity")) -> TextTaskSequence:
    """Prompts long enough (characters) to differ from sample to sample."""
    return TextTaskSequence(
        tasks=list(tasks),
        tokenizer="char",
        max_length=160,
        max_train_per_task=40,
        max_test_per_task=6,
        general_samples=8,
        general_max_length=96,
        heldout_general=6,
        batch_size=8,
        eval_batch_size=8,
    )


ONE_EPOCH = {**TRAINER, "max_epochs": 1}


class Snapshots(ContinualCallback):
    """The model's state after every task (placed after MoEAdapters, so after its freezing)."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def on_task_end(self, module, task) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})


@pytest.mark.parametrize("family", ["causal_lm", "vit"])
def test_activate_freeze_keeps_what_a_task_froze_bit_identical(tmp_path, family):
    if family == "causal_lm":
        data = TextTaskSequence(
            tasks=["rt_sentiment", "rt_subjectivity", "tweet_sentiment"],
            tokenizer="char",
            max_length=64,
            max_train_per_task=16,
            max_test_per_task=4,
            general_samples=4,
            heldout_general=0,
            batch_size=8,
        )
        model, network = tiny_lm(), "net."
    else:
        model, data, network = tiny_vit(), digits(num_tasks=3), "backbone."
    method, snaps = MoEAdapters(num_experts=6, top_k=2, bottleneck=8, freeze_top=2, ae_steps=30), Snapshots()
    SequenceRunner(model, data, methods=[method, snaps], trainer=ONE_EPOCH, run_dir=str(tmp_path / "run")).run()
    history = method.describe()["history"]
    assert [h["task"] for h in history] == [0, 1, 2]
    moved = 0
    for t, entry in enumerate(history):
        assert entry["frozen_experts"] and all(len(e) <= 2 for e in entry["frozen_experts"].values())
        frozen_keys = [
            k
            for block, experts in entry["frozen_experts"].items()
            for e in experts
            for k in snaps.states[t]
            if k.startswith(f"{block}.moe.experts.{e}.")
        ]
        frozen_keys += [k for k in snaps.states[t] if k.endswith((f".routers.{t}", f".noise.{t}"))]
        assert frozen_keys
        for later in snaps.states[t + 1 :]:
            for k in frozen_keys:
                assert torch.equal(later[k], snaps.states[t][k]), k
        if t + 1 < len(snaps.states):  # what was not frozen did train in the next task
            ever_frozen = {(b, e) for h in history[: t + 1] for b, es in h["frozen_experts"].items() for e in es}
            free = [
                k
                for k in snaps.states[t]
                if ".moe.experts." in k
                and ".up." in k
                and (k.split(".moe.")[0], int(k.split(".experts.")[1].split(".")[0])) not in ever_frozen
            ]
            moved += sum(not torch.equal(snaps.states[t + 1][k], snaps.states[t][k]) for k in free)
    assert moved > 0
    for later_router in (k for k in snaps.states[0] if k.endswith(".routers.2")):  # task 2's router waits for task 2
        assert torch.equal(snaps.states[1][later_router], torch.zeros_like(snaps.states[1][later_router]))
    for k, v in snaps.states[0].items():  # the pretrained weights never move
        if ".moe." not in k and "moe_routing" not in k and k.startswith(network):
            assert torch.equal(snaps.states[-1][k], v), k


def fitted_lm(data):
    """A tiny Llama with non-zero experts and task 0's DDAS fitted (as after training task 0)."""
    model = tiny_lm()
    reference = copy.deepcopy(model.net).eval()
    method = set_up(model, data, MoEAdapters(num_experts=4, bottleneck=8, ae_steps=200))
    for layer in method.layers.values():
        randomise_experts(layer)
    method.on_task_end(model, data.tasks[0])
    return model.eval(), reference, method


def test_ddas_sends_general_text_to_the_pretrained_model_inside_a_mixed_batch():
    data = long_text()
    model, reference, method = fitted_lm(data)
    items = [data.tasks[0].test[i] for i in range(6)] + [data.heldout_set[i] for i in range(6)]
    batch = TextCollator(data.tokenizer.pad_token_id)(items)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    routing = network_routing(model.net)
    with torch.no_grad(), route_by(prompt_tokens(batch["labels"], mask)):
        routes = routing.route(routing.frozen_features(model.net, (), {"input_ids": ids, "attention_mask": mask}))
        logits = model(ids, mask)[0]
    expected = reference(input_ids=ids, attention_mask=mask).logits
    assert (routes[6:] == -1).all() and (routes[:6] == 0).sum() >= 3
    for i, route in enumerate(routes.tolist()):
        assert torch.equal(logits[i], expected[i]) == (route == -1), (i, route)


def test_general_perplexity_is_measured_through_ddas(tmp_path):
    data = long_text()
    model, reference, method = fitted_lm(data)
    meter = GeneralPerplexity(batch_size=3)
    meter.setup_sequence(model, data, RunContext(tmp_path))
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.general_loader(data.heldout_set, 3):
            nll, valid = token_nll(
                reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            )
            total, count = total + float((nll * valid).sum()), count + int(valid.sum())
    assert meter.history[0] == math.exp(total / count)  # every held-out text went to the pretrained model
    with network_routing(model.net).forced(torch.zeros(3, dtype=torch.long)):
        forced = model.perplexity(data.general_loader(data.heldout_set, 3))
    assert forced != meter.history[0]


def test_every_candidate_answer_of_a_question_is_routed_alike():
    data = long_text()
    model, _, _ = fitted_lm(data)
    batch = next(iter(data.evaluation_loader(0)))
    b, k, length = batch["choice_input_ids"].shape
    ids, mask = batch["choice_input_ids"].view(b * k, length), batch["choice_attention_mask"].view(b * k, length)
    routing = network_routing(model.net)
    call = lambda: routing.frozen_features(model.net, (), {"input_ids": ids, "attention_mask": mask}).view(b, k, -1)  # noqa: E731
    with route_by(prompt_tokens(batch["choice_labels"].view(b * k, length), mask)):
        by_prompt = call()
    whole = call()
    assert all(torch.equal(by_prompt[i, 0], by_prompt[i, j]) for i in range(b) for j in range(k))
    assert not torch.equal(whole[:, 0], whole[:, 1])


class Killed(RuntimeError):
    pass


class KillAt(ContinualCallback):
    def __init__(self, task: int, batch: int) -> None:
        self.task, self.batch = task, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.current_task == self.task and trainer.current_epoch == 0 and batch_idx == self.batch:
            raise Killed("killed")


def test_resumed_run_ends_with_the_same_experts_routers_and_ddas(tmp_path):
    def run(run_dir, extra=(), resume=False):
        torch.manual_seed(0)
        model, data = tiny_lm(), long_text()
        method = MoEAdapters(num_experts=4, bottleneck=8, ae_steps=40)
        SequenceRunner(model, data, methods=[method, *extra], trainer=ONE_EPOCH, run_dir=str(run_dir), resume=resume).run()
        return model, data, method

    model, data, method = run(tmp_path / "a")
    with pytest.raises(Killed):
        run(tmp_path / "b", extra=[KillAt(task=1, batch=0)])
    resumed, _, resumed_method = run(tmp_path / "b", resume=True)
    assert resumed_method.history == method.history and len(method.history) == 2
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    selector = network_routing(resumed.net).selectors["0"]
    assert selector.fitted.all() and torch.isfinite(selector.thresholds).all()
    assert all(block.moe.frozen.any() for block in moe_blocks(resumed.net).values())
    batch = next(iter(data.evaluation_loader(1)))
    model.eval(), resumed.eval()
    assert torch.equal(model.evaluation_counts(batch)["correct"], resumed.evaluation_counts(batch)["correct"])
