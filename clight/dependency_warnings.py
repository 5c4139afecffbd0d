"""Deprecation warnings that dependencies raise at each other on every run, filtered one by one
(by message, category and the module that warns) where clight starts: a user cannot act on them.

- torch 2.14 deprecates ``isinstance(x, LeafSpec)``; Lightning 2.6 still calls it in
  ``lightning.pytorch.utilities._pytree`` once per fit.
- peft probes ``model.is_gradient_checkpointing``, which transformers 5 deprecated, whenever it
  wraps or saves a model.
"""

from __future__ import annotations

import warnings

#: (message regex, category, module regex) of each warning filtered
FILTERED = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


def filter_dependency_warnings() -> None:
    """Ignore exactly the warnings in ``FILTERED`` (calling it again adds nothing)."""
    for message, category, module in FILTERED:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
