"""One real sweep (train.py -m, its jobs in one process) read as a user would: each job's own peak
memory, TensorBoard's HParams through the server's HTTP API, the sweep's MLflow store."""
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.test_studies import _env, _jobs, _summary, _train

pytestmark = pytest.mark.slow
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
SWEEP = ["data=digits", "data.train_size=128", "data.val_size=64", "data.batch_size=64", "schedule.epochs=1",
         "schedule.warmup_epochs=1", "pipeline_backend.chunks=2", "threads=1", "model.width=1,0.25"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-width job, then a quarter-width one, in one process (Hydra's basic launcher)."""
    root = tmp_path_factory.mktemp("sweep") / "widths"
    out = _train("-m", *SWEEP, *(["logger=mlflow"] if HAS_MLFLOW else []), f"hydra.sweep.dir={root}")
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_each_job_of_a_sweep_reports_its_own_peak_memory(sweep: Path) -> None:
    wide, narrow = (_summary(job) for job in _jobs(sweep))
    assert ("model.width=1" in wide["overrides"]) and ("model.width=0.25" in narrow["overrides"])
    print(f"peak memory: width 1 {wide['peak_memory_bytes'] / 2**20:.0f} MiB, "
          f"width 0.25 {narrow['peak_memory_bytes'] / 2**20:.0f} MiB")
    # one process: its all-time peak (ru_maxrss) would give the second job the first one's figure
    assert narrow["peak_memory_bytes"] < wide["peak_memory_bytes"]
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


def test_tensorboard_hparams_shows_the_swept_key_as_differing(sweep: Path) -> None:
    """The real TensorBoard server on the sweep dir, asked as its HParams tab asks."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep),
                               "--port", str(port), "--host", "127.0.0.1", "--reload_interval", "1"],
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
                if len(groups.get("sessionGroups", [])) == 2:
                    break
            except OSError:
                pass  # not listening yet
            assert server.poll() is None, server.communicate()[1][-2000:]
            time.sleep(1)
        by_name = {info["name"]: info for info in infos}
        assert by_name["model.width"].get("differs") is True
        assert by_name["model.width"]["domainInterval"] == {"minValue": 0.25, "maxValue": 1.0}
        for same in ("data.name", "partition.front", "seed", "schedule.lr"):
            assert by_name[same].get("differs", False) is False, same
        assert len(groups["sessionGroups"]) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra is not installed here "
                                           "(pip install -e '.[test,mlflow]', as CI does)")
def test_the_sweeps_runs_sit_side_by_side_in_one_mlflow_store(sweep: Path) -> None:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep.name)  # the sweep dir's name
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(job.name for job in _jobs(sweep))
    for run in runs:
        job = sweep / run.info.run_name
        assert run.info.status == "FINISHED"
        assert float(run.data.params["model.width"]) == float(re.findall(r"width=([\d.]+)", job.name)[0])
        assert run.data.metrics["val_acc1"] == pytest.approx(_summary(job)["val_acc1"])
    assert not list(sweep.glob("*/mlflow.db"))  # not one store per job
    listed: List[str] = [p.name for p in sweep.iterdir()]
    assert "mlflow.db" in listed
