"""What a real edge link costs: bytes per step each way for each grid cell and codec, predicted and
measured (dist under the emulated link) step time side by side."""
import argparse
import math
import statistics
import sys
from typing import List, Optional

import torch

from edgesplit.bench.backends import run_cell
from edgesplit.bench.machine import header_lines, human_bytes
from edgesplit.boundary.meter import CommFigures, CommMeter
from edgesplit.codecs.build import build_codecs
from edgesplit.config import compose_config
from edgesplit.model.mobilenetv2 import build_units

CODECS = {"none": ["compressor=none"], "prune": ["compressor=prune"],
          "quantize8": ["compressor=quantize", "compressor.bits=8"],
          "quantize4": ["compressor=quantize", "compressor.bits=4"],
          "prune_quantize": ["compressor=prune_quantize"]}


def unit_outputs(width: float, micro: int) -> List[torch.Tensor]:
    """The output of every layer unit for one micro-batch of CIFAR-shaped input."""
    torch.manual_seed(0)
    x, outs = torch.randn(micro, 3, 32, 32), []
    with torch.no_grad():
        for unit in build_units(compose_config([f"model.width={width}"]).model, 10):
            unit.train()
            x = unit(x)
            outs.append(x)
    return outs


def payload_bytes(outs: List[torch.Tensor], front: int, back: int, codec: str,
                  chunks: int) -> CommFigures:
    """Bytes per step of each (boundary, pass) from the codecs on the real boundary tensors."""
    codecs = build_codecs(compose_config(CODECS[codec]).compressor)
    meter = CommMeter()
    for boundary, act in (("front", outs[front - 1]), ("back", outs[len(outs) - back - 1])):
        c = codecs[boundary]
        payload = c.activation.encode(act)
        support = c.activation.support_of(payload) if c.reuses_support else None
        grad = torch.randn_like(act)
        meter.record(boundary, "forward", payload.numel() * chunks, act.numel() * 4 * chunks)
        meter.record(boundary, "backward", c.gradient.encode(grad, support=support).numel() * chunks,
                     grad.numel() * 4 * chunks)
    meter.end_batch()
    return meter.summary()


def predict(comm: CommFigures, compute_s: float, up_mbps: float, down_mbps: float,
            latency_ms: float) -> float:
    """Compute plus serial transfer of payloads and overhead: each pass crosses the link up and down
    once (no overlap)."""
    up = comm.up_bytes_per_batch + comm.overhead_up_bytes_per_batch
    down = comm.down_bytes_per_batch + comm.overhead_down_bytes_per_batch
    transfer = up * 8 / (up_mbps * 1e6) + down * 8 / (down_mbps * 1e6)
    return compute_s + transfer + 4 * latency_ms / 1000


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgesplit.bench link", description=__doc__)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--fronts", default="1,2,3")
    p.add_argument("--backs", default="1,2,3")
    p.add_argument("--codecs", default="none,prune,quantize8,quantize4", help=f"from {','.join(CODECS)}")
    p.add_argument("--link-mbps", type=float, default=100.0)
    p.add_argument("--uplink-mbps", type=float, default=None)
    p.add_argument("--downlink-mbps", type=float, default=None)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--measure", default="1x1", help="cells run for real as 'FxB,...', 'all' or 'none'")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    return p.parse_args(argv)


def _measured(args: argparse.Namespace, front: int, back: int, codec: str, link: bool) -> Optional[float]:
    """Median step seconds of dist with or without the emulated link."""
    overrides = ["data=synthetic", f"data.batch_size={args.batch}", f"data.train_size={args.batch}",
                 f"model.width={args.width}", f"partition.front={front}", f"partition.back={back}",
                 "pipeline_backend=dist", f"pipeline_backend.chunks={args.chunks}",
                 f"threads={args.threads}", *CODECS[codec]]
    if link:
        overrides += [f"pipeline_backend.link.bandwidth_mbps={args.link_mbps}",
                      f"pipeline_backend.link.latency_ms={args.latency_ms}"]
        if args.uplink_mbps:
            overrides.append(f"pipeline_backend.link.uplink_mbps={args.uplink_mbps}")
        if args.downlink_mbps:
            overrides.append(f"pipeline_backend.link.downlink_mbps={args.downlink_mbps}")
    r = run_cell(overrides, args.warmup, args.steps)
    if "error" in r:
        print(f"{front}x{back} {codec}: {r['error']}", file=sys.stderr)
        return None
    return statistics.median(r["times"])


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    unknown = [c for c in args.codecs.split(",") if c not in CODECS]
    if unknown:
        print(f"--codecs: unknown {unknown}; allowed: {', '.join(CODECS)}", file=sys.stderr)
        return 2
    up = args.uplink_mbps or args.link_mbps
    down = args.downlink_mbps or args.link_mbps
    cells = [(int(f), int(b)) for f in args.fronts.split(",") for b in args.backs.split(",")]
    measure = (set(cells) if args.measure == "all" else set() if args.measure == "none" else
               {tuple(int(v) for v in c.split("x")) for c in args.measure.split(",")})
    outs = unit_outputs(args.width, math.ceil(args.batch / args.chunks))
    rows = ["| front x back | codec | up B/step | down B/step | raw up | raw down | ratio | "
            "transfer s (pred.) | step s no link (meas.) | step s with link: predicted | measured |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for front, back in cells:
        for codec in args.codecs.split(","):
            comm = payload_bytes(outs, front, back, codec, args.chunks)
            transfer = predict(comm, 0.0, up, down, args.latency_ms)
            base = with_link = None
            if (front, back) in measure:
                base = _measured(args, front, back, codec, link=False)
                with_link = _measured(args, front, back, codec, link=True)
            pred = f"{base + transfer:.3f}" if base is not None else "—"
            rows.append(
                f"| {front}x{back} | {codec} | {human_bytes(comm.up_bytes_per_batch)} | "
                f"{human_bytes(comm.down_bytes_per_batch)} | "
                f"{human_bytes(comm.raw_up_bytes_per_batch)} | "
                f"{human_bytes(comm.raw_down_bytes_per_batch)} | {comm.compression_ratio:.1f}x | "
                f"{transfer:.3f} | {f'{base:.3f}' if base is not None else '—'} | {pred} | "
                f"{f'{with_link:.3f}' if with_link is not None else '—'} |")
    print("\n".join(header_lines("link", argv)))
    print(f"\nlink: up {up} Mbit/s, down {down} Mbit/s, latency {args.latency_ms} ms; width {args.width}, "
          f"batch {args.batch} in {args.chunks} chunks\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
