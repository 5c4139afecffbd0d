"""Incremental LoRA (IncLoRA): a new LoRA adapter per task, earlier ones frozen and still applied."""

from clight.methods.inc_lora.callback import IncLoRA

__all__ = ["IncLoRA"]
