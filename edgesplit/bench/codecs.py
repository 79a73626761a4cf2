"""Codec throughput on MobileNetV2-CIFAR boundary tensors, against torch.clone of each tensor."""
import argparse
import math
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from edgesplit.bench.link import unit_outputs
from edgesplit.bench.machine import header_lines
from edgesplit.codecs import Codec, Crossing, Entropy, Identity, Quantize, RandTopK, TopK
from edgesplit.codecs import TopKQuantize

# the speed targets: enc+dec time over the base codec's, on the CPU
TARGETS = {"quantizing vs plain at the same bits": 2.0, "randtopk vs prune": 1.5}


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


def codecs() -> List[Tuple[str, Codec, str]]:
    """(label, codec, the label of the codec it is compared with: "" for none)."""
    out: List[Tuple[str, Codec, str]] = [("none", Identity(), ""), ("prune 0.1", TopK(0.1), ""),
                                         ("randtopk 0.1/0.1", RandTopK(0.1, 0.1), "prune 0.1")]
    for bits in (8, 4):
        base = f"quantize {bits}"
        out += [(base, Quantize(bits), ""), (f"{base} sr", Quantize(bits, "stochastic"), base),
                (f"{base} channel", Quantize(bits, scale="channel"), base),
                (f"{base} group", Quantize(bits, scale="group"), base),
                (f"{base} sr group", Quantize(bits, "stochastic", "group"), base)]
    base = "prune_quantize 0.1/8"
    return out + [(base, TopKQuantize(0.1, 8), ""),
                  (f"{base} sr group", TopKQuantize(0.1, 8, "stochastic", "group"), base)]


def entropy_codecs() -> List[Tuple[str, Codec, str]]:
    """The entropy stage around quantize 4 and prune, each with its inner codec's label."""
    return [(f"{inner} +{method}", Entropy(codec, method), inner)
            for inner, codec in (("quantize 4", Quantize(4)), ("prune 0.1", TopK(0.1)))
            for method in ("zlib", "zstd")]


def theoretical_bytes(codec: Codec, shape: Tuple[int, ...]) -> int:
    """Body bytes without the header: what the format needs at the least (with the float32
    offset and scale of each channel or group)."""
    n = math.prod(shape)
    if isinstance(codec, Entropy):
        return theoretical_bytes(codec.inner, shape)
    if isinstance(codec, Quantize):
        pairs = {"tensor": 0, "channel": shape[1] if len(shape) > 1 else 1,
                 "group": -(-n // codec.group_size)}[codec.scale]
        return math.ceil(n * codec.bits / 8) + 8 * pairs
    if isinstance(codec, TopK):  # TopK, RandTopK, TopKQuantize
        k = max(1, math.ceil(codec.ratio * n))
        index = min((n + 7) // 8, 4 * k)
        if not isinstance(codec, TopKQuantize):
            return index + 4 * k
        pairs = -(-k // codec.group_size) if codec.scale == "group" else 0
        return index + math.ceil(k * codec.bits / 8) + 8 * pairs
    return 4 * n


def _timer(device: torch.device, clock: str = "wall") -> Callable[[Callable[[], object]], float]:
    """Seconds fn takes: wall-clock, or the CPU time of the process (`cpu`: on a machine other
    processes share, the time slices they take are not counted)."""
    now = time.process_time if clock == "cpu" else time.perf_counter

    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - start
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
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall-clock time, or the process's CPU time (all its threads; CPU only)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.chunks < 1 or args.width <= 0:
        p.error("--repeats, --batch, --chunks must be >= 1 and --width > 0")
    if args.device == "cuda" and args.clock == "cpu":
        p.error("--clock cpu measures CPU time: use it with --device cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


Timing = Tuple[float, float, float, int]  # encode ms, decode ms, their sum, payload bytes


def measure(table: List[Tuple[str, Codec, str]], x: Tensor, repeats: int,
            timed: Callable[[Callable[[], object]], float]) -> Tuple[Dict[str, Timing], float]:
    """Best-of-`repeats` times of every codec on x (the codecs take turns in each repeat, so a
    busy moment of the machine slows them alike; enc+dec is the best encode plus the best decode,
    so one stalled half does not hide the other's best), and of torch.clone."""
    crossing = Crossing(key=1)
    payloads = {label: codec.encode(x, crossing=crossing) for label, codec, _ in table}
    for label, codec, _ in table:
        codec.decode(payloads[label])  # warm-up
    enc: Dict[str, List[float]] = {label: [] for label, _, _ in table}
    dec: Dict[str, List[float]] = {label: [] for label, _, _ in table}
    clone = []
    for _ in range(repeats):
        clone.append(timed(lambda: x.clone()))
        for label, codec, _ in table:
            enc[label].append(timed(lambda: codec.encode(x, crossing=crossing)))
            dec[label].append(timed(lambda: codec.decode(payloads[label])))
    out = {label: (min(enc[label]) * 1e3, min(dec[label]) * 1e3,
                   (min(enc[label]) + min(dec[label])) * 1e3, payloads[label].numel())
           for label, _, _ in table}
    return out, min(clone) * 1e3


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timed = _timer(device, args.clock)
    micro = math.ceil(args.batch / args.chunks)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    print("\n".join(header_lines("codecs", argv)))
    print(f"\ndevice {device}; micro-batch {micro} (batch {args.batch} / {args.chunks} chunks); "
          f"width {args.width}; best of {args.repeats} runs ({args.clock} clock); x base: enc+dec time "
          f"over the codec "
          f"named in `base` (plain quantize at the same bits, prune at the same ratio)\n")
    print("| boundary | shape | codec | encode ms | decode ms | enc+dec ms | clone ms | "
          "x clone | GB/s | payload B | raw fp32 B | theory B | payload/raw | base | x base |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    worst: Dict[str, float] = {}
    entropy_rows = []
    for where, shape, relu in boundaries(micro, args.width):
        x = torch.randn(shape, generator=gen, device=device)
        if relu:
            x.relu_()
        n = x.numel()
        times, c = measure(codecs() + entropy_codecs(), x, args.repeats, timed)
        for label, codec, base in codecs():
            e, d, both, size = times[label]
            ratio = both / times[base][2] if base else None
            if ratio is not None:
                group = "randtopk vs prune" if base.startswith("prune 0") else \
                    "quantizing vs plain at the same bits"
                worst[group] = max(worst.get(group, 0.0), ratio)
            print(f"| {where} | {'x'.join(map(str, shape))} | {label} | {e:.2f} | {d:.2f} | "
                  f"{both:.2f} | {c:.2f} | {both / c:.2f} | {4 * n / both / 1e6:.2f} | "
                  f"{size} | {4 * n} | {theoretical_bytes(codec, shape)} | {size / (4 * n):.4f} | "
                  f"{base} | {'' if ratio is None else f'{ratio:.2f}'} |")
        for label, codec, inner in entropy_codecs():
            e, d, both, size = times[label]
            inner_size = times[inner][3]
            entropy_rows.append(
                f"| {where} | {label} | {e:.2f} | {d:.2f} | {both:.2f} | "
                f"{both / times[inner][2]:.2f} | {inner_size} | {size} | {inner_size / size:.3f} | "
                f"{8 * inner_size / n:.3f} | {8 * size / n:.3f} |")
    print("\nThe entropy stage (reported apart, no speed target): x inner is the time over the inner "
          "codec's alone; ratio = inner payload / entropy-coded payload\n")
    print("| boundary | codec | encode ms | decode ms | enc+dec ms | x inner | inner B | payload B | "
          "ratio | bits/elem before | bits/elem after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(entropy_rows))
    print("\nslowest against its base over the boundaries: " + "; ".join(
        f"{group} x{value:.2f} (target <= {TARGETS[group]})" for group, value in sorted(worst.items())))
    return 0
