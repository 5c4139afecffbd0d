"""A trained model on new inputs: class ids from a classifier, greedy text from a language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch


@torch.no_grad()
def predict(model: Any, inputs: Union[torch.Tensor, Sequence[str]], task: Optional[int] = None, batch_size: int = 64) -> list:
    """``model``'s predictions for ``inputs``: a batch tensor for a classifier (the predicted class
    of every row; ``task``: the task id a task-incremental model needs), or prompts for a language
    model (each prompt's greedy continuation, at most the model's ``max_new_tokens`` tokens)."""
    model.eval()
    if hasattr(model, "tokenizer"):
        return _generate(model, list(inputs), batch_size)
    x = torch.as_tensor(inputs)
    out: list[int] = []
    for start in range(0, len(x), batch_size):
        rows = x[start : start + batch_size].float()
        task_id = None if task is None else torch.full((len(rows),), task, dtype=torch.long)
        out += model(rows, task_id).argmax(-1).tolist()
    return out


def _generate(model: Any, prompts: list[str], batch_size: int) -> list[str]:
    from clight.assets.tokenizers import encode
    from clight.models.lm_decoding import greedy_generate, stop_tokens

    tokenizer = model.tokenizer
    stop = stop_tokens(model.net, tokenizer)
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids = [encode(tokenizer, p) for p in prompts[start : start + batch_size]]  # as clight encodes prompts
        width = max(len(row) for row in ids)
        prompt = torch.tensor([[tokenizer.pad_token_id] * (width - len(row)) + row for row in ids])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
        for row in greedy_generate(model.net, prompt, mask, model.max_new_tokens, stop, tokenizer.pad_token_id):
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def read_inputs(path: Union[str, Path]) -> Union[torch.Tensor, list[str]]:
    """Inputs from a file: ``.pt`` (a tensor, ``torch.load`` with ``weights_only``), ``.npy``
    (a numpy array) or any other suffix as text (one prompt per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no input file {path}: give a .pt or .npy file of inputs, or a text file of prompts")
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path))
    return [line.replace("\\n", "\n") for line in path.read_text().splitlines() if line.strip()]
