"""Sequential LoRA (SeqLoRA): one LoRA adapter trained on every task in turn, the field's baseline."""

from clight.methods.seq_lora.callback import SeqLoRA

__all__ = ["SeqLoRA"]
