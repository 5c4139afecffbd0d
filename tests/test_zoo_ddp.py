"""DER++, A-GEM, SI, MAS, iCaRL and GDumb under 2-process DDP: memories, importances, exemplar
sets and weights identical on both ranks, although the ranks read different training images."""

from pathlib import Path

import pytest
import torch
from conftest import run_on_two_ranks
from test_contract import assert_same

SCRIPT = Path(__file__).resolve().parent / "scripts" / "zoo_ddp.py"


@pytest.mark.ddp
@pytest.mark.slow
def test_every_rank_keeps_the_same_memories_importances_and_exemplars(tmp_path: Path) -> None:
    r0, r1 = run_on_two_ranks(SCRIPT, tmp_path, timeout=600)
    for run in ("stream", "icarl", "gdumb"):
        assert_same(r0[run], r1[run], run)
    states = {key.split("{")[0]: state for key, state in r0["stream"]["methods"].items()}
    der, agem, si, mas = states["DERpp"], states["AGEM"], states["SI"], states["MAS"]
    assert der["seen"] == 2 * 3 * 16 and der["fields"]["input"].shape[0] == 40  # the global batches, not one rank's half
    inverted = (der["fields"]["input"] > 0.5).float().mean()
    assert 0.05 < inverted  # rank 1's inverted images reached rank 0's memory
    assert agem["entries"].shape == (60, 2) and agem["steps"] == [0, 3]
    assert all(v.abs().sum() > 0 for v in si["importance"].values()) and all(
        v.abs().sum() > 0 for v in mas["importance"].values()
    )
    icarl = next(iter(r0["icarl"]["methods"].values()))
    assert icarl["labels"].bincount().tolist() == [4] * 10 and icarl["has_mean"].all()
    gdumb = next(iter(r0["gdumb"]["methods"].values()))
    counts = gdumb["labels"].bincount()
    assert len(counts) == 10 and counts.sum() == 64 and counts.max() - counts.min() <= 1
    assert not torch.equal(r0["stream"]["params"]["heads.all.weight"], r0["gdumb"]["params"]["heads.all.weight"])
