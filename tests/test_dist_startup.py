"""dist's start-up lines: who a process waits for (every few seconds, time waited and the limit),
and the emulated link's rates and latency per direction (on a real start: test_dist_link)."""
import logging
import re
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from edgesplit.backends.remote import auth, launch, progress
from edgesplit.backends.remote.link import LinkSpec
from edgesplit.backends.remote.seal import Sealer
from edgesplit.backends.remote.transport import EDGE, Transport
from edgesplit.errors import ConfigError, PeerError
from tests.dist_helpers import SECRET, build, config, dist_process_count, free_port

WAITING = r"waiting for (.+): (\d+) s of ([\d.]+) s"


def _lines(caplog: pytest.LogCaptureFixture) -> list:
    return [m.groups() for r in caplog.records for m in [re.fullmatch(WAITING, r.getMessage())] if m]


def test_the_edge_names_the_ranks_it_waits_for_with_the_time_and_the_limit(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "EVERY_S", 0.3)
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=5), wait_for_workers=False)
    with caplog.at_level(logging.INFO), pytest.raises(PeerError, match="did not connect"):
        auth.Gate(store, SECRET, 3).wait(1.5, where=f"127.0.0.1:{port}")
    lines = _lines(caplog)
    assert len(lines) >= 3
    assert {what for what, _, _ in lines} == {f"cloud rank 1 (stage 1 of 2), cloud rank 2 (stage 2 of 2) "
                                              f"at 127.0.0.1:{port}"}
    assert {limit for _, _, limit in lines} == {"1.5"}
    elapsed = [int(s) for _, s, _ in lines]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1


def test_a_cloud_process_names_the_edge_it_waits_for(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture) -> None:
    """A store that answers but no edge that admits: the cloud waits, saying so, then gives up
    within the limit (every step of the join shares it), with one line."""
    monkeypatch.setattr(progress, "EVERY_S", 0.3)
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=5), wait_for_workers=False)
    started = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(PeerError) as error:
        launch.connect_local(1, 2, "127.0.0.1", port, SECRET, 1.5)
    _kept_its_limit(started, 1.5, capfd)
    assert str(error.value) == (f"the edge at 127.0.0.1:{port} did not admit this cloud process within "
                                f"1.5 s (pipeline_backend.timeout_s)")
    assert {what for what, _, _ in _lines(caplog)} == {f"the edge at 127.0.0.1:{port} to admit cloud rank 1"}
    del store


def _kept_its_limit(started: float, limit_s: float, capfd: pytest.CaptureFixture) -> None:
    """A wait that gave up within its limit plus a few seconds (a generous bound for a loaded
    machine), leaving nothing on stderr: no C++ warning or stack trace of torch's store."""
    assert time.monotonic() - started < limit_s + 5
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("role", ["edge", "cloud"])
def test_a_role_whose_peer_never_comes_says_whom_it_waits_for(
        role: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture) -> None:
    """pipeline_backend.role=edge or cloud with no peer: whom it waits for meanwhile, then one error
    naming the missing peer and the limit, within the limit and nothing on stderr (torch's store
    client would print a C++ stack trace per try; train.py's one line: test_dist_faults)."""
    monkeypatch.setattr(progress, "EVERY_S", 0.3)
    port = free_port()
    started = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(PeerError) as error:
        launch.start_by_role(role, 1, "127.0.0.1", port, SECRET, 1.5)
    _kept_its_limit(started, 1.5, capfd)
    missing = "cloud rank 1" if role == "edge" else "the edge's store"
    assert missing in str(error.value) and "1.5 s" in str(error.value), error.value
    whom = (f"cloud rank 1 (stage 1 of 1) at 127.0.0.1:{port}" if role == "edge"
            else f"the edge at 127.0.0.1:{port} to admit a cloud process")
    assert {what for what, _, _ in _lines(caplog)} == {whom}


def test_a_role_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Across hosts (a role set) the secret must come from the environment or the config."""
    monkeypatch.delenv(auth.ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{auth.ENV}.*pipeline_backend.secret"):
        build("dist", config(role="edge")).close()
    assert dist_process_count() == 0


def test_without_a_log_handler_the_lines_go_to_stderr(capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud process the edge started has no logging set up: its lines reach the console anyway."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with progress.Waiting("the edge at h:1", 60, every_s=0.1) as waiting:
        waiting.started -= 6
        time.sleep(0.35)
    assert re.search(r"^edgesplit: waiting for the edge at h:1: 6 s of 60 s$", capsys.readouterr().err, re.M)


def test_link_emulation_says_its_rates_and_latency_per_direction(caplog: pytest.LogCaptureFixture) -> None:
    sealer = Sealer(auth.derive(SECRET, "message"))
    with caplog.at_level(logging.INFO):
        Transport(EDGE, [0, 1], 5.0, sealer, LinkSpec()).close()
        assert "link emulation" not in caplog.text  # no shaping, no line
        Transport(EDGE, [0, 1], 5.0, sealer, LinkSpec(up_bps=2e6, down_bps=100e6, latency_s=0.02)).close()
    assert caplog.messages[-1] == ("link emulation on: up (edge -> cloud) 2 Mbit/s + 20 ms latency; "
                                   "down (cloud -> edge) 100 Mbit/s + 20 ms latency")
    assert LinkSpec(latency_s=0.005).describe() == (
        "link emulation on: up (edge -> cloud) unlimited bandwidth + 5 ms latency; "
        "down (cloud -> edge) unlimited bandwidth + 5 ms latency")
