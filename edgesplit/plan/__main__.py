"""`python -m edgesplit.plan [overrides]`: predict every candidate split's step time, bytes and memory
for this model, link and devices, rank them, and print the command that measures the best."""
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import OmegaConf

from edgesplit.errors import ConfigError, UserError
from edgesplit.model.partition import split_units
from edgesplit.plan.accuracy import plan_results, summary_lines
from edgesplit.plan.calibrate import calibrations
from edgesplit.plan.inputs import PlanInputs, plan_inputs
from edgesplit.plan.output import measure_command, table, write_outputs
from edgesplit.plan.profile import profiles
from edgesplit.plan.space import Bounds, candidates, plan_space, single_stage
from edgesplit.plan.validate import check_validation, validate_plan
from edgesplit.plan.validation_report import agreement, agreement_line, validation_table, write_validation

log = logging.getLogger("edgesplit")


def cloud_bounds(inputs: PlanInputs) -> Bounds:
    """The cloud stages of a split as the backends cut them (split_units: by compute)."""
    first = next(iter(inputs.parts.values()))
    units, stages = first.split.units, first.spec.model.cloud_stages
    if stages == 1:
        return single_stage(len(units))
    shape = first.spec.facts.input_shape
    return lambda front, back: split_units(units, front, back, stages, shape).cloud_bounds


def describe(inputs: PlanInputs) -> Dict[str, Any]:
    """The inputs plan.json records."""
    return {"overrides": inputs.overrides, "plan": OmegaConf.to_container(inputs.plan),
            "link": vars(inputs.link), "edge_slowdown": inputs.devices.edge_slowdown,
            "cloud_speedup": inputs.devices.cloud_speedup, "batch_size": inputs.batch_size,
            "schedules": {m: vars(s) for m, s in inputs.schedules.items()}}


def run(argv: List[str]) -> int:
    inputs = plan_inputs(argv)
    if inputs.plan.validate:
        check_validation(inputs)  # before the profile: a refusal costs nothing
    first = next(iter(inputs.parts.values()))
    n = first.split.num_units
    cands, skipped = candidates(list(inputs.plan.fronts), list(inputs.plan.backs), list(inputs.parts),
                                list(inputs.schedules), n)
    if not cands:
        raise ConfigError(f"plan.fronts={list(inputs.plan.fronts)}, plan.backs={list(inputs.plan.backs)}: "
                          f"no split leaves the cloud a unit of the model's {n}")
    results = plan_results(inputs, cands)
    by_chunks = profiles(inputs)
    bounds = cloud_bounds(inputs)
    figures = plan_space(cands, by_chunks, inputs.codec_ids, bounds, inputs.link, inputs.schedules,
                         inputs.devices, inputs.batch_size, inputs.state_factor,
                         calibrations(inputs, by_chunks, cands, bounds))
    link = inputs.link
    model = first.spec.model.target["_target_"].rsplit(".", 1)[-1]
    title = (f"{model}, link up {link.up_mbps or 'inf'} / down {link.down_mbps or 'inf'} Mbit/s + "
             f"{link.latency_ms:g} ms, edge x{inputs.devices.edge_slowdown:g}, "
             f"cloud /{inputs.devices.cloud_speedup:g}")
    paths = write_outputs(Path(inputs.plan.out_dir), figures, by_chunks, describe(inputs), title, results)
    print(table(figures, results))
    if skipped:
        print(f"\n({skipped} candidate(s) left out: front + back must leave the cloud a unit of {n})")
    best = figures[0]
    c = best.candidate
    print(f"\nfastest: front {c.front}, back {c.back}, {c.compressor}, {c.chunks} chunks: "
          f"{best.step_s:.4g} s/step, bound by the {best.bottleneck}")
    for line in summary_lines(figures, results) if results is not None else []:
        print(line)
    print(f"written: {', '.join(str(p) for p in paths)}")
    print(f"measure the top {min(int(inputs.plan.top), len(figures))}:\n"
          f"{measure_command(figures, int(inputs.plan.top), inputs.overrides, inputs.devices.edge_slowdown)}")
    if inputs.plan.validate:
        rows = validate_plan(inputs, figures)
        written = write_validation(Path(inputs.plan.out_dir), rows, {**describe(inputs), "title": title})
        print(f"\nvalidation, measured on this host (dist, the emulated link and edge slowdown):\n"
              f"{validation_table(rows)}\n\n{agreement_line(agreement(rows), len(rows))}\n"
              f"written: {', '.join(str(p) for p in written)}")
    return 0


def main(argv: List[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
