"""The dist backend trains like torchgpipe's GPipe: same losses, same payload bytes, resume.
Each kind of difference (codec family, order, stages, chunks, checkpointing, optimizer) is proven
once, in some case, not in every combination; the tests that need only a running pair share one."""
import copy
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import torch
from omegaconf import DictConfig

from edgesplit.backends.remote.protocol import HEADER_BYTES
from edgesplit.boundary.meter import DIRECTION, CommMeter
from edgesplit.run import checkpoint
from tests.dist_helpers import (SAMPLES, WarmBackend, build, config, data, dist_process_count, run_backend,
                                train_backend, train_epochs)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def no_rank_outlives_its_backend() -> Iterator[None]:
    yield  # set up first, so it checks last: after the shared pair is closed
    assert dist_process_count() == 0, "a cloud rank outlived its backend"


@pytest.fixture(scope="module")
def pair() -> Iterator[WarmBackend]:
    """One started edge and two cloud stages (quantize, deferred BatchNorm, eval_compressed off:
    the switch's value that is not the default, so a cloud that ignored it would differ)."""
    # its cloud ranks idle between the tests: a timeout longer than any gap between two of them
    cfg = config(chunks=2, stages=2, compressor="quantize", threads=1, deferred_batch_norm=True,
                 timeout_s=300.0)
    cfg.compressor.eval_compressed = False
    warm = WarmBackend("dist", cfg)
    yield warm
    warm.backend.close()
    warm.backend.close()  # idempotent


def _same_as_gpipe(cfg: DictConfig, batches: List[tuple], epochs: int = 2,
                   samples: int = SAMPLES) -> Tuple[CommMeter, CommMeter, Dict[str, Any], Dict[str, Any]]:
    """Meters and final states of gpipe and dist on the same config; asserts equal losses, equal
    payload bytes and codec figures on all four boundary x pass pairs, and the headers apart."""
    m_gpipe, m_dist = CommMeter(), CommMeter()
    ref, s_gpipe = train_backend("gpipe", cfg, batches, m_gpipe, epochs=epochs, samples=samples)
    got, s_dist = train_backend("dist", cfg, batches, m_dist, epochs=epochs, samples=samples)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert dict(m_dist.bytes) == dict(m_gpipe.bytes) and set(m_gpipe.bytes) == set(DIRECTION)
    assert dict(m_dist.raw_bytes) == dict(m_gpipe.raw_bytes)
    assert dict(m_dist.fp32_bytes) == dict(m_gpipe.fp32_bytes)  # a bottleneck's: before its encoder
    assert m_dist.batches == m_gpipe.batches == len(got)
    return m_gpipe, m_dist, s_gpipe, s_dist


@pytest.mark.parametrize("codec,stages,chunks,checkpoint,order,optimizer", [
    # stochastic rounding: the same draws, keyed by step and sample ids; uneven micro-batches
    ("quantize2_sr_group", 1, 3, "except_last", "gpipe", "sgd"),
    ("none", 2, 4, "never", "1f1b", "sgd"),  # 1f1b through two stages
    ("prune", 1, 1, "always", "1f1b", "sgd"),  # one micro-batch; the gradient at the support only
    # its encoders and decoders train on their sides; every side builds its optimizer from `optimizer`
    ("bottleneck", 1, 2, "except_last", "gpipe", "adamw"),
])
def test_same_losses_and_payload_bytes_as_gpipe(codec, stages, chunks, checkpoint, order, optimizer):
    cfg = config(chunks=chunks, stages=stages, compressor=codec, threads=1, checkpoint=checkpoint,
                 order=order, optimizer=optimizer)
    if optimizer == "adamw":
        cfg.schedule.lr = 0.01
    batches = data(5, batch=10)  # 10 samples in `chunks` micro-batches: uneven ones too
    m_gpipe, m_dist, _, _ = _same_as_gpipe(cfg, batches)
    micro = len(torch.arange(10).chunk(chunks))
    figures = m_dist.summary().to_dict()
    # stochastic rounding keys its draws by the samples' ids: each activation carries them (a
    # count and 10 ids a batch, as int64 words)
    ids = 8 * (micro + 10) if "_sr" in codec else 0
    for direction in ("up", "down"):  # one header per message, 2 messages a direction per micro-batch
        assert figures[f"overhead_{direction}_bytes_per_batch"] == 2 * HEADER_BYTES * micro + ids
        assert m_gpipe.summary().to_dict()[f"overhead_{direction}_bytes_per_batch"] == 0
    for boundary, pass_ in DIRECTION:  # measured by the sender of each payload, in every backend
        key = f"{boundary}_{pass_}_rel_error"
        assert figures[key] == pytest.approx(m_gpipe.summary().to_dict()[key], rel=1e-4, abs=1e-7), key
    if codec == "prune":  # each gradient payload holds the kept values only (ratio 0.1), not all n
        for boundary in ("front", "back"):
            assert m_dist.bytes[boundary, "backward"] < 0.2 * m_dist.raw_bytes[boundary, "backward"]


def _cache_rows(state, process, boundary, end=None):
    codec = state["boundaries"][process][boundary]
    codec = codec[end] if end else codec
    return codec["activation"]["cache"]["rows"]


def _revisited() -> List[tuple]:
    """30 samples in 3 batches, then the same samples shuffled into other batches: a sample's
    per-sample codec state must follow its id."""
    base = data(3, batch=10)
    every = [torch.cat(parts) for parts in zip(*base)]
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0)).view(3, 10)
    return base + [tuple(t[rows] for t in every) for rows in order]


def test_delta_matches_gpipe_and_keeps_equal_references_on_both_ends():
    """Delta's references are keyed by dataset index: the edge sends the ids with each activation
    (through both cloud stages), so dist trains as gpipe does after a raw warm-up epoch, and the
    edge's and the cloud's references of each boundary are equal (in gpipe's one process too)."""
    cfg = config(chunks=2, stages=2, compressor="delta", threads=1)
    cfg.compressor.bits, cfg.compressor.warmup_epochs = 2, 1
    m_gpipe, m_dist, s_gpipe, s_dist = _same_as_gpipe(cfg, _revisited(), epochs=2, samples=30)
    # per step and direction: 2 messages x 2 micro-batches of headers, and with each activation
    # its 5 ids and their count as int64 words (the edge link's; the cloud stages' is not counted)
    for direction in ("up", "down"):
        assert m_dist.overhead_bytes[direction] == 12 * (2 * 2 * HEADER_BYTES + 2 * 8 * (1 + 5))
    pairs = [(_cache_rows(s_gpipe, "edge", b), _cache_rows(s_gpipe, "edge", b, "receiver"))
             for b in ("front", "back")]
    pairs += [(_cache_rows(s_dist, "edge", "front"), _cache_rows(s_dist, "cloud_stage1", "front")),
              (_cache_rows(s_dist, "cloud_stage2", "back"), _cache_rows(s_dist, "edge", "back"))]
    for sender, receiver in pairs:
        assert sender is not None and sender.shape[0] == 30 and sender.abs().sum() > 0
        assert torch.equal(sender, receiver)


def test_per_boundary_codecs_dense_gradients_and_error_feedback_match_gpipe():
    """compressor.back overrides the back boundary; gradient_reuses_support=false sends the
    gradients dense (Identity: all values); error feedback's residuals are keyed by dataset index."""
    cfg = config(chunks=2, stages=1, compressor="prune", threads=1)
    cfg.compressor.gradient_reuses_support = False
    cfg.compressor.error_feedback = True
    cfg.compressor.back = {"activation": {"_target_": "edgesplit.codecs.Quantize", "bits": 4},
                           "gradient": {"_target_": "edgesplit.codecs.Quantize", "bits": 8}}
    _, m_dist, _, _ = _same_as_gpipe(cfg, _revisited(), samples=30)
    n_front = m_dist.raw_bytes["front", "backward"] // 4
    assert m_dist.bytes["front", "backward"] > n_front * 4  # dense fp32 gradient + header
    raw_back = m_dist.raw_bytes["back", "forward"]
    assert m_dist.bytes["back", "forward"] == pytest.approx(raw_back / 8, rel=0.05)  # 4 bits
    assert m_dist.bytes["back", "backward"] == pytest.approx(raw_back / 4, rel=0.05)  # 8 bits


def test_loss_falls(pair):
    losses = train_epochs(pair.fresh(), data(1) * 12)  # one batch, again and again
    assert losses[-1] < 0.7 * losses[0], losses


def test_deferred_batch_norm_and_eval_match_gpipe(pair):
    """Eval steps after 3 train steps (deferred BatchNorm): dist's results are gpipe's with the same
    eval_compressed, and gpipe's with the other value differ (so the cloud honoured the switch)."""
    batches = data(3)

    def evaluate(backend):
        backend.start_epoch(0)
        backend.train(True)
        for x, y, ids in batches:
            backend.train_step(x, y, ids)
        backend.train(False)
        return [backend.eval_step(x, y) for x, y, ids in batches]

    got = evaluate(pair.fresh())
    for eval_compressed in (False, True):
        cfg = copy.deepcopy(pair.cfg)
        cfg.compressor.eval_compressed = eval_compressed
        gpipe = build("gpipe", cfg)
        try:
            ref = evaluate(gpipe)
        finally:
            gpipe.close()
        if eval_compressed:  # 8-bit codes change the losses a little, but they change them
            assert all(a.loss_sum != b.loss_sum for a, b in zip(ref, got))
            continue
        for a, b in zip(ref, got):
            assert b.loss_sum == pytest.approx(a.loss_sum, rel=1e-4) and b.correct1 == a.correct1


def test_state_dict_travels_to_the_edge_and_resumes_anywhere(pair, tmp_path):
    """Save after 2 steps (the cloud stages' parts travel to the edge: one file), load it into the
    running dist pair (after other steps) and into gpipe: the next steps' losses equal an
    uninterrupted run's."""
    batches = data(4)

    def steps(backend, some):
        return [(r.loss_sum / r.count) for r in (backend.train_step(x, y, ids) for x, y, ids in some)]

    backend = pair.fresh()
    backend.start_epoch(0)
    backend.train(True)
    steps(backend, batches[:2])
    checkpoint.atomic_save({**backend.state_dict(), "epoch": 1}, tmp_path / "checkpoint.pt")
    expected = steps(backend, batches[2:])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert set(state["units"]) == set(range(5))
    assert set(state["lr_scheduler"]) == {"edge", "cloud_stage1", "cloud_stage2"}
    assert any(k.startswith("units.2.") for k in state["optimizer"])  # a cloud parameter's momentum
    gpipe = build("gpipe", pair.cfg)
    try:
        for resumed in (backend, gpipe):
            resumed.load_state_dict(state)
            resumed.start_epoch(0)
            resumed.train(True)
            assert steps(resumed, batches[2:]) == pytest.approx(expected, rel=1e-5), resumed.name
    finally:
        gpipe.close()


def test_side_stats_and_eval(pair):
    backend = pair.fresh()
    backend.start_epoch(0)
    x, y, ids = data(1)[0]
    backend.train(True)
    backend.train_step(x, y, ids)
    backend.train(False)
    with torch.no_grad():
        r = backend.eval_step(x, y)
    assert r.count == len(y)
    stats = backend.side_stats()
    assert set(stats) == {"edge", "cloud", "cloud_stage1", "cloud_stage2"}
    for side in ("edge", "cloud"):
        assert stats[side].parameters > 0 and stats[side].peak_memory_bytes > 0
        assert stats[side].compute_s_per_batch > 0
    assert stats["cloud"].processes == 2


def test_the_shared_pair_starts_afresh_as_a_new_backend(pair):
    """fresh() resets every process: the same steps from it give a new gpipe's losses, twice."""
    batches = data(2)
    assert train_epochs(pair.fresh(), batches) == train_epochs(pair.fresh(), batches)
    assert run_backend("gpipe", pair.cfg, batches) == pytest.approx(train_epochs(pair.fresh(), batches),
                                                                    rel=1e-5)
