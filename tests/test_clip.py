"""ContinualCLIP: prompts, preprocessing, similarity logits over the seen classes, loss and counts."""

import pytest
import torch
import torch.nn.functional as F

from clight import ConfigError, SequenceRunner, SplitClasses, TaskSequence
from clight.data.task import SequenceInfo, Task
from clight.models.clip import CLIP_MEAN, CLIP_STD, ContinualCLIP

INFO = SequenceInfo("class_incremental", num_tasks=2, num_classes=4, task_classes=[[0, 1], [2, 3]], input_shape=(1, 8, 8))
NAMES = ["cat", "dog", "T-shirt/top", "ankle boot"]


def _task(index, classes):
    return Task(index, f"t{index}", None, None, None, classes)


def _model(tasks=1, **kwargs) -> ContinualCLIP:
    model = ContinualCLIP("tiny", class_names=NAMES, **kwargs)
    model.setup_sequence(INFO)
    for t in range(tasks):
        model.on_task_start(_task(t, INFO.task_classes[t]))
    return model.eval()


def _batch(targets, tasks=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(targets)
    return {
        "input": torch.rand(n, 1, 8, 8, generator=g),
        "target": torch.tensor(targets),
        "task_id": torch.tensor(tasks if tasks is not None else [0] * n),
    }


def test_prompts_are_wrapped_in_bos_eos_and_padding_does_not_change_the_text_embeddings():
    model = _model()
    tok = model.tokenizer
    for i, name in enumerate(NAMES):
        ids = model.prompt_ids[i][model.prompt_mask[i].bool()].tolist()
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == len(tok) - 1
        assert tok.decode(ids[1:-1]) == f"a photo of a {name}."
    with torch.no_grad():
        batched = model.text_features(torch.arange(4))
        for i in range(4):  # each prompt alone, unpadded, through the text tower
            ids = model.prompt_ids[i][model.prompt_mask[i].bool()].unsqueeze(0)
            alone = model.clip.text_projection(model.clip.text_model(input_ids=ids).pooler_output)
            torch.testing.assert_close(batched[i], F.normalize(alone, dim=-1)[0], rtol=1e-5, atol=1e-6)


def test_grey_images_are_resized_repeated_and_normalised_with_clip_mean_and_std():
    model = _model()
    x = torch.full((2, 1, 8, 8), 0.25)
    pixels = model.preprocess(x)
    assert pixels.shape == (2, 3, 32, 32)
    expected = (0.25 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels.mean(dim=(0, 2, 3)), expected)
    torch.testing.assert_close(pixels.amin(dim=(0, 2, 3)), pixels.amax(dim=(0, 2, 3)))  # a constant image stays constant
    with pytest.raises(ValueError, match=r"\[B, 1 or 3, H, W\]"):
        model.preprocess(torch.rand(2, 64))


def test_logits_are_clips_logits_per_image_over_the_seen_classes():
    model = _model(tasks=1)
    batch = _batch([0, 1, 1])
    with torch.no_grad():
        logits = model.output_logits(batch)
        seen = torch.tensor([0, 1])
        reference = model.clip(
            input_ids=model.prompt_ids[seen],
            attention_mask=model.prompt_mask[seen],
            pixel_values=model.preprocess(batch["input"]),
        ).logits_per_image
    assert logits.shape == (3, 2)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_task_loss_is_cross_entropy_over_the_seen_classes_in_class_id_order():
    model = _model(tasks=2)
    batch = _batch([3, 0, 2, 1], tasks=[1, 0, 1, 0])
    with torch.no_grad():
        loss, out = model.task_loss(batch)
        every = model.similarity(model.features(batch["input"]), model.text_features(torch.arange(4)))
    torch.testing.assert_close(out["logits"], every)
    torch.testing.assert_close(loss, F.cross_entropy(every, batch["target"]))
    first = _model(tasks=1)
    with pytest.raises(ValueError, match=r"targets \[3\] belong to classes not seen yet"):
        first.task_loss(_batch([0, 3]))


def test_evaluation_counts_the_seen_classes_and_the_samples_own_task():
    model = _model(tasks=0)
    batch = _batch([0, 1, 2, 3], tasks=[0, 0, 1, 1])
    counts = model.evaluation_counts(batch)
    assert counts["correct"].item() == 0 and counts["total"].item() == 4  # nothing seen yet
    model.on_task_start(_task(0, [0, 1]))
    counts = model.evaluation_counts(batch)
    with torch.no_grad():
        logits = model.similarity(model.features(batch["input"]), model.text_features(torch.arange(4)))
    expected = (logits[:, :2].argmax(1) == batch["target"]).sum()  # samples of classes 2, 3 cannot be right
    assert counts["correct"].item() == expected.item()
    aware = (logits[:2, :2].argmax(1) == batch["target"][:2]).sum() + (logits[2:, 2:].argmax(1) + 2 == batch["target"][2:]).sum()
    assert counts["correct_task_aware"].item() == aware.item()


def test_wrong_number_of_class_names_is_refused_before_anything_runs(tmp_path):
    model = ContinualCLIP("tiny", class_names=["a", "b", "c"])
    data = TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=64)
    with pytest.raises(ConfigError, match="3 class names .* 10 classes"):
        SequenceRunner(model, data, trainer=dict(accelerator="cpu", max_epochs=1), run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="must contain"):
        ContinualCLIP("tiny", template="a photo")


def test_a_label_space_that_does_not_fit_the_sequence_is_refused():
    with pytest.raises(ConfigError, match="label_space to task"):
        ContinualCLIP("tiny", class_names=NAMES).check_compatible(SequenceInfo("task_incremental", 2, 4, [[0, 1], [2, 3]]))
    with pytest.raises(ConfigError, match="task_incremental"):
        ContinualCLIP("tiny", class_names=NAMES, label_space="task").check_compatible(INFO)
    with pytest.raises(ValueError, match="label_space"):
        ContinualCLIP("tiny", class_names=NAMES, label_space="all")


def test_the_task_label_space_trains_and_scores_against_the_tasks_own_prompts_only():
    info = SequenceInfo("task_incremental", 2, 4, [[0, 1], [2, 3]], (1, 8, 8))
    model = ContinualCLIP("tiny", class_names=NAMES, label_space="task")
    model.setup_sequence(info)
    for t in range(2):
        model.on_task_start(_task(t, info.task_classes[t]))
    batch = _batch([3, 2, 3], tasks=[1, 1, 1])
    loss, outputs = model.task_loss(batch)
    assert outputs["logits"].shape == (3, 2)  # task 1's two classes, not the four seen
    grads = torch.autograd.grad(loss, [model.clip.visual_projection.weight, model.clip.text_projection.weight])
    own = torch.tensor([2, 3])  # by hand: CLIP's logits over task 1's prompts, targets within the task
    reference = model.clip(
        input_ids=model.prompt_ids[own], attention_mask=model.prompt_mask[own], pixel_values=model.preprocess(batch["input"])
    ).logits_per_image
    expected = F.cross_entropy(reference, torch.tensor([1, 0, 1]))
    expected_grads = torch.autograd.grad(expected, [model.clip.visual_projection.weight, model.clip.text_projection.weight])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    model.label_space = "seen_classes"
    seen_loss, _ = model.task_loss(batch)
    model.label_space = "task"
    assert not torch.allclose(seen_loss, loss)  # the other label space differs on the same weights
    mixed = _batch([0, 3], tasks=[0, 1])  # a batch of two tasks (replay): each row within its own task's prompts
    with torch.no_grad():
        logits, classes = model.label_logits(mixed)
        every = model.similarity(model.features(mixed["input"]), model.text_features(torch.arange(4)))
        counts = model.evaluation_counts(mixed)
    assert classes.tolist() == [0, 1, 2, 3] and torch.isinf(logits[0, 2:]).all() and torch.isinf(logits[1, :2]).all()
    torch.testing.assert_close(logits[0, :2], every[0, :2])
    torch.testing.assert_close(logits[1, 2:], every[1, 2:])
    by_hand = int(every[0, :2].argmax() == 0) + int(every[1, 2:].argmax() + 2 == 3)
    assert int(counts["correct"]) == int(counts["correct_task_aware"]) == by_hand


def test_training_moves_both_towers_and_fits_a_batch():
    torch.manual_seed(0)
    model = ContinualCLIP("tiny", class_names="digits")
    data = TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=32, seed=0)
    model.setup_sequence(data.info)
    model.on_task_start(data.tasks[0])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = next(iter(data.train_dataloader()))
    first = model.task_loss(batch)[0].item()
    for _ in range(40):
        loss, _ = model.task_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.task_loss(batch)[0].item() < 0.3 * first  # it fits one batch of 32 (random init: ln 5 at first)
    assert model.evaluation_counts(batch)["correct"].item() >= 28
    for tower in ("clip.vision_model.encoder.layers.0.mlp.fc1.weight", "clip.text_model.encoder.layers.0.mlp.fc1.weight"):
        assert not torch.equal(before[tower], dict(model.named_parameters())[tower]), tower


def test_a_sequence_runs_through_the_runner_with_both_accuracy_matrices(tmp_path):
    model = ContinualCLIP("tiny", class_names="digits", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    data = TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=64, seed=0)
    trainer = dict(accelerator="cpu", max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    result = SequenceRunner(model, data, trainer=trainer, run_dir=str(tmp_path / "run"), seed=0, max_steps_per_task=3).run()
    assert result.accuracy_matrix.shape == (2, 2)
    assert result.accuracy_matrix[0, 1] == 0.0  # task 1's classes are not among the seen ones after task 0
    assert (tmp_path / "run" / "accuracy_matrix_task_aware.csv").is_file()
    assert result.metrics["model"]["seen_classes"] == 10


def test_class_names_come_from_a_list_or_a_source():
    from clight.data.sources import DatasetSource
    from clight.models.clip import class_names_of

    assert class_names_of("fashion_mnist")[0] == "T-shirt/top" and class_names_of("digits") == [str(i) for i in range(10)]
    source = DatasetSource(train=[], test=[], num_classes=2, class_names=["aquarium_fish", "maple_tree"])
    assert class_names_of(source) == ["aquarium fish", "maple tree"]  # a source's underscores become spaces
    assert class_names_of(["a_b", "c"]) == ["a_b", "c"]  # a list is taken as written
