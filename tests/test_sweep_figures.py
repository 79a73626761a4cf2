"""The end-to-end sweep (tests/sweeps.py) read as a user would: TensorBoard's HParams through the
server's HTTP API, the sweep's MLflow store; and each job of a sweep's own peak memory."""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch

from edgesplit.run import memory, trainer
from tests.sweeps import HAS_MLFLOW, Sweep, env, jobs, overrides, summary


def test_each_job_of_a_sweep_reports_its_own_peak_memory(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs in one process, as Hydra's basic launcher runs a sweep: the first one holds 256 MiB
    more while it evaluates; its all-time peak (ru_maxrss) would give the second one its figure."""
    evaluate = trainer.evaluate

    def holding_256_mib(backend: Any, loader: Any) -> Dict[str, float]:
        held = torch.ones(64 * 2**20)  # touched
        time.sleep(3 * memory.SAMPLE_S)
        del held
        return evaluate(backend, loader)
    cfg = make_cfg("model._target_=tests.custom_model.units", "pipeline_backend=naive",
                   "pipeline_backend.chunks=1", "schedule.epochs=1")
    with monkeypatch.context() as m:
        m.setattr(trainer, "evaluate", holding_256_mib)
        wide = trainer.run(cfg, tmp_path / "0", [])
    narrow = trainer.run(cfg, tmp_path / "1", [])
    print(f"peak memory: {wide['peak_memory_bytes'] / 2**20:.0f} MiB, "
          f"then {narrow['peak_memory_bytes'] / 2**20:.0f} MiB")
    assert narrow["peak_memory_bytes"] < wide["peak_memory_bytes"] - 150 * 2**20
    assert narrow["peak_memory_bytes"] > 50 * 2**20  # still the process's RSS: torch and all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: Dict[str, Any]) -> Dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


@pytest.mark.slow
def test_tensorboard_hparams_shows_the_swept_keys_as_differing(e2e_sweep: Sweep) -> None:
    """The real TensorBoard server on the sweep dir, asked as its HParams tab asks."""
    sweep = e2e_sweep.dir
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep),
                               "--port", str(port), "--host", "127.0.0.1", "--reload_interval", "1"],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/data/plugin/hparams/experiment"
    try:
        deadline, infos = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            try:
                infos = _post(url, {"experimentName": ""}).get("hparamInfos", [])
                groups = _post(url.replace("/experiment", "/session_groups"),
                               {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                                                          "STATUS_FAILURE", "STATUS_RUNNING"],
                                "colParams": [], "startIndex": 0, "sliceSize": 100})
                if len(groups.get("sessionGroups", [])) == 4:  # the jobs that ran
                    break
            except OSError:
                pass  # not listening yet
            assert server.poll() is None, server.communicate()[1][-2000:]
            time.sleep(1)
        by_name = {info["name"]: info for info in infos}
        assert by_name["seed"].get("differs") is True
        assert by_name["seed"]["domainInterval"] == {"minValue": 1.0, "maxValue": 2.0}
        assert by_name["compressor.name"].get("differs") is True
        for same in ("data.name", "partition.front", "model.width", "schedule.lr"):
            assert by_name[same].get("differs", False) is False, same
        assert len(groups["sessionGroups"]) == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=30) as answer:
            runs = json.loads(answer.read())  # TensorBoard's run names: each job's dir and tb/
        ran = [job for job in jobs(sweep) if (job / "summary.json").exists()]
        assert sorted(runs) == sorted(f"{job.name}/tb" for job in ran) and max(map(len, runs)) < 40
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra is not installed here "
                                           "(pip install -e '.[test,mlflow]', as CI does)")
@pytest.mark.slow
def test_the_sweeps_runs_sit_side_by_side_in_one_mlflow_store(e2e_sweep: Sweep) -> None:
    """Its jobs ran in joblib's two job processes, each opening the sweep's one store."""
    from mlflow.tracking import MlflowClient
    sweep = e2e_sweep.dir
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep.name)  # the sweep dir's name
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    ran = [job for job in jobs(sweep) if (job / "summary.json").exists()]
    assert len(ran) == 4 and sorted(r.info.run_name for r in runs) == sorted(job.name for job in ran)
    for run in runs:
        job = sweep / run.info.run_name
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == re.findall(r"seed=(\d+)", job.name)[0]
        assert run.data.params["compressor.name"] == overrides(job)["compressor"]
        assert len(run.info.run_name) < 40  # the job's short name
        assert run.data.metrics["val/acc1"] == pytest.approx(summary(job)["val_acc1"])
    assert not list(sweep.glob("*/mlflow.db"))  # not one store per job
    listed: List[str] = [p.name for p in sweep.iterdir()]
    assert "mlflow.db" in listed
