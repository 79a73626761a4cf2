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
