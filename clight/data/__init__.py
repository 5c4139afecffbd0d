from clight.data.datamodule import TaskSequence
from clight.data.folders import ImageFolders
from clight.data.replay import ClassBalancedMemory, Replay, ReplayMemory, ReservoirMemory, UnboundedMemory
from clight.data.samplers import ShardedBatchSampler, evaluation_batches
from clight.data.scenarios import DatasetList, PermutedInputs, PixelPermutation, Scenario, SplitClasses
from clight.data.sources import DatasetSource, Digits, FashionMNIST, Source, SourceData, Torchvision, read_idx
from clight.data.task import SequenceInfo, Task
from clight.data.views import ArrayDataset, ConcatViews, TaskView, collate_dict_batch, dataset_targets

__all__ = [
    "ArrayDataset",
    "ClassBalancedMemory",
    "ConcatViews",
    "DatasetList",
    "DatasetSource",
    "Digits",
    "FashionMNIST",
    "ImageFolders",
    "PermutedInputs",
    "PixelPermutation",
    "Replay",
    "ReplayMemory",
    "ReservoirMemory",
    "Scenario",
    "SequenceInfo",
    "ShardedBatchSampler",
    "Source",
    "SourceData",
    "SplitClasses",
    "Task",
    "TaskSequence",
    "TaskView",
    "Torchvision",
    "UnboundedMemory",
    "collate_dict_batch",
    "dataset_targets",
    "evaluation_batches",
    "read_idx",
]
