"""IncLoRA: task t trains a fresh adapter ``task_t`` (the model's LoRA config); the adapters of
tasks 0..t-1 stay frozen and keep being applied, so after task t the model is the base plus
the sum of t+1 low-rank updates, with no constraint between them (O-LoRA's IncLoRA baseline)."""

from __future__ import annotations

from clight.methods.lora_family import TaskLoRAMethod


class IncLoRA(TaskLoRAMethod):
    """A new LoRA per task (A and B train), earlier ones frozen and applied."""

    per_task = True
