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
from clight.methods.agem import AGEM
from clight.methods.dark_replay import DERpp
from clight.methods.gdumb import GDumb
from clight.methods.general_replay import GeneralPerplexity, GeneralReplay
from clight.methods.icarl import ICaRL
from clight.methods.inc_lora import IncLoRA
from clight.methods.inflora import InfLoRA
from clight.methods.moe_adapters import MoEAdapters
from clight.methods.o_lora import OLoRA
from clight.methods.osf import OSF
from clight.methods.plasticity import ContinualBackprop, PlasticityMonitor, ReDo, ShrinkPerturb
from clight.methods.prompts import L2P, CODAPrompt, DualPrompt
from clight.methods.prototypes import APER, RanPAC, SimpleCIL
from clight.methods.regularization import EWC, MAS, SI, LwF
from clight.methods.reprogramming import CLRClassifier
from clight.methods.selective_update import SPU
from clight.methods.seq_lora import SeqLoRA
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
    SI: lambda: (classifier(), digits(), [SI(), SI(c=0.5, gradient="total", nonnegative=True)]),
    MAS: lambda: (
        classifier(),
        digits(),
        [MAS(samples=64), MAS(importance="batch", accumulate="average", samples=64, batch_size=16)],
    ),
    DERpp: lambda: (
        classifier(),
        digits(),
        [DERpp(capacity=50, batch_size=16), DERpp(capacity=30, batch_size=8, replay_batches="one")],
    ),
    AGEM: lambda: (classifier(), digits(), [AGEM(samples_per_task=40, reference_batch_size=16), AGEM(20, 8, "per_task")]),
    # iCaRL and GDumb each replace the replay stream, so a run holds one of them
    ICaRL: lambda: (classifier(), digits(), [ICaRL(memory_size=60)]),
    GDumb: lambda: (classifier(), digits(), [GDumb(capacity=200)]),
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

# The LoRA family: one method per model (two would fight over the active adapters), so one instance each.
LORA = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
METHOD_EXAMPLES.update(
    {
        SeqLoRA: lambda: (tiny_lm(lora=LORA), text(), [SeqLoRA()]),
        IncLoRA: lambda: (tiny_lm(lora=LORA), text(), [IncLoRA(save_adapters=False)]),
        OLoRA: lambda: (tiny_lm(lora=LORA), text(), [OLoRA(lambda_1=0.5, lambda_2=0.1, penalty="abs")]),
        InfLoRA: lambda: (tiny_lm(lora=LORA), text(), [InfLoRA(samples=12, batch_size=4)]),
        OSF: lambda: (tiny_lm(), text(), [OSF(target_modules=["q_proj", "down_proj"])]),
    }
)

MODEL_EXAMPLES: dict[type, Example] = {
    ContinualClassifier: lambda: (classifier(), digits(), []),
    CLRClassifier: lambda: (clr(), digits(setting="task_incremental"), []),
    ContinualCausalLM: lambda: (tiny_lm(lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}), text(), []),
    ContinualCLIP: lambda: (tiny_clip(), digits(), []),
    L2P: lambda: (L2P(tiny_vit(), adam, pool_size=4, length=2, top_k=2), digits(), []),
    DualPrompt: lambda: (DualPrompt(tiny_vit(), adam, g_layers=[0], e_layers=[1], g_length=2, e_length=2), digits(), []),
    CODAPrompt: lambda: (CODAPrompt(tiny_vit(), adam, pool_size=4, length=2, layers=[0, 1], init="per_task"), digits(), []),
}
