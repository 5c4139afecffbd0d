"""clight: continual learning on PyTorch Lightning."""

from clight.data import (
    DatasetList, DatasetSource, Digits, FashionMNIST, PermutedInputs, Replay, SplitClasses, Task,
    TaskSequence, Torchvision,
)
from clight.contract import (
    CausalLanguageModel, ConfigError, DistillableClassifier, GeneralTextData, LabelFreeOutputs, RunContext,
)
from clight.evaluation import evaluate_tasks
from clight.methods import ContinualCallback
from clight.metrics import (
    average_accuracy, average_incremental_accuracy, backward_transfer, forgetting, forward_transfer, summarize,
)
from clight.models import MLP, ContinualClassifier, ContinualModule, SmallCNN, TimmBackbone
from clight.runner import RunnerSettings, RunResult, SequenceRunner

# Method families and language models; imported on first use (transformers and peft are heavy).
_LAZY = {
    "EWC": "clight.methods.regularization",
    "LwF": "clight.methods.regularization",
    "CLRClassifier": "clight.methods.reprogramming",
    "save_task_adapter": "clight.methods.reprogramming",
    "load_task_adapter": "clight.methods.reprogramming",
    "PretrainedTimmBackbone": "clight.models.pretrained",
    "Subsample": "clight.data.subsample",
    "GeneralReplay": "clight.methods.general_replay",
    "GeneralPerplexity": "clight.methods.general_replay",
    "MoEAdapters": "clight.methods.moe_adapters",
    "ContinualCausalLM": "clight.models.causal_lm",
    "ContinualCLIP": "clight.models.clip",
    "SPU": "clight.methods.selective_update",
    "TextTaskSequence": "clight.data.text",
    "TextTaskSpec": "clight.data.text",
    "JsonlText": "clight.data.text",
    "CsvText": "clight.data.text",
    "HFText": "clight.data.text",
    "RottenTomatoes": "clight.data.text",
    "Tweets": "clight.data.text",
    "WikiExcerpt": "clight.data.text",
    "JsonlGeneral": "clight.data.text",
    "TextFolder": "clight.data.text",
    "HFGeneral": "clight.data.text",
    "compare_configs": "clight.compare",
    "compare_runs": "clight.compare",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clight' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "CausalLanguageModel", "ConfigError", "DistillableClassifier", "GeneralTextData", "LabelFreeOutputs", "RunContext",
    "RunnerSettings", "MLP", "ContinualCallback", "ContinualClassifier", "ContinualModule", "DatasetList", "DatasetSource",
    "Digits", "FashionMNIST", "PermutedInputs", "Replay", "RunResult", "SequenceRunner", "SmallCNN",
    "SplitClasses", "Task", "TaskSequence", "TimmBackbone", "Torchvision", "average_accuracy",
    "average_incremental_accuracy", "backward_transfer", "evaluate_tasks", "forgetting", "forward_transfer",
    "summarize",
    *_LAZY,
]
