"""Damaged user files are named, with the line or the reason, instead of a raw parser traceback."""

import json
import math

import pytest
import torch

from clight.data.text import JsonlGeneral, JsonlText
from clight.io import UnreadableFileError, json_text, read_jsonl
from clight.models.weights import read_state_dict


def test_a_bad_jsonl_line_is_named_with_its_number(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"text": "good", "label": 0}\n\n{"text": "cut short", "lab\n')
    with pytest.raises(UnreadableFileError, match=r"tasks\.jsonl.*line 3 is not valid JSON"):
        JsonlText(str(path)).load()
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(UnreadableFileError, match="line 2 holds a list"):
        read_jsonl(path)


def test_a_jsonl_object_without_the_text_field_is_named(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(KeyError, match="object 2 lacks 'text'"):
        JsonlGeneral(str(path)).documents()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_truncated_weights_file_is_named(tmp_path, suffix):
    from safetensors.torch import save_file

    path = tmp_path / f"weights{suffix}"
    state = {"w": torch.arange(1000.0)}
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    assert torch.equal(read_state_dict(path)["w"], state["w"])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UnreadableFileError, match=f"weights{suffix}"):
        read_state_dict(path)


def test_json_text_reads_back_as_json_dumps_and_keeps_each_matrix_row_on_one_line():
    nan = float("nan")
    obj = {
        "matrix": [[0.5, nan, 1], [2.0, None, True], []],
        "nested": {"empty": [], "none": {}, "mixed": [1, {"k": [1, 2]}], "deep": [[[1], [2]], [[3]]]},
        "strings": [["a], [b", "c"]],  # a row break inside a string would corrupt it
        7: (1, 2),
    }
    text = json_text(obj)
    expected = json.loads(json.dumps(obj))
    got = json.loads(text)
    assert math.isnan(got["matrix"][0][1])
    got["matrix"][0][1] = expected["matrix"][0][1] = 0.0
    assert got == expected
    lines = text.splitlines()
    assert "    [0.5, 0.0, 1]," not in lines and "    [0.5, NaN, 1]," in lines and "    [2.0, null, true]," in lines
    assert '    ["a], [b", "c"]' in lines
