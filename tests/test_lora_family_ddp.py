"""Under 2-process DDP (CPU, gloo) InfLoRA holds the same adapters and protected subspaces on both
ranks, built from both ranks' samples (each rank reads half of a task, the sums are added); OSF,
which re-wraps and merges the weights between tasks, leaves the same weights on both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_on_two_ranks
from contract_examples import text
from test_contract import assert_same

SCRIPT = Path(__file__).resolve().parent / "scripts" / "lora_family_ddp.py"


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_ranks_hold_identical_adapters_and_subspaces_from_every_sample(tmp_path: Path) -> None:
    r0, r1 = run_on_two_ranks(SCRIPT, tmp_path, "2", timeout=600)
    assert_same(r0["lora"], r1["lora"], "adapters")
    assert_same(r0["method"], r1["method"], "InfLoRA state")
    assert r0["method"]["bases"] and all(b.dtype == torch.float64 for b in r0["method"]["bases"].values())

    data = text()
    data.info  # noqa: B018 (loads the tasks)
    for record in r0["method"]["history"]:
        task = data.tasks[record["task"]]
        tokens = int(data.train_collate_fn()([task.train[i] for i in range(len(task.train))])["attention_mask"].sum())
        assert record["design_tokens"] == tokens  # both halves, not one rank's
    assert "update_tokens" in r0["method"]["history"][0] and "update_tokens" not in r0["method"]["history"][1]

    assert_same(r0["osf_weights"], r1["osf_weights"], "OSF weights")
    assert r0["osf"]["finished"] == 2 and r0["osf"] == r1["osf"]
