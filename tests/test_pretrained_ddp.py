"""Under 2-process DDP the gradient-free methods' statistics (prototype sums, Gram matrix G and
class-feature matrix Q) are sums over both ranks' rows and identical on both ranks, and so are the
trained prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_on_two_ranks

from clight import MLP, SplitClasses, TaskSequence

SCRIPT = Path(__file__).resolve().parent / "scripts" / "pretrained_ddp.py"


@pytest.mark.ddp
@pytest.mark.slow
def test_statistics_and_prompts_are_summed_over_ranks_and_identical_on_both(tmp_path: Path) -> None:
    r0, r1 = run_on_two_ranks(SCRIPT, tmp_path, "2", timeout=600)
    for name in ("simplecil", "ranpac", "l2p"):
        for part in ("method", "model"):
            for key, value in r0[name].get(part, {}).items():
                same = (
                    torch.equal(value, r1[name][part][key]) if isinstance(value, torch.Tensor) else value == r1[name][part][key]
                )
                assert same, (name, part, key)
    # the untrained model, scored before the first fit (no Trainer yet): each rank scores its share
    # and the counts are summed, so both ranks hold the accuracy over the whole test split; with
    # nothing learned every logit ties and class 0 is predicted
    data = TaskSequence(SplitClasses("digits", 2), batch_size=64, seed=0)
    test_targets = torch.tensor([int(data.tasks[0].test[i]["target"]) for i in range(len(data.tasks[0].test))])
    assert r0["simplecil"]["initial"] == r1["simplecil"]["initial"]
    assert r0["simplecil"]["initial"][0] == pytest.approx(float((test_targets == 0).double().mean()))
    # by hand: every sample once, rank 1's share (the odd rows of each split, in order) inverted
    torch.manual_seed(0)
    backbone = MLP([16], in_features=64)
    backbone.load_state_dict({k[len("backbone.") :]: v for k, v in r0["simplecil"]["model"].items() if k.startswith("backbone.")})
    rows = []
    for task in data.tasks:
        x = torch.stack([task.train[i]["input"] for i in range(len(task.train))])
        x[1::2] = 1.0 - x[1::2]
        rows.append((x, torch.tensor([int(task.train[i]["target"]) for i in range(len(task.train))])))
    with torch.no_grad():
        features = torch.cat([backbone(x) for x, _ in rows]).double().numpy()
    targets = torch.cat([t for _, t in rows]).numpy()
    sums = r0["simplecil"]["method"]["sums"].numpy()
    for c in range(10):
        np.testing.assert_allclose(sums[c], features[targets == c].sum(0), rtol=1e-9, atol=1e-9)
    projection = r0["ranpac"]["model"]["heads.all.projection"].double().numpy()
    with torch.no_grad():
        h = np.maximum(torch.cat([backbone(x) for x, _ in rows]).numpy().astype(np.float64) @ projection, 0)
    np.testing.assert_allclose(r0["ranpac"]["method"]["gram"].numpy(), h.T @ h, rtol=1e-5)
    np.testing.assert_allclose(r0["ranpac"]["method"]["class_features"].numpy(), h.T @ np.eye(10)[targets], rtol=1e-5)
