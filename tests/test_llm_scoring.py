"""Language-model training and scoring: the loss covers answer tokens only (against a hand
computation); left-padded batched greedy generation equals one-by-one generation without a cache;
exact match and ROUGE-L equal hand-computed values; candidates scored from one prompt pass equal
the full-sequence scores; the scores reach metrics.json and clight compare, grouped over orders."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from contract_examples import text, tiny_lm
from llm_fixtures import PROMPT_COMPLETION, cl_benchmark, jsonl, lm_config

from clight.cli import main
from clight.contract import RunContext
from clight.data.text import InstructionSequence, InstructionTask
from clight.metrics.text import exact_match, match_label, normalize_answer, rouge_l
from clight.models.lm_decoding import cached_candidate_scores, cut_at_stop, greedy_generate
from clight.models.lm_scoring import generation_counts


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return cl_benchmark(tmp_path_factory.mktemp("bench") / "bench")


@pytest.fixture(scope="module")
def benchmark_data(bench):
    return InstructionSequence(root=str(bench), order="all", tokenizer="char", max_length=300, batch_size=4, eval_batch_size=6)


# -- training: the loss ------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_on", ["answer", "all"])
def test_the_loss_is_the_mean_nll_of_the_answer_tokens_only(tmp_path, loss_on):
    path = jsonl(tmp_path / "p.jsonl", PROMPT_COMPLETION * 2)
    data = InstructionSequence([InstructionTask("pc", "prompt_completion", path=str(path))], tokenizer="char", loss_on=loss_on)
    data.set_task(0)
    model = tiny_lm().eval()
    batch = data.train_collate_fn()([data.tasks[0].train[i] for i in range(3)])
    loss, _ = model.task_loss(batch)
    total, count = 0.0, 0
    for i in range(3):  # each sample alone, unpadded: -log p(token | everything before it), over the answer tokens
        item = data.tasks[0].train[i]
        ids = item["prompt"] + item["answer"]
        logp = F.log_softmax(model.net(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        first = 1 if loss_on == "all" else len(item["prompt"])  # (with "all", the prompt is in item["answer"])
        for position in range(first, len(ids)):
            total -= float(logp[position - 1, ids[position]])
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    if loss_on == "answer":
        assert count == sum(len(data.tasks[0].train[i]["answer"]) for i in range(3))  # answers only, EOS included


# -- generation ---------------------------------------------------------------------------------------
def _greedy_without_cache(net, prompt: list[int], steps: int, stop: list[int]) -> list[int]:
    ids, out = list(prompt), []
    for _ in range(steps):
        token = int(net(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if token in stop:
            break
        out.append(token)
        ids.append(token)
    return out


def test_left_padded_batched_greedy_generation_equals_one_by_one_generation():
    model = tiny_lm().eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in (3, 9, 5, 7)]
    ids = torch.zeros(4, 9, dtype=torch.long)
    mask = torch.zeros(4, 9, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, 9 - len(p) :], mask[i, 9 - len(p) :] = torch.tensor(p), 1
    stop = [2]  # the char tokenizer's EOS
    with torch.no_grad():
        expected = [_greedy_without_cache(model.net, p, 6, stop) for p in prompts]
        got = greedy_generate(model.net, ids, mask, 6, stop, 0)
    assert got == expected
    assert len(expected[0]) < 6 and any(len(e) == 6 for e in expected)  # one row stopped at EOS, one ran to the limit


def test_exact_match_and_rouge_l_equal_hand_computed_values():
    assert normalize_answer("  The Cat,  sat!\n") == "the cat sat"  # lower case, no punctuation, one space; articles stay
    assert exact_match("Sports.", "sports") == 1.0 and exact_match("Sport", "Sports") == 0.0
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = "the cat on the mat": 5 of 6 tokens each way
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == [pytest.approx(5 / 6, abs=1e-4)]
    # "a b c d" vs "a c e": LCS "a c"; P = 2/4, R = 2/3, F = 2PR / (P + R) = 4/7
    assert rouge_l(["a b c d", "x"], ["a c e", "y"]) == [pytest.approx(4 / 7, abs=1e-4), 0.0]
    assert match_label("Office Holder.", ["Office", "Office Holder"]) == 1
    assert match_label("office please", ["Office", "Office Holder"]) == 0 and match_label("none", ["A", "B"]) == -1
    assert cut_at_stop([5, 6, 2, 7], [2]) == [5, 6]


def test_generation_counts_are_the_hand_scored_predictions(benchmark_data):
    model = tiny_lm(seed=1, evaluation="generate", max_new_tokens=5).eval()
    batch = next(iter(benchmark_data.evaluation_loader(0)))
    tok = benchmark_data.tokenizer
    counts = generation_counts(model, batch)
    generated = greedy_generate(model.net, batch["prompt_input_ids"], batch["prompt_attention_mask"], 5, [tok.eos_token_id], 0)
    predictions = [tok.decode(g, skip_special_tokens=True).strip() for g in generated]
    gold = [benchmark_data.tasks[0].info["answers"][t] for t in batch["target"].tolist()]
    assert counts["exact_match"].item() == sum(exact_match(p, g) for p, g in zip(predictions, gold))
    assert counts["rouge_l"].item() == pytest.approx(sum(rouge_l(predictions, gold)))
    labels = benchmark_data.tasks[0].info["answers"]
    assert counts["label_accuracy"].item() == sum(
        match_label(p, labels) == t for p, t in zip(predictions, batch["target"].tolist())
    )
    assert counts["total"].item() == counts["label_accuracy_total"].item() == len(predictions)


# -- likelihood: one pass per prompt ------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True])
def test_cached_candidate_scores_equal_full_sequence_scores(benchmark_data, lora):
    model = tiny_lm(lora={"r": 4, "target_modules": ["q_proj", "v_proj"]} if lora else None).eval()
    if lora:  # LoRA's B starts at zero: move it so the adapters change the scores
        with torch.no_grad():
            for name, p in model.net.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    for data, task in ((benchmark_data, 0), (benchmark_data, 2), (text(), 1)):
        batch = next(iter(data.evaluation_loader(task)))
        reference = model.choice_scores(batch)
        cached = cached_candidate_scores(model.net, batch)
        assert torch.allclose(cached, reference, atol=1e-5, rtol=0), (cached - reference).abs().max()
        counts = model.evaluation_counts(batch)
        assert counts["correct"].item() == int((reference.argmax(1) == batch["target"]).sum())
    model.length_normalize = True
    assert torch.allclose(cached_candidate_scores(model.net, batch, True), model.choice_scores(batch), atol=1e-5, rtol=0)


def test_moe_routes_of_a_prompt_hold_for_its_candidates_and_generated_tokens():
    from clight.methods.moe_adapters import MoEAdapters, network_routing

    model, data = tiny_lm().eval(), text()
    moe = MoEAdapters(num_experts=3, bottleneck=8, ae_steps=20, threshold=1e9)  # every sample routed to task 0's experts
    moe.setup_sequence(model, data, RunContext())
    moe.on_task_start(model, data.tasks[0])
    moe.on_task_end(model, data.tasks[0])
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if ".moe." in name:
                p.normal_(0, 0.3)  # experts that change the outputs
    routing, seen = network_routing(model.net), []
    decide = routing.decide
    routing.decide = lambda *a: (decide(*a), seen.append(routing.last_rows[moe.key]))[0]
    batch = next(iter(data.evaluation_loader(1)))
    reference = model.choice_scores(batch)
    seen.clear()
    cached = cached_candidate_scores(model.net, batch)
    assert torch.allclose(cached, reference, atol=1e-5, rtol=0)
    k = batch["candidate_ids"].shape[1]
    assert len(seen) == 2 and (seen[0] == 0).all() and torch.equal(seen[1], seen[0].repeat_interleave(k))
    seen.clear()
    greedy_generate(model.net, batch["prompt_input_ids"], batch["prompt_attention_mask"], 3, [], 0)
    assert len(seen) == 3 and all(torch.equal(rows, seen[0]) for rows in seen)


# -- through the runner and clight compare -------------------------------------------------------------
def test_generation_scores_reach_metrics_and_compare_grouped_over_orders(bench, tmp_path, capsys):
    configs = []
    for order in ("order1", "order2"):
        data = f"    root: {bench}\n    order: {order}\n    tokenizer: char\n    max_length: 200\n    max_test_per_task: 4"
        configs.append(lm_config(tmp_path / f"gen_{order}.yaml", tmp_path / "runs" / order, data))
    assert main(["compare", *map(str, configs), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "runs" / "order1" / "metrics.json").read_text())
    manifest = json.loads((tmp_path / "runs" / "order1" / "manifest.json").read_text())
    assert set(metrics["scores"]) == {"exact_match", "rouge_l", "label_accuracy"}
    assert metrics["scores"]["rouge_l"]["matrix"] == manifest["matrices"]["rouge_l"]
    assert metrics["accuracy_matrix"] == manifest["matrices"]["correct"] == manifest["matrices"]["exact_match"]
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["method"] for r in table["groups"]] == ["gen"] and table["groups"][0]["runs"] == 2
    by_order = {r["method"]: r for r in table["rows"]}
    news = [by_order[f"gen_{o}"]["task_news"] for o in ("order1", "order2")]
    assert table["groups"][0]["task_news"] == pytest.approx(sum(news) / 2)
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "| method | news | mood | AA | BWT | FWT | forgetting | EM | ROUGE-L | label acc. |" in markdown
    assert "## Mean ± standard deviation over seeds and task orders" in markdown and "| gen | 2 |" in markdown


def test_every_score_matrix_is_summarised_like_accuracy():
    from clight.metrics.scores import summarize_scores

    nan = float("nan")
    matrices = {
        "correct": [[1.0, 0.0], [1.0, 1.0]],
        "rouge_l": [[0.5, 0.1], [0.4, 0.6]],
        "label_accuracy": [[0.5, nan], [0.25, nan]],  # the second task has no labels
    }
    scores = summarize_scores(matrices, {"rouge_l": [0.1, 0.2]})
    assert set(scores) == {"rouge_l", "label_accuracy"}
    rouge = scores["rouge_l"]
    assert rouge["average_accuracy"] == pytest.approx(0.5) and rouge["backward_transfer"] == pytest.approx(0.4 - 0.5)
    assert rouge["forward_transfer"] == pytest.approx(0.1 - 0.2) and rouge["matrix"] == matrices["rouge_l"]
    assert scores["label_accuracy"]["average_accuracy"] == 0.25 and scores["label_accuracy"]["matrix"][1] == [0.25, None]
