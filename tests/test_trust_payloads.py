"""Bad payloads from an authenticated peer (it knows the secret): one error type per loader, bounded
JSON depth and decompressed sizes, and a run that ends `failed` with its summary.json, naming the peer."""
import json
import os
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import torch
import zstandard

from edgesplit.backends.remote.protocol import (Command, Op, StateError, loads_bounded, pack_state,
                                                unpack_state)
from edgesplit.codecs.entropy import Entropy
from edgesplit.codecs.header import ENTROPY, ENTROPY_HEADER, PAYLOAD_OVERHEAD, ZLIB, ZSTD, payload_bound
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs import Crossing, Identity
from edgesplit.codecs.build import build_codecs
from edgesplit.config import compose_config
from edgesplit.errors import PeerError
from edgesplit.run.trainer import run
from tests.dist_helpers import REPO, SECRET, assembled, free_port
from tests.fake_peer import evil_pickle


def test_the_state_loader_raises_one_error_type_with_the_reason(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = evil_pickle(str(marker))
    with pytest.raises(StateError, match="malformed state blob .*UnpicklingError"):
        unpack_state(evil)
    blob = pack_state({"units": {0: {"w": torch.randn(3, 3)}}, "optimizer": {}})
    rng = random.Random(0)
    refused = 0
    for _ in range(150):
        fuzzed = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            fuzzed[rng.randrange(len(fuzzed))] = rng.randrange(256)
        try:
            unpack_state(bytes(fuzzed))
        except StateError:
            refused += 1
    with pytest.raises(StateError, match="not a dict"):
        unpack_state(pack_state([1, 2]))  # type: ignore[arg-type]
    assert refused > 50 and not marker.exists()


def test_json_nesting_is_bounded_before_parsing() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="control message: JSON nested 100000 deep"):
        loads_bounded(deep, "control message")
    message = Command(Op.STATS).pack().numpy().tobytes()
    body = json.dumps({"op": "stats", "epoch": 0, "replies": [{"stage": 1, "side": "[[{{\\\"]"}]})
    assert loads_bounded(body.encode(), "x")["replies"][0]["side"] == '[[{{\\"]'  # brackets in strings
    forged = message[:4] + struct.pack("<Q", len(deep)) + deep + struct.pack("<Q", 0)
    with pytest.raises(ValueError, match="nested 100000 deep"):
        Command.unpack(torch.frombuffer(bytearray(forged), dtype=torch.uint8))


def _refused_fast(codec: Entropy, payload: bytes, match: str) -> Tuple[float, int]:
    """(seconds, peak bytes allocated) until the payload is refused."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=match):
            codec.decode(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        return time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_4_gib_zstd_header_is_refused_with_bounded_memory() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(os.urandom(64 << 10))
    payload = ENTROPY_HEADER.pack(ENTROPY, ZSTD, 2 ** 32 - 1) + frame
    seconds, peak = _refused_fast(Entropy(Identity(), "zstd"), payload, "decompresses to 65536 bytes")
    assert peak < 16 << 20, peak  # not the 4 GiB it declares
    print(f"4 GiB zstd header: refused in {seconds:.3f} s, peak {peak >> 20} MiB")


@pytest.mark.parametrize("content,declared,match", [
    (64 << 20, 1 << 20, "holds more than its header field inner size 1048576"),
    (1000, 2000, "decompresses to 1000 bytes|holds more than")], ids=["frame-larger", "frame-smaller"])
def test_a_zstd_frame_whose_own_content_size_is_not_the_headers_is_refused(
        content: int, declared: int, match: str) -> None:
    """zstd sizes its buffer by the frame's own content size: a 2 KB frame of 64 MiB under a
    header declaring 1 MiB is refused before that buffer is allocated."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(content))
    assert zstandard.frame_content_size(frame) == content
    payload = ENTROPY_HEADER.pack(ENTROPY, ZSTD, declared) + frame
    _, peak = _refused_fast(Entropy(Identity(), "zstd"), payload, match)
    assert peak < 4 << 20, peak


def _zstd_of_64_mib() -> bytes:
    """A valid zstd frame that holds the 64 MiB it declares (2 KB)."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    return ENTROPY_HEADER.pack(ENTROPY, ZSTD, 64 << 20) + frame


@pytest.mark.parametrize("payload,match", [
    (_zstd_of_64_mib, r"the forward payload declares 67108864 bytes, more than any codec's payload of "
                      r"this boundary's largest tensor \(8, 8, 8, 8\) takes \(69632 bytes\)"),
    (torch.zeros(8, 8, 64, 64), r"declares shape \(8, 8, 64, 64\) of 262144 elements, at most 4096"),
    (torch.zeros(9, 8, 8, 8), r"declares shape \(9, 8, 8, 8\) of 4608 elements, at most 4096"),
    (torch.zeros(8, 3, 8, 8), r"holds a tensor of shape \(8, 3, 8, 8\), this boundary carries up to 8 "
                              r"samples of shape \(8, 8, 8\)")],
    ids=["zstd-64-MiB", "1-bit-256-KiB", "a-row-too-many", "another-sample-shape"])
def test_a_payload_larger_than_its_boundarys_tensor_is_refused(payload: Any, match: str) -> None:
    """At a dist boundary whose largest tensor is 8 rows of 8x8x8 (1-bit codes, zstd): a payload that
    declares more bytes (before decompressing) or elements (before allocating them) is refused, and
    one of another shape; the largest tensor passes."""
    cfg = compose_config(["pipeline_backend=dist", "compressor=quantize", "compressor.bits=1",
                          "compressor.entropy=zstd", "model._target_=tests.dist_helpers.tiny_units",
                          "model.num_classes=4", "data.batch_size=15", "pipeline_backend.chunks=2"])
    spec = assembled(cfg).spec
    boundary = spec.boundary("front", spec.codecs.build(), CommMeter())
    assert boundary.largest == (8, 8, 8, 8)  # ceil(15 / 2) rows
    sender = spec.codecs.build()["front"].activation
    wire = (torch.frombuffer(bytearray(payload()), dtype=torch.uint8) if callable(payload)
            else sender.encode(payload))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            boundary.receive("forward", wire)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    largest = torch.randn(8, 8, 8, 8)
    assert boundary.receive("forward", sender.encode(largest)).shape == largest.shape


WIDEST = ["compressor.bits=16", "compressor.scale=group", "compressor.group_size=1"]


@pytest.mark.parametrize("options", [["compressor=prune", "compressor.ratio=1.0"],
                                     ["compressor=prune_quantize", "compressor.ratio=1.0", *WIDEST],
                                     ["compressor=delta", "compressor.first_bits=null", *WIDEST]],
                         ids=["prune-all", "grouped-16-bit", "delta-raw-first"])
def test_every_codec_stays_within_the_payload_bound(options: List[str]) -> None:
    """The bound a receiver applies holds for the codecs' largest payloads (float64, 16 bits, a scale
    pair per element), so no genuine payload is refused."""
    pair = build_codecs(compose_config(options).compressor, 64)["front"]
    x = torch.randn(8, 16, 16, 16, dtype=torch.float64)
    for codec in (pair.activation, pair.gradient):
        for _ in range(2):  # delta: a first visit, then a change
            payload = codec.encode(x, crossing=Crossing(torch.arange(8), 1, True))
            assert codec.coded_bytes(payload) <= payload_bound(x.numel()) - PAYLOAD_OVERHEAD


def _zlib_bomb() -> bytes:
    """A valid zlib stream of 1 GiB of zeros in about 1 MB: one 16 MiB block, flushed so that it
    stands alone, 64 times (cheaper than compressing 1 GiB)."""
    zeros, c = bytes(16 << 20), zlib.compressobj(9, zlib.DEFLATED, -15)
    block, end = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH), c.flush()
    adler = 1
    for _ in range(64):
        adler = zlib.adler32(zeros, adler)
    return b"\x78\xda" + block * 64 + end + struct.pack(">I", adler)


def test_a_zlib_bomb_is_refused_with_bounded_memory() -> None:
    bomb = _zlib_bomb()  # 1 GiB in 1 MB: zlib.decompress(bomb) is 1 GiB of zeros
    codec = Entropy(Identity(), "zlib")
    for declared, match in ((2 ** 32 - 1, "more than a zlib stream"), (1 << 20, "holds more than")):
        payload = ENTROPY_HEADER.pack(ENTROPY, ZLIB, declared) + bomb
        seconds, peak = _refused_fast(codec, payload, match)
        assert peak < 64 << 20, peak
        print(f"zlib bomb of {len(bomb)} bytes declaring {declared}: refused in {seconds:.3f} s, "
              f"peak {peak >> 20} MiB")


FAKE_CLOUD = """
import sys
from edgesplit.backends.remote import cloud, cloud_main
from edgesplit.config import compose_config
from tests.fake_peer import evil_pickle, poison_sends
port, kind, nth, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
evil = evil_pickle(marker)
if kind == "blob":  # a state blob (the reply to SAVE) that is a pickle
    cloud.pack_state = lambda state: evil
poison_sends(kind, nth, evil)
cloud_main.run_cloud(compose_config(["pipeline_backend=dist", "pipeline_backend.role=cloud",
                                     "pipeline_backend.master_port=" + port]))
"""


@pytest.mark.slow  # a dist cloud process per case
@pytest.mark.parametrize("kind,nth", [("REPLY", 1), ("BACKWARD", 1), ("FORWARD", 1), ("blob", 0)],
                         ids=["json-at-start", "gradient", "activation", "state-blob"])
def test_an_authenticated_cloud_sending_a_pickle_fails_the_run_tidily(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, nth: int) -> None:
    monkeypatch.setenv("EDGESPLIT_SECRET", SECRET)
    port, marker = free_port(), tmp_path / "pwned"
    cfg = compose_config(["pipeline_backend=dist", "pipeline_backend.role=edge", "data=synthetic",
                          f"pipeline_backend.master_port={port}", "pipeline_backend.timeout_s=60",
                          "model._target_=tests.dist_helpers.tiny_units", "model.num_classes=10",
                          "data.train_size=32", "data.val_size=16", "data.batch_size=16",
                          "schedule.epochs=1", "compressor=quantize", "threads=1"])
    fake = subprocess.Popen([sys.executable, "-c", FAKE_CLOUD, str(port), kind, str(nth), str(marker)],
                            env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(PeerError, match=r"^edge rank 0 got a malformed .* from cloud rank 1 "
                                            r"\(stage 1 of 1\): "):
            run(cfg, tmp_path, [])
    finally:
        fake.kill()
        fake.wait(30)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "got a malformed" in summary["error"]
    assert not marker.exists()
