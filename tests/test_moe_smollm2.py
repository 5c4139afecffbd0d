"""CPU smoke tests of MoE adapters + DDAS on the real SmolLM2-135M-Instruct, and the configs."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from clight.cli import build_fit_parser, runner_from_config
from clight.contract import RunContext
from clight.data.text import TextTaskSequence
from clight.methods.moe_adapters import MoEAdapters, network_routing
from clight.models.causal_lm import ContinualCausalLM

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.lm
def test_smollm2_moe_trains_and_sends_general_text_to_the_unmodified_model():
    data = TextTaskSequence(
        tasks=["rt_sentiment"],
        tokenizer="smollm2",
        max_length=48,
        max_train_per_task=6,
        max_test_per_task=2,
        general_samples=2,
        general_max_length=32,
        heldout_general=2,
        general_mode="none",
        batch_size=2,
        eval_batch_size=2,
    )
    model = ContinualCausalLM("smollm2", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    method = MoEAdapters(num_experts=4, bottleneck=16, ae_steps=30, ae_code_dims=16)
    model.setup_sequence(data.info)
    method.check_compatible(model, data, data.info)
    method.setup_sequence(model, data, RunContext(seed=0))
    assert len(method.layers) == 30 and all(not p.requires_grad for n, p in model.named_parameters() if ".moe." not in n)
    routing = network_routing(model.net)
    batch = next(iter(data.train_dataloader()))
    model.eval()
    with torch.no_grad():
        with routing.forced(torch.zeros(2, dtype=torch.long)):
            routed = model(batch["input_ids"], batch["attention_mask"])[0]
        with routing.forced(None):
            plain = model(batch["input_ids"], batch["attention_mask"])[0]
    assert torch.equal(routed, plain)  # zero up-projections: the pretrained model, bit for bit
    data.set_task(0)
    model.on_task_start(data.tasks[0])
    method.on_task_start(model, data.tasks[0])
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[method],
    )
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    method.on_task_end(model, data.tasks[0])
    assert method.history[0]["frozen_experts"] and routing.selectors["0"].fitted[0]
    held_out = data.general_loader(data.heldout_set, 2)
    general = next(iter(held_out))
    with torch.no_grad():
        routes = routing.route(
            routing.frozen_features(
                model.net, (), {"input_ids": general["input_ids"], "attention_mask": general["attention_mask"]}
            )
        )
        assert (routes == -1).all()
        through_ddas = model.perplexity(held_out)
        with routing.forced(None):
            unmodified = model.perplexity(held_out)
    assert through_ddas == unmodified
    counts = model.evaluation_counts(next(iter(data.evaluation_loader(0))))
    assert counts["total"].item() == 2


def test_moe_configs_parse_and_share_the_gere_task_sequence():
    parse = lambda name: build_fit_parser().parse_args(["--config", str(CONFIGS / name)])  # noqa: E731
    smollm2, gere = parse("moe_adapters_smollm2.yaml"), parse("gere_finetune_full.yaml")
    shared = (
        "tasks",
        "tokenizer",
        "max_length",
        "max_train_per_task",
        "max_test_per_task",
        "general",
        "heldout_general",
        "batch_size",
        "eval_batch_size",
    )
    assert all(smollm2.data.init_args[k] == gere.data.init_args[k] for k in shared)
    assert smollm2.model.init_args.lora is None and smollm2.data.init_args.general_mode == "none"
    assert [m.class_path.rsplit(".", 1)[1] for m in smollm2.methods] == ["MoEAdapters", "GeneralPerplexity"]
    clip = parse("moe_adapters_clip.yaml")
    assert clip.model.init_args.model == "openai/clip-vit-base-patch16" and len(clip.model.init_args.class_names) == 120
    assert clip.methods[0].init_args.num_experts == 22 and clip.runner.max_steps_per_task == 1000
    assert clip.model.init_args.label_space == "task" and clip.data.init_args.scenario.init_args.setting == "task_incremental"
    tiny = parse("moe_adapters_tiny.yaml")
    assert tiny.model.init_args.model == "tiny"


@pytest.mark.lm
def test_moe_smollm2_config_runs_on_cpu(tmp_path):
    """The real config, shrunk to a CPU smoke run: its first task only, one optimizer step, a handful of samples."""
    runner = runner_from_config(
        CONFIGS / "moe_adapters_smollm2.yaml",
        "--data.init_args.tasks=[rt_sentiment]",
        "--data.init_args.max_length=40",
        "--data.init_args.max_train_per_task=4",
        "--data.init_args.max_test_per_task=2",
        "--data.init_args.general_samples=2",
        "--data.init_args.general_max_length=24",
        "--data.init_args.heldout_general=2",
        "--data.init_args.control_samples=2",
        "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=2",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0",
        "--runner.max_steps_per_task=1",
        f"--run_dir={tmp_path / 'run'}",
    )
    result = runner.run()
    assert result.accuracy_matrix.shape == (1, 1)
    assert (tmp_path / "run" / "general_perplexity.json").is_file()
    assert json.loads((tmp_path / "run" / "general_perplexity.json").read_text())["control"]["source"] == "debates_2016"
    assert result.metrics["methods"][0]["history"][0]["task"] == 0
