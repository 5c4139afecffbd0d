"""`clight compare` groups runs that differ only by seed (or task order): one row with the mean,
the sample standard deviation and n, computed from the run folders."""

import json

import numpy as np
import pytest
from test_compare import finished, write_config  # noqa: F401 (the module fixture: finetune, replay, joint)

from clight.cli import runner_from_config
from clight.compare import compare_runs
from clight.compare.groups import group_name, mean_std, same_configuration


def test_runs_differing_only_by_seed_share_one_row_with_mean_std_and_n(finished, tmp_path):  # noqa: F811
    folder, _ = finished
    runner_from_config(write_config(folder, "finetune_seed1", seed=1)).run()
    runs = [folder / "runs" / n for n in ("finetune", "finetune_seed1", "replay")]
    result = compare_runs(runs, tmp_path / "out")
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    groups = {g["method"]: g for g in table["groups"]}
    assert sorted(groups) == ["finetune", "replay"] and groups["finetune"]["runs"] == 2 and groups["replay"]["runs"] == 1
    aa = [json.loads((run / "metrics.json").read_text())["average_accuracy"] for run in runs[:2]]
    assert groups["finetune"]["average_accuracy"] == pytest.approx(np.mean(aa))
    assert groups["finetune"]["average_accuracy_std"] == pytest.approx(np.std(aa, ddof=1))
    assert groups["replay"]["average_accuracy_std"] is None  # one run: no spread
    last = [json.loads((run / "manifest.json").read_text())["matrices"]["correct"][-1] for run in runs[:2]]
    first_task = json.loads((runs[0] / "metrics.json").read_text())["data"]["tasks"][0]["name"]
    assert groups["finetune"][f"task_{first_task}"] == pytest.approx(np.mean([row[0] for row in last]))
    assert f"| finetune | 2 | {100 * np.mean([r[0] for r in last]):.1f} ± {100 * np.std([r[0] for r in last], ddof=1):.1f}" in (
        result.markdown
    )
    assert "seed 0" in result.markdown and "seed 1" in result.markdown
    assert [row["group"] for row in table["rows"]] == ["finetune", "finetune", "replay"]


def test_group_names_and_statistics():
    assert group_name(["lora_order1", "lora_order2", "lora_order3"]) == "lora"
    assert group_name(["tm_lora_seed0", "tm_lora_seed1"]) == "tm_lora"
    assert group_name(["adapters", "adapters_o2"]) == "adapters"
    assert mean_std([0.5, 0.7, None, float("nan")]) == (pytest.approx(0.6), pytest.approx(np.std([0.5, 0.7], ddof=1)), 2)
    assert mean_std([None]) == (None, None, 0)


def test_an_option_only_one_config_has_does_not_split_a_group_but_a_shared_one_that_differs_does():
    earlier = {"trainer": {"max_epochs": 1}, "methods": [{"class_path": "clight.EWC", "init_args": {"lam": 1.0}}]}
    later = {"trainer": {"max_epochs": 1, "callbacks": None}, "runner": {"check_rank_consistency": False}}
    later["methods"] = [{"class_path": "clight.EWC", "init_args": {"lam": 1.0, "online": False}}]
    assert same_configuration(earlier, later) and same_configuration(later, earlier)
    assert not same_configuration(earlier, {**later, "trainer": {"max_epochs": 2}})
    other_method = [{"class_path": "clight.LwF", "init_args": {"lam": 1.0}}]
    assert not same_configuration(earlier, {**later, "methods": other_method})
    assert not same_configuration(earlier, {**later, "methods": later["methods"] * 2})
