from clight.metrics.cl_metrics import (
    FORGETTING_CONVENTION,
    FWT_CLASS_INCREMENTAL,
    FWT_CONVENTION,
    REFERENCE_KINDS,
    IntransigenceReference,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    intransigence,
    summarize,
)

__all__ = [
    "FORGETTING_CONVENTION",
    "FWT_CLASS_INCREMENTAL",
    "FWT_CONVENTION",
    "REFERENCE_KINDS",
    "IntransigenceReference",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "intransigence",
    "summarize",
]
