"""clight's CSV logger: when logged rows reach ``logs/metrics.csv``."""

import csv

from clight.logger import SequenceCSVLogger


def _rows(logger: SequenceCSVLogger) -> list[dict]:
    with open(logger.experiment.metrics_file_path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_wait_in_memory_until_flush_or_the_end_of_a_fit_and_each_is_written_once(tmp_path):
    logger = SequenceCSVLogger(str(tmp_path), columns=["loss"])
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()  # what Lightning does after every logged step: within WRITE_EVERY_S nothing is written
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.save()
    assert not (tmp_path / "logs" / "metrics.csv").exists()
    assert logger.flush() == 2  # before a checkpoint: every row on disk, and counted
    assert [(r["step"], r["loss"]) for r in _rows(logger)] == [("0", "1.0"), ("1", "0.5")]

    logger.log_metrics({"loss": 0.25}, step=2)
    logger.save()
    logger.finalize("failed")  # a fit that ends (or fails) writes what it logged
    assert [r["loss"] for r in _rows(logger)] == ["1.0", "0.5", "0.25"]
    assert logger.flush() == 3


def test_a_row_older_than_write_every_s_is_written_by_the_next_save(tmp_path, monkeypatch):
    monkeypatch.setattr(SequenceCSVLogger, "WRITE_EVERY_S", 0.0)
    logger = SequenceCSVLogger(str(tmp_path), columns=["loss"])
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert [r["loss"] for r in _rows(logger)] == ["1.0"]
