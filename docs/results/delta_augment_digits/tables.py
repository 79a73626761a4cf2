"""The per-seed and per-(method, augment) tables of report.md's header, from a sweep dir:
`python docs/results/delta_augment_digits/tables.py /work/aug_study` (needs tensorboard for the
per-epoch relative errors)."""
import json
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

METHODS = ["none", "quantize2", "delta2", "delta4"]
AUGMENTS = ["True", "fixed"]
TAG = "boundary/front_forward/rel_error"


def overrides(run: Path) -> dict:
    lines = (run / ".hydra" / "overrides.yaml").read_text().split("\n")
    return dict(line[2:].split("=", 1) for line in lines if line.startswith("- "))


def runs(root: Path) -> list:
    out = []
    for run in sorted(root.iterdir()):
        if not (run / "summary.json").is_file():
            continue
        ov, s = overrides(run), json.loads((run / "summary.json").read_text())
        ea = EventAccumulator(str(run / "tb"))
        ea.Reload()
        per_epoch = [e.value for e in ea.Scalars(TAG)] if TAG in ea.Tags()["scalars"] else []
        hist = s["history"]
        out.append(dict(
            method=ov["compressor"], augment=ov["data.augment"], seed=int(ov["seed"]), status=s["status"],
            best=s["best_val_acc1"], final=s["val_acc1"],
            bytes=statistics.mean(h["up_bytes_per_batch"] + h["down_bytes_per_batch"] for h in hist),
            rel_front=per_epoch, rel_back=s["comm"]["back_forward_rel_error"]))
    return out


def mean_std(values: list, fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)} (n={len(values)})"


def main(root: Path) -> None:
    rs = runs(root)
    aug = {"True": "true", "fixed": "fixed"}
    print("| method | data.augment | seed | status | best val acc1 | final val acc1 | bytes/batch "
          "(run mean) | front fwd rel error, epochs 1-5 | back fwd rel error (epoch 5) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rs, key=lambda r: (METHODS.index(r["method"]), AUGMENTS.index(r["augment"]), r["seed"])):
        errs = " / ".join(f"{e:.3f}" for e in r["rel_front"])
        print(f"| {r['method']} | {aug[r['augment']]} | {r['seed']} | {r['status']} | {r['best']:.2f} | "
              f"{r['final']:.2f} | {r['bytes'] / 1e3:.0f} kB | {errs} | {r['rel_back']:.3f} |")
    print()
    print("| method | data.augment | best val acc1 (%) | bytes/batch (run mean) | front fwd rel error, "
          "epoch 5 | front fwd rel error, epochs 2-5 mean |")
    print("|---|---|---|---|---|---|")
    for m in METHODS:
        for a in AUGMENTS:
            sel = [r for r in rs if r["method"] == m and r["augment"] == a and r["status"] == "finished"]
            if not sel:
                continue
            print(f"| {m} | {aug[a]} | {mean_std([r['best'] for r in sel])} | "
                  f"{statistics.mean(r['bytes'] for r in sel) / 1e3:.0f} kB | "
                  f"{mean_std([r['rel_front'][-1] for r in sel], '{:.3f}')} | "
                  f"{mean_std([statistics.mean(r['rel_front'][1:]) for r in sel], '{:.3f}')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
