"""``clight compare``: several runs of one task sequence in one table and one figure.

``compare_configs`` runs (or resumes, or reads) every config and ``compare_runs`` tabulates
finished run folders; both write ``comparison.md``, ``comparison.csv``, ``comparison.json``
and ``comparison.png``. See docs/compare.md.
"""

from clight.compare.comparison import OUTPUTS, Comparison, compare_configs, compare_runs, write_comparison
from clight.compare.controls import CONTROL_FILES, Control, read_controls, register_control_file
from clight.compare.plan import PlannedRun, config_differences, plan_runs
from clight.compare.record import (
    RunNotFinished,
    RunRecord,
    SequenceMismatch,
    check_same_sequence,
    read_run,
    sequence_differences,
    task_sequence,
)

__all__ = [
    "CONTROL_FILES",
    "OUTPUTS",
    "Comparison",
    "Control",
    "PlannedRun",
    "RunNotFinished",
    "RunRecord",
    "SequenceMismatch",
    "check_same_sequence",
    "compare_configs",
    "compare_runs",
    "config_differences",
    "plan_runs",
    "read_controls",
    "read_run",
    "register_control_file",
    "sequence_differences",
    "task_sequence",
    "write_comparison",
]
