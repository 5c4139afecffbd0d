"""Two tasks of split digits with replay, tiny CLIP and SPU, on N CPU processes; each rank dumps
its SPU masks (after every task) and its weights. Rank 1 sees its images inverted (1 - x), so the
ranks' importance sums differ and the masks can only agree with a hand computation over both
ranks' rows if the sums are reduced across ranks before the top-k.

usage: python spu_ddp.py OUT_DIR DEVICES
"""

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from clight import Replay, SequenceRunner, SplitClasses, TaskSequence  # noqa: E402
from clight.methods.selective_update import SPU  # noqa: E402
from clight.models.clip import ContinualCLIP  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddp_helpers import rank_inverted  # noqa: E402
from test_spu import MaskLog  # noqa: E402

out, devices = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = ContinualCLIP("tiny", class_names="digits", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2))
data = TaskSequence(
    SplitClasses("digits", 2), batch_size=64, seed=0, replay=Replay("reservoir", 40, 16), collate_fn=rank_inverted
)
spu = SPU(importance_batches=0.5)
log = MaskLog(spu)
trainer = dict(accelerator="cpu", devices=devices, max_epochs=1, limit_train_batches=3, enable_progress_bar=False)
if devices > 1:
    trainer["strategy"] = "ddp"
SequenceRunner(model, data, methods=[spu, log], trainer=trainer, run_dir=os.path.join(out, "run"), seed=0).run()
rank = int(os.environ.get("LOCAL_RANK", 0))
torch.save({"masks": log.masks, "records": spu.records, "params": model.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
