"""The second general-ability control: perplexity on text from another domain than the replayed
general text (the 2016 debate transcripts), never replayed, measured beside the held-out
Wikipedia perplexity and shown by clight compare."""

import math

import torch
from contract_examples import tiny_lm

from clight.compare.controls import read_controls
from clight.contract import RunContext
from clight.data.text import DebateTranscripts, TextTaskSequence
from clight.methods.general_replay import GeneralPerplexity
from clight.models.causal_lm import token_nll


def test_the_debate_transcripts_are_spoken_passages_of_four_debates():
    docs = DebateTranscripts().documents()
    assert len(docs) == 4 and sum(len(d) for d in docs) == 299 and all(len(p) >= 200 for d in docs for p in d)
    assert docs[0][0].startswith("I'm Elaine Quijano, anchor at CBSN")  # the vice-presidential debate's moderator


def test_general_perplexity_measures_the_control_text_too_and_compare_reads_both(tmp_path):
    data = TextTaskSequence(
        tasks=["rt_sentiment"],
        tokenizer="char",
        max_length=64,
        max_train_per_task=8,
        max_test_per_task=2,
        general_samples=4,
        general_max_length=48,
        heldout_general=3,
        control_text="debates",
        control_samples=5,
        batch_size=4,
    )
    model = tiny_lm()
    meter = GeneralPerplexity(batch_size=2)
    meter.setup_sequence(model, data, RunContext(tmp_path))
    control = data.control_set
    assert len(control) == 5 and not set(map(tuple, control.ids)) & set(map(tuple, data.general_set.ids))
    total, count = 0.0, 0
    with torch.no_grad():  # by hand: token-level perplexity of the control passages
        for batch in data.general_loader(control, 2):
            nll, valid = token_nll(model(batch["input_ids"], batch["attention_mask"])[0], batch["labels"])
            total, count = total + float((nll * valid).sum()), count + int(valid.sum())
    assert meter.control_history == [math.exp(total / count)]
    meter.on_task_end(model, data.tasks[0])
    controls = {c.name: c for c in read_controls(tmp_path, {})}
    assert set(controls) == {"general_perplexity", "control_text_perplexity"}
    other = controls["control_text_perplexity"]
    assert other.before == meter.control_history[0] and other.per_task == (meter.control_history[1],)
    assert "debates_2016" in other.what and data.describe()["control_text"] == "debates_2016"
