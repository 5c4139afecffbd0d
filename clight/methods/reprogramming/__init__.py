"""CLR: channel-wise lightweight reprogramming (Ge et al., ICCV 2023), task-keyed like peft."""

from clight.methods.reprogramming.injection import (
    CONV_VARIANTS,
    DEFAULT_LINEAR_TARGETS,
    DEPRECATED_VARIANTS,
    VARIANT_ORIGINS,
    VARIANTS,
    add_task,
    canonical_variant,
    conv_targets,
    inject,
    kernel_size_for,
    linear_targets,
    remove_task,
    set_task,
    task_layers,
    task_parameters,
)
from clight.methods.reprogramming.io import load_task_adapter, save_task_adapter, task_adapter_state
from clight.methods.reprogramming.layers import ChannelAffine, ReprogrammedConv, TaskKeyedLayer, TaskNorm, dirac_kernel
from clight.methods.reprogramming.model import CLRClassifier, clr_norm_penalty, clr_step_schedule, parameter_budget

__all__ = [
    "CONV_VARIANTS",
    "CLRClassifier",
    "ChannelAffine",
    "DEFAULT_LINEAR_TARGETS",
    "DEPRECATED_VARIANTS",
    "ReprogrammedConv",
    "TaskKeyedLayer",
    "TaskNorm",
    "VARIANTS",
    "VARIANT_ORIGINS",
    "add_task",
    "canonical_variant",
    "clr_norm_penalty",
    "clr_step_schedule",
    "conv_targets",
    "dirac_kernel",
    "inject",
    "kernel_size_for",
    "linear_targets",
    "load_task_adapter",
    "parameter_budget",
    "remove_task",
    "save_task_adapter",
    "set_task",
    "task_adapter_state",
    "task_layers",
    "task_parameters",
]
