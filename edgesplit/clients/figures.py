"""A multi-client epoch's figures by tag: per client (`client<k>/...`, one TensorBoard family each)
and in total (`clients/...`): link bytes per round each way (activations and gradients apart from
the edge weights sent for averaging), samples seen, loss, compute time, held-out accuracy."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from edgesplit.backends.base import StepResult
from edgesplit.boundary.meter import DIRECTION, CommMeter


@dataclass
class ClientTally:
    """What one client did this epoch (and this round: `round_samples`, FedAvg's weight)."""
    samples: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    round_samples: int = 0
    averaging_up: int = 0  # bytes of edge weights sent to be averaged (or handed on: sequential)
    averaging_down: int = 0  # ... received

    def step(self, result: StepResult) -> None:
        self.samples += result.count
        self.round_samples += result.count
        self.steps += 1
        self.loss_sum += result.loss_sum


def link_bytes(meter: CommMeter) -> Dict[str, int]:
    """Payload bytes a client's boundaries sent each way ('up', 'down') since the meter's reset."""
    out = {"up": 0, "down": 0}
    for crossing in meter.state()["crossings"]:
        out[DIRECTION[crossing["boundary"], crossing["pass"]]] += int(crossing["bytes"])
    return out


def _percent(result: Optional[StepResult]) -> Optional[float]:
    return None if result is None or not result.count else 100.0 * result.correct1 / result.count


def epoch_figures(epoch: int, tallies: Sequence[ClientTally], meters: Sequence[CommMeter],
                  held_out: Sequence[Optional[StepResult]], compute_s: Sequence[float],
                  rounds: int) -> Dict[str, float]:
    """The epoch's figures by tag (with `epoch`); a held-out accuracy only where a client holds
    samples out; bytes per round = the epoch's / clients.rounds_per_epoch; `compute_s`: each
    client's compute seconds in the epoch (edge and its share of the cloud)."""
    out: Dict[str, float] = {"epoch": epoch}
    totals = {"up": 0.0, "down": 0.0, "avg_up": 0.0, "avg_down": 0.0, "samples": 0.0}
    for k, (tally, meter) in enumerate(zip(tallies, meters)):
        link = link_bytes(meter)
        figures = {"up_bytes_per_round": link["up"] / rounds, "down_bytes_per_round": link["down"] / rounds,
                   "averaging_up_bytes_per_round": tally.averaging_up / rounds,
                   "averaging_down_bytes_per_round": tally.averaging_down / rounds,
                   "samples": float(tally.samples), "compute_s": compute_s[k]}
        for key, name in (("up", "up_bytes_per_round"), ("down", "down_bytes_per_round"),
                          ("avg_up", "averaging_up_bytes_per_round"),
                          ("avg_down", "averaging_down_bytes_per_round"), ("samples", "samples")):
            totals[key] += figures[name]
        if tally.steps:
            figures["train_loss"] = tally.loss_sum / tally.samples
        accuracy = _percent(held_out[k])
        if accuracy is not None:
            figures["held_out_acc1"] = accuracy
        out.update({f"client{k}/{name}": value for name, value in figures.items()})
    out.update({"clients/up_bytes_per_round": totals["up"], "clients/down_bytes_per_round": totals["down"],
                "clients/link_bytes_per_round": totals["up"] + totals["down"],
                "clients/averaging_up_bytes_per_round": totals["avg_up"],
                "clients/averaging_down_bytes_per_round": totals["avg_down"],
                "clients/averaging_bytes_per_round": totals["avg_up"] + totals["avg_down"],
                "clients/samples": totals["samples"]})
    results: List[StepResult] = [r for r in held_out if r is not None]
    if results:
        out["clients/held_out_acc1"] = _percent(sum(results[1:], results[0])) or 0.0
    return out
