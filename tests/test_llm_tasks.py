"""Your own language-model tasks: every record format gives the prompt and answer its docs promise,
bad records stop `clight fit` with one line naming the file and line (exit 2, nothing written),
named orders, the splits, the cut-answer count and replay of earlier tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_fixtures import (
    ALPACA,
    CHAT,
    PROMPT_COMPLETION,
    SC_INSTRUCTION,
    TC_INSTRUCTION,
    cl_benchmark,
    jsonl,
    lm_config,
    write_json,
)

from clight.assets.tokenizers import char_tokenizer
from clight.cli import main
from clight.data.replay import Replay
from clight.data.text import InstructionSequence, InstructionTask
from clight.data.text.instruct import HFSource

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
ALPACA_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"


def texts(data: InstructionSequence, task: int = 0, skip_special: bool = False) -> set[tuple[str, str]]:
    """(prompt, answer) of every item of a task, decoded (the char tokenizer decodes exactly)."""
    tok, t = data.tokenizer, data.tasks[task]
    items = [split[i] for split in (t.train, t.val, t.test) for i in range(len(split))]
    return {(tok.decode(it["prompt"], skip_special_tokens=skip_special), tok.decode(it["answer"])) for it in items}


def sequence(tasks, **kwargs) -> InstructionSequence:
    kwargs.setdefault("tokenizer", "char")
    kwargs.setdefault("max_length", 400)
    return InstructionSequence(tasks=tasks, **kwargs)


def test_alpaca_records_use_the_alpaca_template_with_and_without_input(tmp_path):
    task = InstructionTask(
        "alpaca", "alpaca", train=str(jsonl(tmp_path / "t.jsonl", ALPACA[:4])), test=str(jsonl(tmp_path / "s.jsonl", ALPACA[4:]))
    )
    got = texts(sequence([task]))
    assert (ALPACA_WITH_INPUT + "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n", "5<eos>") in got
    assert (ALPACA_NO_INPUT + "### Instruction:\nName a colour.\n\n### Response:\n", "blue<eos>") in got
    assert ("You are terse.\n\n### Instruction:\nSay hi.\n\n### Response:\n", "hi<eos>") in got  # system replaces the preamble
    assert len(got) == 6


def test_alpaca_as_chat_and_chat_messages_in_the_plain_style(tmp_path):
    path = write_json(tmp_path / "a.json", ALPACA, indent=2)  # a JSON array
    got = texts(sequence([InstructionTask("a", "alpaca", path=str(path), prompt_style="chat")]))
    assert ("User: Add the numbers.\n\n2 and 3\nAssistant:", " 5<eos>") in got
    assert ("System: You are terse.\nUser: Say hi.\nAssistant:", " hi<eos>") in got
    chat = texts(sequence([InstructionTask("c", "chat", path=str(jsonl(tmp_path / "c.jsonl", CHAT)))]))
    assert ("System: Be brief.\nUser: 2+2?\nAssistant: 4\nUser: 3+3?\nAssistant:", " 6<eos>") in chat


def test_chat_messages_use_the_tokenizers_chat_template(tmp_path):
    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    data = sequence([InstructionTask("c", "chat", path=str(jsonl(tmp_path / "c.jsonl", CHAT)))], tokenizer=tok)
    got = texts(data)
    assert ("<user>Hi\n<assistant>", "Hello\n") in got  # the template's own end of turn, no EOS added
    assert ("<system>Be brief.\n<user>2+2?\n<assistant>4\n<user>3+3?\n<assistant>", "6\n") in got


def test_prompt_completion_records_are_used_verbatim(tmp_path):
    got = texts(sequence([InstructionTask("pc", "prompt_completion", path=str(jsonl(tmp_path / "p.jsonl", PROMPT_COMPLETION)))]))
    assert got == {(r["prompt"], r["completion"] + "<eos>") for r in PROMPT_COMPLETION}


def test_cl_benchmark_prompts_are_built_as_o_lora_builds_them(tmp_path):
    root = cl_benchmark(tmp_path / "bench")
    tok = char_tokenizer()
    tok.bos_token = "<unk>"  # a BOS to see it put first, as O-LoRA puts it
    data = InstructionSequence(root=str(root), order="all", tokenizer=tok, max_length=400)
    sentence = "Title: item 102\nText: a short story about world number 102.\n"
    expected = f"Task:TC\nDataset:news\n{TC_INSTRUCTION}Option: World, Sports, Science \n{sentence}\nAnswer:"
    assert ("<unk>" + expected, "World<eos>") in texts(data, 0)
    mood = next(iter(texts(data, 1)))[0]
    assert mood.startswith(f"<unk>Task:SC\nDataset:mood\n{SC_INSTRUCTION}Option: positive, negative \nText: I felt")
    reason = sorted(texts(data, 2))[0]  # no instruction for its category: no instruction, no option line
    assert reason[0].startswith('<unk>Task:COPA\nDataset:reason\nWhich is the cause of "x') and reason[0].endswith(
        "B: b\nAnswer:"
    )
    item = data.tasks[0].test[0]
    assert [tok.decode(c) for c in item["choices"]] == ["World<eos>", "Sports<eos>", "Science<eos>"] and item[
        "target"
    ] == 1  # item 100: Sports


def test_cl_benchmark_in_o_loras_own_layout_takes_the_category_from_the_folder(tmp_path):
    flat = cl_benchmark(tmp_path / "flat")
    native = tmp_path / "CL_Benchmark"
    (native / "TC").mkdir(parents=True)
    (flat / "news").rename(native / "TC" / "news")
    (flat / "instructions.json").rename(native / "instruction_config.json")
    data = sequence([InstructionTask("news", "cl_benchmark")], root=str(native))
    assert all(p.startswith(f"Task:TC\nDataset:news\n{TC_INSTRUCTION}") for p, _ in texts(data))


def test_a_hugging_face_source_from_a_local_folder_with_a_column_map(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "hf"
    jsonl(folder / "train.jsonl", [{"q": r["prompt"], "a": r["completion"]} for r in PROMPT_COMPLETION[:3]])
    jsonl(folder / "test.jsonl", [{"q": "Q: 2+2?\nA:", "a": " 4"}])
    task = InstructionTask("hf", "prompt_completion", hf=HFSource(str(folder)), columns={"prompt": "q", "completion": "a"})
    data = sequence([task])
    assert texts(data) == {(r["prompt"], r["completion"] + "<eos>") for r in PROMPT_COMPLETION[:3]} | {("Q: 2+2?\nA:", " 4<eos>")}
    assert [data.tokenizer.decode(data.tasks[0].test[0]["answer"])] == [" 4<eos>"]


# -- bad records: one line naming file and line, exit status 2, no run folder ------------------------
def _bad_alpaca(tmp):
    path = jsonl(tmp / "bad.jsonl", [ALPACA[0], {"instruction": "Forgot the output."}, ALPACA[1]])
    return f"    tasks: [{{name: a, format: alpaca, path: {path}}}]", [f"{path} line 2 (record 2)", "no 'output' field"]


def _bad_role(tmp):
    records = [CHAT[0], {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}]
    path = write_json(tmp / "bad.json", records, indent=2)
    line = [i for i, text in enumerate(path.read_text().splitlines(), 1) if text == "  {"][1]  # where the second record starts
    return f"    tasks: [{{name: c, format: chat, path: {path}}}]", [f"{path} line {line} (record 2)", "unknown role 'bot'"]


def _bad_label(tmp):
    root = cl_benchmark(tmp / "bench")
    records = json.loads((root / "news" / "train.json").read_text())
    records[2]["label"] = "Politics"
    write_json(root / "news" / "train.json", records)
    return f"    root: {root}\n    order: order1", [f"{root / 'news' / 'train.json'} line 1 (record 3)", "'Politics' is not in"]


def _unknown_task(tmp):
    root = cl_benchmark(tmp / "bench")
    write_json(root / "orders.json", {"orders": {"order1": ["news", "mood"], "bad": ["news", "nope"]}}, 2)
    return f"    root: {root}\n    order: bad", [f"{root / 'orders.json'} line 9", "names the task 'nope'"]


def _empty_task(tmp):
    root = cl_benchmark(tmp / "bench")
    write_json(root / "mood" / "test.json", [])
    return f"    root: {root}\n    order: order1", [f"{root / 'mood' / 'test.json'}", "holds no test records"]


@pytest.mark.parametrize("make", [_bad_alpaca, _bad_role, _bad_label, _unknown_task, _empty_task])
def test_a_bad_record_stops_the_run_with_one_line_naming_file_and_line(make, tmp_path, capsys):
    data, expected = make(tmp_path)
    run_dir = tmp_path / "run"
    config = lm_config(tmp_path / "c.yaml", run_dir, data + "\n    tokenizer: char\n    max_length: 300")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("clight fit: error: ")
    assert all(part in line for part in expected), line
    assert not run_dir.exists()


def test_samples_whose_answer_does_not_fit_are_counted_left_out_and_refused_above_the_fraction(tmp_path):
    long = {"prompt": "Q: " + "very " * 20 + "long?\nA:", "completion": " yes"}
    train = jsonl(tmp_path / "train.jsonl", PROMPT_COMPLETION)
    test = jsonl(tmp_path / "test.jsonl", [PROMPT_COMPLETION[0], long, PROMPT_COMPLETION[1]])
    task = InstructionTask("pc", "prompt_completion", train=str(train), test=str(test))
    with pytest.raises(
        ValueError, match=r"task 'pc': 1 of 3 test samples \(33.3%\) do not fit max_length=40.*max_cut_fraction=0.05"
    ):
        _ = sequence([task], max_length=40).tasks
    with pytest.warns(
        UserWarning, match=r"1 of 3 test samples \(33.3%\) do not fit max_length=40 with their answer and are left out"
    ):
        data = sequence([task], max_length=40, max_cut_fraction=0.5)
        assert len(data.tasks[0].test) == 2
    assert data.describe()["instruction_tasks"][0]["test_samples"] == {"kept": 2, "shortened": 0, "cut": 1}


def test_a_long_prompt_body_is_shortened_and_the_answer_kept(tmp_path):
    root = cl_benchmark(tmp_path / "bench")
    data = sequence([InstructionTask("news", "cl_benchmark")], root=str(root), max_length=150)
    for prompt, answer in texts(data):
        assert len(data.tokenizer(prompt + answer.replace("<eos>", "?"))["input_ids"]) <= 150
        assert prompt.endswith("\nAnswer:") and answer in ("World<eos>", "Sports<eos>", "Science<eos>")
    assert data.describe()["instruction_tasks"][0]["test_samples"]["shortened"] == 6


def test_named_orders_give_every_task_the_same_items_in_any_order(tmp_path):
    root = cl_benchmark(tmp_path / "bench")
    one = InstructionSequence(root=str(root), order="order1", tokenizer="char", max_length=300)
    two = InstructionSequence(root=str(root), order="order2", tokenizer="char", max_length=300)
    assert [t.name for t in one.tasks] == ["news", "mood"] and [t.name for t in two.tasks] == ["mood", "news"]
    assert texts(one, 0) == texts(two, 1) and texts(one, 1) == texts(two, 0)
    assert one.describe()["order"] == "order1" and two.describe()["task_order"] == ["mood", "news"]


def test_train_per_class_cap_keeps_the_first_items_of_every_label_in_file_order(tmp_path):
    root = cl_benchmark(tmp_path / "bench")
    data = sequence([InstructionTask("news", "cl_benchmark")], root=str(root), max_train_per_class=2)
    t = data.tasks[0]
    train = {
        data.tokenizer.decode(s[i]["prompt"]).split("item ")[1].split("\n")[0] for s in (t.train, t.val) for i in range(len(s))
    }
    assert train == {"0", "1", "2", "3", "4", "5"}  # labels cycle World, Sports, Science: two of each


def test_loss_on_all_tokens_labels_the_prompt_too(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", PROMPT_COMPLETION)
    answer_only = sequence([InstructionTask("pc", "prompt_completion", path=str(path))])
    every = sequence([InstructionTask("pc", "prompt_completion", path=str(path))], loss_on="all")
    a, b = answer_only.tasks[0].train[0], every.tasks[0].train[0]
    assert b["prompt"] == [] and b["answer"] == a["prompt"] + a["answer"]
    assert every.tasks[0].test[0]["prompt"] == answer_only.tasks[0].test[0]["prompt"]  # scoring still uses the prompt


def test_replay_adds_earlier_tasks_training_samples(tmp_path):
    root = cl_benchmark(tmp_path / "bench")
    data = InstructionSequence(
        root=str(root), order="order1", tokenizer="char", max_length=300, replay=Replay("reservoir", capacity=4, batch_size=2)
    )
    data.set_task(0)
    assert len(data.train_dataset()[0]) == len(data.tasks[0].train)
    data.on_task_end(0)
    data.set_task(1)
    dataset, n_memory = data.train_dataset()
    assert n_memory == 4 and len(dataset) == len(data.tasks[1].train) + 4
    assert {dataset[len(dataset) - 1 - i]["task_id"] for i in range(4)} == {0}
    assert data.replay_sampling() == (2, "mix")


def test_config_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="give tasks"):
        InstructionSequence(tokenizer="char")
    with pytest.raises(ValueError, match="needs data.root"):
        InstructionSequence(order="order1", tokenizer="char")
    with pytest.raises(ValueError, match="give its records as path"):
        _ = sequence([InstructionTask("x", "alpaca")]).tasks
    with pytest.raises(ValueError, match="chat_style 'template'"):
        _ = sequence([InstructionTask("c", "chat", path=str(jsonl(tmp_path / "c.jsonl", CHAT)), chat_style="template")]).tasks


def test_the_benchmark_configs_parse_and_share_their_cuts():
    import yaml

    from clight.cli import build_fit_parser

    root = Path(__file__).resolve().parents[1] / "configs" / "llm_cl"
    parser = build_fit_parser()
    cpu = sorted(root.glob("*.yaml")) + sorted((root / "orders").glob("*.yaml"))
    assert {p.stem for p in root.glob("*.yaml")} == {
        "frozen",
        "seq_full",
        "seq_lora",
        "replay",
        "gere_tm_lora",
        "spu",
        "moe_adapters",
        "joint",
        "inc_lora",
        "o_lora",
        "inflora",
        "osf",
    }
    for path in cpu + sorted((root / "gpu").glob("*.yaml")):
        cfg = parser.parse_args(["--config", str(path), "--data.root=/your/copy"])
        assert cfg.data.init_args.root == "/your/copy" and cfg.model.init_args.evaluation == "generate", path

    def cuts(path: Path) -> tuple:
        data, model = (yaml.safe_load(path.read_text())[k]["init_args"] for k in ("data", "model"))
        return data["max_length"], data["max_train_per_task"], data["max_test_per_task"], model["max_new_tokens"]

    # every row trains on the same items (one task sequence for clight compare) and is scored on the same items alike
    assert {cuts(p) for p in cpu} == {(128, 160, 50, 6)}
    orders = {p.stem: yaml.safe_load(p.read_text())["data"]["init_args"]["order"] for p in cpu}
    assert orders["seq_lora_order2"] == "order2" and orders["replay_order3"] == "order3" and orders["spu"] == "order1"


def test_declared_labels_give_candidates_and_refuse_other_answers(tmp_path):
    records = [{"instruction": "Is it spam?", "input": f"message {i}", "output": ["spam", "ham"][i % 2]} for i in range(6)]
    path = jsonl(tmp_path / "spam.jsonl", records)
    data = sequence([InstructionTask("spam", "alpaca", path=str(path), labels=["ham", "spam"])])
    item = data.tasks[0].test[0]
    assert [data.tokenizer.decode(c) for c in item["choices"]] == ["ham<eos>", "spam<eos>"]
    assert data.tokenizer.decode(item["choices"][item["target"]]) == data.tokenizer.decode(item["answer"])
    bad = jsonl(tmp_path / "bad.jsonl", records[:3] + [dict(records[3], output="eggs")])
    with pytest.raises(ValueError, match=r"bad.jsonl line 4 \(record 4\): the answer 'eggs' is not one of the task's labels"):
        _ = sequence([InstructionTask("spam", "alpaca", path=str(bad), labels=["ham", "spam"])]).tasks
