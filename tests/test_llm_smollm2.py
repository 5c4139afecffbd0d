"""Instruction tasks on the real SmolLM2-135M-Instruct: its own chat template writes chat records,
O-LoRA's prompt starts with its BOS, and on its float32 weights the cached candidate scores and
batched generation agree with the full-sequence and one-by-one ones."""

import pytest
import torch
from llm_fixtures import CHAT, cl_benchmark, jsonl

from clight.data.text import InstructionSequence, InstructionTask
from clight.models.lm_decoding import cached_candidate_scores, greedy_generate, stop_tokens

pytestmark = pytest.mark.lm


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return cl_benchmark(tmp_path_factory.mktemp("bench") / "bench")


def test_chat_records_use_smollm2s_template_and_its_end_of_turn(tmp_path):
    data = InstructionSequence([InstructionTask("c", "chat", path=str(jsonl(tmp_path / "c.jsonl", CHAT)))], tokenizer="smollm2")
    tok = data.tokenizer
    t = data.tasks[0]
    items = [s[i] for s in (t.train, t.val, t.test) for i in range(len(s))]
    pairs = {(tok.decode(it["prompt"]), tok.decode(it["answer"])) for it in items}
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert (system + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Hello<|im_end|>\n") in pairs
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_tokens(torch.nn.Module(), tok)  # generation stops at the end of turn


def test_cl_benchmark_prompt_starts_with_smollm2s_bos(bench):
    data = InstructionSequence(root=str(bench), order="order1", tokenizer="smollm2", max_length=128)
    item = data.tasks[0].test[0]
    assert item["prompt"][0] == data.tokenizer.bos_token_id
    assert data.tokenizer.decode(item["prompt"][1:]).startswith("Task:TC\nDataset:news\n")


def test_cached_scores_and_batched_generation_on_smollm2(bench):
    from clight.models.causal_lm import ContinualCausalLM

    data = InstructionSequence(root=str(bench), order="order1", tokenizer="smollm2", max_length=128, eval_batch_size=4)
    model = ContinualCausalLM("smollm2").eval()
    batch = next(iter(data.evaluation_loader(0)))
    reference, cached = model.choice_scores(batch), cached_candidate_scores(model.net, batch)
    assert torch.allclose(cached, reference, atol=1e-4, rtol=0) and torch.equal(cached.argmax(1), reference.argmax(1))
    stop = stop_tokens(model.net, model.tokenizer)
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    together = greedy_generate(model.net, ids, mask, 6, stop, model.tokenizer.pad_token_id)
    alone = [
        greedy_generate(model.net, r[m.bool()][None], torch.ones_like(r[m.bool()][None]), 6, stop, 0)[0]
        for r, m in zip(ids, mask)
    ]
    assert together == alone
