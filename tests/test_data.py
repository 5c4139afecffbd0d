import pytest
import torch
from conftest import needs_fashion_mnist

from clight.data import (
    ClassBalancedMemory,
    DatasetList,
    DatasetSource,
    FashionMNIST,
    PermutedInputs,
    Replay,
    ReservoirMemory,
    ShardedBatchSampler,
    SplitClasses,
    TaskSequence,
    UnboundedMemory,
    evaluation_batches,
    sources,
)
from clight.data.replay import GreedyClassBalancedMemory
from clight.data.views import ArrayDataset, TaskView


def _signature(seq: TaskSequence):
    return [(t.classes, t.train.indices.tolist(), t.val.indices.tolist(), t.test.indices.tolist()) for t in seq.tasks]


def test_split_is_deterministic_by_seed_and_changes_with_it():
    a = TaskSequence(SplitClasses("digits", 5, class_order="shuffled"), seed=3)
    b = TaskSequence(SplitClasses("digits", 5, class_order="shuffled"), seed=3)
    c = TaskSequence(SplitClasses("digits", 5, class_order="shuffled"), seed=4)
    assert _signature(a) == _signature(b)
    assert _signature(a) != _signature(c)


def test_split_classes_partition_and_disjoint_val():
    seq = TaskSequence(SplitClasses("digits", 5), seed=0, val_fraction=0.1)
    seen = []
    for task in seq.tasks:
        assert set(task.train.targets.tolist()) == set(task.classes)
        assert set(task.test.targets.tolist()) == set(task.classes)
        assert not set(task.train.indices.tolist()) & set(task.val.indices.tolist())
        assert abs(len(task.val) / (len(task.val) + len(task.train)) - 0.1) < 0.01
        seen += task.classes
    assert sorted(seen) == list(range(10))


def test_batches_are_dicts_with_task_ids():
    seq = TaskSequence(SplitClasses("digits", 5), batch_size=16)
    seq.set_task(2)
    batch = next(iter(seq.train_dataloader()))
    assert batch["input"].shape == (16, 1, 8, 8) and batch["input"].dtype == torch.float32
    assert set(batch["target"].tolist()) <= {4, 5}
    assert batch["task_id"].tolist() == [2] * 16


def test_permuted_inputs_apply_one_fixed_permutation_per_task():
    seq = TaskSequence(PermutedInputs("digits", num_tasks=3, identity_first=True), seed=1)
    t0, t1 = seq.tasks[0], seq.tasks[1]
    x0, x1 = t0.test[5]["input"], t1.test[5]["input"]
    assert torch.equal(x0.flatten()[t1.test.transform.permutation], x1.flatten())
    assert torch.equal(x0, t0.test.base[t0.test.indices[5]][0])  # identity first task
    again = TaskSequence(PermutedInputs("digits", num_tasks=3, identity_first=True), seed=1)
    assert torch.equal(again.tasks[2].train.transform.permutation, seq.tasks[2].train.transform.permutation)


def test_a_gathered_view_serves_the_same_batches_and_is_gathered_only_when_exact_and_small():
    seq = TaskSequence(PermutedInputs("digits", num_tasks=2), seed=1)
    view = seq.tasks[1].train
    gathered = view.gathered()
    assert gathered is not view and len(gathered) == len(view)
    index = [7, 0, 3, 3, len(view) - 1]
    for key, value in view.__getitems__(index).items():
        assert torch.equal(gathered.__getitems__(index)[key], value), key  # bit for bit: resume stays exact
    assert view.gathered(max_bytes=4 * 64 * len(view) - 1) is view  # too large (digits: 64 float pixels a sample)

    class RandomShift:  # a transform without ``deterministic``: a gathered copy would freeze its draws
        def __call__(self, x):
            return x + torch.rand(())

    shifted = TaskView(view.base, view.indices, 1, RandomShift())
    assert shifted.gathered() is shifted
    plain = TaskSequence(SplitClasses("digits", 5), seed=1).tasks[1].train
    assert plain.gathered() is plain  # no transform: a batch is one gather already


def test_a_fit_of_several_epochs_reads_the_training_and_validation_views_gathered():
    import lightning as L

    seq = TaskSequence(PermutedInputs("digits", num_tasks=2), seed=1, batch_size=8)
    seq.set_task(1)
    for epochs, gathered in ((3, True), (1, False)):
        seq.trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
        train, val = seq.train_dataloader().dataset, seq.val_dataloader().dataset
        assert (train is not seq.tasks[1].train) is gathered and (val is not seq.tasks[1].val) is gathered
        if gathered:  # rows already permuted: no transform left
            assert type(train.base) is ArrayDataset and train.transform is None and train.task_id == 1


def test_dataset_list_offsets_classes():
    a = DatasetSource(
        ArrayDataset(torch.rand(40, 1, 4, 4), torch.arange(40) % 2),
        ArrayDataset(torch.rand(10, 1, 4, 4), torch.arange(10) % 2),
        2,
        name="a",
    )
    b = DatasetSource(
        ArrayDataset(torch.rand(30, 1, 4, 4), torch.arange(30) % 3),
        ArrayDataset(torch.rand(9, 1, 4, 4), torch.arange(9) % 3),
        3,
        name="b",
    )
    seq = TaskSequence(DatasetList([a, b]), batch_size=4)
    assert [t.classes for t in seq.tasks] == [[0, 1], [2, 3, 4]]
    assert set(seq.tasks[1].test.__getitems__(list(range(9)))["target"].tolist()) == {2, 3, 4}
    assert seq.info.setting == "task_incremental"


def test_sharded_batches_together_equal_the_single_process_batches():
    single = list(ShardedBatchSampler(100, 8, seed=1, task=2, n_memory=30, replay_batch_size=4))
    ranks = [
        list(ShardedBatchSampler(100, 8, seed=1, task=2, n_memory=30, replay_batch_size=4, rank=r, world_size=2))
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 12
    for b, (r0, r1) in enumerate(zip(*ranks)):
        assert sorted(r0 + r1) == sorted(single[b])
        assert len(r0) == len(r1) == 6
        assert sum(i >= 100 for i in r0) == 2  # each rank gets half the replay part


def test_sampler_epochs_differ_and_repeat():
    s = ShardedBatchSampler(50, 10, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    again = list(s)
    assert e0 != e1 and e0 == again
    assert sorted(sum(e0, [])) == list(range(50))


def test_sampler_rejects_batch_not_divisible_by_processes():
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        ShardedBatchSampler(50, 9, world_size=2)


def test_evaluation_batches_cover_every_sample_once():
    shares = [sum(evaluation_batches(23, 4, r, 3), []) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(23))


def test_reservoir_memory_is_bounded_seeded_and_roughly_uniform():
    m = ReservoirMemory(capacity=100, seed=0)
    for t in range(4):
        m.add_task(t, torch.full((500,), t))
    assert len(m) == 100 and m.seen == 2000
    counts = torch.bincount(m.entries[:, 0], minlength=4)
    assert counts.min() >= 10  # every task kept (expected 25 each)
    twin = ReservoirMemory(capacity=100, seed=0)
    for t in range(4):
        twin.add_task(t, torch.full((500,), t))
    assert torch.equal(twin.entries, m.entries)


def test_class_balanced_memory_keeps_equal_shares():
    m = ClassBalancedMemory(capacity=60, seed=0)
    m.add_task(0, torch.tensor([0] * 100 + [1] * 20))
    m.add_task(1, torch.tensor([2] * 80 + [3] * 80))
    assert torch.bincount(m.labels).tolist() == [15, 15, 15, 15]


def test_unbounded_memory_keeps_everything_and_round_trips():
    m = UnboundedMemory()
    m.add_task(0, torch.zeros(7, dtype=torch.long))
    m.add_task(1, torch.ones(5, dtype=torch.long))
    assert len(m) == 12
    twin = UnboundedMemory()
    twin.load_state_dict(m.state_dict())
    assert torch.equal(twin.entries, m.entries)


@pytest.mark.parametrize("memory", [ReservoirMemory, ClassBalancedMemory, GreedyClassBalancedMemory])
def test_a_memory_without_capacity_keeps_everything(memory):
    m = memory(capacity=None, seed=0)  # "null (unbounded)", as the capacity check says
    m.add_task(0, torch.tensor([0, 1, 1]))
    m.add_task(1, torch.tensor([2, 2]))
    assert m.entries.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]] and m.labels.tolist() == [0, 1, 1, 2, 2]


def test_replay_batches_mix_current_and_memory():
    seq = TaskSequence(SplitClasses("digits", 5), batch_size=16, replay=Replay("reservoir", 50, 8))
    seq.on_task_end(0)
    seq.on_task_end(1)
    seq.set_task(2)
    batch = next(iter(seq.train_dataloader()))
    assert len(batch["target"]) == 24
    assert set(batch["task_id"][:16].tolist()) == {2}
    assert set(batch["task_id"][16:].tolist()) <= {0, 1}
    # a replayed sample keeps its own task's label
    assert all(y in (0, 1, 2, 3) for y in batch["target"][16:].tolist())


def test_bad_replay_settings_name_the_field():
    with pytest.raises(ValueError, match="replay.memory"):
        Replay(memory="ring")
    with pytest.raises(ValueError, match="replay capacity"):
        ReservoirMemory(capacity=0)


@needs_fashion_mnist
def test_fashion_mnist_from_the_debian_package():
    data = FashionMNIST(download=False).data()
    assert len(data.train) == 60000 and len(data.test) == 10000
    x, y = data.train[0]
    assert x.shape == (1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0
    assert data.class_names[9] == "Ankle boot"
    assert torch.bincount(data.test.targets).tolist() == [1000] * 10


def test_missing_fashion_mnist_names_all_three_places(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(sources, "DEFAULT_DOWNLOAD_ROOT", tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as err:
        FashionMNIST(root=str(tmp_path / "mine"), download=False).data()
    message = str(err.value)
    assert "mine" in message and "dataset-fashion-mnist" in message and "download" in message


def test_wrong_shaped_idx_files_are_rejected(tmp_path, monkeypatch):
    import gzip
    import struct

    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    for stem, shape in {
        "train-images-idx3-ubyte": (4, 5, 5),
        "train-labels-idx1-ubyte": (4,),
        "t10k-images-idx3-ubyte": (2, 5, 5),
        "t10k-labels-idx1-ubyte": (2,),
    }.items():
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
            f.write(
                struct.pack(">HBB", 0, 8, len(shape))
                + struct.pack(">" + "I" * len(shape), *shape)
                + bytes(int(torch.tensor(shape).prod()))
            )
    with pytest.raises(ValueError, match=r"expected \[N, 28, 28\]"):
        FashionMNIST(root=str(tmp_path), download=False).data()
