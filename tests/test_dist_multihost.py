"""Across hosts: edge and cloud in two network namespaces joined by a veth pair (the traffic
crosses an interface), and the two-torchrun launch that README shows. (Role mode with one run dir on
one host: test_dist_faults.)"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.dist_helpers import REPO, dist_process_count, finish, free_port, train_argv, train_env

pytestmark = pytest.mark.slow
NS = f"es{os.getpid()}"
EDGE_IP, CLOUD_IP = "10.231.7.1", "10.231.7.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _netns_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"{NS}probe"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"`ip netns add` fails here: {getattr(e, 'stderr', b'') or e}"
    return ""


@pytest.fixture
def namespaces():
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    edge, cloud = f"{NS}e", f"{NS}c"
    try:
        _ip("netns", "add", edge)
        _ip("netns", "add", cloud)
        _ip("link", "add", f"{NS}v0", "type", "veth", "peer", "name", f"{NS}v1")
        _ip("link", "set", f"{NS}v0", "netns", edge)
        _ip("link", "set", f"{NS}v1", "netns", cloud)
        for ns, dev, ip in ((edge, f"{NS}v0", EDGE_IP), (cloud, f"{NS}v1", CLOUD_IP)):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield edge, cloud
    finally:
        for ns in (edge, cloud):  # deleting a namespace deletes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _tx_bytes(ns: str, dev: str) -> int:
    path = f"/sys/class/net/{dev}/statistics/tx_bytes"
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", path],
                         capture_output=True, text=True, check=True, timeout=10)
    return int(out.stdout)


def _edge_and_cloud(namespaces, tmp_path, cloud_dir, *overrides):
    """One run with the edge and the cloud in their own network namespaces: (edge output, edge
    exit code, cloud exit code)."""
    edge_ns, cloud_ns = namespaces
    common = ["data.train_size=256", "data.val_size=64", f"pipeline_backend.master_addr={EDGE_IP}",
              "pipeline_backend.master_port=29611",
              "pipeline_backend.timeout_s=60",  # the edge may take a while to start under load
              *overrides]
    env = dict(train_env())
    run = tmp_path / "run"
    cloud = subprocess.Popen(
        ["ip", "netns", "exec", cloud_ns, *train_argv(*common, "pipeline_backend.role=cloud",
                                                      f"hydra.run.dir={tmp_path / cloud_dir}")],
        env=dict(env, GLOO_SOCKET_IFNAME=f"{NS}v1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    edge = subprocess.Popen(
        ["ip", "netns", "exec", edge_ns, *train_argv(*common, "pipeline_backend.role=edge",
                                                     f"hydra.run.dir={run}")],
        env=dict(env, GLOO_SOCKET_IFNAME=f"{NS}v0"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        edge_out, _ = edge.communicate(timeout=240)
        cloud_out, _ = cloud.communicate(timeout=90)
    finally:
        for proc in (edge, cloud):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    cloud_files = {p.name for p in (tmp_path / cloud_dir).iterdir()}
    assert cloud_files <= {".hydra", "train.log"}, cloud_files  # only the edge writes results
    return edge_out + cloud_out, edge.returncode, cloud.returncode


def test_edge_and_cloud_in_two_network_namespaces(namespaces, tmp_path):
    """Train across two network namespaces: the traffic goes over the veth pair, the run ends and
    only the edge writes results (the cloud host keeps no file; the cloud's state travels to the
    edge's checkpoint and resumes: test_dist_train)."""
    before = _tx_bytes(namespaces[0], f"{NS}v0")
    out, edge_rc, cloud_rc = _edge_and_cloud(namespaces, tmp_path, "cloud_out", "schedule.epochs=1")
    assert edge_rc == 0 and cloud_rc == 0, out[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and [h["epoch"] for h in summary["history"]] == [1]
    sent = _tx_bytes(namespaces[0], f"{NS}v0") - before
    steps = 256 // 64
    assert sent > steps * summary["comm"]["up_bytes_per_batch"]  # it really went over the veth
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint.pt", "checkpoint_best.pt"]


def test_two_torchrun_invocations(tmp_path):
    """`torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d` per role, on one machine."""
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=edgesplit-test"]
    common = ["data.train_size=256", "data.val_size=64", "schedule.epochs=1"]
    procs = []
    try:
        # one run dir for both, as README's recipe gives two processes started in the same second
        # on one host: the cloud must not delete what the edge wrote there
        for role in ("cloud", "edge"):
            argv = torchrun + train_argv(*common, f"pipeline_backend.role={role}",
                                         f"hydra.run.dir={tmp_path / 'run'}")[1:]
            procs.append(subprocess.Popen(argv, env=train_env(), cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
            time.sleep(0.5)
        finish(procs)
    finally:
        for p in procs:  # a start that failed: the one started before it
            if p.poll() is None:
                p.kill()
                p.wait()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["backend"] == "dist"
    assert "epoch 1/1" in (tmp_path / "run" / "train.log").read_text()  # the edge's log survived
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
    assert dist_process_count() == 0
