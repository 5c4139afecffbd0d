"""``InstructionSequence``: a sequence of your own language-model tasks, or a named order of a
benchmark folder (see docs/llm_tasks.md and docs/llm_benchmark.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from torch.utils.data import ConcatDataset, Subset

from clight.choices import check_choice
from clight.contract import ConfigError
from clight.data.replay import Replay
from clight.data.text.datamodule import TextTaskSequence
from clight.data.text.general_sources import GeneralSource
from clight.data.text.instruct.olora import find_task_folder, task_names
from clight.data.text.instruct.orders import read_order
from clight.data.text.instruct.scenario import InstructionTasks
from clight.data.text.instruct.task import InstructionTask

LossOn = Literal["answer", "all"]


class InstructionSequence(TextTaskSequence):
    """Instruction tasks in order: ``tasks`` (``InstructionTask``), or the tasks of ``order`` in
    the orders file of ``root`` (``ROOT/orders.json`` unless ``orders_file``), each a
    ``cl_benchmark`` folder of ``root`` unless ``tasks`` describes it.

    ``loss_on``: ``answer`` (the loss covers the answer tokens only) or ``all`` (prompt tokens too).
    ``max_length``: tokens of prompt + answer; a too-long prompt is shortened inside its body, and
    a sample whose answer still does not fit is left out (a warning gives the count; more than
    ``max_cut_fraction`` of a split refuses the task). ``max_train_per_class``,
    ``max_train_per_task``, ``max_test_per_task``, ``test_fraction``: which items each split
    gets (``InstructionTasks``). ``add_bos``: a ``cl_benchmark`` prompt starts with BOS, as
    O-LoRA's. ``replay``: experience replay of earlier tasks' training samples. Everything else
    (tokenizer, general text for GeRe, batch sizes) is ``TextTaskSequence``'s; ``general``
    defaults to none here.
    """

    def __init__(
        self,
        tasks: Optional[list[InstructionTask]] = None,
        root: Optional[str] = None,
        order: Optional[str] = None,
        orders_file: Optional[str] = None,
        loss_on: LossOn = "answer",
        max_cut_fraction: float = 0.05,
        max_train_per_class: Optional[int] = None,
        test_fraction: float = 0.2,
        add_bos: bool = True,
        general: Union[str, GeneralSource, None] = None,
        replay: Optional[Replay] = None,
        **kwargs,
    ) -> None:
        check_choice("data.loss_on", loss_on, LossOn)
        if not 0.0 <= max_cut_fraction <= 1.0:
            raise ValueError(f"data.max_cut_fraction must be in [0, 1], got {max_cut_fraction}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
        if replay is not None and general is not None and kwargs.get("general_mode", "append") != "none":
            raise ConfigError("data.replay replays earlier tasks; with general text replayed too, set data.general_mode: none")
        self.root, self.order, self.loss_on = root, order, loss_on
        self.max_cut_fraction, self.max_train_per_class = max_cut_fraction, max_train_per_class
        self.test_fraction, self.add_bos = test_fraction, add_bos
        self.task_order = self._task_order(tasks, orders_file)
        super().__init__(tasks=self.task_order, general=general, **kwargs)
        self.replay = replay
        self.memory = replay.make_memory(self.seed) if replay is not None else None

    def _task_order(self, tasks: Optional[list[InstructionTask]], orders_file: Optional[str]) -> list[InstructionTask]:
        given = {t.name: t for t in tasks or []}
        if self.order is None:
            if not tasks:
                raise ValueError("data: give tasks (a list of InstructionTask), or root and order (a named task order)")
            return list(tasks)
        if self.root is None:
            raise ValueError(f"data.order {self.order!r} needs data.root: the folder that holds the benchmark's tasks")
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {root} is not a folder: point it at your copy of the benchmark")
        names = read_order(
            Path(orders_file) if orders_file else root / "orders.json",
            self.order,
            root,
            lambda name: name in given or find_task_folder(root, name) is not None,
            lambda: task_names(root),
        )
        return [given.get(name, InstructionTask(name=name, format="cl_benchmark")) for name in names]

    def make_scenario(self, tasks, max_length, max_train_per_task, max_test_per_task) -> InstructionTasks:
        return InstructionTasks(
            tasks,
            self.tokenizer,
            max_length,
            root=self.root,
            max_train_per_task=max_train_per_task,
            max_train_per_class=self.max_train_per_class,
            max_test_per_task=max_test_per_task,
            test_fraction=self.test_fraction,
            loss_on=self.loss_on,
            max_cut_fraction=self.max_cut_fraction,
            add_bos=self.add_bos,
        )

    # experience replay of earlier tasks (the general text GeRe replays is TextTaskSequence's)
    def train_dataset(self):
        if self.joint or self.memory is None or len(self.memory) == 0:
            return super().train_dataset()
        entries = self.memory.entries
        parts = [Subset(self.tasks[t].train, entries[entries[:, 0] == t, 1].tolist()) for t in entries[:, 0].unique().tolist()]
        memory = ConcatDataset(parts)
        return ConcatDataset([self.tasks[self.current_task].train, memory]), len(memory)

    def replay_sampling(self) -> tuple[int, str]:
        if self.memory is not None and len(self.memory) > 0 and not self.joint:
            return self.replay.batch_size, self.replay.mode
        return super().replay_sampling()

    def describe(self) -> dict:
        out = super().describe()
        out.update(
            {
                "order": self.order,
                "task_order": [t.name for t in self.task_order],
                "loss_on": self.loss_on,
                "max_cut_fraction": self.max_cut_fraction,
                "instruction_tasks": self.scenario.report,
            }
        )
        return out
