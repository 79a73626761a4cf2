"""A validation's outputs: measured beside predicted per candidate with the relative errors, their
median and maximum, the bytes compared to the byte, and where the measured-fastest was ranked."""
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgesplit.plan.validate import Row, rel_err

MB = 2 ** 20


@dataclass
class Agreement:
    """The figures over the measured rows: |relative error| median and maximum of the step time and
    edge memory, how many rows' bytes equal the prediction each way, and the measured-fastest row's
    predicted rank."""
    rows: int
    step_err_median: float
    step_err_max: float
    memory_err_median: float
    memory_err_max: float
    bytes_equal: int
    fastest_measured_rank: int


def _errors(rows: Sequence[Row], key: str) -> List[float]:
    return [abs(rel_err(r.predicted[key], r.measured[key])) for r in rows if r.measured is not None]


def _bytes_equal(r: Row) -> bool:
    assert r.measured is not None
    return all(round(r.measured[k]) == r.predicted[k] for k in ("up_bytes", "down_bytes"))


def agreement(rows: Sequence[Row]) -> Optional[Agreement]:
    done = [r for r in rows if r.measured is not None]
    if not done:
        return None
    step, mem = _errors(done, "step_s"), _errors(done, "edge_peak_bytes")
    fastest = min(done, key=lambda r: r.measured["step_s"] if r.measured else math.inf)
    return Agreement(len(done), statistics.median(step), max(step), statistics.median(mem), max(mem),
                     sum(_bytes_equal(r) for r in done), fastest.rank)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def validation_table(rows: Sequence[Row]) -> str:
    """Markdown: one row per validated candidate, in the plan's ranking."""
    head = ("| rank | front | back | compressor | chunks | step s predicted | measured | error | "
            "bytes up+down predicted | measured | equal | edge MiB predicted | measured | error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r.rank):
        p, m = r.predicted, r.measured
        first = f"| {r.rank} | {r.front} | {r.back} | {r.compressor} | {r.chunks} | {p['step_s']:.4g} | "
        if m is None:
            lines.append(first + f"failed: {r.error} | | | | | | | |")
            continue
        lines.append(first + f"{m['step_s']:.4g} | {_pct(rel_err(p['step_s'], m['step_s']))} | "
                     f"{p['up_bytes'] + p['down_bytes']:.0f} | {m['up_bytes'] + m['down_bytes']:.0f} | "
                     f"{'yes' if _bytes_equal(r) else 'no'} | {p['edge_peak_bytes'] / MB:.1f} | "
                     f"{m['edge_peak_bytes'] / MB:.1f} | "
                     f"{_pct(rel_err(p['edge_peak_bytes'], m['edge_peak_bytes']))} |")
    return "\n".join(lines)


def agreement_line(a: Optional[Agreement], validated: int) -> str:
    if a is None:
        return f"no candidate of the {validated} ran to the end: see the rows above"
    return (f"{a.rows} candidate(s) measured: step time error median {100 * a.step_err_median:.1f}%, "
            f"max {100 * a.step_err_max:.1f}%; edge memory error median {100 * a.memory_err_median:.1f}%, "
            f"max {100 * a.memory_err_max:.1f}%; bytes per step equal to the meter's in {a.bytes_equal} of "
            f"{a.rows}; the measured-fastest is the plan's number {a.fastest_measured_rank}")


def write_validation(out_dir: Path, rows: Sequence[Row], inputs: Dict[str, Any]) -> List[Path]:
    """validation.md (the table and the summary) and validation.json (every row, the inputs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    a = agreement(rows)
    md, js = out_dir / "validation.md", out_dir / "validation.json"
    md.write_text(f"{validation_table(rows)}\n\n{agreement_line(a, len(rows))}\n")
    js.write_text(json.dumps({"inputs": inputs, "agreement": asdict(a) if a else None,
                              "rows": [asdict(r) for r in rows]}, indent=1))
    return [md, js]


def gathered(root: Path) -> str:
    """One markdown row per validation.json below `root`: its setting and its agreement figures."""
    head = ("| setting | measured | step time error median | max | bytes equal | edge memory error median "
            "| max | measured-fastest's predicted rank |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for path in sorted(root.glob("*/validation.json")):
        a = json.loads(path.read_text())["agreement"]
        if a is None:
            lines.append(f"| {path.parent.name} | 0 | | | | | | |")
            continue
        lines.append(f"| {path.parent.name} | {a['rows']} | {100 * a['step_err_median']:.1f}% | "
                     f"{100 * a['step_err_max']:.1f}% | {a['bytes_equal']} of {a['rows']} | "
                     f"{100 * a['memory_err_median']:.1f}% | {100 * a['memory_err_max']:.1f}% | "
                     f"{a['fastest_measured_rank']} |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    """`python -m edgesplit.plan.validation_report DIR`: the validations below DIR, one row each."""
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m edgesplit.plan.validation_report DIR (holding <setting>/validation.json)",
              file=sys.stderr)
        return 2
    print(gathered(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
