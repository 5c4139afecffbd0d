"""Under 2-process DDP (CPU, gloo) both ranks end with the same experts, routers, frozen sets and
DDAS (autoencoders, thresholds), and the same expert-pick counts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_on_two_ranks

pytestmark = pytest.mark.ddp

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from clight import SequenceRunner
    from clight.data.text import TextTaskSequence
    from clight.methods.moe_adapters import MoEAdapters
    from clight.models.causal_lm import ContinualCausalLM

    out = sys.argv[1]
    data = TextTaskSequence(tasks=["rt_sentiment", "rt_subjectivity"], tokenizer="char", max_length=64, max_train_per_task=16,
                            max_test_per_task=2, general_samples=4, heldout_general=0, batch_size=8, eval_batch_size=2)
    model = ContinualCausalLM("tiny", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    method = MoEAdapters(num_experts=4, bottleneck=8, ae_steps=30)
    trainer = dict(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_epochs=1,
                   enable_progress_bar=False, enable_model_summary=False)
    SequenceRunner(model, data, methods=[method], trainer=trainer, run_dir=os.path.join(out, "run"), seed=0).run()
    rank = torch.distributed.get_rank()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
    """
)


def test_ddp_ranks_hold_identical_experts_and_ddas(tmp_path: Path) -> None:
    script = tmp_path / "moe_ddp.py"
    script.write_text(SCRIPT)
    r0, r1 = run_on_two_ranks(script, tmp_path)
    assert r0["model"].keys() == r1["model"].keys()
    for name, value in r0["model"].items():
        assert torch.equal(value, r1["model"][name]), name
    assert r0["method"]["history"] == r1["method"]["history"] and len(r0["method"]["history"]) == 2
    for name, usage in r0["method"]["usage"].items():
        assert torch.equal(usage, r1["method"]["usage"][name]) and usage.sum() > 0
    selector = {k: v for k, v in r0["model"].items() if "moe_routing" in k}
    assert selector["net.moe_routing.selectors.0.fitted"].all()
    assert torch.isfinite(selector["net.moe_routing.selectors.0.thresholds"]).all()
    frozen = [v for k, v in r0["model"].items() if k.endswith("moe.frozen")]
    assert frozen and all(f.any() for f in frozen)
    # the experts trained (the up-projections left zero), identically on both ranks
    assert any(v.abs().sum() > 0 for k, v in r0["model"].items() if ".moe.experts." in k and k.endswith("up.weight"))
