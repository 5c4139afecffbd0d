from clight.methods.prompts.coda.model import CODAComponents, CODAPrompt, orthonormal_rows

__all__ = ["CODAComponents", "CODAPrompt", "orthonormal_rows"]
