"""bench epoch: generated CIFAR-10-format files, the md5 switch, s/epoch and the studies projected."""
import itertools
import pickle
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from hydra import compose, initialize_config_dir

from edgesplit.bench import epoch
from edgesplit.bench._cifar_files import FOLDER, write_cifar10
from edgesplit.data.cifar import CIFAR_MEAN, CIFAR_STD
from edgesplit.config import CONF_DIR, compose_config, register_configs
from edgesplit.data.datasets import build_datasets
from edgesplit.errors import DataError


def _data(root: Path, *extra: str) -> Any:
    cfg = compose_config(["data=cifar10", f"data.root={root}", "data.download=false", "data.augment=false",
                          *extra])
    return build_datasets(cfg.data)


def test_generated_files_are_read_by_torchvision_with_the_md5_check_switched_off(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, train_images=50, test_images=20)
    with pytest.raises(DataError, match=r"data_batch_1 is corrupt \(md5 mismatch"):
        _data(tmp_path)  # on by default: generated files are not CIFAR-10
    ds = _data(tmp_path, "+data.verify=false")
    assert (len(ds.train), len(ds.val), ds.num_classes) == (50, 20, 10)
    with open(folder / "data_batch_2", "rb") as f:  # the second file holds images 10..19
        batch = pickle.load(f, encoding="latin1")
    image = torch.from_numpy(batch["data"][3].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    x, y = ds.train[13]
    torch.testing.assert_close(x, (image - mean) / std, rtol=0, atol=1e-6)
    assert y == batch["labels"][3]


def test_generated_files_are_written_once_for_the_same_sizes(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, train_images=50, test_images=20)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(stamps) >= {"data_batch_1", "data_batch_5", "test_batch", "batches.meta"}
    assert write_cifar10(tmp_path, train_images=50, test_images=20) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    write_cifar10(tmp_path, train_images=60, test_images=20)
    assert len(_data(tmp_path, "+data.verify=false").train) == 60


def test_the_projected_studies_are_the_presets() -> None:
    """STUDIES (jobs, epochs, backend and compressor of each job) as conf/experiment/ composes them."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for study, (epochs, jobs) in epoch.STUDIES.items():
            preset = compose(config_name="config", overrides=[f"experiment={study}"],
                             return_hydra_config=True)
            params = {k: str(v).split(",") for k, v in preset.hydra.sweeper.params.items()}
            found = []
            for values in itertools.product(*params.values()):
                swept = [f"{k}={v}" for k, v in zip(params, values)]
                cfg = compose(config_name="config", overrides=[f"experiment={study}", *swept])
                found.append(((cfg.pipeline_backend.name, cfg.compressor.name), cfg.schedule.epochs))
            assert sorted(found) == sorted((job, epochs) for job in jobs), study


def _cell(steps: int, of: int, train_s: float, wait_s: float, evals: int, of_evals: int,
          eval_s: float) -> Dict:
    return {"steps": steps, "steps_per_epoch": of, "train_s": train_s, "data_wait_s": wait_s,
            "eval_batches": evals, "eval_batches_per_epoch": of_evals, "eval_s": eval_s, "images": 50_000,
            "batch": 1024, "num_workers": 2}


def test_a_cut_epoch_is_projected_and_the_studies_add_up_their_jobs() -> None:
    e = epoch.per_epoch(_cell(12, 48, 3.0, 0.3, 2, 10, 0.4))
    assert e == pytest.approx({"train_s": 12.0, "data_s": 1.2, "eval_s": 2.0, "epoch_s": 14.0})
    results = {f"gpipe:{c}": _cell(48, 48, 10.0, 0.5, 10, 10, 2.0) for c in ("prune", "none", "quantize8")}
    results["gpipe:quantize4"] = _cell(48, 48, 11.0, 0.5, 10, 10, 1.0)  # 12 s/epoch
    results["naive:none"] = _cell(48, 48, 6.0, 0.5, 10, 10, 2.0)  # 8 s/epoch
    results["naive:none"]["data_device"] = "cuda"
    text = epoch.tables(results)
    rows = {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                              if line.startswith("| "))}
    assert rows["edge_grid"][1:] == ["9 x 200", "gpipe prune: 40.0 min", "6.0 h"]  # 9 x 200 x 12 s
    assert rows["quant_lr"][2] == "gpipe none: 40.0 min; gpipe quantize8: 40.0 min; gpipe quantize4: 40.0 min"
    assert rows["quant_lr"][3] == "6.0 h"
    assert rows["backends"][3] == "needs --cells dist:none"  # not measured: no guess
    assert "| gpipe | prune | loader, 2 workers | 48 | all | 10.0 | 0.50 | 5.0% | 2.0 | 12.0 | 4915 |" in text
    assert "| naive | none | resident on cuda | 48 |" in text


@pytest.mark.slow
def test_bench_epoch_runs_the_real_loader_and_projects(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    args = ["--images", "256", "--test-images", "128", "--width", "0.125", "--batch", "64", "--chunks", "2",
            "--threads", "1", "--num-workers", "1", "--warmup", "1", "--steps", "2", "--eval-batches", "1",
            "--cells", "gpipe:prune,naive:none", "--data-root", str(tmp_path)]
    assert epoch.main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == "python -m edgesplit.bench epoch " + " ".join(args)
    assert ("256 generated training images in CIFAR-10's format, batch 64, width 0.125, "
            "data.num_workers 1") in out
    cells = ([c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| "))
    rows = {(r[0], r[1]): r for r in cells if len(r) == 11}
    for cell in (("gpipe", "prune"), ("naive", "none")):
        r = rows[cell]
        assert r[2:5] == ["loader, 1 workers", "4", "2 steps, projected"]  # 256 // 64 steps; 2 timed
        train_s, wait_s, eval_s, epoch_s = float(r[5]), float(r[6]), float(r[8]), float(r[9])
        assert 0 < wait_s < train_s and epoch_s == pytest.approx(train_s + eval_s, abs=0.11)
    assert "| edge_grid | 9 x 200 |" in out
    assert (tmp_path / FOLDER / "data_batch_1").is_file()  # kept where --data-root put it
    # data.device: the set kept resident and augmented per batch, as the trainer runs it
    assert epoch.main(args[:-4] + ["--cells", "naive:none", "--data-root", str(tmp_path),
                                   "--override", "data.device=cpu_resident"]) == 0
    out = capsys.readouterr().out
    cells = ([c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| "))
    r = next(r for r in cells if len(r) == 11 and r[0] == "naive")
    assert r[2:5] == ["resident on cpu_resident", "4", "2 steps, projected"]
    assert 0 < float(r[6]) < float(r[5])


def test_bench_sweep_runs_the_grid_and_reports_the_speed_up() -> None:
    from edgesplit.bench import sweep

    args = sweep.parse(["--grid", "1,2x1,3", "--epochs", "1", "--override", "threads=1"])
    assert sweep.sweep_args(args) == ["-m", "experiment=smoke", "partition.front=1,2", "partition.back=1,3",
                                      "schedule.epochs=1", "threads=1"]
    text = sweep.table({"serial": {"wall_s": 90.0, "jobs": 9, "finished": 9, "rc": 0},
                        "joblib n_jobs=3": {"wall_s": 40.0, "jobs": 9, "finished": 9, "rc": 0},
                        "broken": {"wall_s": 5.0, "jobs": 9, "finished": 8, "rc": 1, "error": "boom"}})
    assert "| joblib n_jobs=3 | 9/9 | 40.0 | 4.4 | 2.25x |" in text
    assert "| broken | 8/9 (exit 1: boom) | 5.0 | 0.6 | — |" in text  # no speed-up of a failed sweep
