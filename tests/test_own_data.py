"""A user's own torch data sets as sources: Subset (random_split), ConcatDataset, dict samples,
ImageFolder; each trains through SplitClasses, and one that cannot be used is refused in one line."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset, random_split

from clight import MLP, ContinualClassifier, DatasetSource, SequenceRunner, SplitClasses, TaskSequence


def _tagged(n: int, num_classes: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose feature 0 is the target and feature 1 the sample's id, so any batch shows
    whether its inputs and targets still belong together."""
    ids = torch.arange(start, start + n)
    y = ids % num_classes
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(start))
    x[:, 0], x[:, 1] = y.float(), ids.float()
    return x, y


class TupleSamples(Dataset):
    """A plain data set: no ``targets``, no ``__getitems__``, numpy inputs."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class DictSamples(TupleSamples):
    def __init__(self, x, y, keys=("image", "label")) -> None:
        super().__init__(x, y)
        self.keys = keys

    def __getitem__(self, i: int):
        return {self.keys[0]: torch.from_numpy(self.x[i]), self.keys[1]: torch.tensor(self.y[i]), "path": f"img{i}.png"}


def _check_tasks(source: DatasetSource, expected_ids: dict[str, set[int]], num_tasks: int = 2) -> TaskSequence:
    """Every task serves exactly the samples of its classes, inputs with their own targets."""
    data = TaskSequence(SplitClasses(source, num_tasks=num_tasks), batch_size=7, val_fraction=0.2, seed=0)
    for task in data.tasks:
        for split in ("train", "test"):
            view = getattr(task, split)
            batch = view.__getitems__(list(range(len(view))))
            assert torch.equal(batch["input"][:, 0].long(), batch["target"])
            assert set(batch["target"].tolist()) == set(task.classes)
            ids = set(batch["input"][:, 1].long().tolist())
            wanted = {i for i in expected_ids[split] if i % source.data().num_classes in task.classes}
            assert ids <= wanted if split == "train" else ids == wanted
        train_ids = set(task.train.__getitems__(list(range(len(task.train))))["input"][:, 1].long().tolist())
        val_ids = set(task.val.__getitems__(list(range(len(task.val))))["input"][:, 1].long().tolist())
        assert not train_ids & val_ids and (train_ids | val_ids) == {
            i for i in expected_ids["train"] if i % source.data().num_classes in task.classes
        }
    return data


def _train(data: TaskSequence, tmp_path, name: str):
    torch.manual_seed(0)
    trainer = dict(accelerator="cpu", max_epochs=1, enable_progress_bar=False)
    result = SequenceRunner(
        ContinualClassifier(MLP([8])), data, trainer=trainer, run_dir=str(tmp_path / name), max_steps_per_task=2
    ).run()
    assert result.accuracy_matrix.shape == (data.num_tasks, data.num_tasks)
    assert np.isfinite(result.accuracy_matrix[np.tril_indices(data.num_tasks)]).all()
    return result


def test_a_random_split_subset_trains_through_split_classes(tmp_path):
    x, y = _tagged(120, 4)
    train, test = random_split(TensorDataset(x, y), [90, 30], generator=torch.Generator().manual_seed(0))
    assert isinstance(train, Subset)
    source = DatasetSource(train, test)
    assert source.data().num_classes == 4  # the largest target plus one
    ids = {split: set(int(x[i, 1]) for i in part.indices) for split, part in (("train", train), ("test", test))}
    _train(_check_tasks(source, ids), tmp_path, "subset")


def test_a_subset_of_a_plain_data_set_is_read_sample_by_sample(tmp_path):
    # torch's Subset returns a list of samples from __getitems__ here: the crash of issue 25
    x, y = _tagged(40, 4)
    plain = TupleSamples(x, y)
    train, test = random_split(plain, [30, 10], generator=torch.Generator().manual_seed(1))
    ids = {split: set(part.indices) for split, part in (("train", train), ("test", test))}
    _check_tasks(DatasetSource(train, test, num_classes=4), ids)


def test_a_concat_dataset_trains_through_split_classes(tmp_path):
    (x1, y1), (x2, y2), (xt, yt) = _tagged(50, 4), _tagged(30, 4, start=50), _tagged(24, 4, start=80)
    train = ConcatDataset([TupleSamples(x1, y1), TensorDataset(x2, y2)])
    source = DatasetSource(train, TupleSamples(xt, yt), num_classes=4)
    ids = {"train": set(range(80)), "test": set(range(80, 104))}
    _train(_check_tasks(source, ids), tmp_path, "concat")


def test_dict_samples_train_through_split_classes_with_found_or_named_keys(tmp_path):
    (x, y), (xt, yt) = _tagged(60, 3), _tagged(21, 3, start=60)
    found = DatasetSource(DictSamples(x, y), DictSamples(xt, yt))  # image/label found among the known pairs
    ids = {"train": set(range(60)), "test": set(range(60, 81))}
    _train(_check_tasks(found, ids, num_tasks=3), tmp_path, "dicts")
    named = DatasetSource(DictSamples(x, y, ("pixels", "cls")), DictSamples(xt, yt, ("pixels", "cls")), keys=["pixels", "cls"])
    _check_tasks(named, ids, num_tasks=3)


def _image_folders(root: Path, per_class: int, size=(4, 4)) -> None:
    """One folder per class of small images whose grey level says their class (60 per class)."""
    from PIL import Image

    for c, name in enumerate(["cat", "dog", "fox", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((*size, 3), 60 * c + i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_an_image_folder_split_by_random_split(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _image_folders(tmp_path / "images", 5)
    folder = torchvision.datasets.ImageFolder(tmp_path / "images", transform=torchvision.transforms.ToTensor())
    train, test = random_split(folder, [12, 8], generator=torch.Generator().manual_seed(0))
    source = DatasetSource(train, test, class_names=folder.classes)
    data = TaskSequence(SplitClasses(source, num_tasks=2), batch_size=4, val_fraction=0.25)
    for task in data.tasks:
        batch = task.test.__getitems__(list(range(len(task.test))))
        # each image's grey level says its class: the folders were read in order, pixels with their labels
        assert torch.equal((batch["input"][:, 0, 0, 0] * 255).round().long() // 60, batch["target"])
        assert batch["input"].shape[1:] == (3, 4, 4)
    assert source.data().class_names == ["cat", "dog", "fox", "owl"]
    _train(data, tmp_path, "folder")


@pytest.mark.parametrize(
    "samples, found, needed",
    [
        ([(torch.rand(3),)] * 4, "a tuple of 1 item(s)", "(input, target) pairs"),
        ([torch.rand(3)] * 4, "a Tensor", "(input, target) pairs"),
        ([{"pixels": torch.rand(3), "cls": 1}] * 4, "a dict with keys ['cls', 'pixels']", "keys=[INPUT_KEY, TARGET_KEY]"),
        ([(torch.rand(3), "cat")] * 4, "target is 'cat' (str)", "an integer class id"),
        ([("a photo", 1)] * 4, "input is of type str", "tensors or arrays"),
        ([(torch.rand(3), 1), (torch.rand(4), 0)], "different shapes (3 and 4)", "one shape"),
        ([(torch.rand(3), 7)] * 4, "targets from 7 to 7, outside 0..2", "raise num_classes"),
    ],
)
def test_a_data_set_that_cannot_be_used_is_refused_in_one_line(samples, found, needed):
    with pytest.raises(ValueError) as info:
        train = DatasetSource(samples, samples, num_classes=3).data().train
        train.__getitems__(list(range(len(train))))  # every sample read
    message = str(info.value)
    assert "\n" not in message and message.startswith("DatasetSource.train (list)")
    assert found in message and needed in message


def test_a_pil_image_input_asks_for_a_tensor_transform():
    from PIL import Image

    samples = [(Image.new("RGB", (4, 4)), 0)] * 2
    with pytest.raises(ValueError, match=r"input is of type \w*Image\w*, not a tensor: give the data set a transform .*ToTensor"):
        DatasetSource(samples, samples).load()


def test_a_text_task_takes_a_separate_test_file(tmp_path):
    from clight import JsonlText, TextTaskSequence, TextTaskSpec

    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
        return JsonlText(str(tmp_path / name))

    train = write("train.jsonl", [(f"fine day {i}", "pos") for i in range(6)] + [(f"bad day {i}", "neg") for i in range(6)])
    test = write("test.jsonl", [("a fine test", "pos"), ("another fine test", "pos")])  # its own label list is ["pos"]
    spec = TextTaskSpec(train, "Is it good?", test=test)
    data = TextTaskSequence([spec], tokenizer="char", general=None, max_length=64, val_fraction=0.25)
    task = data.tasks[0]
    assert len(task.test) == 2 and task.test.targets.tolist() == [1, 1]  # "pos" is label 1 of the training file's [neg, pos]
    assert len(task.train) + len(task.val) == 12  # the whole training file: nothing held out for the test
    prompts = [data.tokenizer.decode(task.test[i]["prompt"]) for i in range(2)]
    assert "a fine test" in prompts[0] and "another fine test" in prompts[1]
    unknown = TextTaskSpec(train, "Is it good?", test=write("odd.jsonl", [("meh", "neutral")]))
    with pytest.raises(ValueError, match=r"test file's labels \['neutral'\] are not among the training file's \['neg', 'pos'\]"):
        _ = TextTaskSequence([unknown], tokenizer="char", general=None, max_length=64).tasks


DOC = Path(__file__).resolve().parents[1] / "docs" / "own_data.md"


def _blocks(kind: str) -> list[tuple[str, str]]:
    """The page's fenced blocks of one kind: (the name after the language, the text)."""
    return re.findall(rf"```{kind}( [^\n]*)?\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_own_data_page_runs_as_written(tmp_path, monkeypatch):
    from clight.cli import main

    monkeypatch.chdir(tmp_path)
    _image_folders(tmp_path / "pets" / "train", 6, size=(40, 36))  # images larger than the config's size
    _image_folders(tmp_path / "pets" / "test", 2, size=(40, 36))
    (name, config), *_ = _blocks("yaml")
    Path(name.strip()).write_text(config)
    assert main(["fit", "--config", "pets.yaml", "--trainer.enable_progress_bar=false"]) == 0
    metrics = json.loads((tmp_path / "runs" / "pets" / "metrics.json").read_text())
    assert [t["classes"] for t in metrics["data"]["tasks"]] == [[0, 1], [2, 3]]
    assert [(t["train"] + t["val"], t["test"]) for t in metrics["data"]["tasks"]] == [(12, 4), (12, 4)]
    for _, block in _blocks("python"):
        exec(compile(block, str(DOC), "exec"), {})
    assert (tmp_path / "runs" / "pets_split" / "metrics.json").is_file() and (
        tmp_path / "runs" / "table" / "metrics.json"
    ).is_file()


def test_the_own_data_page_text_config_parses_and_runs(tmp_path, monkeypatch):
    from clight.cli import main

    monkeypatch.chdir(tmp_path)
    reviews = [("a fine film", "positive"), ("a dull film", "negative")] * 6
    for name, rows in (("reviews_train.jsonl", reviews), ("reviews_test.jsonl", reviews[:2])):
        Path(name).write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    Path("tickets.csv").write_text(
        "body,team\n" + "".join(f"ticket {i},{'billing' if i % 2 else 'support'}\n" for i in range(12))
    )
    (_, text_data), *_ = [b for b in _blocks("yaml") if "TextTaskSequence" in b[1]]
    config = yaml.safe_load(text_data)
    config["data"]["init_args"].update(tokenizer="char", max_length=64, batch_size=4)
    config.update(
        model={"class_path": "clight.ContinualCausalLM", "init_args": {"model": "tiny"}},
        trainer={"max_epochs": 1, "enable_progress_bar": False},
        runner={"max_steps_per_task": 1},
        run_dir="runs/text",
    )
    Path("text.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "text.yaml"]) == 0
    tasks = json.loads(Path("runs/text/metrics.json").read_text())["data"]["tasks"]
    assert [(t["name"], t["test"]) for t in tasks] == [("reviews_train", 2), ("tickets", 2)]  # 20% of 12 tickets held out
