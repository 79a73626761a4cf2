"""The learned bottleneck: its halves on the sides that run them, trained, checkpointed, counted."""
import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from edgesplit.assemble import DataFacts, RunSpec, assemble
from edgesplit.assemble.wire import from_data, to_data
from edgesplit.run import checkpoint, trainer
from edgesplit.model.bottleneck import Bottleneck, Decoder, Encoder, boundary_shapes
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError
from edgesplit.model.mobilenetv2 import build_units


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_encoder_ends_the_sender_and_the_decoder_starts_the_receiver() -> None:
    cfg = compose_config(["compressor=bottleneck", "compressor.channel_ratio=0.5", "model.width=0.25",
                          "partition.front=2", "partition.back=1"])
    units = build_units(cfg.model, 10)
    shapes = boundary_shapes(units, 2, 1, (3, 32, 32))
    parts = assemble(cfg, DataFacts(10, 64, 16, (3, 32, 32)), units)
    out, front, back = parts.split.units, parts.split.front, parts.split.back
    assert (front, back, len(out)) == (3, 2, len(units) + 4)
    assert parts.spec.codecs.bottleneck is not None and parts.spec.codecs.bottleneck.shapes == shapes
    n = len(out)
    assert isinstance(out[2], Encoder) and isinstance(out[3], Decoder)  # front: edge | cloud
    assert isinstance(out[n - 3], Encoder) and isinstance(out[n - 2], Decoder)  # back: cloud | edge
    x = torch.randn(4, *shapes[0])
    reduced = out[2](x)
    assert reduced.shape[1] == -(-shapes[0][0] // 2) and out[3](reduced).shape == x.shape
    # a cloud host rebuilds the same units from the spec alone, as JSON (the shapes are in it)
    again, _, _ = from_data(RunSpec, json.loads(json.dumps(to_data(parts.spec)))).units()
    assert [type(u) for u in again] == [type(u) for u in out]
    assert [p.shape for u in again for p in u.parameters()] == [p.shape for u in out for p in u.parameters()]


def test_a_boundary_of_another_rank_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="front boundary carries per-sample shape"):
        Bottleneck(0.25, ((4, 8), (16,)))


@pytest.mark.slow
def test_a_bottleneck_run_trains_and_counts_its_halves_on_each_side(
        make_cfg: Callable, tmp_path: Path) -> None:
    cfg = make_cfg("compressor=bottleneck", "compressor.channel_ratio=0.25", "pipeline_backend=gpipe",
                   "pipeline_backend.chunks=2", "schedule.epochs=5", "data.train_size=512")
    summary = trainer.run(cfg, tmp_path / "b", [])
    plain = trainer.run(make_cfg("compressor=quantize", "compressor.bits=8", "pipeline_backend=gpipe",
                                 "pipeline_backend.chunks=2", "schedule.epochs=1"), tmp_path / "q", [])
    # measured: train loss 2.30 -> 0.62, val acc 78% (plain 8-bit quantization: 1.65, 40%)
    assert summary["history"][-1]["train_loss"] < 0.4 * summary["history"][0]["train_loss"]
    assert summary["best_val_acc1"] > 60
    # a quarter of the channels at 8 bits: about a quarter of plain 8-bit quantization's bytes
    for key in ("up_bytes_per_batch", "down_bytes_per_batch"):
        assert summary["comm"][key] == pytest.approx(plain["comm"][key] / 4, rel=0.1)
        # fp32 figures are the model's tensors at the boundaries, as plain quantization's: so
        # `vs fp32` compares the bottleneck with an uncompressed split (not with its own quarter)
        assert summary["comm"][f"raw_fp32_{key}"] == plain["comm"][f"raw_fp32_{key}"]
        assert summary["comm"][f"raw_{key}"] < plain["comm"][f"raw_{key}"] / 3  # what was encoded
    units = build_units(cfg.model, 10)
    # the shapes the run recorded in its checkpoint's config (the data decided them)
    shapes = checkpoint.load(tmp_path / "b" / checkpoint.NAME)["config"]["compressor"]["shapes"]
    enc_f, dec_f = Encoder(tuple(shapes[0]), 0.25), Decoder(tuple(shapes[0]), 0.25)
    enc_b, dec_b = Encoder(tuple(shapes[1]), 0.25), Decoder(tuple(shapes[1]), 0.25)
    n = len(units)
    edge = sum(_params(u) for u in units[:1] + units[n - 1:]) + _params(enc_f) + _params(dec_b)
    cloud = sum(_params(u) for u in units[1:n - 1]) + _params(dec_f) + _params(enc_b)
    assert summary["sides"]["edge"]["parameters"] == edge
    assert summary["sides"]["cloud"]["parameters"] == cloud
    saved = checkpoint.load(tmp_path / "b" / checkpoint.NAME)
    assert sorted(saved["units"]) == list(range(n + 4))
    assert saved["units"][1]["layer.0.weight"].shape[0] == -(-shapes[0][0] // 4)  # the front encoder
