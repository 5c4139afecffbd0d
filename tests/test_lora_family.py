"""The LoRA family on a tiny random Llama, against independent expectations: O-LoRA's terms equal
the formulas computed by hand; after a task the earlier adapters are bit-identical; InfLoRA's new A
rows are orthogonal to the protected subspace and its subspace updates follow the energy
criterion counted by hand; OSF's update leaves the preserved singular directions untouched; the
adapter folders clight writes load in plain peft and give the model's logits; and every method
refuses, before anything runs, a model it does not apply to."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from contract_examples import LORA, TRAINER, classifier, digits, text, tiny_lm
from peft import PeftModel
from safetensors.torch import load_file

from clight import ConfigError, SequenceRunner
from clight.contract import RunContext
from clight.data.task import Task
from clight.methods.inc_lora import IncLoRA
from clight.methods.inflora import InfLoRA, Subspace, design_rows, update
from clight.methods.o_lora import OLoRA
from clight.methods.osf import OSF
from clight.methods.seq_lora import SeqLoRA
from clight.models.causal_lm import ContinualCausalLM, tiny_llama

ONE_EPOCH = {**TRAINER, "max_epochs": 1}


def _task(index: int) -> Task:
    return Task(index, f"task {index}", [], [], [], [])


def _lora_parameters(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


# -- O-LoRA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("penalty", ["squared", "abs"])
def test_o_lora_terms_equal_the_formulas_by_hand(penalty):
    model = tiny_lm(lora=LORA)
    method = OLoRA(lambda_1=0.7, lambda_2=0.3, penalty=penalty)
    method.setup_sequence(model, types.SimpleNamespace(num_tasks=3), RunContext())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in _lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=generator))
    for t in range(3):
        method.on_task_start(model, _task(t))
        if t < 2:
            method.on_task_end(model, _task(t))
    params = _lora_parameters(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in params if ".task_2." in n}

    outputs = {"logits": torch.zeros(1)}
    orthogonality = model.loss_terms["o_lora_orthogonality"](model, {}, outputs)
    l2 = model.loss_terms["o_lora_l2"](model, {}, outputs)
    expected = torch.zeros((), dtype=torch.float64)
    for name, new in params.items():
        if name.endswith("lora_A.task_2.weight"):
            prefix = name[: -len("task_2.weight")]
            old = [params[f"{prefix}task_{i}.weight"].detach().double() for i in range(2)]
            if penalty == "abs":  # the released code's expression, on the earlier adapters concatenated
                expected += torch.abs(torch.mm(torch.cat(old), new.detach().double().T)).sum()
            else:  # the paper's: sum over earlier tasks of the squared entries of A_i^T A_t
                expected += sum(((o @ new.detach().double().T) ** 2).sum() for o in old)
    assert len([n for n in params if n.endswith("lora_A.task_2.weight")]) == 4  # 2 layers x q, v
    torch.testing.assert_close(orthogonality.double(), 0.7 * expected, rtol=1e-5, atol=0)
    new_norms = sum(torch.linalg.norm(p.detach().double()) for n, p in params.items() if ".task_2." in n)
    torch.testing.assert_close(l2.double(), 0.3 * new_norms, rtol=1e-5, atol=0)

    (orthogonality + l2).backward()
    for name, p in params.items():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (".task_2." in name), name


# -- whole runs: frozen earlier adapters, adapter folders in plain peft ---------------------------
def _plain_peft_logits(run_dir: Path, model, folders: list[str], batch: dict) -> torch.Tensor:
    base = tiny_llama(len(model.tokenizer), seed=0)  # the base weights every tiny model starts from
    names = [Path(f).name for f in folders]
    peft_model = PeftModel.from_pretrained(base, str(run_dir / folders[0]), adapter_name=names[0])
    for folder, name in zip(folders[1:], names[1:]):
        peft_model.load_adapter(str(run_dir / folder), adapter_name=name)
    peft_model.base_model.set_adapter(names)
    with torch.no_grad():
        return peft_model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("make", [SeqLoRA, OLoRA, InfLoRA], ids=["SeqLoRA", "OLoRA", "InfLoRA"])
def test_earlier_adapters_stay_bit_identical_and_folders_load_in_plain_peft(tmp_path, make):
    model, data, method = tiny_lm(lora=LORA), text(), make()
    SequenceRunner(model, data, methods=[method], trainer=ONE_EPOCH, run_dir=str(tmp_path)).run()
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["task_0", "task_1"]
    params = dict(model.named_parameters())
    adapter = "default" if make is SeqLoRA else "task_0"
    after_task_0 = load_file(tmp_path / "adapters" / "task_0" / "adapter_model.safetensors")
    assert len(after_task_0) == 8  # A and B of q and v in 2 layers
    for name, saved in after_task_0.items():  # peft drops the adapter's name from its keys
        current = params["net." + name.replace(".weight", f".{adapter}.weight")].detach()
        # a per-task method never touches task 0's adapter again; SeqLoRA trains its one adapter on
        assert torch.equal(current, saved) == (make is not SeqLoRA), name

    batch = next(iter(data.evaluation_loader(0)))
    model.eval()
    with torch.no_grad():
        expected, _ = model(batch["input_ids"], batch["attention_mask"])
    folders = ["adapters/task_1"] if make is SeqLoRA else ["adapters/task_0", "adapters/task_1"]
    assert torch.equal(_plain_peft_logits(tmp_path, model, folders, batch), expected)

    if make is InfLoRA:  # task 1's A: designed outside what task 0 protects, never trained
        for name, a in method.adapters.weights(1, "lora_A").items():
            leak = a.detach().double() @ method.protected_projection(name)
            assert leak.abs().max() <= 1e-6, name
            norms = a.detach().norm(dim=1)
            assert torch.all(((norms - 3**-0.5).abs() < 1e-6) | (norms == 0)), name
        assert method.history[0]["protected_dims"] and all(0 < k < 32 for k in method.history[0]["protected_dims"].values())


def test_inc_lora_trains_only_the_current_adapter_and_applies_the_earlier_ones_fused():
    model = tiny_lm(lora=LORA)
    method = IncLoRA(save_adapters=False)
    method.setup_sequence(model, types.SimpleNamespace(num_tasks=3), RunContext())
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in _lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    ids = torch.randint(0, len(model.tokenizer), (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    model.eval()
    for t in range(3):
        method.on_task_start(model, _task(t))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n in _lora_parameters(model) if f".task_{t}." in n}
        with torch.no_grad():
            fused, _ = model(ids, mask)  # while the task trains: the earlier adapters as one branch
            with model.net.disable_adapter():
                base_during, _ = model(ids, mask)
        method.on_task_end(model, _task(t))
        assert model.net.active_adapters == [f"task_{i}" for i in range(t + 1)]
        with torch.no_grad():
            per_adapter, _ = model(ids, mask)  # peft's forward, one branch per adapter
            with model.net.disable_adapter():
                base, _ = model(ids, mask)
        torch.testing.assert_close(fused, per_adapter, atol=1e-5, rtol=0)
        assert torch.equal(base_during, base) and not torch.allclose(base, per_adapter, atol=1e-3)


# -- InfLoRA's subspaces ---------------------------------------------------------------------------
def _random_covariance(d: int, n: int, seed: int) -> torch.Tensor:
    h = torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return h @ h.T / n


def test_inflora_design_is_the_top_projected_directions_orthogonal_to_the_subspace():
    d, r = 12, 3
    basis = torch.linalg.qr(torch.randn(d, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).Q
    cov = _random_covariance(d, 40, seed=3)
    for space in (Subspace(basis, "remove"), Subspace(torch.linalg.svd(basis, full_matrices=True).U[:, 4:], "retain")):
        rows = design_rows(cov, space, r)
        assert (rows @ basis).abs().max() < 1e-12  # both kinds protect span(basis)
        free = torch.eye(d, dtype=torch.float64) - basis @ basis.T
        projected = free @ cov @ free
        top = torch.linalg.eigvalsh(projected).flip(0)[:r]
        for row, value in zip(rows, top):  # unit eigenvectors of F C F, largest first
            torch.testing.assert_close(projected @ row, value * row, atol=1e-10, rtol=0)
            assert abs(float(row.norm()) - 1) < 1e-12
        code = design_rows(cov, space, r, "released_code")  # left singular vectors of F C: free too, other directions
        assert (code @ basis).abs().max() < 1e-10 and not torch.allclose(
            (code @ rows.T).abs(), torch.eye(r, dtype=torch.float64), atol=1e-3
        )
    # fewer free directions than rows: the rows past them are zero, never protected directions
    full = Subspace(torch.linalg.qr(torch.randn(d, d - 2, dtype=torch.float64)).Q, "remove")
    rows = design_rows(cov, full, r)
    assert rows[2].abs().max() == 0 and (rows @ full.basis).abs().max() < 1e-12


def test_inflora_subspace_update_follows_the_energy_criterion_counted_by_hand():
    energy = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.5], dtype=torch.float64)  # total 16
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).Q
    cov = rotation @ torch.diag(energy) @ rotation.T
    # first task, epsilon 0.8: 8/16 = 0.5, 12/16 = 0.75, 14/16 = 0.875 -> 3 directions (the released code keeps 2)
    space = update(cov, None, 0.8)
    assert space.kind == "remove" and space.protected_dims == 3
    assert update(cov, None, 0.8, variant="released_code").protected_dims == 1  # its squared energies: 64/85, 80/85
    torch.testing.assert_close(space.protected_projection(), rotation[:, :3] @ rotation[:, :3].T, atol=1e-10, rtol=0)
    # the same task again, epsilon 0.9: 14/16 already inside; one more direction (15/16) reaches it; then 4 > 6/2
    # protected directions are kept as the 2 free ones (DualGPM's switch), the same projection either way
    again = update(cov, space, 0.9)
    assert again.kind == "retain" and again.basis.shape[1] == 2 and again.protected_dims == 4
    torch.testing.assert_close(again.protected_projection(), rotation[:, :4] @ rotation[:, :4].T, atol=1e-10, rtol=0)
    # retain: drop free directions while the free energy share stays >= 1 - epsilon: 1/16 >= 0.05 -> drop one
    last = update(cov, again, 0.95)
    assert last.kind == "retain" and last.protected_dims == 5


# -- OSF ------------------------------------------------------------------------------------------
def test_osf_update_leaves_the_preserved_directions_and_its_folder_loads_in_plain_peft(tmp_path):
    torch.manual_seed(0)
    model = ContinualCausalLM("tiny", optimizer=lambda p: torch.optim.SGD(p, lr=20.0))  # plain SGD: projected steps
    data = text()
    model.setup_sequence(data.info)
    method = OSF(target_modules=["q_proj"], effective_rank=8)
    method.setup_sequence(model, data, RunContext(run_dir=tmp_path))
    before = {n: p.detach().double().clone() for n, p in model.net.named_parameters() if n.endswith("q_proj.weight")}
    method.on_task_start(model, data.tasks[0])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("osf_svd_params" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = model.optimizer_factory(trainable)
    batch = next(iter(data.evaluation_loader(0)))
    for _ in range(3):
        optimizer.zero_grad()
        model.task_loss(batch)[0].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        wrapped, _ = model(batch["input_ids"], batch["attention_mask"])
    method.on_task_end(model, data.tasks[0])
    after = dict(model.net.named_parameters())
    for name, w0 in before.items():
        delta = after[name].detach().double() - w0
        u, _, vh = torch.linalg.svd(w0)
        assert delta.abs().max() > 1e-3, name  # it trained
        assert (u[:, :8].T @ delta).abs().max() < 1e-5 * delta.abs().max(), name  # nothing moved along the top 8
        assert (delta @ vh[:8].T).abs().max() < 1e-5 * delta.abs().max(), name

    base = tiny_llama(len(model.tokenizer), seed=0)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapters" / "task_0")).eval()
    with torch.no_grad():
        plain = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged, _ = model(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(plain, wrapped)
    torch.testing.assert_close(merged, wrapped, atol=1e-5, rtol=0)  # merging into the weights rounds


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (tiny_lm(), text(), [OLoRA()]), "no LoRA targets"),
        (lambda: (tiny_lm(lora=LORA), text(), [OSF()]), "set model.lora to null"),
        (lambda: (classifier(), digits(), [InfLoRA()]), "does not support the model ContinualClassifier"),
        (lambda: (tiny_lm(lora=LORA), text(), [IncLoRA(), OLoRA()]), "another method of the LoRA family"),
        (lambda: (tiny_lm(), text(), [OSF(target_modules=["attention"])]), "no linear layer"),
    ],
    ids=["o_lora_without_lora", "osf_with_lora", "inflora_on_a_classifier", "two_methods", "osf_bad_targets"],
)
def test_a_model_the_method_does_not_apply_to_is_refused_before_anything_runs(tmp_path, make, match):
    model, data, methods = make()
    with pytest.raises(ConfigError, match=match):
        SequenceRunner(model, data, methods=methods, trainer=ONE_EPOCH, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


# -- configs ---------------------------------------------------------------------------------------
def test_the_lm_cpu_configs_differ_from_lora_fine_tuning_only_in_the_method():
    from clight.cli import build_fit_parser

    configs = Path(__file__).resolve().parents[1] / "configs" / "lm_cpu"
    parser = build_fit_parser()
    reference = parser.parse_args(["--config", str(configs / "finetune_lora.yaml")])
    expected = {"seq_lora": "SeqLoRA", "inc_lora": "IncLoRA", "o_lora": "OLoRA", "inflora": "InfLoRA", "osf": "OSF"}
    for name, method in expected.items():
        cfg = parser.parse_args(["--config", str(configs / f"{name}.yaml")])
        assert [m.class_path.rsplit(".", 1)[1] for m in cfg.methods] == [method, "GeneralPerplexity"], name
        assert cfg.data == reference.data and cfg.trainer == reference.trainer and cfg.runner == reference.runner, name
        assert cfg.model.init_args.lora == (None if name == "osf" else reference.model.init_args.lora), name
