"""Role mode as README runs it on two hosts (pipeline_backend.role=cloud under train.py; the edge
here, in this process): the cloud runs with the edge's resolved config, its thread count included
(its own command line leaves `threads` unset), so the losses equal gpipe's step for step (as
test_dist_train compares them) and, bit for bit, a local dist run's, whose cloud child gets the
edge's threads=1; the cloud's console and train.log say it was admitted, that it works and why
it exits."""
import re
import subprocess
import sys

import pytest
import torch

from omegaconf import DictConfig, OmegaConf

from tests.custom_model import units
from tests.dist_helpers import REPO, SECRET, build, config, free_port, train_env, train_epochs

pytestmark = pytest.mark.slow
STEPS = 6


def _batches() -> list:
    """STEPS batches of 32 images 3x32x32 in 4 classes: large enough that a second torch thread
    splits custom_model's sums (and changes the losses' last bits by the second step)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for b in range(STEPS):
        y = torch.randint(0, 4, (32,), generator=g)
        x = torch.randn(32, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float() * 0.5
        out.append((x, y, torch.arange(b * 32, (b + 1) * 32)))
    return out


def _losses(name: str, cfg: DictConfig) -> list:
    """Training losses of backend `name` on tests/custom_model.py's units (the cloud builds them from
    the model's `_target_`), width 0.5, from the same first weights."""
    OmegaConf.update(cfg, "model._target_", "tests.custom_model.units")
    OmegaConf.update(cfg, "model.width", 0.5)
    torch.manual_seed(0)
    backend = build(name, cfg, units=units(4, 0.5), shape=(3, 32, 32))
    try:
        return train_epochs(backend, _batches())
    finally:
        backend.close()


def test_a_cloud_role_runs_with_the_edges_threads_and_says_what_it_does(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGESPLIT_SECRET", SECRET)
    port = free_port()
    gpipe = _losses("gpipe", config(chunks=2, threads=1))
    local = _losses("dist", config(chunks=2, threads=1))
    cloud_dir = tmp_path / "cloud"
    cloud = subprocess.Popen(
        [sys.executable, str(REPO + "/train.py"), "pipeline_backend=dist", "pipeline_backend.role=cloud",
         f"pipeline_backend.master_port={port}", "pipeline_backend.timeout_s=120", "threads=null",
         "log_every=2", f"hydra.run.dir={cloud_dir}"],
        env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        losses = _losses("dist", config(chunks=2, threads=1, role="edge", master_port=port, timeout_s=120))
        out, _ = cloud.communicate(timeout=120)
    finally:
        if cloud.poll() is None:
            cloud.kill()
            cloud.wait()
    assert cloud.returncode == 0, out[-3000:]
    assert losses == pytest.approx(gpipe, rel=1e-5, abs=1e-6)
    # a second thread on the cloud changes the last bits by the sixth step (custom_model, 2 cores)
    assert losses == local
    log = (cloud_dir / "train.log").read_text()
    assert re.search(rf"admitted by the edge at 127\.0\.0\.1:{port} as cloud stage 1 of 1 \(units 1-3\); "
                     r"1 torch thread\(s\) \(the edge's threads=1\)", log), log
    beats = re.findall(r"cloud stage 1 of 1: (\d+) training steps done \(epoch 1\), [\d.]+ s/step over "
                       r"the last 2", log)
    assert beats == ["2", "4", "6"], log  # every log_every=2 steps
    assert f"cloud stage 1 of 1: the edge ended the run after {STEPS} training steps: exiting" in log
    assert log.strip().splitlines()[-1].endswith("exiting") and "cloud stage 1 of 1" in out
