"""What the LoRA-family methods (SeqLoRA, IncLoRA, O-LoRA, InfLoRA, OSF) share: the models they
run on, per-task peft adapters, adapter folders, and the base callback."""

from clight.methods.lora_family.adapters import TaskAdapters, lora_layers, save_peft_folder
from clight.methods.lora_family.callback import TaskLoRAMethod, adapter_folder
from clight.methods.lora_family.targets import full_network, lora_network

__all__ = ["TaskAdapters", "TaskLoRAMethod", "adapter_folder", "full_network", "lora_layers", "lora_network", "save_peft_folder"]
