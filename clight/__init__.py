"""clight: continual learning on PyTorch Lightning."""

from clight.data import (
    DatasetList, DatasetSource, Digits, FashionMNIST, PermutedInputs, Replay, SplitClasses, Task,
    TaskSequence, Torchvision,
)
from clight.evaluation import evaluate_tasks
from clight.methods import ContinualCallback
from clight.metrics import (
    average_accuracy, average_incremental_accuracy, backward_transfer, forgetting, forward_transfer, summarize,
)
from clight.models import MLP, ContinualClassifier, ContinualModule, SmallCNN, TimmBackbone
from clight.runner import RunResult, SequenceRunner

__version__ = "0.1.0"

__all__ = [
    "MLP", "ContinualCallback", "ContinualClassifier", "ContinualModule", "DatasetList", "DatasetSource",
    "Digits", "FashionMNIST", "PermutedInputs", "Replay", "RunResult", "SequenceRunner", "SmallCNN",
    "SplitClasses", "Task", "TaskSequence", "TimmBackbone", "Torchvision", "average_accuracy",
    "average_incremental_accuracy", "backward_transfer", "evaluate_tasks", "forgetting", "forward_transfer",
    "summarize",
]
