"""Two tasks of text on the tiny Llama with InfLoRA, on N CPU processes; each rank dumps its LoRA
weights, InfLoRA's state (protected subspaces, history) and the adapters' requires_grad flags.

usage: python lora_family_ddp.py OUT_DIR DEVICES
"""

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contract_examples import LORA, text, tiny_lm  # noqa: E402

from clight import SequenceRunner  # noqa: E402
from clight.methods.inflora import InfLoRA  # noqa: E402

out, devices = sys.argv[1], int(sys.argv[2])
model, method = tiny_lm(lora=LORA), InfLoRA(batch_size=3)
trainer = dict(accelerator="cpu", devices=devices, max_epochs=1, enable_progress_bar=False)
if devices > 1:
    trainer["strategy"] = "ddp"
SequenceRunner(model, text(), methods=[method], trainer=trainer, run_dir=os.path.join(out, "run"), seed=0).run()
rank = int(os.environ.get("LOCAL_RANK", 0))
lora = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
torch.save({"lora": lora, "method": method.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
