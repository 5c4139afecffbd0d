"""GeRe: threshold-margin loss, 2-bit states, thresholds, text data, the causal-LM module, runs and resume."""

import copy
import json

import pytest
import torch

from clight.contract import RunContext
from clight.data.text import IGNORE, GeneralSet, TextCollator, TextTaskSequence
from clight.data.text.general_sources import strip_wiki_markup
from clight.methods import ContinualCallback
from clight.methods.general_replay import (
    NEG,
    NEU,
    POS,
    GeneralPerplexity,
    GeneralReplay,
    PackedStates,
    Thresholds,
    classify,
    pack,
    tm_loss,
    tm_loss_from_masks,
    unpack,
)
from clight.models.causal_lm import ContinualCausalLM
from clight.runner import SequenceRunner


def prepare(callback, model, data, run_dir):
    """What the runner does for a method before the first task: setup, then the base reference at fit start."""
    callback.setup_sequence(model, data, RunContext(run_dir))
    callback.ensure_reference(model)
    return callback


# -- an independent, entry-by-entry threshold-margin loss --------------------------------------
def direct_tm(h0, h, mask, neg, pos):
    """Straight from the paper's definition: state from the base hidden state, then the margin of each entry."""
    total, violating = 0.0, 0
    b, length, d = h.shape
    for i in range(b):
        for t in range(length):
            if not mask[i, t]:
                continue
            for k in range(d):
                x, x0, lo, hi = float(h[i, t, k]), float(h0[i, t, k]), float(neg[k]), float(pos[k])
                if x0 <= lo:
                    v = max(x - lo, 0.0)
                elif x0 >= hi:
                    v = max(hi - x, 0.0)
                else:
                    v = max(x - hi, 0.0) + max(lo - x, 0.0)
                total += v
                violating += v != 0
    return total / (violating + 1e-8)


def test_tm_loss_matches_direct_implementation_with_masking():
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    h = h0 + 0.7 * torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    t = Thresholds.from_hidden(h0[mask])
    neg, pos = t.neg.double(), t.pos.double()
    codes = classify(h0, neg, pos)
    from clight.methods.general_replay.losses import state_masks

    masked = tm_loss_from_masks(h, *state_masks(codes, torch.float64), neg, pos, mask=mask)
    gathered = tm_loss(h[mask], codes[mask], neg, pos)
    expected = direct_tm(h0, h, mask, neg, pos)
    assert masked.item() == pytest.approx(expected, rel=1e-5)
    assert gathered.item() == pytest.approx(expected, rel=1e-5)
    # padding positions full of garbage change nothing
    h_garbage = h.clone()
    h_garbage[~mask] = 1e6
    assert tm_loss_from_masks(h_garbage, *state_masks(codes, torch.float64), neg, pos, mask=mask).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_tm_loss_is_zero_when_every_constraint_holds_and_averages_over_violations_only():
    neg, pos = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    h0 = torch.tensor([[-2.0, 0.0], [2.0, 0.5]])
    codes = classify(h0, neg, pos)
    assert codes.tolist() == [[NEG, NEU], [POS, NEU]]
    assert tm_loss(h0, codes, neg, pos).item() == 0.0
    # one violating entry of 0.5 among four: the mean is over violations, so 0.5 (not 0.125)
    h = torch.tensor([[-0.5, 0.0], [2.0, 0.5]])
    assert tm_loss(h, codes, neg, pos).item() == pytest.approx(0.5)


@pytest.mark.parametrize("dims", [32, 7])
def test_pack_unpack_roundtrip(dims):
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 3, (11, dims), generator=g, dtype=torch.uint8)
    packed = pack(states)
    assert packed.dtype == torch.uint8 and packed.shape == (11, -(-dims // 4))
    assert torch.equal(unpack(packed, dims), states)


def test_packed_states_give_the_float_state_loss_exactly_in_at_most_a_sixteenth_of_the_memory():
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([5, 3, 8, 1])
    d = 64
    h0 = torch.randn(int(lengths.sum()), d, generator=g)
    t = Thresholds.from_hidden(h0)
    codes = classify(h0, t.neg, t.pos)
    store = PackedStates.from_states(codes, lengths)
    # float32 states as the released code keeps them: three masks would be 3x this; one float per entry is the floor
    float_states = codes.float()
    h = h0 + 0.5 * torch.randn(h0.shape, generator=g)
    index = torch.tensor([2, 0, 3])
    rows = store.rows(index, lengths[index])
    neg_m, pos_m, neu_m = (
        (float_states[rows] == NEG).float(),
        (float_states[rows] == POS).float(),
        (float_states[rows] == NEU).float(),
    )
    from_float = tm_loss_from_masks(h[rows], neg_m, pos_m, neu_m, t.neg, t.pos)
    from_packed = tm_loss(h[rows], store.gather(index, lengths[index]), t.neg, t.pos)
    assert torch.equal(from_float, from_packed)
    # per-entry state: 2 bits against 32 (the sample offsets are an index either layout needs)
    assert store.state_bytes() * 16 <= float_states.numel() * float_states.element_size()
    assert store.nbytes() == store.state_bytes() + store.offsets.numel() * 8


def test_gather_refuses_a_sample_with_different_tokens():
    store = PackedStates.from_states(torch.zeros(6, 4, dtype=torch.uint8), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="tokenised and truncated the same way"):
        store.gather(torch.tensor([1]), torch.tensor([3]))


def test_wiki_markup_is_stripped():
    text = "'''Anarchism''' is a [[political philosophy|philosophy]]{{cite|x}}<ref>note</ref> [[File:a.png|thumb|c]]ok."
    assert strip_wiki_markup(text) == "Anarchism is a philosophy ok."


# -- the tiny model and its data ---------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return TextTaskSequence(
        tasks=["rt_sentiment", "rt_subjectivity"],
        tokenizer="char",
        max_length=80,
        max_train_per_task=24,
        max_test_per_task=8,
        general_samples=12,
        general_max_length=40,
        heldout_general=4,
        batch_size=8,
        eval_batch_size=8,
    )


def tiny(**kwargs):
    return ContinualCausalLM(model="tiny", **kwargs)


def test_last_hidden_state_is_the_final_norm_output(data):
    model = tiny().eval()
    batch = next(iter(data.general_loader(data.general_set)))
    _, hidden = model(batch["input_ids"], batch["attention_mask"])
    inner = model.net.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.equal(hidden, inner)
    layers = model.net.model.layers
    assert not torch.allclose(
        hidden, model.net(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[len(layers) - 1]
    )


def test_streamed_thresholds_equal_the_direct_definition(data, tmp_path):
    model = tiny().eval()
    cb = GeneralReplay("tm")
    prepare(cb, model, data, tmp_path)
    with torch.no_grad():
        all_h = torch.cat(
            [
                model(b["input_ids"], b["attention_mask"])[1][b["attention_mask"].bool()]
                for b in data.general_loader(data.general_set, 5)
            ]
        )
    direct = Thresholds.from_hidden(all_h)
    assert torch.allclose(cb.thresholds.mu, direct.mu, atol=1e-5) and torch.allclose(cb.thresholds.sd, direct.sd, atol=1e-5)
    states = cb.states.gather(torch.arange(len(data.general_set)), cb.states.lengths)
    assert (states != classify(all_h, direct.neg, direct.pos)).float().mean() < 1e-3  # only float ties at a threshold


def test_tm_loss_is_zero_on_the_base_model(data, tmp_path):
    model = tiny().eval()
    cb = GeneralReplay("tm")
    prepare(cb, model, data, tmp_path)
    with torch.no_grad():
        for batch in data.general_loader(data.general_set, cb.batch_size):
            _, outputs = model.task_loss(batch)
            assert model.loss_terms["gere_tm"](model, batch, outputs).item() == 0.0
        # a training batch mixing task and general samples, padded differently
        for batch in data.train_dataloader():
            if batch["is_general"].any():
                _, outputs = model.task_loss(batch)
                assert model.loss_terms["gere_tm"](model, batch, outputs).item() < 1e-4
                break


def test_general_ce_equal_averages_task_and_general_cross_entropy(data):
    model = tiny().eval()
    batch = next(b for b in data.train_dataloader() if b["is_general"].any() and (~b["is_general"]).any())
    loss, out = model.task_loss(batch)
    g = batch["is_general"]

    def ce(rows):
        logits, _ = model(batch["input_ids"][rows], batch["attention_mask"][rows])
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][rows][:, 1:].flatten(), ignore_index=IGNORE
        )

    assert loss.item() == pytest.approx(0.5 * (ce(g) + ce(~g)).item(), rel=1e-4)
    model.general_ce = "none"
    assert model.task_loss(batch)[0].item() == pytest.approx(ce(~g).item(), rel=1e-4)


def test_label_likelihood_scoring_matches_a_manual_score(data):
    model = tiny().eval()
    batch = next(iter(data.evaluation_loader(0)))
    scores = model.choice_scores(batch)
    ex = data.tasks[0].test[0]
    with torch.no_grad():
        for k, choice in enumerate(ex["choices"]):
            ids = torch.tensor([ex["prompt"] + choice])
            logp = torch.log_softmax(model.net(input_ids=ids).logits[0, :-1], -1)
            manual = sum(logp[len(ex["prompt"]) - 1 + j, c] for j, c in enumerate(choice))
            assert scores[0, k].item() == pytest.approx(manual.item(), rel=1e-4)
    counts = model.evaluation_counts(batch)
    assert counts["correct"].item() == int((scores.argmax(1) == batch["target"]).sum()) and counts["total"].item() == 8


def test_general_mixing_modes(data):
    seen = torch.cat([b["general_index"][b["is_general"]] for b in data.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # append: each general sample at most once per epoch
    per_batch = copy.copy(data)
    per_batch.general_mode, per_batch.general_per_batch = "per_batch", 2
    for batch in per_batch.train_dataloader():
        assert int(batch["is_general"].sum()) == 2 and len(batch["is_general"]) == 10

    # two ranks' shards of every batch together are exactly the single-process batch
    def samples(loader):
        return [[tuple(r[m.bool()].tolist()) for r, m in zip(b["input_ids"], b["attention_mask"])] for b in loader]

    single = samples(data.train_dataloader())
    shards = []
    for rank in (0, 1):
        data._rank_world = lambda rank=rank: (rank, 2)
        shards.append(samples(data.train_dataloader()))
    del data._rank_world
    assert [a + b for a, b in zip(*shards)] == single


def test_dynamic_weight_equals_ce_and_fixed_weight_scales(data, tmp_path):
    model = tiny()
    cb = GeneralReplay("tm", weight="dynamic")
    prepare(cb, model, data, tmp_path)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = next(b for b in data.train_dataloader() if b["is_general"].any())
    _, out = model.task_loss(batch)
    assert model.loss_terms["gere_tm"](model, batch, out).item() == pytest.approx(out["ce"].item(), rel=1e-5)
    cb.weight = 1.0
    one = model.loss_terms["gere_tm"](model, batch, out).item()
    cb.weight = 100.0
    assert model.loss_terms["gere_tm"](model, batch, out).item() == pytest.approx(100 * one, rel=1e-5) and one > 0


@pytest.mark.parametrize("loss", ["logit_kl", "feature_l1", "feature_l2"])
@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_alternatives_are_zero_on_the_base_model(data, tmp_path, loss, lora):
    model = tiny(lora=lora).eval()
    cb = GeneralReplay(loss)
    prepare(cb, model, data, tmp_path)
    assert cb.base_source == ("adapters_disabled" if lora else "frozen_copy")
    batch = next(b for b in data.train_dataloader() if b["is_general"].any())
    with torch.no_grad():
        _, out = model.task_loss(batch)
        assert model.loss_terms[f"gere_{loss}"](model, batch, out).abs().item() < 1e-6


def test_feature_cache_holds_base_hidden_states(data, tmp_path):
    model = tiny().eval()
    cb = GeneralReplay("feature_l2", base_outputs="cache")
    prepare(cb, model, data, tmp_path)
    assert cb.base_source == "cache" and cb.features.dtype == torch.float16
    batch = next(b for b in data.train_dataloader() if b["is_general"].any())
    with torch.no_grad():
        _, out = model.task_loss(batch)
        assert model.loss_terms["gere_feature_l2"](model, batch, out).item() < 1e-5  # float16 rounding only


def test_resume_reuses_the_cached_thresholds_and_states(data, tmp_path):
    model = tiny()
    first = GeneralReplay("tm")
    prepare(first, model, data, tmp_path)
    assert not first.loaded_from_cache and (tmp_path / "gere" / "tm_base.safetensors").is_file()
    with torch.no_grad():  # a "trained" model: recomputing would give other thresholds
        for p in model.net.parameters():
            p.mul_(1.5)
    again = GeneralReplay("tm")
    prepare(again, model, data, tmp_path)
    assert again.loaded_from_cache
    assert torch.equal(again.thresholds.mu, first.thresholds.mu) and torch.equal(again.thresholds.sd, first.thresholds.sd)
    assert torch.equal(again.states.packed, first.states.packed)
    other = TextTaskSequence(
        tasks=["rt_sentiment"],
        tokenizer="char",
        max_length=80,
        max_train_per_task=8,
        max_test_per_task=4,
        general_samples=5,
        general_max_length=40,
        heldout_general=2,
    )
    with pytest.raises(ValueError, match="another general set"):
        stale = GeneralReplay("tm")
        prepare(stale, model, other, tmp_path)


TRAINER = dict(accelerator="cpu", devices=1, max_epochs=1, enable_progress_bar=False, enable_model_summary=False)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}])
def test_two_task_sequence_runs_end_to_end(data, tmp_path, lora):
    torch.manual_seed(0)
    model = tiny(lora=lora, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    frozen = {n: p.detach().clone() for n, p in model.net.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.net.named_parameters() if p.requires_grad}
    methods = [GeneralReplay("tm"), GeneralPerplexity()]
    result = SequenceRunner(
        model, data, methods=methods, trainer=TRAINER, run_dir=str(tmp_path / "run"), seed=0, max_steps_per_task=3
    ).run()
    assert result.accuracy_matrix.shape == (2, 2)
    assert ((result.accuracy_matrix >= 0) & (result.accuracy_matrix <= 1)).all()
    params = dict(model.net.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())
    if lora:
        assert frozen and all("lora_" in n for n in trainable)
    ppl = json.loads((tmp_path / "run" / "general_perplexity.json").read_text())
    assert len(ppl["after_task"]) == 2 and ppl["before_first_task"] > 1
    assert (tmp_path / "run" / "gere" / "tm_base.safetensors").is_file()


def test_collator_masks_prompt_and_padding():
    batch = TextCollator(pad_id=0)(
        [
            {"prompt": [5, 6], "answer": [7, 2], "choices": None, "target": 0, "task_id": 0, "general_index": -1},
            {"prompt": [], "answer": [9], "choices": None, "target": -1, "task_id": -1, "general_index": 3},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [9, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 2], [9, IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["is_general"].tolist() == [False, True] and batch["general_index"].tolist() == [-1, 3]


def test_general_set_fingerprint_tracks_tokens():
    assert GeneralSet([[1, 2], [3]]).fingerprint() == GeneralSet([[1, 2], [3]]).fingerprint()
    assert GeneralSet([[1, 2], [3]]).fingerprint() != GeneralSet([[1], [2, 3]]).fingerprint()


class _KillAtTaskStart(ContinualCallback):
    def __init__(self, task: int) -> None:
        self.task = task

    def on_task_start(self, module, task):
        if task.index == self.task:
            raise KeyboardInterrupt("killed")


def test_runner_resume_reuses_cached_thresholds(data, tmp_path):
    run_dir = str(tmp_path / "run")
    first = GeneralReplay("tm")
    with pytest.raises(KeyboardInterrupt):
        SequenceRunner(
            tiny(), data, methods=[first, _KillAtTaskStart(1)], trainer=TRAINER, run_dir=run_dir, max_steps_per_task=2
        ).run()
    assert not first.loaded_from_cache
    again = GeneralReplay("tm")
    result = SequenceRunner(
        tiny(seed=1), data, methods=[again], trainer=TRAINER, run_dir=run_dir, max_steps_per_task=2, resume=True
    ).run()
    assert again.loaded_from_cache and again.describe()["loaded_from_cache"]
    assert torch.equal(again.thresholds.mu, first.thresholds.mu) and torch.equal(again.states.packed, first.states.packed)
    assert result.accuracy_matrix.shape == (2, 2)


def test_a_run_killed_before_any_training_computes_its_thresholds_on_resume(data, tmp_path):
    run_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        SequenceRunner(
            tiny(),
            data,
            methods=[_KillAtTaskStart(0), GeneralReplay("tm")],
            trainer=TRAINER,
            run_dir=run_dir,
            max_steps_per_task=2,
        ).run()
    assert not (tmp_path / "run" / "gere" / "tm_base.safetensors").exists()
    again = GeneralReplay("tm")
    result = SequenceRunner(
        tiny(), data, methods=[again], trainer=TRAINER, run_dir=run_dir, max_steps_per_task=2, resume=True
    ).run()
    fresh = GeneralReplay("tm")
    fresh.setup_sequence(tiny(), data, RunContext(tmp_path / "fresh"))
    fresh.ensure_reference(tiny().eval())
    assert not again.loaded_from_cache and torch.equal(again.thresholds.mu, fresh.thresholds.mu)
    assert result.accuracy_matrix.shape == (2, 2)


def test_a_trained_run_without_its_thresholds_file_is_refused_on_resume(data, tmp_path):
    run_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        SequenceRunner(
            tiny(),
            data,
            methods=[GeneralReplay("tm"), _KillAtTaskStart(1)],
            trainer=TRAINER,
            run_dir=run_dir,
            max_steps_per_task=2,
        ).run()
    (tmp_path / "run" / "gere" / "tm_base.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="tm_base.safetensors is missing"):
        SequenceRunner(
            tiny(), data, methods=[GeneralReplay("tm")], trainer=TRAINER, run_dir=run_dir, max_steps_per_task=2, resume=True
        ).run()


def test_tm_is_exactly_zero_at_the_start_under_bf16_mixed(data, tmp_path):
    """The reference is taken under the training precision, so the untrained model satisfies every constraint."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    bf16 = MixedPrecision("bf16-mixed", "cpu")
    model = tiny().eval()
    same = GeneralReplay("tm")
    same.setup_sequence(model, data, RunContext(tmp_path / "bf16"))
    same.ensure_reference(model, bf16.forward_context)
    float32 = GeneralReplay("tm")  # thresholds taken without autocast, as clight did before
    float32.setup_sequence(model, data, RunContext(tmp_path / "fp32"))
    float32.ensure_reference(model)
    with torch.no_grad(), bf16.forward_context():
        for batch in data.general_loader(data.general_set, same.batch_size):
            _, out = model.task_loss(batch)
            assert same._term(model, batch, out).item() == 0.0
            mismatched = float32._term(model, batch, out).item()
    assert mismatched > 0  # the bf16 hidden states break float32 thresholds at the start


def test_runner_takes_the_reference_under_the_trainers_precision(data, tmp_path):
    seen = []

    class RecordTM(ContinualCallback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(trainer.callback_metrics["train/gere_tm"]))

    model = tiny(optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    trainer = dict(TRAINER, precision="bf16-mixed", log_every_n_steps=1)  # loss terms reach Lightning on logged steps
    SequenceRunner(
        model,
        data,
        methods=[GeneralReplay("tm"), RecordTM()],
        trainer=trainer,
        run_dir=str(tmp_path / "run"),
        max_steps_per_task=3,
    ).run()
    assert seen == [0.0] * 6


def test_general_splits_cover_many_documents_and_never_share_one():
    from clight.data.text import general_splits
    from clight.data.text.general_sources import GeneralSource

    class Docs(GeneralSource):
        def documents(self):
            return [[f"d{d}p{p}" for p in range(3 if d % 2 else 5)] for d in range(10)]

    replay, heldout = general_splits(Docs(), n_replay=12, n_heldout=3)
    assert replay[:9] == [f"d{d}p0" for d in range(9)] and replay[9:] == ["d0p1", "d1p1", "d2p1"]
    assert heldout == ["d9p0", "d9p1", "d9p2"]  # the last 10% of documents only
