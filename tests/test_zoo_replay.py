"""DER++'s loss terms, A-GEM's projected gradient and GDumb's memory, each against a computation
written out here on a tiny model (the memories drawn again from copies of the methods' generators)."""

import pytest
import torch
from torch.nn import functional as F

from clight import MLP, ContinualClassifier, RunContext, SplitClasses, TaskSequence
from clight.data.replay import GreedyClassBalancedMemory
from clight.methods.agem import AGEM, project
from clight.methods.dark_replay import DERpp, LogitReservoir
from clight.methods.gdumb import GDumb, reset_all


def _setup(setting="class_incremental", **model_args):
    torch.manual_seed(0)
    data = TaskSequence(SplitClasses("digits", num_tasks=2, setting=setting), batch_size=8, seed=0)
    model = ContinualClassifier(MLP([8]), **model_args)
    model.setup_sequence(data.info)
    data.set_task(0)
    model.on_task_start(data.tasks[0])
    return data, model


def _copy(generator: torch.Generator) -> torch.Generator:
    twin = torch.Generator()
    twin.set_state(generator.get_state())
    return twin


def _samples(data, task, rows):
    return data.tasks[task].train.__getitems__(rows)


def test_reservoir_keeps_what_algorithm_r_keeps():
    buffer, generator = LogitReservoir(5), torch.Generator().manual_seed(3)
    inputs = torch.arange(13.0).unsqueeze(1)
    draws = _copy(generator)
    for start in (0, 4, 8, 12):  # batches of 4, 4, 4, 1
        rows = slice(start, start + 4)
        buffer.add({"input": inputs[rows], "target": inputs[rows, 0].long()}, -inputs[rows], generator)
    slots, seen = [], 0  # Vitter's algorithm R, one sample at a time, with the same draws
    for start in (0, 4, 8, 12):
        for u in torch.rand(len(inputs[start : start + 4]), generator=draws, dtype=torch.float64).tolist():
            j = seen if seen < 5 else int(u * (seen + 1))
            if j < len(slots):
                slots[j] = seen
            elif j < 5:
                slots.append(seen)
            seen += 1
    assert buffer.seen == 13 and len(buffer) == 5
    assert buffer.fields["input"][:, 0].tolist() == [float(s) for s in slots]
    assert torch.equal(buffer.fields["logits"], -buffer.fields["input"])


@pytest.mark.parametrize("replay_batches", ["two", "one"])
def test_derpp_terms_are_alpha_mse_on_stored_logits_and_beta_ce_on_labels(replay_batches):
    data, model = _setup()
    der = DERpp(capacity=6, alpha=0.3, beta=0.7, batch_size=4, replay_batches=replay_batches)
    der.setup_sequence(model, data, RunContext(seed=0))
    stored = _samples(data, 0, [0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        seen_logits = model.output_logits(stored)  # task 0 only: the classes of task 1 are -inf
    der.buffer.add(stored, seen_logits, der._generator)
    model.on_task_start(data.tasks[1])  # the head now scores task 1's classes too
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = _samples(data, 1, [0, 1, 2])
    loss, outputs = model.task_loss(batch)

    draws = _copy(der._generator)
    first = torch.randperm(6, generator=draws)[:4]
    second = first if replay_batches == "one" else torch.randperm(6, generator=draws)[:4]
    x, y, z = der.buffer.fields["input"], der.buffer.fields["target"], der.buffer.fields["logits"]
    old = torch.tensor(data.tasks[0].classes)
    now = model.heads["all"](model.backbone(x[first]))[:, old]
    expected_mse = 0.3 * ((now - z[first][:, old]) ** 2).mean()
    expected_ce = 0.7 * F.cross_entropy(model(x[second]), y[second])

    assert der.logit_term(model, batch, outputs).item() == pytest.approx(expected_mse.item(), rel=1e-6)
    assert der.label_term(model, batch, outputs).item() == pytest.approx(expected_ce.item(), rel=1e-6)
    assert torch.equal(der._generator.get_state(), draws.get_state())  # no draw beyond the batches used
    der.on_train_batch_end(None, model, None, batch, 0)  # the step's samples join the memory afterwards
    assert der.buffer.seen == 9


def test_derpp_adds_nothing_while_the_memory_is_empty():
    data, model = _setup()
    der = DERpp(capacity=4)
    der.setup_sequence(model, data, RunContext(seed=0))
    batch = _samples(data, 0, [0, 1])
    loss, outputs = model.task_loss(batch)
    assert der.logit_term(model, batch, outputs).item() == 0 and der.label_term(model, batch, outputs).item() == 0
    der.on_train_batch_end(None, model, None, batch, 0)
    assert len(der.buffer) == 2 and torch.equal(der.buffer.fields["logits"][:2], outputs["logits"].detach())


def test_projection_by_hand():
    g, g_ref = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])], [torch.tensor([-1.0, 1.0]), torch.tensor([1.0])]
    # g . g_ref = -1 + 2 = 1 >= 0: no conflict, g is left alone
    assert not project(g, g_ref) and g[0].tolist() == [1.0, 0.0] and g[1].tolist() == [2.0]
    g = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0])]
    # g . g_ref = -1 - 1 = -2 < 0; ||g_ref||^2 = 3: g - (-2/3) g_ref = (1 - 2/3, 2/3, -1 + 2/3)
    assert project(g, g_ref)
    torch.testing.assert_close(torch.cat(g), torch.tensor([1 / 3, 2 / 3, -1 / 3]))
    assert abs(float(sum((a * b).sum() for a, b in zip(g, g_ref)))) < 1e-6  # projected onto g . g_ref = 0


@pytest.mark.parametrize("conflict", [True, False])
def test_agem_projects_the_step_gradient_only_on_conflict(conflict):
    data, model = _setup()
    agem = AGEM(samples_per_task=10, reference_batch_size=4)
    agem.setup_sequence(model, data, RunContext(seed=0))
    model.on_task_end(data.tasks[0])
    agem.on_task_end(model, data.tasks[0])
    model.on_task_start(data.tasks[1])
    agem.on_task_start(model, data.tasks[1])
    entries = agem.entries
    assert entries.shape == (10, 2) and set(entries[:, 0].tolist()) == {0} and len(set(entries[:, 1].tolist())) == 10

    rows = torch.randperm(10, generator=_copy(agem._generator))[:4]
    params = [p for p in model.parameters() if p.requires_grad]
    memory = _samples(data, 0, entries[rows, 1].tolist())
    reference = torch.autograd.grad(model.task_loss(memory)[0], params)
    r = torch.cat([x.flatten() for x in reference])
    other = torch.ones_like(r) - (torch.ones_like(r) @ r) / (r @ r) * r  # orthogonal to g_ref
    g = (-0.5 if conflict else 0.5) * r + other  # the step's gradient
    for p, part in zip(params, g.split([p.numel() for p in params])):
        p.grad = part.view_as(p).clone()
    expected = other if conflict else g  # the projection removes the part along g_ref

    agem.on_before_optimizer_step(None, model, None)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in params]), expected)
    assert agem.projected == [int(conflict)] and agem.steps == [1]


def test_greedy_memory_balances_classes_as_worked_out_by_hand():
    memory = GreedyClassBalancedMemory(capacity=10, seed=0)
    # task 0: twelve samples of class 0, then five of class 1, then three more of class 0
    memory.add_task(0, torch.tensor([0] * 12 + [1] * 5 + [0] * 3))
    # the first ten of class 0 fill the memory; each sample of class 1 (quota 10/2) evicts one of class 0
    assert memory.labels.bincount().tolist() == [5, 5]
    assert memory.entries[memory.labels == 1, 1].tolist() == [12, 13, 14, 15, 16]
    assert set(memory.entries[memory.labels == 0, 1].tolist()) <= set(range(10))
    # task 1: class 2 (quota 10/3) takes four places, from the largest class each time (class 0 first
    # among equals): {5,5} -> {4,5,1} -> {4,4,2} -> {3,4,3} -> {3,3,4}; the later samples are passed over
    memory.add_task(1, torch.tensor([2] * 20))
    assert memory.labels.bincount().tolist() == [3, 3, 4]
    assert memory.entries[memory.labels == 2].tolist() == [[1, 0], [1, 1], [1, 2], [1, 3]]
    assert memory.seen == 40 and len(memory) == 10


def test_gdumb_trains_on_a_fresh_model_and_the_memory_only():
    data, model = _setup()
    gdumb = GDumb(capacity=30)
    context = RunContext(seed=0)
    gdumb.check_compatible(model, data, data.info)
    gdumb.setup_sequence(model, data, context)
    gdumb.on_task_start(model, data.tasks[0])
    fresh = ContinualClassifier(MLP([8]))
    fresh.setup_sequence(data.info)
    fresh.on_task_start(data.tasks[0])
    reset_all(fresh, context.seed_for(0x6D0B, 0))
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    dataset, n_memory = data.train_dataset()
    assert len(dataset) == 30 and n_memory == 0  # the stream is the memory alone
    assert data.replay_sampling() == (0, "only")
    assert dataset.__getitems__(list(range(30)))["target"].bincount().tolist() == [6] * 5  # five classes
    data.on_task_end(0)  # the data module leaves a method's memory to the method
    assert len(gdumb.memory) == 30 and "memory" not in data.state_dict()


def _refused(tmp_path, model, data, methods, match):
    from clight import ConfigError, SequenceRunner

    with pytest.raises(ConfigError, match=match):
        SequenceRunner(model, data, methods=methods, trainer=dict(max_epochs=1), run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


def test_methods_refuse_what_they_do_not_apply_to_before_the_run(tmp_path):
    from clight import ICaRL, Replay

    def digits(setting="class_incremental", replay=None):
        return TaskSequence(SplitClasses("digits", num_tasks=2, setting=setting), batch_size=8, replay=replay)

    _refused(tmp_path, ContinualClassifier(MLP([8])), digits("task_incremental"), [ICaRL()], "class_incremental")
    _refused(tmp_path, ContinualClassifier(MLP([8])), digits(replay=Replay()), [GDumb()], "remove `replay`")
    _refused(tmp_path, ContinualClassifier(MLP([8])), digits(), [ICaRL(), GDumb()], "both want to replace the replay stream")
    _refused(tmp_path, ContinualClassifier(MLP([8])), digits("task_incremental"), [GDumb()], "train_old_heads: true")

    from clight.data.text import TextTaskSequence

    with pytest.raises(Exception, match="does not offer"):
        TextTaskSequence(tokenizer="char").claim_training_memory(GDumb(), "GDumb")
