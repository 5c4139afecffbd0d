"""Your own language-model tasks: instruction records (Alpaca, chat messages, prompt/completion),
O-LoRA's CL_Benchmark folders and Hugging Face datasets, in named task orders (docs/llm_tasks.md).

- ``records``: reading records with their file and line (``RecordError``);
- ``formats`` and ``chat``: how a record becomes a prompt and an answer;
- ``olora``: CL_Benchmark task folders and O-LoRA's prompt; ``orders``: named task orders;
- ``hf``: Hugging Face sources; ``task``: ``InstructionTask`` (one task in a config);
- ``encode``: tokenisation to ``max_length`` and the cut-answer count; ``scenario``: the splits;
- ``sequence``: ``InstructionSequence``, the data module.
"""

from clight.data.text.instruct.chat import ChatStyle, Rendered
from clight.data.text.instruct.formats import RecordFormat
from clight.data.text.instruct.hf import HFSource
from clight.data.text.instruct.records import Record, RecordError, read_records
from clight.data.text.instruct.scenario import InstructionTasks
from clight.data.text.instruct.sequence import InstructionSequence
from clight.data.text.instruct.task import InstructionTask

__all__ = [
    "ChatStyle",
    "HFSource",
    "InstructionSequence",
    "InstructionTask",
    "InstructionTasks",
    "Record",
    "RecordError",
    "RecordFormat",
    "Rendered",
    "read_records",
]
