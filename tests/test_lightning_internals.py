"""Lightning's private names that clight uses still exist and still mean what clight relies on,
and no clight module but ``clight/lightning_internals.py`` touches one."""

import ast
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from clight import lightning_internals as internals

ROOT = Path(__file__).resolve().parents[1]


def _trainer(**kwargs) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return L.Trainer(**settings, enable_model_summary=False, **kwargs)


def _instances() -> dict[str, object]:
    trainer = _trainer()
    return {
        "Trainer": trainer,
        "_LoggerConnector": trainer._logger_connector,
        "_FitLoop": trainer.fit_loop,
        "LightningModule": L.LightningModule(),
        "Callback": Callback(),
        "DDPStrategy": DDPStrategy(),
    }


@pytest.mark.parametrize(
    "owner, attribute", internals.PRIVATE_ATTRIBUTES, ids=[".".join(a) for a in internals.PRIVATE_ATTRIBUTES]
)
def test_the_installed_lightning_still_has_the_attribute(owner, attribute):
    instance = _instances()[owner]
    assert type(instance).__name__ == owner or owner in {c.__name__ for c in type(instance).__mro__}
    assert attribute in dir(instance), (
        f"Lightning {L.__version__} has no {owner}.{attribute}: adapt clight/lightning_internals.py "
        "and the Lightning versions in pyproject.toml"
    )


class Method(Callback):
    pass


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        trainer = internals.attached_trainer(self)
        hook = getattr(self, internals.CURRENT_HOOK_ATTRIBUTE)
        self.seen.append((trainer is self.trainer, hook, internals.logger_writes_this_step(trainer)))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_module_trainer_hook_name_and_logging_steps_during_a_fit():
    module = _Probe()
    assert internals.attached_trainer(module) is None
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(5, 2)), batch_size=1)
    _trainer(max_epochs=1, log_every_n_steps=2).fit(module, data)
    # the logger writes every log_every_n_steps-th step: steps 2 and 4 of 5
    assert module.seen == [(True, "training_step", step % 2 == 0) for step in range(1, 6)]


def test_a_restored_fit_loop_is_made_to_start_afresh():
    trainer = _trainer(max_steps=4)  # clight's fits run a number of steps
    loop = trainer.fit_loop
    loop.load_state_dict(loop.state_dict())  # what restoring a checkpoint does to the loops
    assert loop.restarting and loop.epoch_loop.restarting and loop.epoch_loop.val_loop.restarting and loop.is_resuming
    internals.start_next_epoch_afresh(trainer)
    assert not (loop.restarting or loop.epoch_loop.restarting or loop.epoch_loop.val_loop.restarting or loop.is_resuming)


def test_state_key_form_and_ddp_unused_parameters():
    # checkpoints store callback states under this key: a new form would orphan every saved one
    assert internals.callback_state_key(Method(), alpha=0.5, name="x") == "Method{'alpha': 0.5, 'name': 'x'}"
    assert internals.finds_unused_parameters(DDPStrategy(find_unused_parameters=True))
    assert not internals.finds_unused_parameters(DDPStrategy())


class _BatchEndCounter(Callback):
    def __init__(self) -> None:
        self.batch_ends = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batch_ends += 1


def test_batch_hooks_left_as_callbacks_no_ops_are_skipped_and_overridden_ones_still_run():
    from lightning.pytorch.profilers import SimpleProfiler

    idle, counter = Method(), _BatchEndCounter()
    for callback in (idle, counter):
        internals.skip_unused_batch_hooks(callback)
    assert idle.on_train_batch_end is None and counter.on_train_batch_end is not None
    assert counter.on_train_batch_start is None
    profiler = SimpleProfiler()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 2)), batch_size=1)
    _trainer(max_epochs=1, callbacks=[idle, counter], profiler=profiler).fit(_Probe(), data)
    assert counter.batch_ends == 3
    # Lightning's dispatcher passed over the None hooks: no profiler section was opened for them
    sections = set(profiler.recorded_durations)
    assert any(s.startswith("[Callback]_BatchEndCounter") and s.endswith(".on_train_batch_end") for s in sections)
    assert not any(s.startswith("[Callback]Method") and s.endswith(".on_train_batch_end") for s in sections), (
        f"Lightning {L.__version__} calls callback hooks that are None: adapt skip_unused_batch_hooks"
    )


def _private_lightning_names() -> set[str]:
    """Private names of the Lightning objects clight code meets, less what torch's nn.Module has."""
    trainer = _trainer()
    objects = [*_instances().values(), trainer.fit_loop.epoch_loop, trainer._checkpoint_connector, trainer.strategy]
    objects += [L.LightningDataModule(), SingleDeviceStrategy(device=torch.device("cpu")), Checkpoint()]
    names = set()
    for obj in objects:
        names |= {n for n in dir(obj) if n.startswith("_") and not n.startswith("__")}
    return names - set(dir(torch.nn.Module()))


def test_no_other_clight_module_touches_a_private_lightning_name():
    """A private Lightning name read or set on any object, or named in a string (getattr), outside
    lightning_internals.py. ``self._x`` counts only where the file never sets ``self._x`` itself
    (then it is the class's own attribute that happens to share the name)."""
    private = _private_lightning_names()
    assert {"_trainer", "_logger_connector", "_resuming_from_checkpoint"} <= private
    found = []
    for path in sorted((ROOT / "clight").rglob("*.py")):
        if path.name == "lightning_internals.py":
            continue
        tree = ast.parse(path.read_text())
        own = {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
                if not (on_self and node.attr in own):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "Lightning internals outside clight/lightning_internals.py:\n  " + "\n  ".join(found)
