"""ContinualCLIP: image classification by image-text similarity (CLIP), over a choice of label space.

Each class is a text prompt (``template`` filled with the class name, "a photo of a {}." by
default). The logits are CLIP's ``logit_scale.exp()`` times the cosine similarity of the image and
prompt embeddings, and the task loss is the cross-entropy of those logits. ``label_space`` says
which prompts an image is scored against, in training and at test:

- ``seen_classes``: the prompts of every class seen so far (class-incremental: SPU's setting,
  Zhang et al., CVPR 2024, and the class-incremental setting of MoE adapters);
- ``task``: the prompts of the image's own task only (the multi-domain task-incremental setting,
  MTIL, of MoE adapters, Yu et al., CVPR 2024: each data set trained with cross-entropy over its
  own classes and evaluated against its own classes, as their released code's ``mtil/`` does).

Both towers run at every step, so methods may train either.

``model``: any transformers ``CLIPModel`` name or path (``openai/clip-vit-base-patch16``, needs
the weights), or ``tiny``: a small random ``CLIPConfig`` with an offline character-level
tokenizer, for tests. Images ``[B, C, H, W]`` in [0, 1] (grey or RGB) are resized to the model's
image size (bicubic, clamped to [0, 1] as CLIP's image processor does), grey ones repeated to 3
channels, and normalised with CLIP's mean and std.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from clight.choices import check_choice
from clight.contract import ConfigError
from clight.data.sources import Source, resolve_source
from clight.data.task import SequenceInfo, Task
from clight.models.clip_loading import load_clip
from clight.models.module import ContinualModule, default_optimizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LabelSpace = Literal["seen_classes", "task"]
LABEL_SPACES = {
    "seen_classes": "the prompts of every class seen so far (class-incremental)",
    "task": "the prompts of the sample's own task's classes (multi-domain task-incremental, MoE adapters' MTIL)",
}


def class_names_of(names: Union[str, Sequence[str], Source]) -> list[str]:
    """Class names from a list, or from a clight data source (``Source``, or a name: ``digits``,
    ``fashion_mnist``); a source's underscores become spaces (CIFAR-100's ``aquarium_fish``)."""
    if isinstance(names, (str, Source)):
        return [n.replace("_", " ") for n in resolve_source(names).data().class_names]
    return [str(n) for n in names]


class ContinualCLIP(ContinualModule):
    """CLIP as a classifier over class prompts.

    ``class_names``: one name per class id of the sequence, or a clight source (``Source``, e.g.
    ``Torchvision("CIFAR100")``, or a name: ``digits``, ``fashion_mnist``) to take its names. ``template``: the prompt, with ``{}`` for
    the class name. ``label_space``: ``seen_classes`` (class-incremental: every class seen so far)
    or ``task`` (each sample against its own task's classes, in training and at test; for
    task-incremental sequences). Evaluation also reports ``correct_task_aware`` (argmax among the
    sample's own task's classes, which CLIP can score before they are trained).
    """

    settings = ("class_incremental", "domain_incremental", "task_incremental")
    settings_reason = " (task-incremental with label_space: task)"
    mean: torch.Tensor  # buffers
    std: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    seen_mask: torch.Tensor

    def __init__(
        self,
        model: str = "tiny",
        class_names: Union[str, list[str], Source] = "digits",
        template: str = "a photo of a {}.",
        label_space: LabelSpace = "seen_classes",
        dtype: str = "float32",
        tiny_config: Optional[dict] = None,
        seed: int = 0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        check_choice("ContinualCLIP.label_space", label_space, LabelSpace)
        self.label_space = label_space
        if "{}" not in template:
            raise ValueError(f"ContinualCLIP.template must contain '{{}}' where the class name goes, got {template!r}")
        self.model_name, self.template, self.dtype_name = model, template, dtype
        self.class_names_arg = class_names
        self.clip, self.tokenizer = load_clip(model, dtype, seed, tiny_config)
        size = self.clip.config.vision_config.image_size
        self.image_size = (size, size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("prompt_ids", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("prompt_mask", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("seen_mask", torch.zeros(0, dtype=torch.bool), persistent=True)
        self.class_names: list[str] = []

    # -- the sequence -----------------------------------------------------------------------------
    def check_compatible(self, info: SequenceInfo) -> None:
        super().check_compatible(info)
        if info.setting == "task_incremental" and self.label_space != "task":
            raise ConfigError(
                "ContinualCLIP scores a task-incremental sequence within each task's own classes: set "
                "model.label_space to task (or use a class-incremental scenario for label_space: seen_classes)"
            )
        if info.setting == "class_incremental" and self.label_space == "task":
            raise ConfigError(
                "ContinualCLIP(label_space: task) scores each sample within its own task's classes, which needs the "
                "task of every test sample: set the scenario's setting to task_incremental (or label_space: seen_classes)"
            )
        names = class_names_of(self.class_names_arg)
        if len(names) != info.num_classes:
            given = self.class_names_arg if isinstance(self.class_names_arg, str) else type(self.class_names_arg).__name__
            raise ConfigError(
                f"ContinualCLIP has {len(names)} class names ({given}) "
                f"but the sequence has {info.num_classes} classes: give model.class_names one name per class id, in class-id order"
            )

    def setup_sequence(self, info: SequenceInfo) -> None:
        super().setup_sequence(info)
        self.class_names = class_names_of(self.class_names_arg)
        prompts = [self.template.format(name) for name in self.class_names]
        limit = self.clip.config.text_config.max_position_embeddings
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        device = self.seen_mask.device
        self.prompt_ids, self.prompt_mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        if len(self.seen_mask) != info.num_classes:
            self.seen_mask = torch.zeros(info.num_classes, dtype=torch.bool, device=device)

    def on_task_start(self, task: Task) -> None:
        super().on_task_start(task)
        self.seen_mask[torch.tensor(task.classes, device=self.seen_mask.device)] = True

    @property
    def seen_classes(self) -> torch.Tensor:
        """Global ids of the classes seen so far, ascending (the columns of the logits)."""
        return self.seen_mask.nonzero().flatten()

    # -- the two towers ---------------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"ContinualCLIP needs image batches [B, 1 or 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x.float(), size=self.image_size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        x = x.expand(-1, 3, -1, -1)
        return ((x - self.mean) / self.std).to(self.clip.dtype)

    def features(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, projection_dim]``."""
        pooled = self.clip.vision_model(pixel_values=self.preprocess(x)).pooler_output
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def text_features(self, classes: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``[len(classes), projection_dim]`` of the classes' prompts."""
        ids, mask = self.prompt_ids[classes], self.prompt_mask[classes]
        width = max(1, int(mask.sum(1).max())) if len(classes) else 1
        pooled = self.clip.text_model(input_ids=ids[:, :width], attention_mask=mask[:, :width]).pooler_output
        return F.normalize(self.clip.text_projection(pooled), dim=-1)

    def similarity(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """CLIP's logits: ``logit_scale.exp()`` x cosine similarity ``[B, C]``. ``text`` is ``[C, d]``,
        or ``[B, C, d]`` when each image has its own class embeddings (MoE adapters encode the
        prompts under each image's routes)."""
        if text.dim() == 3:  # the same product per distinct set of class embeddings, so each row is bit for bit
            sets, index = torch.unique(text.flatten(1), dim=0, return_inverse=True)  # what one set alone gives
            scaled = self.clip.logit_scale.exp() * image
            logits = torch.stack([scaled @ s.view_as(text[0]).t() for s in sets])
            return logits[index, torch.arange(len(image), device=image.device)]
        return self.clip.logit_scale.exp() * image @ text.t()

    # -- what methods may call --------------------------------------------------------------------
    def label_logits(self, batch: dict, features: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, C], classes [C])``: the batch's images against the prompts of its label
        space (global class ids ``classes``, ascending). ``task``: the classes of the batch's tasks;
        a row is -inf outside its own task's classes, so with one task in the batch (a task's own
        data) the logits are exactly that task's."""
        features = self.features(batch["input"]) if features is None else features
        if self.label_space == "seen_classes":
            classes = self.seen_classes
            return self.similarity(features, self.text_features(classes)), classes
        own = self._own_classes(batch["task_id"], len(self.seen_mask))
        columns = own.any(0)
        classes = columns.nonzero().flatten()
        logits = self.similarity(features, self.text_features(classes))
        mixed = not bool(own[:, columns].all())
        return (logits.masked_fill(~own[:, columns], float("-inf")) if mixed else logits), classes

    def _own_classes(self, task_ids: torch.Tensor, width: int) -> torch.Tensor:
        """``[B, width]`` bool: each row's own task's class ids."""
        own = torch.zeros(len(task_ids), width, dtype=torch.bool, device=self.seen_mask.device)
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().flatten().to(own.device)
            own[rows.unsqueeze(1), torch.tensor(self.sequence.task_classes[t], device=own.device).unsqueeze(0)] = True
        return own

    def output_logits(self, batch: dict) -> torch.Tensor:
        """Logits ``[B, C]`` against the prompts of the label space (no labels needed)."""
        return self.label_logits(batch)[0]

    def _positions(self, targets: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        lookup = torch.full((len(self.seen_mask),), -1, dtype=torch.long, device=targets.device)
        lookup[classes] = torch.arange(len(classes), device=targets.device)
        positions = lookup[targets]
        if (positions < 0).any():
            unseen = sorted(set(targets[positions < 0].tolist()))
            raise ValueError(f"training targets {unseen} belong to classes not seen yet: start their task first (on_task_start)")
        return positions

    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        features = self.features(batch["input"])
        logits, classes = self.label_logits(batch, features)
        loss = F.cross_entropy(logits.float(), self._positions(batch["target"], classes))
        return loss, {"features": features, "logits": logits}

    @torch.no_grad()
    def evaluation_counts(self, batch: dict) -> dict[str, torch.Tensor]:
        """Accuracy in the label space (``correct``: over the seen classes, or within the sample's own
        task's classes for ``label_space: task``), and task-aware accuracy (the sample's task's classes)."""
        every = torch.arange(len(self.seen_mask), device=self.seen_mask.device)
        logits = self.similarity(self.features(batch["input"]), self.text_features(every)).float()
        target = batch["target"]
        own = self._own_classes(batch["task_id"], logits.shape[1])
        task_aware = (logits.masked_fill(~own, float("-inf")).argmax(1) == target).sum()
        if self.label_space == "task":
            correct = task_aware
        elif self.seen_mask.any():
            correct = (logits.masked_fill(~self.seen_mask, float("-inf")).argmax(1) == target).sum()
        else:
            correct = torch.zeros((), dtype=torch.long, device=target.device)
        return {"correct": correct, "total": torch.tensor(len(target), device=target.device), "correct_task_aware": task_aware}

    def describe(self) -> dict:
        out = super().describe()
        out.update(
            {
                "model": self.model_name,
                "template": self.template,
                "label_space": f"{self.label_space}: {LABEL_SPACES[self.label_space]}",
                "dtype": self.dtype_name,
                "image_size": list(self.image_size),
                "classes": len(self.class_names),
                "seen_classes": int(self.seen_mask.sum()),
                "projection_dim": int(self.clip.config.projection_dim),
            }
        )
        return out
