"""clight: continual learning on PyTorch Lightning.

Every public name is imported on first use (torch, Lightning, transformers and peft take
seconds to import), so ``import clight`` and ``clight --help`` start at once.
"""

from clight._lazy import lazy_attributes
from clight.dependency_warnings import filter_dependency_warnings

filter_dependency_warnings()

_LAZY = {
    **dict.fromkeys(
        [
            "DatasetList",
            "DatasetSource",
            "Digits",
            "FashionMNIST",
            "ImageFolders",
            "PermutedInputs",
            "Replay",
            "SplitClasses",
            "Task",
            "TaskSequence",
            "Torchvision",
        ],
        "clight.data",
    ),
    **dict.fromkeys(
        [
            "CausalLanguageModel",
            "ConfigError",
            "DistillableClassifier",
            "ExemplarClassifier",
            "GeneralTextData",
            "LabelFreeOutputs",
            "MemoryData",
            "RunContext",
        ],
        "clight.contract",
    ),
    "evaluate_tasks": "clight.evaluation",
    "export_model": "clight.export",
    **dict.fromkeys(["load_run", "open_run", "TrainedRun"], "clight.trained.restore"),
    "export_run": "clight.trained.export",
    "predict": "clight.trained.predict",
    "RankMismatchError": "clight.rank_check",
    "ContinualCallback": "clight.methods",
    **dict.fromkeys(
        ["average_accuracy", "average_incremental_accuracy", "backward_transfer", "forgetting", "forward_transfer", "summarize"],
        "clight.metrics",
    ),
    **dict.fromkeys(["MLP", "ContinualClassifier", "ContinualModule", "SmallCNN", "TimmBackbone"], "clight.models"),
    **dict.fromkeys(["RunInterrupted", "RunnerSettings", "RunResult", "SequenceRunner"], "clight.runner"),
    # method families and language models
    "EWC": "clight.methods.regularization",
    "LwF": "clight.methods.regularization",
    "SI": "clight.methods.regularization",
    "MAS": "clight.methods.regularization",
    "DERpp": "clight.methods.dark_replay",
    "AGEM": "clight.methods.agem",
    "ICaRL": "clight.methods.icarl",
    "GDumb": "clight.methods.gdumb",
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
    "SeqLoRA": "clight.methods.seq_lora",
    "IncLoRA": "clight.methods.inc_lora",
    "OLoRA": "clight.methods.o_lora",
    "InfLoRA": "clight.methods.inflora",
    "OSF": "clight.methods.osf",
    **dict.fromkeys(["SimpleCIL", "APER", "RanPAC"], "clight.methods.prototypes"),
    **dict.fromkeys(["L2P", "DualPrompt", "CODAPrompt"], "clight.methods.prompts"),
    **dict.fromkeys(
        [
            "TextTaskSequence",
            "TextTaskSpec",
            "InstructionSequence",
            "InstructionTask",
            "HFSource",
            "JsonlText",
            "CsvText",
            "HFText",
            "RottenTomatoes",
            "Tweets",
            "WikiExcerpt",
            "DebateTranscripts",
            "JsonlGeneral",
            "TextFolder",
            "HFGeneral",
        ],
        "clight.data.text",
    ),
    "compare_configs": "clight.compare",
    "compare_runs": "clight.compare",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__version__ = "0.1.0"

__all__ = list(_LAZY)
