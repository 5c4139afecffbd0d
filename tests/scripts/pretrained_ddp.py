"""SimpleCIL, RanPAC (gradient-free: every fit skipped) and L2P (prompts trained under DDP) on two
tasks of split digits, on N CPU processes; each rank dumps its method statistics and weights.
Rank 1 sees its images inverted (1 - x), so the ranks' statistics differ and only sums reduced
across ranks can match a hand computation over both ranks' rows.

usage: python pretrained_ddp.py OUT_DIR DEVICES
"""

import os
import sys

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddp_helpers import rank_inverted  # noqa: E402

from clight import MLP, ContinualClassifier, SequenceRunner, SplitClasses, TaskSequence, TimmBackbone  # noqa: E402
from clight.methods.prompts import L2P  # noqa: E402
from clight.methods.prototypes import RanPAC, SimpleCIL  # noqa: E402

out, devices = sys.argv[1], int(sys.argv[2])
trainer = dict(accelerator="cpu", devices=devices, max_epochs=1, limit_train_batches=3, enable_progress_bar=False)
if devices > 1:
    trainer["strategy"] = "ddp"
dump = {}
for name, method in (("simplecil", SimpleCIL()), ("ranpac", RanPAC(projection_dim=24, ridge=1.0))):
    torch.manual_seed(0)
    model = ContinualClassifier(MLP([16], in_features=64), train_backbone=False)
    data = TaskSequence(SplitClasses("digits", 2), batch_size=64, seed=0, collate_fn=rank_inverted)
    result = SequenceRunner(model, data, methods=[method], trainer=trainer, run_dir=os.path.join(out, name), seed=0).run()
    dump[name] = {"method": method.state_dict(), "model": model.state_dict(), "initial": result.metrics["initial_accuracy"]}
torch.manual_seed(0)
vit = TimmBackbone("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, image_size=8)
model = L2P(vit, lambda p: torch.optim.Adam(p, lr=0.01), pool_size=4, length=2, top_k=2)
data = TaskSequence(SplitClasses("digits", 2), batch_size=64, seed=0, collate_fn=rank_inverted)
SequenceRunner(model, data, trainer=trainer, run_dir=os.path.join(out, "l2p"), seed=0).run()
dump["l2p"] = {"model": model.state_dict()}
rank = int(os.environ.get("LOCAL_RANK", 0))
torch.save(dump, os.path.join(out, f"rank{rank}.pt"))
