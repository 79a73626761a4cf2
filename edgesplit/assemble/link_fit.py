"""A shaped dist link against pipeline_backend.timeout_s, at start: each boundary's payload of one
micro-batch must cross within the silence a peer tolerates, else the run would end later with a
lost peer that names the timeout, not the link."""
import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from edgesplit.assemble.parts import RunSpec
from edgesplit.boundary.meter import BOUNDARIES, DIRECTION, CommMeter
from edgesplit.codecs.build import build_codecs
from edgesplit.errors import ConfigError
from edgesplit.model.bottleneck import boundary_channels, boundary_shapes

RATE_KEYS = {"up": "uplink_mbps", "down": "downlink_mbps"}  # or bandwidth_mbps for both


def payload_bytes(spec: RunSpec, base: List[nn.Module], micro: int) -> Dict[Tuple[str, str], int]:
    """Bytes of the largest payload each (boundary, pass) sends in the first epoch: a micro-batch of
    `micro` samples through the run's codecs at its first step (raw values in the compressor's
    warm-up, a per-sample codec's first visit), of random values (what entropy coding cannot
    shrink). The global RNG is left as it was."""
    model = spec.model
    shapes = boundary_shapes(base, model.front, model.back, spec.facts.input_shape)
    # per-sample rows in RAM for this micro-batch alone: the probe writes nothing to cache_dir
    codecs = build_codecs({**spec.codecs.compressor, "cache_dir": None}, micro)
    dtype = spec.precision.dtype or torch.float32
    ids, out = torch.arange(micro), {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, shape in zip(BOUNDARIES, shapes):
            crossing_shape = (boundary_channels(spec.codecs.bottleneck, name)[1], *shape[1:]) \
                if spec.codecs.bottleneck is not None else shape
            boundary = spec.boundary(name, codecs, CommMeter())
            boundary.start_epoch(0)
            boundary.new_step([ids])
            x = torch.randn(micro, *crossing_shape).to(dtype)
            forward = boundary.send("forward", x, ids=ids)
            backward = boundary.send("backward", torch.randn_like(x), boundary.support(forward), ids)
            out[name, "forward"] = forward.numel() * forward.element_size()
            out[name, "backward"] = backward.numel() * backward.element_size()
    return out


def check_link(spec: RunSpec, base: List[nn.Module], batch_size: int) -> None:
    """ConfigError naming the link, the payload and timeout_s where one payload's serialization at
    its direction's rate plus the latency reaches pipeline_backend.timeout_s."""
    d = spec.pipeline.dist
    if d is None or not (d.up_mbps or d.down_mbps or d.latency_ms):
        return  # not dist, or an unshaped link
    micro = math.ceil(batch_size / spec.pipeline.chunks)
    rates = {"up": d.up_mbps, "down": d.down_mbps}
    for (name, pass_), nbytes in payload_bytes(spec, base, micro).items():
        direction = DIRECTION[name, pass_]
        mbps = rates[direction]
        seconds = d.latency_ms / 1e3 + (nbytes * 8 / (mbps * 1e6) if mbps else 0.0)
        if seconds >= d.timeout_s:
            rate = f"{mbps:g} Mbit/s" if mbps else "unlimited bandwidth"
            raise ConfigError(
                f"pipeline_backend.link cannot carry one payload within pipeline_backend.timeout_s="
                f"{d.timeout_s:g}: the {name} boundary's {pass_} payload of a micro-batch ({micro} samples, "
                f"{nbytes} bytes) takes {seconds:.3g} s {direction} at {rate} + {d.latency_ms:g} ms latency; "
                f"raise pipeline_backend.link.{RATE_KEYS[direction]} (or bandwidth_mbps) or timeout_s, "
                f"or send less (compressor, data.batch_size, pipeline_backend.chunks)")
