"""An authenticated edge (it knows the secret) sends a pickle, or a fuzzed state blob, where a
cloud process expects data: the stage spec, a control message, the state to load. The cloud ends
with one line naming the edge and what was wrong (exit 1, no traceback), unpickling nothing; the
edge's run ends `failed` with its summary.json."""
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable, Tuple

import pytest

from edgesplit.backends.remote import edge, protocol
from edgesplit.config import compose_config
from edgesplit.errors import PeerError
from edgesplit.run.trainer import run
from tests.dist_helpers import REPO, SECRET, free_port, train_env
from tests.fake_peer import evil_pickle, poison_sends

Blob = Callable[[bytes], bytes]  # a real state blob -> what the edge sends instead


def _fuzzed(seed: int) -> Blob:
    """The real blob with a few random bytes overwritten: the first draw from `seed` on that the
    loader refuses (most overwrite tensor values, which an authenticated peer may send)."""
    def fuzz(blob: bytes) -> bytes:
        rng = random.Random(seed)
        for _ in range(1000):
            out = bytearray(blob)
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] = rng.randrange(256)
            try:
                protocol.unpack_state(bytes(out))
            except protocol.StateError:
                return bytes(out)
        raise AssertionError("no fuzzed blob of 1000 that the loader refuses")
    return fuzz


def _foreign(blob: bytes) -> bytes:
    """Data-only and a dict, but the state of no unit of the stage."""
    return protocol.pack_state({"units": {}, "optimizer": {}})


CASES = {  # (kind, nth message of that kind replaced by a pickle) or what the LOAD blob becomes
    "stage-spec": ("CONTROL", 1, None, "stage spec"),  # a cloud role's: its spec comes over the link
    "control": ("CONTROL", 1, None, "control message"),  # the rows below: a local cloud rank's
    "load-blob": (None, 0, "pickle", "state to load"),
    "fuzzed-blob-0": (None, 0, _fuzzed(0), "state to load"),
    "fuzzed-blob-1": (None, 0, _fuzzed(1), "state to load"),
    "foreign-state": (None, 0, _foreign, "state to load"),
}
EDGE = ["data=synthetic", "model._target_=tests.dist_helpers.tiny_units", "model.num_classes=10",
        "data.train_size=32", "data.val_size=16", "data.batch_size=16", "schedule.epochs=1",
        "compressor=quantize", "threads=1"]


def _role_cloud_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tuple[int, str]:
    """The edge run by role beside a train.py cloud role: the cloud's exit code and output."""
    monkeypatch.setenv("EDGESPLIT_SECRET", SECRET)
    common = ["pipeline_backend=dist", f"pipeline_backend.master_port={free_port()}",
              "pipeline_backend.timeout_s=60"]
    cloud = subprocess.Popen([sys.executable, f"{REPO}/train.py", *common, "pipeline_backend.role=cloud",
                              f"hydra.run.dir={tmp_path / 'cloud'}"], env=train_env(), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(PeerError):
            run(compose_config([*common, "pipeline_backend.role=edge", *EDGE]), tmp_path / "edge", [])
        out = cloud.communicate(timeout=120)[0]
    finally:
        cloud.kill()
        cloud.wait(30)
    return cloud.returncode, out


@pytest.mark.slow  # a cloud process per case
@pytest.mark.parametrize("case", list(CASES))
def test_an_authenticated_edge_sending_a_pickle_fails_the_cloud_tidily(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture, case: str) -> None:
    """The cloud role (train.py) for the stage spec, which only a role receives over the link; a
    local cloud rank (forked, so each row costs a fork, not a process start) for the other kinds,
    which both decode in the same CloudStage: the role says `error: <line>`, a rank `edgesplit: <line>`."""
    kind, nth, blob, what = CASES[case]
    marker = tmp_path / "pwned"
    evil = evil_pickle(str(marker))
    if kind is not None:
        poison_sends(kind, nth, evil, monkeypatch.setattr)
    if blob is not None:
        real = protocol.pack_state
        bad: Blob = (lambda b: evil) if blob == "pickle" else blob
        monkeypatch.setattr(edge, "pack_state", lambda state: bad(real(state)))
    line = f"cloud rank 1 (stage 1 of 1) got a malformed {what} from edge rank 0: "
    if case == "stage-spec":
        code, out = _role_cloud_output(tmp_path, monkeypatch)
        errors, said = [x for x in out.splitlines() if "error" in x.lower()], f"error: {line}"
        assert code == 1
    else:
        with pytest.raises(PeerError, match="cloud rank 1 .* exited with status 1"):
            run(compose_config(["pipeline_backend=dist", *EDGE]), tmp_path / "edge", [])
        out = capfd.readouterr().err
        said = f"edgesplit: {line}"
        errors = [x for x in out.splitlines() if x.startswith("edgesplit: cloud rank")]
    assert "Traceback" not in out
    assert len(errors) == 1 and said in errors[0], out
    summary = json.loads((tmp_path / "edge" / "summary.json").read_text())
    assert summary["status"] == "failed" and line in summary["error"]
    assert not marker.exists()
