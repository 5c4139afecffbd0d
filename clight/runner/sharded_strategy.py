"""``ShardedStrategy``: Lightning's ModelParallelStrategy, loading clight's sharded epoch checkpoints.

clight's epoch checkpoints hold only what a fit changes (trainable parameters, buffers; the
frozen weights come from the task-boundary checkpoint). Lightning's loader asks
``torch.distributed.checkpoint`` for every entry of the model and fails on the missing frozen
ones; this one asks for the entries the checkpoint holds and loads them with ``strict=False``
(the runner has already checked that they are the fit's changing entries,
``ResumePoint.check_fits``). Everything else is Lightning's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.strategies import ModelParallelStrategy

from clight.io import load_checkpoint
from clight.runner.sharded_checkpoints import META, saved_tensor_keys


class ShardedStrategy(ModelParallelStrategy):
    def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():
            return super().load_checkpoint(path, weights_only=weights_only)
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        saved = saved_tensor_keys(path, "state_dict")
        model_state = {k: v for k, v in get_model_state_dict(self.model).items() if k in saved}
        load({"state_dict": model_state}, checkpoint_id=path)
        self.model.load_state_dict(model_state, strict=False)
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            state = {key: get_optimizer_state_dict(self.model, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(
                self.model, optimizer, optim_state_dict=state[key], options=StateDictOptions(cpu_offload=True)
            )
        return load_checkpoint(path / META)
