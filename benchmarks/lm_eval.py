"""Language-model evaluation cost, side by side in one run:

1. likelihood scoring of the configs/lm_cpu test sets (SmolLM2-135M-Instruct, the three offline
   text tasks, 100 test items each, batches of 32): every candidate run with its whole prompt
   (``ContinualCausalLM.choice_scores``, before) against one pass per prompt with the candidates
   scored from its cache (``cached_candidate_scores``, now); the largest score difference too;
2. greedy generation on the same prompts: clight's ``greedy_generate`` (transformers' ``generate``
   on left-padded prompts, cut at the stop tokens) against plain ``generate`` with the same
   inputs, as generated tokens per second; and against generating one prompt at a time (how
   ``evaluation: generate`` ran before).

    OMP_NUM_THREADS=1 python benchmarks/lm_eval.py [--repeats 3] [--out benchmarks/results]
    python benchmarks/lm_eval.py --smoke --out /tmp/lm_eval      # tiny random Llama, seconds

Targets: cached scoring >= 2x faster; generation >= 0.8x plain generate's tokens/s.
Medians of ``repeats`` interleaved rounds, by wall time or (``--clock cpu``) the process's CPU time. Results: OUT/lm_eval.json (lm_eval_smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from clight.data.text import TextTaskSequence
from clight.models.causal_lm import ContinualCausalLM
from clight.models.lm_decoding import cached_candidate_scores, greedy_generate, stop_tokens

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}  # --clock: process CPU time is steadier on a shared machine
clock = CLOCK["wall"]


def _timed(fn) -> tuple[float, object]:
    start = clock()
    out = fn()
    return clock() - start, out


def likelihood_round(model, batches) -> dict:
    full, cached, diff = 0.0, 0.0, 0.0
    for batch in batches:
        t_full, reference = _timed(lambda b=batch: model.choice_scores(b))
        t_cached, scores = _timed(lambda b=batch: cached_candidate_scores(model.net, b))
        full, cached = full + t_full, cached + t_cached
        finite = torch.isfinite(reference)
        diff = max(diff, float((scores[finite] - reference[finite]).abs().max()))
        assert torch.equal(scores.argmax(1), reference.argmax(1)) or diff < 1e-4
    return {"full_s": full, "cached_s": cached, "max_abs_diff": diff}


def generation_round(model, batch, new_tokens: int, one_by_one: bool) -> dict:
    tok = model.tokenizer
    stop = stop_tokens(model.net, tok)
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    t_clight, ours = _timed(lambda: greedy_generate(model.net, ids, mask, new_tokens, stop, tok.pad_token_id))

    def plain():
        with torch.no_grad():
            return model.net.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )

    t_plain, out = _timed(plain)
    generated = sum(len(row) for row in ours)
    result = {
        "clight_s": t_clight,
        "plain_s": t_plain,
        "tokens": generated,
        "same_tokens": ours == _cut(out[:, ids.shape[1] :], stop),
    }
    if one_by_one:

        def single():
            rows = []
            for row, m in zip(ids, mask):
                p = row[m.bool()].unsqueeze(0)
                rows += greedy_generate(model.net, p, torch.ones_like(p), new_tokens, stop, tok.pad_token_id)
            return rows

        result["one_by_one_s"], singles = _timed(single)
        result["one_by_one_same_tokens"] = singles == ours
    return result


def _cut(out: torch.Tensor, stop: list[int]) -> list[list[int]]:
    from clight.models.lm_decoding import cut_at_stop

    return [cut_at_stop(row, stop) for row in out.tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random Llama and char tokenizer: seconds")
    parser.add_argument("--out", default="benchmarks/results", help="folder for lm_eval.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-items", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall", help="wall time, or this process's CPU time")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    torch.manual_seed(0)
    model_name, tokenizer = ("tiny", "char") if args.smoke else ("smollm2", "smollm2")
    test_items = 8 if args.smoke else args.test_items
    data = TextTaskSequence(
        tasks=["rt_sentiment", "tweet_sentiment", "rt_subjectivity"],
        tokenizer=tokenizer,
        max_length=48,
        max_train_per_task=8,
        max_test_per_task=test_items,
        general=None,
        eval_batch_size=32,
    )
    model = ContinualCausalLM(model_name).eval()
    batches = [b for t in range(data.num_tasks) for b in data.evaluation_loader(t)]
    generation_batch = batches[0]
    repeats = 1 if args.smoke else args.repeats
    rounds = []
    for r in range(repeats):
        rounds.append(
            {
                "likelihood": likelihood_round(model, batches),
                "generation": generation_round(model, generation_batch, 4 if args.smoke else args.new_tokens, one_by_one=r == 0),
            }
        )
    like = [x["likelihood"] for x in rounds]
    gen = [x["generation"] for x in rounds]
    full, cached = statistics.median(x["full_s"] for x in like), statistics.median(x["cached_s"] for x in like)
    ours, plain = statistics.median(x["clight_s"] for x in gen), statistics.median(x["plain_s"] for x in gen)
    tokens = gen[0]["tokens"]
    result = {
        "likelihood_speedup_cached_vs_full": full / cached,
        "generation_tokens_per_s_ratio_clight_vs_plain_generate": plain / ours,
        "generation_speedup_batched_vs_one_by_one": gen[0]["one_by_one_s"] / ours,
        "likelihood": {
            "full_sequence_s": full,
            "cached_s": cached,
            "max_abs_score_difference": max(x["max_abs_diff"] for x in like),
            "samples": sum(len(b["target"]) for b in batches),
            "candidates": sum(int(b["choice_valid"].sum()) for b in batches),
        },
        "generation": {
            "batch": len(generation_batch["target"]),
            "max_new_tokens": 4 if args.smoke else args.new_tokens,
            "generated_tokens": tokens,
            "clight_tokens_per_s": tokens / ours,
            "plain_generate_tokens_per_s": tokens / plain,
            "one_by_one_tokens_per_s": tokens / gen[0]["one_by_one_s"],
            "same_tokens_as_plain_generate": all(x["same_tokens"] for x in gen),
            "same_tokens_one_by_one": gen[0]["one_by_one_same_tokens"],
        },
        "setup": {
            "model": model_name,
            "tasks": [t.name for t in data.tasks],
            "test_items_per_task": test_items,
            "max_length": 48,
            "eval_batch_size": 32,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "device": "cpu",
            "clock": args.clock,
            "smoke": args.smoke,
            "rounds": rounds,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("lm_eval_smoke.json" if args.smoke else "lm_eval.json")
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "setup"}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
