"""GeneralPerplexity: general ability as perplexity on held-out general text."""

from __future__ import annotations

from typing import Any, Optional

from clight.contract import CausalLanguageModel, ConfigError, GeneralTextData, RunContext
from clight.data.task import SequenceInfo
from clight.io import write_json_atomic
from clight.methods.base import ContinualCallback


class GeneralPerplexity(ContinualCallback):
    """Perplexity on the held-out general text (never replayed) before the first task and after
    every task; written to ``run_dir/general_perplexity.json``."""

    module_protocol = CausalLanguageModel
    data_protocol = GeneralTextData

    def __init__(self, batch_size: int = 16) -> None:
        self.batch_size = batch_size
        self.history: list[float] = []
        self._datamodule: Any = None
        self._context: Optional[RunContext] = None

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        if datamodule.heldout_set is None:
            raise ConfigError("GeneralPerplexity needs held-out general text: set data.heldout_general > 0")

    def _measure(self, module: Any) -> None:
        held = self._datamodule.heldout_set
        self.history.append(module.perplexity(self._datamodule.general_loader(held, self.batch_size)))
        context = self._context
        path = context.path("general_perplexity.json") if context else None
        if context is not None and path is not None and context.is_rank_zero:
            write_json_atomic(path, {"before_first_task": self.history[0], "after_task": self.history[1:]})

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._datamodule, self._context = datamodule, context
        if not self.history:
            self._measure(module)

    def on_task_end(self, module: Any, task: Any) -> None:
        self._measure(module)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def describe(self) -> dict:
        return {"class": type(self).__name__, "metric": "held-out general text perplexity", "history": self.history}
