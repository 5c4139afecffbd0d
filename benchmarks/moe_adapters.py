"""MoE adapters' cost, in one run: training step time and trainable parameters per task against
LoRA on the same model and batches, and DDAS's overhead at evaluation.

The MoE model (the config's settings: 8 experts, top-2, bottleneck 64, 2 frozen per task) and
the LoRA model (r 8 on q/k/v/o, as the GeRe LoRA configs) are built in one process; their
training steps (forward, backward, AdamW step) alternate, so load from other processes hits both
alike. Between tasks the MoE model freezes the experts each task used most and fits the task's
DDAS autoencoder, as in a run, so each task trains what it would. Evaluation (candidate-answer
scoring of a test batch, ``evaluation_counts``) alternates three ways: DDAS routing each sample
(what a run does: one extra forward with the adapters off, then the routed forward), the task
id given (routes forced to the sample's task: no DDAS), and the LoRA model. Medians; ratios first.

    OMP_NUM_THREADS=2 python benchmarks/moe_adapters.py                 # SmolLM2-135M (headline)
    OMP_NUM_THREADS=2 python benchmarks/moe_adapters.py --model tiny    # a tiny random Llama

Results: ``moe_adapters.json`` (``moe_adapters_tiny.json`` for ``--model tiny``) in ``--out DIR``
(default benchmarks/results); ``--smoke``: the tiny model, one step, seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from common import add_benchmark_arguments, result_file, smoke_sizes  # noqa: E402

from clight.contract import RunContext  # noqa: E402
from clight.data.text import TextTaskSequence  # noqa: E402
from clight.methods.moe_adapters import MoEAdapters, network_routing  # noqa: E402
from clight.models.causal_lm import ContinualCausalLM  # noqa: E402

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_step(model, optimizer, batch) -> None:
    loss, _ = model.task_loss(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trainable(model) -> int:
    return sum(p.numel() for p in model.trainable_parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per task and model")
    parser.add_argument("--eval-rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    smoke_sizes(args, model="tiny", steps=1, eval_rounds=1, batch_size=4)
    out = result_file(args, f"moe_adapters{'' if args.model == 'smollm2' else '_' + args.model}.json")
    torch.manual_seed(0)
    data = TextTaskSequence(
        tasks=["rt_sentiment", "tweet_sentiment", "rt_subjectivity"],
        tokenizer="char" if args.model == "tiny" else args.model,
        max_length=args.max_length,
        max_train_per_task=args.batch_size * (args.steps + 1),
        max_test_per_task=args.batch_size,
        general_samples=4,
        heldout_general=0,
        general_mode="none",
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
    )
    moe_model = ContinualCausalLM(args.model)
    lora_model = ContinualCausalLM(args.model, lora=LORA)
    method = MoEAdapters(num_experts=8, top_k=2, bottleneck=64, freeze_top=2, ddas_samples=32, ae_steps=100)
    for model in (moe_model, lora_model):
        model.setup_sequence(data.info)
    method.setup_sequence(moe_model, data, RunContext(seed=0))
    # The hooks are driven by hand (the steps are timed outside Lightning's loop), with the
    # Trainer of a one-device fit: the callback reads its strategy (sharded or not).
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    steps: dict = {"moe": [], "lora": []}
    params: dict = {"moe": [], "lora": []}
    for task in data.tasks:
        data.set_task(task.index)
        for model in (moe_model, lora_model):
            model.on_task_start(task)
            model.train()
        method.on_task_start(moe_model, task)
        method.on_fit_start(trainer, moe_model)
        optimizers = {
            name: torch.optim.AdamW(m.trainable_parameters(), lr=1e-4) for name, m in (("moe", moe_model), ("lora", lora_model))
        }
        params["moe"].append(trainable(moe_model))
        params["lora"].append(trainable(lora_model))
        times: dict = {"moe": [], "lora": []}
        for i, batch in enumerate(data.train_dataloader()):

            def moe_step(batch=batch, i=i, optimizers=optimizers):
                method.on_train_batch_start(trainer, moe_model, batch, i)
                train_step(moe_model, optimizers["moe"], batch)
                method.on_train_batch_end(trainer, moe_model, None, batch, i)

            pair = [("moe", moe_step), ("lora", lambda b=batch, o=optimizers["lora"]: train_step(lora_model, o, b))]
            for name, step in pair if i % 2 else pair[::-1]:
                t = timed(step)
                if i > 0:  # the first pair warms up
                    times[name].append(t)
        for name in times:
            steps[name].append(times[name])
        method.on_task_end(moe_model, task)
        print(
            f"task {task.index}: trainable moe {params['moe'][-1]:,} lora {params['lora'][-1]:,}; "
            f"step moe {statistics.median(times['moe']):.3f} s lora {statistics.median(times['lora']):.3f} s",
            flush=True,
        )
    # evaluation: DDAS per sample, the task id given, LoRA
    moe_model.eval()
    lora_model.eval()
    routing = network_routing(moe_model.net)
    batches = [next(iter(data.evaluation_loader(t))) for t in range(data.num_tasks)]
    evals: dict = {"ddas": [], "task_id_given": [], "lora": []}
    routed_to_own_task = []
    with torch.no_grad():
        for r in range(args.eval_rounds + 1):
            for t, batch in enumerate(batches):
                # one route per sample: scoring runs each prompt once, and its candidates' forward
                # repeats the prompt's (held) routes
                samples = len(batch["prompt_input_ids"])

                def given(batch=batch, t=t, samples=samples):
                    with routing.forced(torch.full((samples,), t)):
                        moe_model.evaluation_counts(batch)

                arms = [
                    ("ddas", lambda b=batch: moe_model.evaluation_counts(b)),
                    ("task_id_given", given),
                    ("lora", lambda b=batch: lora_model.evaluation_counts(b)),
                ]
                for name, fn in arms[r % 3 :] + arms[: r % 3]:
                    t_s = timed(fn)
                    if r > 0:
                        evals[name].append(t_s)
                if r == 0:
                    ids, mask = batch["input_ids"], batch["attention_mask"]
                    from clight.models.causal_lm import prompt_tokens, route_by

                    with route_by(prompt_tokens(batch["labels"], mask)):
                        routes = routing.route(
                            routing.frozen_features(moe_model.net, (), {"input_ids": ids, "attention_mask": mask})
                        )
                    routed_to_own_task.append(float((routes == t).float().mean()))
    med = {k: statistics.median(v) for k, v in evals.items()}
    step_med = {k: [statistics.median(v) for v in steps[k]] for k in steps}
    result = {
        "step_time_ratio_moe_over_lora_per_task": [m / lo for m, lo in zip(step_med["moe"], step_med["lora"])],
        "trainable_ratio_moe_over_lora_per_task": [m / lo for m, lo in zip(params["moe"], params["lora"])],
        "eval_ratio_ddas_over_task_id_given": med["ddas"] / med["task_id_given"],
        "eval_ratio_ddas_over_lora": med["ddas"] / med["lora"],
        "trainable_parameters_per_task": params,
        "median_step_s_per_task": step_med,
        "median_eval_batch_s": med,
        "step_s": steps,
        "eval_batch_s": evals,
        "ddas_routed_to_own_task_per_task": routed_to_own_task,
        # activate-freeze: experts frozen by each task that no earlier task had frozen (a task's top
        # picks may already be frozen), and all frozen experts after it
        "newly_frozen_experts_per_task": [h["newly_frozen"] for h in method.history],
        "frozen_experts_after_each_task": [h["frozen_total"] for h in method.history],
        "setup": {
            "model": args.model,
            "device": "cpu",
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "timed_steps_per_task": args.steps,
            "smoke": args.smoke,
            "eval_rounds": args.eval_rounds,
            "torch_threads": torch.get_num_threads(),
            "moe": {"num_experts": 8, "top_k": 2, "bottleneck": 64, "freeze_top": 2, "blocks": len(method.layers)},
            "lora": LORA,
            "parameters": sum(p.numel() for p in lora_model.net.base_model.model.parameters()),
        },
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in list(result)[:4]}, indent=2))


if __name__ == "__main__":
    main()
