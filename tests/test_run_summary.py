"""The typed run contracts: summary.json's keys, round trips, partial summaries, meter state, overhead."""
import errno
import json
import math
import os
from pathlib import Path

import pytest

from edgesplit.run import rundir
from edgesplit.boundary.meter import CommFigures, CommMeter
from edgesplit.errors import UserError
from edgesplit.logs.summary import (EpochRecord, RunSummary, SideStats, SummaryFormatError, read_summary,
                                    write_summary)

# README's 'Where results land', summary.json row.
SUMMARY_KEYS = ["status", "error", "epochs", "epochs_planned", "val_acc1", "val_acc5", "best_val_acc1",
                "val_loss", "train_loss", "train_acc1", "time_per_batch_s", "samples_per_s",
                "peak_memory_bytes", "backend", "eval_compressed", "overrides", "comm", "sides", "history",
                "resumed_with_changes", "load_avg_start", "load_avg_end", "cpus", "precision", "chunks",
                "activation_dtype", "gradient_dtype", "privacy"]
CROSSINGS = [f"{boundary}_{pass_}" for boundary in ("front", "back") for pass_ in ("forward", "backward")]
COMM_KEYS = ["up_bytes_per_batch", "down_bytes_per_batch", "raw_up_bytes_per_batch",
             "raw_down_bytes_per_batch", "compression_ratio", "overhead_up_bytes_per_batch",
             "overhead_down_bytes_per_batch", "raw_fp32_up_bytes_per_batch",
             "raw_fp32_down_bytes_per_batch", "fp32_compression_ratio"] + [
    key for c in CROSSINGS
    for key in (f"{c}_bytes_per_batch", f"raw_{c}_bytes_per_batch", f"{c}_rel_error", f"{c}_sparsity")]
SIDE_KEYS = ["parameters", "peak_memory_bytes", "compute_s_per_batch", "processes", "codec_state_bytes"]
EPOCH_KEYS = ["epoch", "lr", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5",
              "time_per_batch_s", "samples_per_s", "peak_memory_bytes", "up_bytes_per_batch",
              "down_bytes_per_batch", "data_s", "skipped_steps", "privacy"]
# TensorBoard's per-epoch tags for a run with edge and cloud sides
EPOCH_TAGS = ["train/loss", "train/acc1", "val/loss", "val/acc1", "val/acc5", "val/best_acc1", "lr",
              "time/batch_s", "time/data_s", "memory/peak_bytes", "comm/up_bytes", "comm/down_bytes",
              "comm/raw_up_bytes",
              "comm/raw_down_bytes", "comm/overhead_up_bytes", "comm/overhead_down_bytes",
              "time/edge_compute_s", "memory/edge_peak_bytes", "time/cloud_compute_s",
              "memory/cloud_peak_bytes"] + [f"boundary/{c}/{stat}" for c in CROSSINGS
                                            for stat in ("rel_error", "sparsity")]


def _meter() -> CommMeter:
    """Two batches over every boundary x pass, with quality measured and 32 B of headers each way."""
    meter = CommMeter()
    for _ in range(2):
        for boundary, pass_, sent in [("front", "forward", 100), ("back", "backward", 30),
                                      ("back", "forward", 50), ("front", "backward", 20)]:
            meter.record(boundary, pass_, sent, 4 * sent)
            meter.record_quality(boundary, pass_, 0.25, 0.5)
        meter.record_overhead("up", 32)
        meter.record_overhead("down", 32)
        meter.end_batch()
    return meter


def _epoch(epoch: int, val_acc1: float) -> EpochRecord:
    return EpochRecord(epoch, lr=0.1 * epoch, train_loss=1.0 / epoch, train_acc1=50.0 + epoch, val_loss=0.9,
                       val_acc1=val_acc1, val_acc5=99.0, time_per_batch_s=0.5, data_s=0.25 * epoch,
                       skipped_steps=epoch - 1)


def _finished() -> RunSummary:
    summary = RunSummary(backend="dist", epochs_planned=2, eval_compressed=False, overrides=["seed=1"])
    sides = {"edge": SideStats(10, 1000, 0.1), "cloud": SideStats(90, 5000, 0.2, processes=2)}
    for epoch, acc in [(1, 70.0), (2, 60.0)]:
        summary.record_epoch(_epoch(epoch, acc), batch_size=64, comm=_meter().summary(), sides=sides)
    return summary


def test_summary_json_holds_the_documented_keys(tmp_path: Path) -> None:
    write_summary(tmp_path, _finished())
    data = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(data) == sorted(SUMMARY_KEYS)
    assert sorted(data["comm"]) == sorted(COMM_KEYS)
    assert {side: sorted(s) for side, s in data["sides"].items()} == {"edge": sorted(SIDE_KEYS),
                                                                      "cloud": sorted(SIDE_KEYS)}
    assert [sorted(h) for h in data["history"]] == [sorted(EPOCH_KEYS)] * 2


def test_round_trip_through_summary_json(tmp_path: Path) -> None:
    summary = _finished()
    summary.load_avg_start, summary.load_avg_end, summary.cpus = [1.5, 1.0, 0.5], [2.0, 1.2, 0.6], 2
    assert RunSummary.from_dict(summary.to_dict()) == summary
    write_summary(tmp_path, summary)
    assert read_summary(tmp_path) == summary
    assert not (tmp_path / "summary.json.tmp").exists()  # written aside, then renamed over


def test_a_summary_written_before_the_per_epoch_figures_still_reads() -> None:
    data = _finished().to_dict()
    for key in ("load_avg_start", "load_avg_end", "cpus"):
        del data[key]
    for h in data["history"]:
        for key in ("samples_per_s", "peak_memory_bytes", "up_bytes_per_batch", "down_bytes_per_batch"):
            del h[key]
    old = RunSummary.from_dict(data)
    assert old.load_avg_start is None and old.history[0].peak_memory_bytes is None
    assert old.history[1].time_per_batch_s == 0.5


def test_record_epoch_keeps_the_best_the_last_and_the_largest_side() -> None:
    summary = _finished()
    assert summary.status == "finished" and summary.epochs == 2
    assert summary.best_val_acc1 == 70.0 and summary.val_acc1 == 60.0  # the best, and the last epoch's
    assert summary.train_loss == 0.5 and summary.samples_per_s == 128.0
    assert summary.peak_memory_bytes == 5000
    assert [h.epoch for h in summary.history] == [1, 2]


def test_epoch_scalars_are_the_tensorboard_tags() -> None:
    scalars = _finished().epoch_scalars()
    assert sorted(scalars) == sorted(EPOCH_TAGS)
    assert scalars["lr"] == 0.2 and scalars["val/best_acc1"] == 70.0
    assert scalars["time/data_s"] == 0.5  # the last epoch's wait for its batches
    assert scalars["comm/overhead_up_bytes"] == 32.0 and scalars["boundary/back_forward/sparsity"] == 0.5


def test_partial_summaries_load(tmp_path: Path) -> None:
    running = RunSummary(backend="gpipe", epochs_planned=200, eval_compressed=True, overrides=[])
    assert RunSummary.from_dict(running.to_dict()) == running
    assert running.epoch_scalars() == {}
    # failed before any epoch, as a trainer before the typed summary wrote it: metrics absent
    failed = {"status": "failed", "error": "data.root=/x does not exist", "backend": "naive", "epochs": 0,
              "epochs_planned": 3, "best_val_acc1": 0.0, "eval_compressed": True, "overrides": [],
              "history": []}
    (tmp_path / "summary.json").write_text(json.dumps(failed))
    loaded = read_summary(tmp_path)
    assert loaded is not None and loaded.status == "failed" and loaded.error == failed["error"]
    assert loaded.val_acc1 is None and loaded.comm is None and loaded.sides == {} and loaded.history == []
    assert read_summary(tmp_path / "nothing") is None


def test_a_summary_that_does_not_fit_says_what() -> None:
    data = _finished().to_dict()
    with pytest.raises(SummaryFormatError, match="no 'up_bytes_per_batch'"):
        comm = {k: v for k, v in data["comm"].items() if k != "up_bytes_per_batch"}
        RunSummary.from_dict({**data, "comm": comm})
    with pytest.raises(SummaryFormatError, match="status 'done' is not one of"):
        RunSummary.from_dict({**data, "status": "done"})
    with pytest.raises(SummaryFormatError, match="not an object"):
        RunSummary.from_dict([data])


def test_side_stats_from_an_older_dist_summary() -> None:
    # dist's edge wrote floats and its link byte counts here
    assert SideStats.from_dict({"parameters": 5.0, "peak_memory_bytes": 7.0, "compute_s_per_batch": 0.5,
                                "link_up_bytes": 1.0}) == SideStats(5, 7, 0.5)


def test_meter_state_merges_into_another_meter() -> None:
    edge, cloud = _meter(), _meter()
    state = json.loads(json.dumps(cloud.state()))  # travels as JSON
    edge.merge(state)
    assert edge.batches == 2  # the batches are the edge's; the counts add
    figures = edge.summary()
    assert figures.crossings["front", "forward"].bytes_per_batch == 200.0  # 2 x 2 x 100 over 2 batches
    assert figures.up_bytes_per_batch == 260.0 and figures.raw_up_bytes_per_batch == 4 * 260.0
    assert figures.overhead_up_bytes_per_batch == figures.overhead_down_bytes_per_batch == 64.0
    assert figures.crossings["back", "backward"].rel_error == 0.25  # a mean over both meters' samples
    assert edge.samples["back", "backward"] == 4
    with pytest.raises(ValueError, match="unknown boundary/pass"):
        edge.merge({"crossings": [{**state["crossings"][0], "pass": "sideways"}], "overhead_bytes": {}})


def test_overhead_is_apart_from_the_payload_bytes() -> None:
    figures = _meter().summary()
    assert figures.up_bytes_per_batch == 130.0 and figures.down_bytes_per_batch == 70.0  # payloads only
    assert figures.overhead_up_bytes_per_batch == figures.overhead_down_bytes_per_batch == 32.0
    assert figures.compression_ratio == 4.0  # of the payloads
    assert CommMeter().summary().overhead_up_bytes_per_batch == 0.0  # only counted when recorded
    with pytest.raises(ValueError, match="direction='sideways'"):
        CommMeter().record_overhead("sideways", 1)


def test_comm_figures_leave_out_quality_not_measured() -> None:
    meter = CommMeter()
    meter.record("front", "forward", 10, 40)
    meter.end_batch()
    data = meter.summary().to_dict()
    assert "front_forward_rel_error" not in data and "front_forward_sparsity" not in data
    assert CommFigures.from_dict(data) == meter.summary()


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null_and_read_back(tmp_path: Path) -> None:
    summary = _finished()
    summary.history[0].val_loss = math.nan
    summary.val_loss = math.inf
    summary.comm.crossings["front", "forward"].rel_error = -math.inf  # type: ignore[union-attr]
    write_summary(tmp_path, summary)
    data = _strict((tmp_path / "summary.json").read_text())
    assert isinstance(data, dict)
    assert data["val_loss"] is None and data["history"][0]["val_loss"] is None
    assert data["comm"]["front_forward_rel_error"] is None
    loaded = read_summary(tmp_path)
    assert loaded is not None and loaded.val_loss is None and math.isnan(loaded.history[0].val_loss)


def test_a_failed_write_names_the_path_and_leaves_no_temporary_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_summary(tmp_path, _finished())
    before = (tmp_path / "summary.json").read_text()

    def full(src: object, dst: object) -> None:
        assert str(src).endswith(f"summary.json.{os.getpid()}.tmp")  # per process
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rundir.os, "replace", full)
    with pytest.raises(UserError) as info:
        write_summary(tmp_path, RunSummary(backend="naive", epochs_planned=1, eval_compressed=True,
                                           overrides=[]))
    assert str(info.value).startswith(f"no space left on the device writing {tmp_path / 'summary.json'} (")
    assert "MiB free there" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert (tmp_path / "summary.json").read_text() == before
