"""Prompt methods on frozen timm Vision Transformers: L2P, DualPrompt and CODA-Prompt, one folder
each on a shared prompted-ViT model. See ``docs/methods/prompts.md``."""

from clight.methods.prompts.coda import CODAPrompt
from clight.methods.prompts.dualprompt import DualPrompt
from clight.methods.prompts.l2p import L2P
from clight.methods.prompts.model import PromptClassifier
from clight.methods.prompts.vit import Prompting, attention_with_prefix, frozen_query, prompted_tokens

__all__ = [
    "CODAPrompt",
    "DualPrompt",
    "L2P",
    "PromptClassifier",
    "Prompting",
    "attention_with_prefix",
    "frozen_query",
    "prompted_tokens",
]
