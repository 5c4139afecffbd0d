"""SPU cost, in one run: training step time with SPU against full fine-tuning (same model, same
batches, both in a Lightning Trainer, arms alternating in rounds, medians), the optimizer state
of both, SPU's own memory (the task-start copy of the candidate weights, the masks), the time of
SPU's per-step work alone, and the one-off importance pass as a share of one task's training.

    OMP_NUM_THREADS=2 python benchmarks/spu.py [--model smollm2|tiny] [--rounds 6] [--steps 3] [--out DIR] [--smoke]

Target: step time ratio <= 1.05. Results: spu.json (``spu_tiny.json`` for ``--model tiny``) in
``--out DIR`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from common import add_benchmark_arguments, result_file, smoke_sizes  # noqa: E402

from clight.contract import RunContext  # noqa: E402
from clight.data.text import TextTaskSequence  # noqa: E402
from clight.methods.selective_update import SPU  # noqa: E402
from clight.models.causal_lm import ContinualCausalLM  # noqa: E402


class StepTimer(Callback):
    """Wall time of every training batch (forward, backward, optimizer step and the callbacks around it)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._sync(module)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync(module)
        self.times.append(time.perf_counter() - self.start)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values())


def fit(model, data, callbacks, steps: int, args) -> L.Trainer:
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=steps,
        precision=args.precision,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    return trainer


def spu_work_alone(model, spu: SPU, batch: dict, repeats: int = 5) -> float:
    """Median time of SPU's per-step work (mask the gradients, restore the masked-out entries) on real gradients."""
    spu._device_masks = {n: m.to(model.device) for n, m in spu.masks.items()}
    spu._anchors = {n: p.detach().clone() for n, p in spu.selection.masked.items()}
    model.task_loss({k: v.to(model.device) for k, v in batch.items()})[0].backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        spu.variant.mask_gradients(spu.selection.masked, spu._device_masks)
        spu.variant.after_step(spu.selection.masked, spu._device_masks, spu._anchors)
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    spu._release()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm and round (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--task-steps", type=int, default=112, help="steps of one task in the config (2000 x 0.9 / 16)")
    parser.add_argument("--task-epochs", type=int, default=1)
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    smoke_sizes(args, model="tiny", rounds=2, steps=1, batch_size=2)
    out = result_file(args, f"spu{'' if args.model == 'smollm2' else '_' + args.model}.json")
    data = TextTaskSequence(
        tasks=["rt_sentiment"],
        tokenizer="char" if args.model == "tiny" else args.model,
        max_length=args.max_length,
        max_train_per_task=8 * args.batch_size + 1,
        max_test_per_task=2,
        general_mode="none",
        heldout_general=0,
        general_samples=1,
        batch_size=args.batch_size,
    )
    models = {}
    for arm in ("full", "spu"):
        torch.manual_seed(0)
        models[arm] = ContinualCausalLM(args.model, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5, weight_decay=0.1))
        models[arm].setup_sequence(data.info)
        models[arm].on_task_start(data.tasks[0])
    data.set_task(0)
    spu = SPU()
    spu.setup_sequence(models["spu"], data, RunContext())
    spu.on_task_start(models["spu"], data.tasks[0])
    times, state_bytes = {"full": [], "spu": []}, {}
    for r in range(args.rounds):
        for arm in ("full", "spu") if r % 2 == 0 else ("spu", "full"):
            timer = StepTimer()
            models[arm].train()  # as the runner does before every fit
            trainer = fit(models[arm], data, [timer] + ([spu] if arm == "spu" else []), args.steps + 1, args)
            times[arm].extend(timer.times[1:])
            state_bytes[arm] = optimizer_state_bytes(trainer.optimizers[0])
    full_s, spu_s = statistics.median(times["full"]), statistics.median(times["spu"])
    per_round = [
        statistics.median(s) / statistics.median(f)
        for f, s in zip(*(([times[a][i : i + args.steps] for i in range(0, len(times[a]), args.steps)]) for a in ("full", "spu")))
    ]
    work_s = spu_work_alone(models["spu"], spu, next(iter(data.train_dataloader())))
    record = spu.records[0]
    imp_batch_s = spu.importance_seconds[0] / record["importance_batches"]
    task_batches = math.ceil(spu.importance_batches * args.task_steps)
    masked = spu.selection.masked
    result = {
        "time_ratio_spu_over_full": spu_s / full_s,
        "optimizer_state_ratio_spu_over_full": state_bytes["spu"] / state_bytes["full"],
        "targets": {"time_ratio_max": 1.05},
        "spu_work_alone_over_full_step": work_s / full_s,
        "importance_share_of_task": task_batches * imp_batch_s / (args.task_epochs * args.task_steps * spu_s),
        "median_step_s": {"full": full_s, "spu": spu_s, "spu_work_alone": work_s, "importance_per_batch": imp_batch_s},
        "per_round_ratio": per_round,
        "step_s": times,
        "memory_bytes": {
            "optimizer_state_full": state_bytes["full"],
            "optimizer_state_spu": state_bytes["spu"],
            "task_start_copy": tensor_bytes(p for p in masked.values()),
            "masks_bool": spu.mask_bytes()["bool"],
            "masks_packed_checkpoint": spu.mask_bytes()["packed"],
            "parameters": tensor_bytes(models["full"].parameters()),
        },
        "importance": {
            "batches": record["importance_batches"],
            "seconds": spu.importance_seconds[0],
            "task_steps": args.task_steps,
            "task_epochs": args.task_epochs,
            "task_importance_batches": task_batches,
        },
        "trainable": {
            k: record[k]
            for k in ("candidate_entries", "selected_entries", "full_update_entries", "parameters", "trainable_share")
        },
        "setup": {
            "model": args.model,
            "device": args.device,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "optimizer": "AdamW(lr=1e-5, weight_decay=0.1)",
            "variant": spu.variant.name,
            "torch_threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "smoke": args.smoke,
        },
    }
    out.write_text(json.dumps(result, indent=2))
    keys = (
        "time_ratio_spu_over_full",
        "optimizer_state_ratio_spu_over_full",
        "spu_work_alone_over_full_step",
        "importance_share_of_task",
        "median_step_s",
        "memory_bytes",
    )
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
