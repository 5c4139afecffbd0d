"""ContinualCLIP: class-incremental image classification by image-text similarity (CLIP).

Each class is a text prompt (``template`` filled with the class name, "a photo of a {}." by
default). An image is scored against the prompts of the classes seen so far: the logits are
CLIP's ``logit_scale.exp()`` times the cosine similarity of the image and prompt embeddings, and
the task loss is the cross-entropy of those logits. This is the setting of SPU (Zhang et al.,
CVPR 2024) and of MoE adapters (Yu et al., CVPR 2024). Both towers run at every step, so
methods may train either.

``model``: any transformers ``CLIPModel`` name or path (``openai/clip-vit-base-patch16``, needs
the weights), or ``tiny``: a small random ``CLIPConfig`` with an offline character-level
tokenizer, for tests. Images ``[B, C, H, W]`` in [0, 1] (grey or RGB) are resized to the model's
image size (bicubic, clamped to [0, 1] as CLIP's image processor does), grey ones repeated to 3
channels, and normalised with CLIP's mean and std.
"""

from __future__ import annotations

import string
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from clight.contract import ConfigError
from clight.data.sources import Source, resolve_source
from clight.data.task import SequenceInfo, Task
from clight.models.module import ContinualModule, default_optimizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    max_position_embeddings=64,
)


def prompt_tokenizer():
    """A character-level tokenizer over printable ASCII that wraps every text in ``<bos> ... <eos>``.

    ``<eos>`` has the highest id, so CLIP's text pooling finds it whichever rule the installed
    transformers applies (the position of the ``eos_token_id``, or the legacy argmax of the ids).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for c in string.printable:
        if c not in "\x0b\x0c\r":
            vocab.setdefault(c, len(vocab))
    vocab["<bos>"], vocab["<eos>"] = len(vocab), len(vocab) + 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_clip(tokenizer, seed: int = 0, **overrides):
    """A randomly initialised small ``CLIPModel`` (seeded) over ``tokenizer``'s vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    sizes = {**TINY_CLIP, **overrides}
    unknown = set(sizes) - set(TINY_CLIP)
    if unknown:
        raise ValueError(f"unknown tiny_config keys {sorted(unknown)}: use {sorted(TINY_CLIP)}")
    tower = {k: sizes[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    text = dict(
        tower,
        vocab_size=len(tokenizer),
        max_position_embeddings=sizes["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(tower, image_size=sizes["image_size"], patch_size=sizes["patch_size"])
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes["projection_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)


def load_clip(model: str, dtype: str = "float32", seed: int = 0, tiny_config: Optional[dict] = None):
    """``(CLIPModel, tokenizer)`` for ``tiny`` or a transformers name or path."""
    if model == "tiny":
        tokenizer = prompt_tokenizer()
        return tiny_clip(tokenizer, seed, **(tiny_config or {})).to(getattr(torch, dtype)), tokenizer
    from transformers import AutoTokenizer, CLIPModel

    try:
        net = CLIPModel.from_pretrained(model, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(model)
    except OSError as error:
        raise OSError(
            f"cannot load the CLIP model {model!r} ({error}). It needs the weights (downloaded from the Hugging Face hub "
            "or a local folder holding them); for an offline test use model: tiny."
        ) from error
    return net, tokenizer


def class_names_of(names: Union[str, Sequence[str], Source]) -> list[str]:
    """Class names from a list, or from a clight data source (``Source``, or a name: ``digits``,
    ``fashion_mnist``); a source's underscores become spaces (CIFAR-100's ``aquarium_fish``)."""
    if isinstance(names, (str, Source)):
        return [n.replace("_", " ") for n in resolve_source(names).data().class_names]
    return [str(n) for n in names]


class ContinualCLIP(ContinualModule):
    """CLIP as a class-incremental classifier over the classes seen so far.

    ``class_names``: one name per class id of the sequence, or a clight source (``Source``, e.g.
    ``Torchvision("CIFAR100")``, or a name: ``digits``, ``fashion_mnist``) to take its names. ``template``: the prompt, with ``{}`` for
    the class name. Evaluation also reports ``correct_task_aware`` (argmax among the sample's
    own task's classes, which CLIP can score before they are trained).
    """

    settings = ("class_incremental", "domain_incremental")
    settings_reason = " (an image is scored against the prompts of the classes seen so far)"
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
        dtype: str = "float32",
        tiny_config: Optional[dict] = None,
        seed: int = 0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
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
    def output_logits(self, batch: dict) -> torch.Tensor:
        """Logits ``[B, seen classes]`` against the prompts of the classes seen so far (no labels)."""
        return self.similarity(self.features(batch["input"]), self.text_features(self.seen_classes))

    def _positions(self, targets: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        lookup = torch.full((len(self.seen_mask),), -1, dtype=torch.long, device=targets.device)
        lookup[classes] = torch.arange(len(classes), device=targets.device)
        positions = lookup[targets]
        if (positions < 0).any():
            unseen = sorted(set(targets[positions < 0].tolist()))
            raise ValueError(f"training targets {unseen} belong to classes not seen yet: start their task first (on_task_start)")
        return positions

    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        classes = self.seen_classes
        features = self.features(batch["input"])
        logits = self.similarity(features, self.text_features(classes))
        loss = F.cross_entropy(logits.float(), self._positions(batch["target"], classes))
        return loss, {"features": features, "logits": logits}

    @torch.no_grad()
    def evaluation_counts(self, batch: dict) -> dict[str, torch.Tensor]:
        """Class-incremental accuracy over the seen classes, and task-aware accuracy (the sample's task's classes)."""
        every = torch.arange(len(self.seen_mask), device=self.seen_mask.device)
        logits = self.similarity(self.features(batch["input"]), self.text_features(every)).float()
        target = batch["target"]
        if self.seen_mask.any():
            correct = (logits.masked_fill(~self.seen_mask, float("-inf")).argmax(1) == target).sum()
        else:
            correct = torch.zeros((), dtype=torch.long, device=target.device)
        own = torch.zeros_like(logits, dtype=torch.bool)
        assert self.sequence is not None, "setup_sequence comes first"
        for t in batch["task_id"].unique().tolist():
            rows = (batch["task_id"] == t).nonzero().flatten()
            own[rows.unsqueeze(1), torch.tensor(self.sequence.task_classes[t], device=own.device).unsqueeze(0)] = True
        task_aware = (logits.masked_fill(~own, float("-inf")).argmax(1) == target).sum()
        return {"correct": correct, "total": torch.tensor(len(target), device=target.device), "correct_task_aware": task_aware}

    def describe(self) -> dict:
        out = super().describe()
        out.update(
            {
                "model": self.model_name,
                "template": self.template,
                "dtype": self.dtype_name,
                "image_size": list(self.image_size),
                "classes": len(self.class_names),
                "seen_classes": int(self.seen_mask.sum()),
                "projection_dim": int(self.clip.config.projection_dim),
            }
        )
        return out
