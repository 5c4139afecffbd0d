"""Text task sequences for causal language models, and the general text GeRe replays.

A text task turns labelled text into instruction-style samples: a prompt (instruction + text +
``Answer:``) and an answer (the label's word). Training uses the language-model loss on the
answer tokens; evaluation scores every candidate answer's likelihood after the prompt. A fixed
set of general samples is mixed into every task's training stream; held-out general text
(never replayed) measures general ability by perplexity.

- ``sources``: labelled text (JSONL, CSV, Hugging Face, offline Rotten Tomatoes and tweets);
- ``general_sources``: unlabelled general text (JSONL, a ``.txt`` folder, Hugging Face, the
  offline Wikipedia excerpt and 2016 debate transcripts);
- ``tasks``: prompts and answers, tokenised once (``TextTaskSpec``, ``TextTasks``);
- ``general``: the replayed general set and the held-out split;
- ``batches``: padding and the batch layout;
- ``datamodule``: ``TextTaskSequence``;
- ``instruct``: your own tasks (Alpaca, chat, prompt/completion, O-LoRA CL_Benchmark folders,
  Hugging Face datasets) and named task orders: ``InstructionSequence``, ``InstructionTask``.
"""

from clight.data.text.batches import IGNORE, TextCollator
from clight.data.text.datamodule import GeneralMode, TextTaskSequence
from clight.data.text.general import GeneralSet, general_splits
from clight.data.text.general_sources import (
    GENERAL_SOURCES,
    DebateTranscripts,
    GeneralSource,
    HFGeneral,
    JsonlGeneral,
    TextFolder,
    WikiExcerpt,
)
from clight.data.text.instruct import HFSource, InstructionSequence, InstructionTask
from clight.data.text.sources import CsvText, HFText, JsonlText, LabelledTexts, RottenTomatoes, TextSource, Tweets
from clight.data.text.tasks import BUILTIN_TASKS, TextExamples, TextTasks, TextTaskSpec, encode_task, resolve_task

__all__ = [
    "BUILTIN_TASKS",
    "GENERAL_SOURCES",
    "IGNORE",
    "CsvText",
    "DebateTranscripts",
    "GeneralMode",
    "GeneralSet",
    "GeneralSource",
    "HFSource",
    "HFGeneral",
    "HFText",
    "InstructionSequence",
    "InstructionTask",
    "JsonlGeneral",
    "JsonlText",
    "LabelledTexts",
    "RottenTomatoes",
    "TextCollator",
    "TextExamples",
    "TextFolder",
    "TextSource",
    "TextTaskSequence",
    "TextTaskSpec",
    "TextTasks",
    "Tweets",
    "WikiExcerpt",
    "encode_task",
    "general_splits",
    "resolve_task",
]
