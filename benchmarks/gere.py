"""GeRe cost, in one run: training step time with the TM loss against plain fine-tuning on the
same batches (same tokens per step), and the replay state's memory against float32 hidden states.

    OMP_NUM_THREADS=2 python benchmarks/gere.py [--model smollm2] [--device cpu] [--steps 6] [--out DIR] [--smoke]

Targets: time ratio <= 1.05, memory ratio <= 1/16. Results: benchmarks/results/gere.json
(``gere_tiny.json`` for ``--model tiny``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from common import add_benchmark_arguments, result_file, smoke_sizes  # noqa: E402

from clight.contract import RunContext  # noqa: E402
from clight.data.text import TextTaskSequence  # noqa: E402
from clight.methods.general_replay import GeneralReplay  # noqa: E402
from clight.models.causal_lm import ContinualCausalLM  # noqa: E402


def step_time(model, optimizer, batch, with_terms: bool) -> float:
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss, outputs = model.task_loss(batch)
    if with_terms:
        for term in model.loss_terms.values():
            loss = loss + term(model, batch, outputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--general-samples", type=int, default=64)
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    smoke_sizes(args, model="tiny", steps=2, batch_size=4, max_length=64, general_samples=4)
    out = result_file(args, f"gere{'' if args.model == 'smollm2' else '_' + args.model}.json")
    torch.manual_seed(0)
    data = TextTaskSequence(
        tasks=["rt_sentiment"],
        tokenizer="char" if args.model == "tiny" else args.model,
        max_length=args.max_length,
        max_train_per_task=64,
        max_test_per_task=4,
        general_samples=args.general_samples,
        general_max_length=args.max_length,
        heldout_general=0,
        general_mode="per_batch",
        general_per_batch=args.batch_size // 2,
        batch_size=args.batch_size // 2,
    )
    model = ContinualCausalLM(args.model)
    gere = GeneralReplay("tm")
    t0 = time.perf_counter()
    gere.setup_sequence(model, data, RunContext(run_dir=Path(tempfile.mkdtemp())))
    gere.ensure_reference(model)  # the thresholds and states (in a run: at the first fit's start)
    setup_s = time.perf_counter() - t0
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-6)
    batches = [{k: v.to(args.device) for k, v in b.items()} for b in data.train_dataloader()][: args.steps + 1]
    # plain fine-tuning on exactly the same tokens: the general rows become ordinary LM samples, no TM term
    plain = [{**b, "is_general": torch.zeros_like(b["is_general"])} for b in batches]
    times = {"gere": [], "plain": []}
    for i, (b_gere, b_plain) in enumerate(zip(batches, plain)):
        order = (
            [("gere", b_gere, True), ("plain", b_plain, False)] if i % 2 else [("plain", b_plain, False), ("gere", b_gere, True)]
        )
        for name, batch, terms in order:
            t = step_time(model, optimizer, batch, terms)
            if i > 0:  # the first pair warms up
                times[name].append(t)
    # the TM term alone (gather + unpack + loss, forward and backward through it), on saved outputs:
    # an additive overhead that is less sensitive to a busy machine than the difference of two step times
    term_s = []
    for batch in batches[1:]:
        with torch.no_grad():
            _, outputs = model.task_loss(batch)
        hidden = outputs["hidden"].detach().requires_grad_(True)
        outputs = {**outputs, "hidden": hidden}
        start = time.perf_counter()
        model.loss_terms["gere_tm"](model, batch, outputs).backward()
        if hidden.is_cuda:
            torch.cuda.synchronize()
        term_s.append(time.perf_counter() - start)
    mem = gere.memory_bytes()
    gere_s, plain_s = statistics.median(times["gere"]), statistics.median(times["plain"])
    result = {
        "time_ratio_gere_over_plain": gere_s / plain_s,
        "memory_ratio_packed_over_float32": mem["packed_states"] / mem["float32_states"],
        "targets": {"time_ratio_max": 1.05, "memory_ratio_max": 1 / 16},
        "tm_term_over_plain_step": statistics.median(term_s) / plain_s,
        "median_step_s": {"gere": gere_s, "plain": plain_s, "tm_term_alone": statistics.median(term_s)},
        "step_s": times,
        "memory_bytes": mem,
        "general_tokens": int(gere.states.offsets[-1]),
        "hidden_size": gere.states.dims,
        "threshold_setup_s": setup_s,
        "setup": {
            "model": args.model,
            "device": args.device,
            "batch_size": args.batch_size,
            "general_per_batch": args.batch_size // 2,
            "max_length": args.max_length,
            "tokens_per_step": [int(b["attention_mask"].sum()) for b in batches[1:]],
            "torch_threads": torch.get_num_threads(),
            "full_fine_tuning": True,
            "smoke": args.smoke,
        },
    }
    out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "time_ratio_gere_over_plain",
                    "tm_term_over_plain_step",
                    "memory_ratio_packed_over_float32",
                    "median_step_s",
                )
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
