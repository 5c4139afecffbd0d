"""A tiny, fast example run for every method and model class of clight, for tests/test_contract.py.

Every concrete ``ContinualCallback`` and ``ContinualModule`` in the ``clight`` package needs an
entry here: the contract test fails for a class that has none, so a new method cannot land
untested. An example is a function returning ``(model, data, methods)``; a method example
returns two instances of the method (differently configured where that makes sense) so that
the run also proves two instances coexist in one run and in its checkpoints.
"""

from __future__ import annotations

from typing import Callable

import torch

from clight import MLP, ContinualClassifier, PermutedInputs, SplitClasses, TaskSequence
from clight.methods.general_replay import GeneralPerplexity, GeneralReplay
from clight.methods.moe_adapters import MoEAdapters
from clight.methods.plasticity import ContinualBackprop, PlasticityMonitor, ReDo, ShrinkPerturb
from clight.methods.prompts import L2P, CODAPrompt, DualPrompt
from clight.methods.prototypes import APER, RanPAC, SimpleCIL
from clight.methods.regularization import EWC, LwF
from clight.methods.reprogramming import CLRClassifier
from clight.methods.selective_update import SPU
from clight.models.backbones import SmallCNN
from clight.models.causal_lm import ContinualCausalLM
from clight.models.clip import ContinualCLIP

Example = Callable[[], tuple]

TRAINER = dict(
    accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, enable_model_summary=False, deterministic=True
)
# Models whose one epoch has fewer batches than this are killed in the second epoch instead.
KILL_AT = dict(task=1, epoch=1, batch=1)


def digits(num_tasks: int = 2, setting: str = "class_incremental") -> TaskSequence:
    return TaskSequence(SplitClasses("digits", num_tasks=num_tasks, setting=setting), batch_size=64, seed=0)


def permuted_digits() -> TaskSequence:
    return TaskSequence(PermutedInputs("digits", num_tasks=2, train_samples_per_task=256), batch_size=32, seed=0)


def classifier() -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(MLP([32, 32]))


def text() -> "object":
    from clight.data.text import TextTaskSequence

    return TextTaskSequence(
        tasks=["rt_sentiment", "rt_subjectivity"],
        tokenizer="char",
        max_length=64,
        max_train_per_task=16,
        max_test_per_task=4,
        general_samples=8,
        general_max_length=32,
        heldout_general=2,
        batch_size=8,
        eval_batch_size=8,
    )


def tiny_lm(**kwargs) -> ContinualCausalLM:
    torch.manual_seed(0)  # LoRA's initial weights come from the global generator (like classifier()'s)
    return ContinualCausalLM("tiny", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), **kwargs)


def tiny_clip() -> ContinualCLIP:
    return ContinualCLIP("tiny", class_names="digits", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.2))


def frozen_classifier() -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(MLP([32]), train_backbone=False)


def tiny_vit() -> "object":
    from clight import TimmBackbone

    torch.manual_seed(0)
    return TimmBackbone("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, image_size=8)


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=0.01)


def clr() -> CLRClassifier:
    torch.manual_seed(0)
    return CLRClassifier(SmallCNN((8, 16)), optimizer=lambda p: torch.optim.Adam(p, lr=0.01))


METHOD_EXAMPLES: dict[type, Example] = {
    EWC: lambda: (
        classifier(),
        permuted_digits(),
        [EWC(lambda_=100.0, fisher_samples=40), EWC(lambda_=10.0, fisher_samples=20, mode="separate")],
    ),
    LwF: lambda: (classifier(), digits(), [LwF(alpha=1.0), LwF(alpha=0.5, temperature=1.0)]),
    ContinualBackprop: lambda: (
        classifier(),
        permuted_digits(),
        [
            ContinualBackprop(replacement_rate=0.05, maturity_threshold=2, layers=["backbone.layers.0"]),
            ContinualBackprop(replacement_rate=0.05, maturity_threshold=2, layers=["backbone.layers.2"]),
        ],
    ),
    ReDo: lambda: (classifier(), permuted_digits(), [ReDo(threshold=0.3, frequency=3), ReDo(threshold=0.1, frequency=5)]),
    ShrinkPerturb: lambda: (classifier(), permuted_digits(), [ShrinkPerturb(), ShrinkPerturb(mode="step", noise_std=1e-3)]),
    PlasticityMonitor: lambda: (
        classifier(),
        permuted_digits(),
        [PlasticityMonitor(probe_size=64), PlasticityMonitor(probe_size=32, probe="first")],
    ),
    GeneralReplay: lambda: (tiny_lm(), text(), [GeneralReplay("tm"), GeneralReplay("feature_l2", weight=1.0)]),
    GeneralPerplexity: lambda: (tiny_lm(), text(), [GeneralPerplexity(batch_size=2), GeneralPerplexity(batch_size=4)]),
    SPU: lambda: (
        tiny_clip(),
        digits(),
        [
            SPU(targets=[r"vision_model\..*mlp\.fc1$"]),
            SPU(fraction=0.2, targets=[r"text_model\..*mlp\.fc1$"], full=[], variant="released_code"),
        ],
    ),
    # two instances on disjoint blocks of the tiny Llama, each with its own experts, routers and DDAS
    MoEAdapters: lambda: (
        tiny_lm(),
        text(),
        [
            MoEAdapters(num_experts=4, bottleneck=8, blocks=[r"layers\.0$"], ae_steps=20),
            MoEAdapters(
                num_experts=3, top_k=1, bottleneck=8, blocks=[r"layers\.1$"], balance_weight=0.01, ae_steps=20, ddas_samples=8
            ),
        ],
    ),
    # one instance each: a second would replace the head the first owns, and is refused
    SimpleCIL: lambda: (frozen_classifier(), digits(), [SimpleCIL()]),
    APER: lambda: (frozen_classifier(), digits(), [APER("finetune")]),
    RanPAC: lambda: (frozen_classifier(), digits(), [RanPAC(projection_dim=24, ridge_grid=[0.1, 1.0, 10.0])]),
}

MODEL_EXAMPLES: dict[type, Example] = {
    ContinualClassifier: lambda: (classifier(), digits(), []),
    CLRClassifier: lambda: (clr(), digits(setting="task_incremental"), []),
    ContinualCausalLM: lambda: (tiny_lm(lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}), text(), []),
    ContinualCLIP: lambda: (tiny_clip(), digits(), []),
    L2P: lambda: (L2P(tiny_vit(), adam, pool_size=4, length=2, top_k=2), digits(), []),
    DualPrompt: lambda: (DualPrompt(tiny_vit(), adam, g_layers=[0], e_layers=[1], g_length=2, e_length=2), digits(), []),
    CODAPrompt: lambda: (CODAPrompt(tiny_vit(), adam, pool_size=4, length=2, layers=[0, 1], init="per_task"), digits(), []),
}
