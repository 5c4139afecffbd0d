"""SeqLoRA: the model's own LoRA adapter trained on task after task, nothing else.

Training is what plain LoRA fine-tuning does; as a method it names the baseline in comparisons,
checks the model has LoRA targets, and writes the adapter after every task as a peft folder
(``run_dir/adapters/task_<t>/``: the one adapter as it stood after task t).
"""

from __future__ import annotations

from clight.methods.lora_family import TaskLoRAMethod


class SeqLoRA(TaskLoRAMethod):
    """One LoRA (the model's ``lora`` config) trained on every task in turn (O-LoRA's SeqLoRA baseline)."""

    per_task = False
