"""The dist backend trains like torchgpipe's GPipe: same losses, same bytes plus headers, resume."""
import copy

import pytest
import torch

from dist_helpers import codecs, config, data, dist_process_count, run_backend, tiny_units
from edgesplit.backends.dist.protocol import HEADER_BYTES
from edgesplit.comm import CommMeter

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
    losses = run_backend("dist", tiny_units(), cfg, "none", batches)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("codec,stages,chunks,checkpoint", [
    ("none", 1, 2, "except_last"), ("quantize", 1, 3, "except_last"),
    ("quantize", 2, 2, "always"), ("none", 2, 4, "never"),
])
def test_same_losses_and_bytes_as_gpipe(codec, stages, chunks, checkpoint):
    cfg = config(chunks=chunks, stages=stages, compressor=codec, threads=1, checkpoint=checkpoint)
    batches = data(5, batch=10)  # 10 samples in `chunks` micro-batches: uneven ones too
    units = tiny_units()
    m_gpipe, m_dist = CommMeter(), CommMeter()
    ref = run_backend("gpipe", units, cfg, codec, batches, m_gpipe, epochs=2)
    got = run_backend("dist", units, cfg, codec, batches, m_dist, epochs=2)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    micro = len(torch.arange(10).chunk(chunks))
    for key in m_gpipe.bytes:  # one header per message, 'micro' messages per pass and step
        assert m_dist.bytes[key] == m_gpipe.bytes[key] + HEADER_BYTES * micro * len(got), key
        assert m_dist.raw_bytes[key] == m_gpipe.raw_bytes[key], key
    assert m_dist.batches == m_gpipe.batches == len(got)


def test_deferred_batch_norm_and_eval_match_gpipe():
    from edgesplit.backends import build_backend
    from edgesplit.partition import split_units
    from edgesplit.schedule import build_optimizer
    cfg = config(chunks=2, stages=1, compressor="quantize", threads=1, deferred_batch_norm=True)
    batches, units = data(3), tiny_units()
    results = {}
    for name in ("gpipe", "dist"):
        c = copy.deepcopy(cfg)
        c.pipeline_backend.name = name
        backend = build_backend(c, split_units(copy.deepcopy(units), 1, 1, 1), codecs("quantize"),
                                CommMeter())
        try:
            opt = build_optimizer(backend.parameters(), c.schedule)  # what the cloud ranks use
            backend.on_epoch_start(0)
            backend.train(True)
            for x, y in batches:
                opt.zero_grad()
                backend.train_step(x, y)
                opt.step()
            backend.train(False)
            results[name] = [backend.eval_step(x, y) for x, y in batches]
        finally:
            backend.close()
    for a, b in zip(results["gpipe"], results["dist"]):
        assert b.loss_sum == pytest.approx(a.loss_sum, rel=1e-4) and b.correct1 == a.correct1


def test_checkpoint_parts_resume(tmp_path):
    """Save after 2 steps (edge units here, cloud parts on their ranks), resume in a new backend:
    the next steps' losses equal an uninterrupted run's."""
    from edgesplit import checkpoint
    from edgesplit.backends import build_backend
    from edgesplit.partition import split_units
    from edgesplit.schedule import build_optimizer
    cfg = config(chunks=2, stages=2, compressor="quantize", threads=1)
    cfg.pipeline_backend.name = "dist"
    batches, units = data(4), tiny_units()

    def start(state=None):
        backend = build_backend(cfg, split_units(copy.deepcopy(units), 1, 1, 2), codecs("quantize"),
                                CommMeter())
        opt = build_optimizer(backend.parameters(), cfg.schedule)
        if state is not None:
            checkpoint.restore(state, backend.local_units(), opt, dict(backend.named_parameters()))
            backend.load_remote(str(tmp_path), state["parts"])
        backend.on_epoch_start(0)
        backend.train(True)
        return backend, opt

    def steps(backend, opt, some):
        out = []
        for x, y in some:
            opt.zero_grad()
            r = backend.train_step(x, y)
            opt.step()
            out.append(r.loss_sum / r.count)
        return out

    backend, opt = start()
    try:
        steps(backend, opt, batches[:2])
        parts = backend.save_remote(str(tmp_path), 1)
        assert sorted(parts) == ["cloud_stage1_epoch1.pt", "cloud_stage2_epoch1.pt"]
        checkpoint.save(tmp_path / "checkpoint.pt", backend.local_units(), opt,
                        dict(backend.named_parameters()), parts, epoch=1)
        expected = steps(backend, opt, batches[2:])
    finally:
        backend.close()
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert set(state["units"]) == set(range(len(units)))  # the parts hold the cloud's units
    backend, opt = start(state)
    try:
        assert steps(backend, opt, batches[2:]) == pytest.approx(expected, rel=1e-6)
    finally:
        backend.close()


def test_side_stats_and_eval():
    from edgesplit.backends import build_backend
    from edgesplit.partition import split_units
    cfg = config(chunks=2, stages=2, threads=1)
    cfg.pipeline_backend.name = "dist"
    backend = build_backend(cfg, split_units(tiny_units(), 1, 1, 2), codecs("none"), CommMeter())
    try:
        backend.on_epoch_start(0)
        x, y = data(1)[0]
        backend.train(True)
        backend.train_step(x, y)
        backend.train(False)
        with torch.no_grad():
            r = backend.eval_step(x, y)
        assert r.count == len(y)
        stats = backend.side_stats()
        assert set(stats) >= {"edge", "cloud", "cloud_stage1", "cloud_stage2"}
        for side in ("edge", "cloud"):
            assert stats[side]["parameters"] > 0 and stats[side]["peak_memory_bytes"] > 0
            assert stats[side]["compute_s_per_batch"] > 0
    finally:
        backend.close()
    backend.close()  # idempotent


def _run_programs(schedule, n, stages):
    """Every rank's messages as the edge and cloud programs make them: sends never block, a recv
    takes the oldest message of its stream (link, activations or gradients) and must be the one it
    expects. Returns the most micro-batches in flight per stage; fails on a deadlock."""
    from collections import deque
    from edgesplit.backends.dist.schedule import edge_steps, stage_steps
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
    from edgesplit.backends.dist.schedule import edge_steps
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
    batches, units = data(4, batch=10), tiny_units()  # uneven micro-batches too
    ref = run_backend("dist", units, cfg, "none", batches)
    cfg.pipeline_backend.schedule = "1f1b"
    got = run_backend("dist", units, cfg, "none", batches)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_config_accepts_1f1b_and_rejects_others():
    from edgesplit.config import compose_config, validate
    from edgesplit.errors import ConfigError
    cfg = compose_config(["pipeline_backend=dist", "pipeline_backend.order=1f1b"])
    assert cfg.pipeline_backend.order == "1f1b"
    validate(cfg)
    cfg.pipeline_backend.order = "zero-bubble"
    with pytest.raises(ConfigError, match=r"order='zero-bubble' is invalid: allowed: gpipe, 1f1b"):
        validate(cfg)
