"""A finished run used after training: ``load_run`` rebuilds its model with every task's
parameters, ``clight test``/``predict`` score and run it, ``export_run`` writes a language model
that plain transformers (and peft) load with the same logits."""

import json

import numpy as np
import pytest
import torch

from clight.cli import main
from clight.evaluation import evaluate_tasks
from clight.trained.export import export_run
from clight.trained.predict import predict
from clight.trained.restore import load_run, open_run

pytestmark = pytest.mark.xdist_group("test_trained.quickstart_run")  # its tests share the module's finished run

QUICK = ["--trainer.max_epochs=1", "--runner.max_steps_per_task=8", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    argv = ["fit", "--config", "configs/quickstart.yaml", "--run_dir", str(run_dir), *QUICK]
    assert main([*argv, "--model.init_args.backbone.init_args.hidden_sizes=[32]"]) == 0
    return run_dir


def _final_row(run_dir) -> list[float]:
    return json.loads((run_dir / "manifest.json").read_text())["matrices"]["correct"][-1]


def test_load_run_on_a_finished_quickstart_run_reproduces_its_final_accuracy_row(quickstart_run):
    run = open_run(quickstart_run)
    row = evaluate_tasks(run.model, run.data)["correct"]
    assert np.allclose(row, _final_row(quickstart_run), atol=1e-9)
    assert not run.model.training and run.finished_tasks == [0, 1, 2, 3, 4]
    untrained = load_run(quickstart_run)
    torch.nn.init.zeros_(untrained.heads["all"].weight)  # a model without the run's head scores otherwise
    assert not np.allclose(evaluate_tasks(untrained, run.data)["correct"], row)


def test_predict_and_clight_test_agree_with_the_recorded_row(quickstart_run, tmp_path, capsys):
    run = open_run(quickstart_run)
    last = run.data.tasks[-1].test
    batch = last.__getitems__(list(range(len(last))))
    predicted = torch.tensor(predict(run.model, batch["input"]))
    assert (predicted == batch["target"]).double().mean().item() == pytest.approx(_final_row(quickstart_run)[-1])
    np.save(tmp_path / "x.npy", batch["input"][:3].numpy())
    assert main(["predict", str(quickstart_run), "--inputs", str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.split() == [str(int(p)) for p in predicted[:3]]
    assert main(["test", str(quickstart_run)]) == 0
    out = capsys.readouterr().out
    assert "recorded" in out and "differ" not in out


def test_the_exported_language_model_loads_in_plain_transformers_with_the_same_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "lm"
    assert main(["fit", "--config", "configs/lm_tiny.yaml", "--run_dir", str(run_dir), "--runner.max_steps_per_task=3"]) == 0
    model = load_run(run_dir)
    ids = torch.tensor([model.tokenizer("Is the sum even or odd? two plus two")["input_ids"]])
    with torch.no_grad():
        expected = model.net(input_ids=ids).logits
        base = model.net.get_base_model()
        with model.net.disable_adapter():
            base_logits = base(input_ids=ids).logits
    assert not torch.allclose(expected, base_logits, atol=1e-5)  # the adapters changed the model

    merged = export_run(run_dir, tmp_path / "merged")
    assert set(merged) == {"model.pt", "hf"}
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged" / "hf")
    assert tokenizer("two plus two")["input_ids"] == model.tokenizer("two plus two")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)

    export_run(run_dir, tmp_path / "adapters", merge=False)
    base_model = AutoModelForCausalLM.from_pretrained(tmp_path / "adapters" / "hf").eval()
    with torch.no_grad():
        assert torch.allclose(base_model(input_ids=ids).logits, base_logits, atol=1e-5)
        adapted = PeftModel.from_pretrained(base_model, tmp_path / "adapters" / "adapter").eval()
        assert torch.allclose(adapted(input_ids=ids).logits, expected, atol=1e-5)
