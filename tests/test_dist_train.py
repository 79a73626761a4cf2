"""The dist backend trains like torchgpipe's GPipe: same losses, same payload bytes, resume."""
import pytest
import torch

from edgesplit.run import checkpoint
from edgesplit.backends.remote.protocol import HEADER_BYTES
from edgesplit.boundary.meter import DIRECTION, CommMeter
from tests.dist_helpers import build, config, data, dist_process_count, run_backend

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert dist_process_count() == 0, "a cloud rank outlived its backend"


@pytest.mark.parametrize("stages", [1, 2])
def test_loss_falls(stages):
    cfg = config(chunks=2, stages=stages, threads=1)
    batches = data(1) * 12  # one batch, again and again
    losses = run_backend("dist", cfg, batches)
    assert losses[-1] < 0.7 * losses[0], losses


def _same_as_gpipe(cfg, batches, epochs=2):
    """Losses and meters of gpipe and dist on the same config; asserts equal losses, equal payload
    bytes and codec figures on all four boundary x pass pairs, and the headers apart."""
    m_gpipe, m_dist = CommMeter(), CommMeter()
    ref = run_backend("gpipe", cfg, batches, m_gpipe, epochs=epochs)
    got = run_backend("dist", cfg, batches, m_dist, epochs=epochs)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert dict(m_dist.bytes) == dict(m_gpipe.bytes) and set(m_gpipe.bytes) == set(DIRECTION)
    assert dict(m_dist.raw_bytes) == dict(m_gpipe.raw_bytes)
    assert dict(m_dist.fp32_bytes) == dict(m_gpipe.fp32_bytes)  # a bottleneck's: before its encoder
    assert m_dist.batches == m_gpipe.batches == len(got)
    return m_gpipe, m_dist


@pytest.mark.parametrize("codec,stages,chunks,checkpoint", [
    ("none", 1, 2, "except_last"), ("quantize", 1, 3, "except_last"),
    ("quantize", 2, 2, "always"), ("none", 2, 4, "never"), ("prune", 1, 2, "except_last"),
    ("bottleneck", 2, 2, "except_last"),  # its encoders and decoders train on their sides
    ("quantize2_sr_group", 1, 2, "always"),  # the same draws: keyed by step and sample ids
])
def test_same_losses_and_payload_bytes_as_gpipe(codec, stages, chunks, checkpoint):
    cfg = config(chunks=chunks, stages=stages, compressor=codec, threads=1, checkpoint=checkpoint)
    batches = data(5, batch=10)  # 10 samples in `chunks` micro-batches: uneven ones too
    m_gpipe, m_dist = _same_as_gpipe(cfg, batches)
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


def _cache_rows(state, process, boundary, end=None):
    codec = state["boundaries"][process][boundary]
    codec = codec[end] if end else codec
    return codec["activation"]["cache"]["rows"]


@pytest.mark.parametrize("options", [
    {"compressor": "delta", "bits": 2, "warmup_epochs": 0},
    {"compressor": "delta", "bits": 4, "warmup_epochs": 1},
    {"compressor": "quantize", "bits": 2, "error_feedback": True},
])
def test_per_sample_codecs_match_gpipe_and_keep_equal_state_on_both_ends(options):
    """Delta's references (and error feedback's residuals) are keyed by dataset index: the edge
    sends the ids with each activation, so dist trains as gpipe does, and the edge's and the
    cloud's references of each boundary are equal after 2 epochs (in one process too)."""
    options = dict(options)
    cfg = config(chunks=2, stages=2, compressor=options.pop("compressor"), threads=1)
    for key, value in options.items():
        cfg.compressor[key] = value
    base = data(3, batch=10)
    # then the same samples shuffled into other batches: a sample's state must follow its id
    every = [torch.cat(parts) for parts in zip(*base)]
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0)).view(3, 10)
    batches = base + [tuple(t[rows] for t in every) for rows in order]
    m_gpipe, m_dist = _same_as_gpipe(cfg, batches, epochs=2)
    # per step and direction: 2 messages x 2 micro-batches of headers, and with each activation
    # its 5 ids and their count as int64 words (the edge link's; the cloud stages' is not counted)
    for direction in ("up", "down"):
        assert m_dist.overhead_bytes[direction] == 12 * (2 * 2 * HEADER_BYTES + 2 * 8 * (1 + 5))
    if cfg.compressor.name != "delta":
        return
    for name in ("gpipe", "dist"):
        backend = build(name, cfg, samples=30)  # the 30 samples of `batches`: a row each
        try:
            for epoch in range(2):
                backend.start_epoch(epoch)
                backend.train(True)
                for x, y, ids in batches:
                    backend.train_step(x, y, ids)
            state = backend.state_dict()
        finally:
            backend.close()
        if name == "gpipe":
            pairs = [(_cache_rows(state, "edge", b), _cache_rows(state, "edge", b, "receiver"))
                     for b in ("front", "back")]
        else:
            pairs = [(_cache_rows(state, "edge", "front"), _cache_rows(state, "cloud_stage1", "front")),
                     (_cache_rows(state, "cloud_stage2", "back"), _cache_rows(state, "edge", "back"))]
        for sender, receiver in pairs:
            assert sender is not None and sender.shape[0] == 30 and sender.abs().sum() > 0
            assert torch.equal(sender, receiver), name


def test_adamw_on_every_side_matches_gpipe():
    """The cloud stages build their optimizer from the same `optimizer` config as the edge."""
    cfg = config(chunks=2, stages=2, compressor="quantize", threads=1, optimizer="adamw")
    cfg.schedule.lr = 0.01
    _same_as_gpipe(cfg, data(3), epochs=2)


def test_prune_sends_the_gradient_at_the_forward_support_only():
    """prune: each gradient payload holds just the kept values (k of them), as gpipe's; a dense
    gradient would send all n."""
    cfg = config(chunks=2, stages=1, compressor="prune", threads=1)
    m_gpipe, m_dist = _same_as_gpipe(cfg, data(3), epochs=1)
    for boundary in ("front", "back"):
        raw = m_dist.raw_bytes[boundary, "backward"]
        assert m_dist.bytes[boundary, "backward"] < 0.2 * raw, boundary  # ratio 0.1 of fp32 values


def test_per_boundary_codecs_and_dense_gradients_match_gpipe():
    """compressor.back overrides the back boundary; gradient_reuses_support=false sends the
    gradients dense (Identity: all values)."""
    cfg = config(chunks=2, stages=1, compressor="prune", threads=1)
    cfg.compressor.gradient_reuses_support = False
    cfg.compressor.back = {"activation": {"_target_": "edgesplit.codecs.Quantize", "bits": 4},
                           "gradient": {"_target_": "edgesplit.codecs.Quantize", "bits": 8}}
    m_gpipe, m_dist = _same_as_gpipe(cfg, data(3), epochs=1)
    n_front = m_dist.raw_bytes["front", "backward"] // 4
    assert m_dist.bytes["front", "backward"] > n_front * 4  # dense fp32 gradient + header
    raw_back = m_dist.raw_bytes["back", "forward"]
    assert m_dist.bytes["back", "forward"] == pytest.approx(raw_back / 8, rel=0.05)  # 4 bits
    assert m_dist.bytes["back", "backward"] == pytest.approx(raw_back / 4, rel=0.05)  # 8 bits


def _eval_results(eval_compressed):
    """Eval steps of gpipe and dist after 3 train steps (deferred BatchNorm); equal results."""
    cfg = config(chunks=2, stages=1, compressor="quantize", threads=1, deferred_batch_norm=True)
    cfg.compressor.eval_compressed = eval_compressed
    batches = data(3)
    results = {}
    for name in ("gpipe", "dist"):
        backend = build(name, cfg)
        try:
            backend.start_epoch(0)
            backend.train(True)
            for x, y, ids in batches:
                backend.train_step(x, y, ids)
            backend.train(False)
            results[name] = [backend.eval_step(x, y) for x, y, ids in batches]
        finally:
            backend.close()
    for a, b in zip(results["gpipe"], results["dist"]):
        assert b.loss_sum == pytest.approx(a.loss_sum, rel=1e-4) and b.correct1 == a.correct1
    return results


def test_deferred_batch_norm_and_eval_match_gpipe_with_eval_compressed_on_and_off():
    on, off = _eval_results(True)["dist"], _eval_results(False)["dist"]
    assert all(a.loss_sum != b.loss_sum for a, b in zip(on, off))  # the switch reaches the cloud


def test_state_dict_travels_to_the_edge_and_resumes_anywhere(tmp_path):
    """Save after 2 steps (the cloud stages' parts travel to the edge: one file), resume in a
    new dist backend and in gpipe: the next steps' losses equal an uninterrupted run's."""
    cfg = config(chunks=2, stages=2, compressor="quantize", threads=1)
    batches = data(4)

    def steps(backend, some):
        return [(r.loss_sum / r.count) for r in (backend.train_step(x, y, ids) for x, y, ids in some)]

    backend = build("dist", cfg)
    try:
        backend.start_epoch(0)
        backend.train(True)
        steps(backend, batches[:2])
        checkpoint.atomic_save({**backend.state_dict(), "epoch": 1}, tmp_path / "checkpoint.pt")
        expected = steps(backend, batches[2:])
    finally:
        backend.close()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert set(state["units"]) == set(range(5))
    assert set(state["lr_scheduler"]) == {"edge", "cloud_stage1", "cloud_stage2"}
    assert any(k.startswith("units.2.") for k in state["optimizer"])  # a cloud parameter's momentum
    for name in ("dist", "gpipe"):
        backend = build(name, cfg)
        try:
            backend.load_state_dict(state)
            backend.start_epoch(0)
            backend.train(True)
            assert steps(backend, batches[2:]) == pytest.approx(expected, rel=1e-5), name
        finally:
            backend.close()


def test_side_stats_and_eval():
    cfg = config(chunks=2, stages=2, threads=1)
    backend = build("dist", cfg)
    try:
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
    finally:
        backend.close()
    backend.close()  # idempotent


def _run_programs(schedule, n, stages):
    """Every rank's messages as the edge and cloud programs make them: sends never block, a recv
    takes the oldest message of its stream (link, activations or gradients) and must be the one it
    expects. Returns the most micro-batches in flight per stage; fails on a deadlock."""
    from collections import deque
    from edgesplit.backends.remote.order import edge_steps, stage_steps
    ops = {0: []}  # rank -> [(recv stream or None, expected (kind, i), [(send stream, msg)])]
    for part, op, i in edge_steps(schedule, n, stages):
        if part == "front":
            ops[0].append((None, None, [((0, 1, "F"), ("F", i))]) if op == "F"
                          else ((1, 0, "B"), ("B", i), []))
        else:
            ops[0].append(((stages, 0, "F"), ("F", i), []) if op == "F"
                          else (None, None, [((0, stages, "B"), ("B", i))]))
    for s in range(stages):
        r, down = s + 1, (s + 2 if s + 1 < stages else 0)
        ops[r] = [((r - 1, r, "F"), ("F", i), [((r, down, "F"), ("F", i))]) if op == "F"
                  else ((down, r, "B"), ("B", i), [((r, r - 1, "B"), ("B", i))])
                  for op, i in stage_steps(schedule, n, stages - s)]
    queues, pos = {}, {r: 0 for r in ops}
    while any(pos[r] < len(ops[r]) for r in ops):
        moved = False
        for r in ops:
            while pos[r] < len(ops[r]):
                stream, expect, sends = ops[r][pos[r]]
                if stream is not None:
                    q = queues.setdefault(stream, deque())
                    if not q:
                        break
                    assert q.popleft() == expect, (schedule, n, stages, r, expect)
                for dst, msg in sends:
                    queues.setdefault(dst, deque()).append(msg)
                pos[r] += 1
                moved = True
        assert moved, f"deadlock: {schedule} chunks={n} stages={stages} at {pos}"
    assert not any(queues.values())
    peaks = {}
    for r, prog in ops.items():
        live, peak = 0, 0
        for stream, expect, sends in prog:
            if r and expect is not None:
                live += 1 if expect[0] == "F" else -1
                peak = max(peak, live)
        peaks[r] = peak
    return peaks


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_schedules_never_deadlock(schedule):
    for stages in (1, 2, 3):
        for n in range(1, 9):
            peaks = _run_programs(schedule, n, stages)
            for s in range(stages):  # cloud stage s holds at most (stages after it) + 1
                bound = n if schedule == "gpipe" else min(n, stages - s + 1)
                assert peaks[s + 1] == bound, (schedule, stages, n, peaks)


def test_1f1b_edge_bounds_micro_batches_in_flight():
    from edgesplit.backends.remote.order import edge_steps
    for stages in (1, 2, 3):
        for n in range(1, 9):
            steps = edge_steps("1f1b", n, stages)
            assert sorted(steps) == sorted((p, o, i) for p in ("front", "back")
                                           for o in "FB" for i in range(n))
            live = {"front": 0, "back": 0}
            for part, op, i in steps:
                live[part] += 1 if op == "F" else -1
                assert live["front"] <= min(n, stages + 2) and live["back"] <= 1


@pytest.mark.parametrize("stages,chunks,checkpoint", [
    (1, 1, "never"), (1, 3, "never"), (1, 4, "except_last"),
    (2, 1, "never"), (2, 3, "except_last"), (2, 4, "never"),
])
def test_1f1b_same_losses_as_gpipe(stages, chunks, checkpoint):
    cfg = config(chunks=chunks, stages=stages, threads=1, checkpoint=checkpoint)
    batches = data(4, batch=10)  # uneven micro-batches too
    ref = run_backend("dist", cfg, batches)
    cfg.pipeline_backend.order = "1f1b"
    got = run_backend("dist", cfg, batches)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_config_accepts_1f1b_and_rejects_others():
    from edgesplit.config import compose_config
    from edgesplit.validate import validate
    from edgesplit.errors import ConfigError
    cfg = compose_config(["pipeline_backend=dist", "pipeline_backend.order=1f1b"])
    assert cfg.pipeline_backend.order == "1f1b"
    validate(cfg)
    cfg.pipeline_backend.order = "zero-bubble"
    with pytest.raises(ConfigError, match=r"order='zero-bubble' is invalid: allowed: gpipe, 1f1b"):
        validate(cfg)
