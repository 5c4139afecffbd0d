"""Two-task runs of the tiny Llama on 2 CPU processes (gloo), sharded or under DDP, with the rank
consistency check on; each rank saves the whole weights and the methods' state of every run.

usage: python scale_runs.py OUT_DIR STRATEGY RUNS [--stop-at TASK,EPOCH,BATCH] [--resume]

STRATEGY: ``sharded`` or ``ddp``. RUNS, comma-separated:
- ``lora``: LoRA + GeRe TM + general perplexity (weights, GeRe's thresholds, the perplexities,
  the logits of a fixed input);
- ``spu``: full fine-tuning with SPU (weights, masks);
- ``moe``: MoE adapters with DDAS (weights, expert picks, the frozen experts);
- ``heads``: a task-incremental MLP classifier, whose second task adds a head (sharded on its own);
- ``ewc``: an MLP classifier on permuted digits with EWC (weights, Fisher and anchor, whole);
- ``bf16`` (sharded): GeRe TM + SPU on the tiny Llama and EWC on an MLP classifier, under
  ``bf16-true`` and ``bf16-mixed`` (the dtypes of the weights and of the methods' statistics);
- ``methods`` (DDP): every other stateful method (EWC, LwF, continual backprop, ReDo, shrink &
  perturb, the plasticity monitor, replay, CLR), each run checked;
- ``mismatch`` (DDP): a method whose state differs on rank 1 must be stopped by the check.
``--stop-at``: every rank raises tests/kills.py's SimulatedKill before that training batch of
the ``lora`` run. ``--resume``: resume OUT_DIR's ``lora`` run.
"""

import argparse
import os
import resource
import sys
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract_examples import classifier, clr, digits, permuted_digits, text, tiny_lm  # noqa: E402
from kills import StopAt  # noqa: E402

import clight.runner.loop  # noqa: E402
from clight import MLP, ContinualCallback, ContinualClassifier, Replay, SequenceRunner, SplitClasses, TaskSequence  # noqa: E402
from clight.methods.general_replay import GeneralPerplexity, GeneralReplay  # noqa: E402
from clight.methods.moe_adapters import MoEAdapters  # noqa: E402
from clight.methods.plasticity import ContinualBackprop, PlasticityMonitor, ReDo, ShrinkPerturb  # noqa: E402
from clight.methods.regularization import EWC, LwF  # noqa: E402
from clight.methods.selective_update import SPU  # noqa: E402
from clight.rank_check import RankMismatchError  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("strategy")
parser.add_argument("runs")
parser.add_argument("--stop-at")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()
out, runs = Path(args.out), args.runs.split(",")

# how often the runner ran the check, per run
checks: list[int] = []
_check = clight.runner.loop.check_rank_consistency


def counted_check(*a, **k):
    checks[-1] += 1
    return _check(*a, **k)


clight.runner.loop.check_rank_consistency = counted_check


def whole(module: torch.nn.Module) -> dict:
    """Every entry of the state dict as a whole tensor (every rank gathers every shard, in one order)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in module.state_dict().items()}


def run(name: str, model, data, methods, strategy=args.strategy, resume=False, **trainer):
    """One run of 2 tasks, 1 epoch of 2 batches each (``max_epochs=2`` where a kill needs an epoch checkpoint)."""
    checks.append(0)
    settings = dict(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, limit_train_batches=2)
    settings.update(trainer, enable_progress_bar=False, enable_model_summary=False)
    result = SequenceRunner(
        model,
        data,
        methods=methods,
        trainer=settings,
        run_dir=str(out / name),
        seed=0,
        resume=resume,
        check_rank_consistency=True,
        epoch_checkpoint_min_s=0.0,  # every epoch's checkpoint, however short the epoch
    ).run()
    return {"matrix": torch.tensor(result.accuracy_matrix), "params": whole(model), "checks": checks[-1]}


class RankSkew(ContinualCallback):
    """State that differs on rank 1 after task 0: the check must stop the run."""

    state_layout = {"counts": "replicated"}

    def __init__(self) -> None:
        self.counts = torch.zeros(3)

    def on_task_end(self, module, task):
        rank = torch.distributed.get_rank()
        self.counts[task.index] += 1 + rank

    def state_dict(self):
        return {"counts": self.counts}


saved: dict = {}
if "lora" in runs:
    model = tiny_lm(lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    gere, perplexity = GeneralReplay("tm"), GeneralPerplexity(batch_size=2)
    methods = [gere, perplexity] + ([StopAt(*map(int, args.stop_at.split(",")))] if args.stop_at else [])
    saved["lora"] = run("lora", model, text(), methods, resume=args.resume, max_epochs=2)
    saved["lora"].update(gere.state_dict(), perplexity=torch.tensor(perplexity.history))
    ids = torch.arange(24).view(2, 12) % 40 + 3
    model.eval()
    with torch.no_grad():  # every rank takes part in the sharded forward
        saved["lora"]["ids"], saved["lora"]["logits"] = ids, model(ids, torch.ones_like(ids))[0]
if "spu" in runs:
    model, spu = tiny_lm(), SPU(importance_batches=1.0)
    saved["spu"] = run("spu", model, text(), [spu])
    saved["spu"]["masks"] = dict(spu.masks)
if "moe" in runs:
    moe = MoEAdapters(num_experts=4, bottleneck=8, ae_steps=10)
    strategy = "ddp_find_unused_parameters_true" if args.strategy == "ddp" else args.strategy
    saved["moe"] = run("moe", tiny_lm(), text(), [moe], strategy=strategy)
    saved["moe"]["usage"] = moe.state_dict()["usage"]
    saved["moe"]["frozen"] = [h["frozen_experts"] for h in moe.history]
if "heads" in runs:
    model = classifier()
    saved["heads"] = run("heads", model, digits(setting="task_incremental"), [], limit_train_batches=3)
    saved["heads"]["sharding"] = model.sharding.describe()["units_sharded_per_fit"]
if "ewc" in runs:
    ewc = EWC(fisher_samples=16)
    saved["ewc"] = run("ewc", classifier(), permuted_digits(), [ewc], limit_train_batches=3)
    saved["ewc"].update(ewc.state_dict(), fisher_path=ewc.fisher_path)
if "bf16" in runs:
    for precision in ("bf16-true", "bf16-mixed"):
        gere, spu, ewc = GeneralReplay("tm"), SPU(importance_batches=1.0), EWC(fisher_samples=8)
        model = tiny_lm()
        result = run(precision, model, text(), [gere, spu], precision=precision)
        run(f"{precision}-ewc", classifier(), permuted_digits(), [ewc], precision=precision)
        saved[precision] = {
            "checks": result["checks"],
            "params": {k: v.dtype for k, v in result["params"].items()},
            "mu": gere.state_dict()["mu"].dtype,
            "ewc": {k: {n: t.dtype for n, t in v[0].items()} for k, v in ewc.state_dict().items()},
            "selected": {k: int(m.sum()) for k, m in spu.masks.items()},
        }
if "methods" in runs:
    torch.manual_seed(0)
    replayed = TaskSequence(SplitClasses("digits", 2), batch_size=64, seed=0, replay=Replay("reservoir", 40, 16))
    classifier_methods = [
        EWC(fisher_samples=20),
        LwF(),
        ShrinkPerturb(),
        PlasticityMonitor(probe_size=32),
        ContinualBackprop(replacement_rate=0.05, maturity_threshold=2, layers=["backbone.layers.0"]),
        ReDo(threshold=0.3, frequency=1, layers=["backbone.layers.2"]),
    ]
    saved["methods"] = {
        "classifier": run("classifier", ContinualClassifier(MLP([32, 32])), replayed, classifier_methods),
        "permuted": run("permuted", ContinualClassifier(MLP([32])), permuted_digits(), [EWC(fisher_samples=20, mode="separate")]),
        "clr": run("clr", clr(), digits(setting="task_incremental"), []),
    }
if "mismatch" in runs:
    try:
        run("mismatch", ContinualClassifier(MLP([16])), digits(), [RankSkew()])
        saved["mismatch"] = None
    except RankMismatchError as exc:
        saved["mismatch"] = str(exc)
rank = torch.distributed.get_rank()
usage = resource.getrusage(resource.RUSAGE_SELF)
saved["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # this rank's process, for the test-time budget
torch.save(saved, out / f"rank{rank}.pt")
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # not left to interpreter shutdown (gloo's threads)
