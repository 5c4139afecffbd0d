"""SPU on causal LMs: with GeRe's general replay on the tiny Llama, and the SmolLM2 config (parsed,
and run shrunk on the CPU)."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from contract_examples import text, tiny_lm
from test_spu import QUIET, _assert_top_k, _hand_importance

from clight.cli import build_fit_parser, runner_from_args
from clight.contract import RunContext
from clight.methods.general_replay import GeneralReplay
from clight.methods.selective_update import SPU

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_spu_composes_with_general_replay_on_the_tiny_llama(tmp_path):
    torch.manual_seed(0)
    model, data = tiny_lm(), text()  # general samples appended to each task and shuffled with it
    gere, spu = GeneralReplay("tm"), SPU(importance_batches=1.0)
    model.setup_sequence(data.info)
    for method in (gere, spu):
        method.setup_sequence(model, data, RunContext(tmp_path))
    data.set_task(0)
    model.on_task_start(data.tasks[0])
    for method in (gere, spu):
        method.on_task_start(model, data.tasks[0])
    batches = list(data.train_dataloader())
    assert any(b["is_general"].any() for b in batches) and any((~b["is_general"]).any() for b in batches)
    expected = _hand_importance(model, data, list(spu.selection.masked), task=0, fraction_of_batches=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", max_steps=3, callbacks=[gere, spu], **QUIET)
    trainer.fit(model, datamodule=data)
    assert "gere_tm" in model.loss_terms and "train/gere_tm" in trainer.callback_metrics
    assert spu.records[0]["importance_rows"] == sum(int((~b["is_general"]).sum()) for b in batches) == 16
    for name, importance in expected.items():
        _assert_top_k(spu.masks[name], importance, 0.1)
    for name, p in model.named_parameters():
        if name in spu.masks:
            mask = spu.masks[name]
            assert torch.equal(p[~mask], before[name][~mask]) and not torch.equal(p[mask], before[name][mask]), name
        else:
            assert torch.equal(p, before[name]), name  # Llama's gate/up projections have no biases: nothing else trains


def test_the_spu_configs_parse():
    parser = build_fit_parser()
    for name, model in (("spu_smollm2", "ContinualCausalLM"), ("spu_clip", "ContinualCLIP"), ("spu_tiny", "ContinualCLIP")):
        cfg = parser.parse_args(["--config", str(CONFIGS / f"{name}.yaml")])
        assert cfg.model.class_path.endswith(model)
        spu = [m for m in cfg.methods if m.class_path.endswith("SPU")]
        assert len(spu) == 1 and spu[0].init_args.fraction == 0.1 and spu[0].init_args.importance_batches == 0.25
    clip = parser.parse_args(["--config", str(CONFIGS / "spu_clip.yaml")])
    assert clip.model.init_args.model == "openai/clip-vit-base-patch16" and clip.trainer.max_epochs == 10
    assert clip.model.init_args.optimizer.init_args.lr == 7.5e-6 and clip.model.init_args.optimizer.init_args.weight_decay == 0.2
    assert clip.data.init_args.batch_size == 128 and clip.data.init_args.replay.capacity == 2000


@pytest.mark.lm
def test_spu_smollm2_config_runs_on_cpu(tmp_path):
    """The real config through the CLI's parser, shrunk to a CPU smoke run: its first task, one step."""
    runner = runner_from_args(
        [
            "--config",
            str(CONFIGS / "spu_smollm2.yaml"),
            f"--run_dir={tmp_path / 'run'}",
            "--data.init_args.tasks=[rt_sentiment]",
            "--data.init_args.max_length=40",
            "--data.init_args.max_train_per_task=8",
            "--data.init_args.max_test_per_task=2",
            "--data.init_args.heldout_general=2",
            "--data.init_args.control_samples=2",
            "--data.init_args.general_samples=4",
            "--data.init_args.general_max_length=24",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=2",
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=0",
            "--runner.max_steps_per_task=1",
        ]
    )
    result = runner.run()
    assert result.accuracy_matrix.shape == (1, 1)
    spu = result.metrics["methods"][1]
    record = spu["per_task"][0]
    assert spu["candidates"] == ["Llama-style causal LM (SwiGLU first layer: mlp.gate_proj + mlp.up_proj)"]
    assert record["candidate_tensors"] == 60 and record["candidate_entries"] == 60 * 576 * 1536  # 30 layers x (gate, up)
    assert record["selected_entries"] == 60 * math.floor(0.1 * 576 * 1536) and record["importance_batches"] == 1
    assert (tmp_path / "run" / "general_perplexity.json").is_file()
