from clight.metrics.cl_metrics import (
    FWT_CONVENTION,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)

__all__ = [
    "FWT_CONVENTION",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "summarize",
]
