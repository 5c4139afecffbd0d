"""Under 2-process DDP (CPU, gloo) every rank replaces the same units with the same values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_on_two_ranks

pytestmark = pytest.mark.ddp

SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch
    from clight.data.task import SequenceInfo, Task
    from clight.methods.plasticity import ContinualBackprop, ReDo
    from clight.models.backbones import MLP
    from clight.models.classifier import ContinualClassifier

    out = sys.argv[1]
    info = SequenceInfo(setting="domain_incremental", num_tasks=1, num_classes=4, task_classes=[[0, 1, 2, 3]], input_shape=(1, 6, 6))
    torch.manual_seed(0)
    model = ContinualClassifier(MLP([32, 32], norm="batch"), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    model.setup_sequence(info)
    model.on_task_start(Task(0, "t0", None, None, None, [0, 1, 2, 3]))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(256, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (256,), generator=g)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 256
        def __getitem__(self, i):
            return {"input": x[i], "target": y[i], "task_id": torch.tensor(0)}

    cbp = ContinualBackprop(replacement_rate=0.05, maturity_threshold=3, seed=7)
    redo = ReDo(threshold=0.95, frequency=5, seed=7)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cbp, redo])
    trainer.fit(model, torch.utils.data.DataLoader(Data(), batch_size=16, shuffle=True))
    torch.save({"model": model.state_dict(), "cbp": cbp.state_dict(), "redo": redo.state_dict()}, f"{out}/rank{trainer.global_rank}.pt")
    """
)


def test_ddp_ranks_replace_identically(tmp_path: Path) -> None:
    script = tmp_path / "ddp_cbp.py"
    script.write_text(SCRIPT)
    r0, r1 = run_on_two_ranks(script, tmp_path, timeout=180)
    assert sum(r0["cbp"]["replaced"].values()) > 0 and sum(r0["redo"]["replaced"].values()) > 0
    assert r0["cbp"]["replaced"] == r1["cbp"]["replaced"] and r0["redo"]["replaced"] == r1["redo"]["replaced"]
    for name, value in r0["model"].items():
        if "running_" in name or "num_batches_tracked" in name:
            continue  # BatchNorm statistics are per rank under plain DDP (rank 0's are broadcast at each forward)
        assert torch.equal(value, r1["model"][name]), name
    for layer, state in r0["cbp"]["units"].items():
        for key, value in state.items():
            assert torch.equal(value, r1["cbp"]["units"][layer][key]), (layer, key)
