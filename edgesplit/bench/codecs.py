"""Codec throughput on MobileNetV2-CIFAR boundary tensors, against torch.clone of each tensor."""
import argparse
import math
import sys
import time
from typing import Callable, List, Optional, Tuple

import torch

from edgesplit.bench.link import unit_outputs
from edgesplit.bench.machine import header_lines
from edgesplit.codecs import Codec, Identity, Quantize, TopK, TopKQuantize


def boundaries(micro: int, width: float) -> List[Tuple[str, Tuple[int, ...], bool]]:
    """(name, shape, post-ReLU) of the tensors at the front boundaries after 1, 2, 3 units and the
    back boundaries before the last 1, 2, 3 units (outputs of units 18, 17, 16) of the real model."""
    shapes = [(micro, *t.shape[1:]) for t in unit_outputs(width, 1)]
    return [
        ("front=1 (stem)", shapes[0], True),
        ("front=2", shapes[1], False),
        ("front=3", shapes[2], False),
        ("back=1 (head)", shapes[18], True),
        ("back=2", shapes[17], False),
        ("back=3", shapes[16], False),
    ]


def codecs() -> List[Tuple[str, Codec]]:
    return [("none", Identity()), ("prune 0.1", TopK(0.1)), ("quantize 8", Quantize(8)),
            ("quantize 4", Quantize(4)), ("prune_quantize 0.1/8", TopKQuantize(0.1, 8))]


def theoretical_bytes(codec: Codec, n: int) -> int:
    """Body bytes without the header: what the format needs at the least."""
    if isinstance(codec, Quantize):
        return math.ceil(n * codec.bits / 8)
    if isinstance(codec, (TopK, TopKQuantize)):
        k = max(1, math.ceil(codec.ratio * n))
        index = min((n + 7) // 8, 4 * k)
        bits = codec.bits if isinstance(codec, TopKQuantize) else 32
        return index + math.ceil(k * bits / 8)
    return 4 * n


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return run


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgesplit.bench codecs", description=__doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell (best is shown)")
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--chunks", type=int, default=4, help="micro-batches per batch")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.chunks < 1 or args.width <= 0:
        p.error("--repeats, --batch, --chunks must be >= 1 and --width > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timed = _timer(device)
    micro = math.ceil(args.batch / args.chunks)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    print("\n".join(header_lines("codecs", argv)))
    print(f"\ndevice {device}; micro-batch {micro} (batch {args.batch} / {args.chunks} chunks); "
          f"width {args.width}; best of {args.repeats} runs\n")
    print("| boundary | shape | codec | encode ms | decode ms | enc+dec ms | clone ms | "
          "x clone | GB/s | payload B | raw fp32 B | theory B | payload/raw |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for where, shape, relu in boundaries(micro, args.width):
        x = torch.randn(shape, generator=gen, device=device)
        if relu:
            x.relu_()
        n = x.numel()
        for label, codec in codecs():
            payload = codec.encode(x)
            codec.decode(payload)  # warm-up
            enc, dec, clone = [], [], []
            for _ in range(args.repeats):
                clone.append(timed(lambda: x.clone()))
                enc.append(timed(lambda: codec.encode(x)))
                dec.append(timed(lambda: codec.decode(payload)))
            e, d, c = min(enc) * 1e3, min(dec) * 1e3, min(clone) * 1e3
            both = min(a + b for a, b in zip(enc, dec)) * 1e3
            print(f"| {where} | {'x'.join(map(str, shape))} | {label} | {e:.2f} | {d:.2f} | "
                  f"{both:.2f} | {c:.2f} | {both / c:.2f} | {4 * n / both / 1e6:.2f} | "
                  f"{payload.numel()} | {4 * n} | {theoretical_bytes(codec, n)} | "
                  f"{payload.numel() / (4 * n):.4f} |")
    return 0
