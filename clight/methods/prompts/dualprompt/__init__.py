from clight.methods.prompts.dualprompt.model import DualPrompt, DualPromptPrompts

__all__ = ["DualPrompt", "DualPromptPrompts"]
