"""GeneralPerplexity: general ability as perplexity on held-out text."""

from __future__ import annotations

from typing import Any, Optional

from clight.contract import CausalLanguageModel, ConfigError, GeneralTextData, RunContext
from clight.data.task import SequenceInfo
from clight.io import write_json_atomic
from clight.methods.base import ContinualCallback


class GeneralPerplexity(ContinualCallback):
    """Perplexity on the held-out general text (never replayed) before the first task and after
    every task, and on the data module's control text when it has one (``control_text``: another
    domain than the replayed general text, never replayed); written to
    ``run_dir/general_perplexity.json``."""

    module_protocol = CausalLanguageModel
    data_protocol = GeneralTextData

    state_layout = {"history": "replicated", "control_history": "replicated"}  # every rank scores the same held-out text

    def __init__(self, batch_size: int = 16) -> None:
        self.batch_size = batch_size
        self.history: list[float] = []
        self.control_history: list[float] = []
        self._datamodule: Any = None
        self._context: Optional[RunContext] = None

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        if datamodule.heldout_set is None:
            raise ConfigError("GeneralPerplexity needs held-out general text: set data.heldout_general > 0")

    def _measure(self, module: Any) -> None:
        data = self._datamodule
        self.history.append(module.perplexity(data.general_loader(data.heldout_set, self.batch_size)))
        control = getattr(data, "control_set", None)
        if control is not None:
            self.control_history.append(module.perplexity(data.general_loader(control, self.batch_size)))
        path = self._context.path("general_perplexity.json") if self._context else None
        if path is not None and self._context.is_rank_zero:
            record: dict = {"before_first_task": self.history[0], "after_task": self.history[1:]}
            if self.control_history:
                record["control"] = {
                    "source": getattr(data.control_source, "name", None),
                    "before_first_task": self.control_history[0],
                    "after_task": self.control_history[1:],
                }
            write_json_atomic(path, record)

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._datamodule, self._context = datamodule, context
        if not self.history:
            self._measure(module)

    def on_task_end(self, module: Any, task: Any) -> None:
        self._measure(module)

    def state_dict(self) -> dict:
        return {"history": list(self.history), "control_history": list(self.control_history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.control_history = list(state.get("control_history", []))

    def describe(self) -> dict:
        info = {"class": type(self).__name__, "metric": "held-out general text perplexity", "history": self.history}
        if self.control_history:
            info["control_text"] = getattr(self._datamodule.control_source, "name", None)
            info["control_history"] = self.control_history
        return info
