"""Sharded training (strategy ``sharded``: FSDP2 through Lightning's ModelParallelStrategy) on 2
CPU processes against DDP, the rank-consistency check on every stateful method, a killed sharded
run resumed, the consolidated model in plain transformers, and the refusals.

The 2-process runs are four launches of tests/scripts/scale_runs.py: DDP (LoRA + GeRe TM + general
perplexity, SPU, MoE adapters, a task-incremental classifier whose second task adds a head, EWC,
and every other stateful method with the rank check on), sharded (the first five, and GeRe + SPU and
EWC under bf16-true and bf16-mixed), a sharded run killed inside its second task, and its resume. Stated tolerance between sharded and DDP weights: 1e-6
absolute (both average the same per-rank gradients, FSDP by reduce-scatter, DDP by all-reduce);
SPU's masks and every entry they leave frozen must be identical.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_on_two_ranks
from contract_examples import TRAINER, classifier, clr, digits, tiny_lm

from clight import ConfigError, SequenceRunner
from clight.distributed_state import LAYOUTS
from clight.methods.general_replay import GeneralReplay
from clight.methods.regularization import LwF
from clight.rank_check import _digest, first_difference
from clight.runner.sharded_checkpoints import commit_folder, read_boundary
from clight.runner.sharding import check_methods_shard, check_strategy

SCRIPT = Path(__file__).parent / "scripts" / "scale_runs.py"
TOLERANCE = 1e-6


def _launch(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scale")
    (root / "ddp").mkdir(), (root / "sharded").mkdir()
    ddp = run_on_two_ranks(SCRIPT, root / "ddp", "ddp", "lora,spu,moe,heads,ewc,methods,mismatch", timeout=600)
    sharded = run_on_two_ranks(SCRIPT, root / "sharded", "sharded", "lora,spu,moe,heads,ewc,bf16", timeout=600)
    return {"root": root, "ddp": ddp, "sharded": sharded}


def _same_matrix(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # NaN: a task not scored yet


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=TOLERANCE, rtol=0), key


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")  # one worker makes the runs once
def test_sharded_lora_gere_ends_with_the_weights_and_thresholds_of_ddp(runs):
    ddp, (rank0, rank1) = runs["ddp"][0]["lora"], runs["sharded"]
    sharded = rank0["lora"]
    for key in sharded["params"]:  # both ranks gathered the same whole weights
        assert torch.equal(sharded["params"][key], rank1["lora"]["params"][key]), key
    _close(sharded["params"], ddp["params"])
    assert any("lora_B" in k and sharded["params"][k].abs().sum() > 0 for k in sharded["params"])  # the adapters trained
    assert torch.allclose(sharded["mu"], ddp["mu"], atol=TOLERANCE) and torch.allclose(sharded["sd"], ddp["sd"], atol=TOLERANCE)
    assert sharded["mu"].dtype == torch.float32
    _same_matrix(sharded["matrix"], ddp["matrix"])
    assert torch.allclose(sharded["logits"], ddp["logits"], atol=1e-5)
    assert len(sharded["perplexity"]) == 3 and torch.allclose(sharded["perplexity"], ddp["perplexity"], rtol=1e-6)


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_sharded_spu_selects_the_masks_of_ddp_and_keeps_the_same_entries_frozen(runs):
    ddp, sharded = runs["ddp"][0]["spu"], runs["sharded"][0]["spu"]
    initial = tiny_lm().state_dict()
    assert set(sharded["masks"]) == set(ddp["masks"]) and len(sharded["masks"]) == 4  # gate and up of 2 blocks
    for name, mask in sharded["masks"].items():
        assert torch.equal(mask, ddp["masks"][name]), name  # the top-k over the whole tensor, not per shard
        assert mask.sum() == int(0.1 * mask.numel())
        frozen = ~mask  # the last task's frozen entries: bit-identical in both runs
        assert torch.equal(sharded["params"][name][frozen], ddp["params"][name][frozen]), name
    for key, value in initial.items():
        if key not in sharded["masks"]:  # nothing else trains: bit-identical to the initial weights
            assert torch.equal(sharded["params"][key], value), key
    _close(sharded["params"], ddp["params"])
    _same_matrix(sharded["matrix"], ddp["matrix"])


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_sharded_moe_adapters_route_freeze_and_end_as_under_ddp(runs):
    ddp, sharded = runs["ddp"][0]["moe"], runs["sharded"][0]["moe"]
    assert sharded["frozen"] == ddp["frozen"] and any(any(f.values()) for f in sharded["frozen"])
    for block, usage in sharded["usage"].items():
        assert torch.equal(usage, ddp["usage"][block]) and usage.sum() > 0, block  # picks summed over both ranks
    _close(sharded["params"], ddp["params"])  # experts, routers and the DDAS autoencoders (kept whole)
    assert any("autoencoders" in k for k in sharded["params"])
    _same_matrix(sharded["matrix"], ddp["matrix"])


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_a_head_added_by_a_later_task_is_sharded_then_and_trains_as_under_ddp(runs):
    ddp, sharded = runs["ddp"][0]["heads"], runs["sharded"][0]["heads"]
    assert sharded["sharding"] == [2, 1]  # the backbone and head 0 in the first fit; head 1 alone in the second
    assert ddp["sharding"] == []  # DDP shards nothing
    assert {"heads.0.weight", "heads.1.weight"} <= set(sharded["params"])
    _close(sharded["params"], ddp["params"])
    _same_matrix(sharded["matrix"], ddp["matrix"])


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_sharded_ewc_keeps_its_fisher_and_anchor_in_shards_and_ends_as_under_ddp(runs):
    ddp, sharded = runs["ddp"][0]["ewc"], runs["sharded"][0]["ewc"]
    # DDP takes per-sample gradients with torch.func, sharded runs one backward pass per sample:
    # the same Fisher up to float rounding (stated: 1e-6 of its largest entry)
    assert "vmap" in ddp["fisher_path"] and "one backward pass" in sharded["fisher_path"]
    for key, fisher in ddp["fishers"][0].items():
        assert sharded["fishers"][0][key].dtype == torch.float32
        assert torch.allclose(sharded["fishers"][0][key], fisher, atol=1e-6 * float(fisher.abs().max()), rtol=0), key
        assert torch.allclose(sharded["anchors"][0][key], ddp["anchors"][0][key], atol=TOLERANCE, rtol=0), key
    _close(sharded["params"], ddp["params"])
    _same_matrix(sharded["matrix"], ddp["matrix"])


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_bf16_runs_sharded_and_the_methods_statistics_stay_float32(runs):
    for precision, weights in (("bf16-true", torch.bfloat16), ("bf16-mixed", torch.float32)):
        run = runs["sharded"][0][precision]
        assert run["checks"] == 2 and set(run["params"].values()) == {weights}, precision
        assert run["mu"] == torch.float32  # GeRe's thresholds
        assert set(run["ewc"]["fishers"].values()) == {torch.float32}, precision  # EWC's Fisher
        assert set(run["ewc"]["anchors"].values()) == {weights}  # a copy of the weights, in their dtype
        assert run["selected"] and all(n == int(0.1 * 64 * 32) for n in run["selected"].values())  # SPU's top-k


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_the_rank_check_runs_after_every_task_for_every_stateful_method_and_stops_a_difference(runs):
    ddp, sharded = runs["ddp"][0], runs["sharded"][0]
    assert all(ddp[run]["checks"] == sharded[run]["checks"] == 2 for run in ("lora", "spu", "moe", "heads", "ewc"))
    assert {name: r["checks"] for name, r in ddp["methods"].items()} == {"classifier": 2, "permuted": 2, "clr": 2}
    message = ddp["mismatch"]
    assert message is not None and "after task 0" in message and "RankSkew" in message and "counts" in message
    assert "rank 1" in message


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_a_killed_sharded_run_resumes_to_the_same_end(runs, tmp_path):
    killed = _launch(tmp_path, "sharded", "lora", "--stop-at=1,1,1")
    assert killed.returncode != 0 and "SimulatedKill" in killed.stderr, killed.stderr[-3000:]
    folder = tmp_path / "lora" / "checkpoints"
    assert [p.name for p in (folder / "task_1").iterdir()] == ["epoch_0.ckpt"]
    assert {".metadata", "meta.pt"} <= {p.name for p in (folder / "task_1" / "epoch_0.ckpt").iterdir()}
    assert (folder / "last_task" / ".metadata").is_file() and not (folder / "last_task.pt").exists()
    resumed = _launch(tmp_path, "sharded", "lora", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = runs["sharded"][0]["lora"]
    for rank in (0, 1):
        again = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["lora"]
        _same_matrix(again["matrix"], full["matrix"])
        assert torch.equal(again["mu"], full["mu"]) and torch.equal(again["sd"], full["sd"])
        for key, value in full["params"].items():
            assert torch.equal(again["params"][key], value), (rank, key)
    logs = [list(csv.reader(open(root / "lora" / "logs" / "metrics.csv"))) for root in (tmp_path, runs["root"] / "sharded")]
    assert logs[0] == logs[1]


@pytest.mark.ddp
@pytest.mark.xdist_group("test_scale.runs")
def test_the_consolidated_model_loads_in_plain_transformers_with_the_same_logits(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final, run = runs["root"] / "sharded" / "lora" / "final", runs["sharded"][0]["lora"]
    ids = run["ids"]
    base = AutoModelForCausalLM.from_pretrained(final / "hf").eval()
    with torch.no_grad():
        without = base(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        model = PeftModel.from_pretrained(base, final / "adapter").eval()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(logits, run["logits"], atol=1e-5)
    assert not torch.allclose(without, run["logits"], atol=1e-3)  # the adapters change the outputs
    state = torch.load(final / "model.pt", weights_only=True)
    assert set(state) == set(run["params"]) and all(torch.equal(state[k], run["params"][k]) for k in state)


# -- without processes -------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_3"])
def test_fsdp_and_deepspeed_on_the_cpu_are_refused_with_what_to_use(tmp_path, strategy):
    trainer = dict(TRAINER, strategy=strategy)
    with pytest.raises(ConfigError, match="on the CPU use strategy: sharded .* or ddp"):
        SequenceRunner(classifier(), digits(), trainer=trainer, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


def test_tensor_parallelism_is_refused():
    from lightning.pytorch.strategies import ModelParallelStrategy

    with pytest.raises(ConfigError, match="data-parallel ranks only"):
        check_strategy(dict(accelerator="cpu", strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)))


def test_a_method_that_cannot_run_sharded_is_refused_before_the_run_naming_the_strategy(tmp_path):
    trainer = dict(TRAINER, devices=2, strategy="sharded")
    with pytest.raises(ConfigError, match=r"LwF cannot run under trainer.strategy='sharded'.*deep copy"):
        SequenceRunner(classifier(), digits(), methods=[LwF()], trainer=trainer, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="frozen whole copy"):  # full fine-tuning: the base outputs need a copy
        check_methods_shard([GeneralReplay("feature_l2")], tiny_lm(), "sharded")
    lora = tiny_lm(lora={"r": 2, "target_modules": ["q_proj"]})
    check_methods_shard([GeneralReplay("feature_l2"), GeneralReplay("tm")], lora, "sharded")  # adapters disabled: no copy
    check_methods_shard([LwF()], classifier(), "ddp")  # DDP keeps whole parameters
    with pytest.raises(ConfigError, match="CLRClassifier cannot be trained under trainer.strategy='sharded'"):
        check_methods_shard([], clr(), "sharded")


def test_every_method_declares_valid_layouts():
    from contract_examples import METHOD_EXAMPLES

    for cls in METHOD_EXAMPLES:
        assert cls.state_layout and set(cls.state_layout.values()) <= set(LAYOUTS), cls.__name__


def test_the_rank_check_names_the_first_entry_that_differs():
    a = {"model": {"w": _digest(torch.ones(2, dtype=torch.bfloat16))}, "method EWC": {"fishers[0]/w": _digest([1.0])}}
    same = {k: dict(v) for k, v in a.items()}
    other = {"model": {"w": _digest(torch.tensor([1.0, 1.0078125], dtype=torch.bfloat16))}, "method EWC": dict(a["method EWC"])}
    assert first_difference([a, same]) is None
    assert first_difference([a, same, other]) == "model: w differs between rank 0 and rank 2"
    missing = {"model": dict(a["model"]), "method EWC": {}}
    assert first_difference([a, missing]) == "method EWC: fishers[0]/w is missing on one of them between rank 0 and rank 1"


def test_a_folder_checkpoint_is_replaced_whole_and_the_newer_boundary_is_read(tmp_path):
    import torch.distributed.checkpoint as dcp

    old, new = tmp_path / "ckpt", tmp_path / ".ckpt.tmp"
    old.mkdir(), new.mkdir()
    (old / "a").write_text("old"), (new / "b").write_text("new")
    commit_folder(new, old)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and [p.name for p in old.iterdir()] == ["b"]
    file, folder = tmp_path / "checkpoints" / "last_task.pt", tmp_path / "checkpoints" / "last_task"
    folder.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(3)}, "step_offset": 1}, file)
    dcp.save({"w": torch.arange(3.0)}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"step_offset": 2}, folder / "meta.pt")
    os.utime(file, (1, 1))  # a run that went from one process (file) to sharded (folder)
    state = read_boundary(file)
    assert state["step_offset"] == 2 and torch.equal(state["model"]["w"], torch.arange(3.0))
    os.utime(folder, (2e9, 2e9))
    os.utime(file, (3e9, 3e9))
    assert read_boundary(file)["step_offset"] == 1


def test_transformer_blocks_are_the_units_of_the_tiny_llama():
    plain, lora = tiny_lm(), tiny_lm(lora={"r": 2, "target_modules": ["q_proj"]})
    for model in (plain, lora):
        assert [type(m).__name__ for m in model.shard_units()] == ["LlamaDecoderLayer"] * 2
