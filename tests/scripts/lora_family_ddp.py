"""Two tasks of text on the tiny Llama with InfLoRA, then with OSF, on N CPU processes (one
process group, two runs); each rank dumps InfLoRA's LoRA weights and state (protected subspaces,
history), and the weights OSF left (its updates merged after each task).

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
from clight.methods.osf import OSF  # noqa: E402

out, devices = sys.argv[1], int(sys.argv[2])
model, method = tiny_lm(lora=LORA), InfLoRA(batch_size=3)
trainer = dict(accelerator="cpu", devices=devices, max_epochs=1, enable_progress_bar=False)
if devices > 1:
    trainer["strategy"] = "ddp"
SequenceRunner(model, text(), methods=[method], trainer=trainer, run_dir=os.path.join(out, "run"), seed=0).run()
osf_model, osf = tiny_lm(), OSF(target_modules=["q_proj", "down_proj"])
SequenceRunner(osf_model, text(), methods=[osf], trainer=trainer, run_dir=os.path.join(out, "osf"), seed=0).run()
rank = int(os.environ.get("LOCAL_RANK", 0))
lora = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
state = {"lora": lora, "method": method.state_dict(), "osf_weights": osf_model.state_dict(), "osf": osf.state_dict()}
torch.save(state, os.path.join(out, f"rank{rank}.pt"))
