"""The split planner's profile, cache and command line (edgesplit/plan) on the 5-unit test model."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, List

import pytest
import torch
from omegaconf import DictConfig

from edgesplit.assemble import DataFacts, assemble
from edgesplit.boundary.meter import CommMeter
from edgesplit.errors import ConfigError
from edgesplit.plan import measure
from edgesplit.plan.__main__ import main as plan_main
from edgesplit.plan.cache import cache_path, cached_profile, profile_key, write_profile
from edgesplit.plan.inputs import plan_inputs
from edgesplit.plan.measure import Profile, profile_codec
from edgesplit.plan.profile import main as profile_main
from edgesplit.plan.output import best_per_split, measure_command, plot
from edgesplit.plan.space import Candidate, Figures
from tests.conftest import ROOT, TEST_MODEL, TINY
from tests.trained_run import TRAINED
from tests.dist_helpers import train_env
from tests.test_plan_join import fake_sweep

FACTS = DataFacts(10, 256, 128, (3, 32, 32))  # digits' facts: no dataset to load
# every compressor option but the learned bottleneck (it adds units: the planner refuses it)
OPTIONS = sorted(p.stem for p in (ROOT / "conf" / "compressor").glob("*.yaml")
                 if not p.stem.startswith("bottleneck"))
PLAN = ["plan.repeats=1", "plan.warmup=0", "plan.calibrate=0"]


@pytest.fixture(scope="module")
def units() -> List[torch.nn.Module]:
    from tests.custom_model import units as build
    return build(10, 0.5)


def test_profile_key_names_what_the_figures_depend_on(make_cfg: Callable[..., DictConfig],
                                                      tmp_path: Path) -> None:
    spec = assemble(make_cfg(*TEST_MODEL), FACTS).spec
    key = profile_key(spec, 32, torch.device("cpu"))
    assert key["micro_batch"] == 32 and key["input_shape"] == [3, 32, 32] and key["device"] == "cpu"
    assert key["torch"] == torch.__version__ and key["model"]["width"] == 0.5
    others = [profile_key(spec, 16, torch.device("cpu")), profile_key(spec, 32, torch.device("meta")),
              profile_key(assemble(make_cfg(*TEST_MODEL, "model.width=0.25"), FACTS).spec, 32,
                          torch.device("cpu")),
              profile_key(assemble(make_cfg(*TEST_MODEL), DataFacts(10, 256, 128, (3, 16, 16))).spec, 32,
                          torch.device("cpu"))]
    paths = {cache_path(k, str(tmp_path)) for k in [key, *others]}
    assert len(paths) == 5  # each key its own file
    profile = Profile(key, [measure.UnitProfile(0.1, 0.2, (8, 32, 32), 4, 5, 6)], 7)
    write_profile(profile, cache_path(key, str(tmp_path)))
    assert cached_profile(key, str(tmp_path)) == profile  # JSON round trip, data only
    assert all(cached_profile(k, str(tmp_path)) is None for k in others)
    cache_path(key, str(tmp_path)).write_text("{not json")
    assert cached_profile(key, str(tmp_path)) is None  # a damaged entry is measured again


@pytest.mark.parametrize("option", OPTIONS)
def test_profile_bytes_are_a_real_encodes(option: str, make_cfg: Callable[..., DictConfig],
                                          units: List[torch.nn.Module]) -> None:
    """Every compressor option: the profile's payload bytes of a boundary tensor (the meter's count
    after one crossing) are those of the codecs' own encode of it, forward and backward."""
    parts = assemble(make_cfg(*TEST_MODEL, f"compressor={option}"), FACTS, units)
    torch.manual_seed(0)
    x = torch.randn(8, 16, 16, 16)
    got = profile_codec(parts, "front", x, repeats=1, warmup=0)
    sender = parts.spec.boundary("front", parts.spec.codecs.build(), CommMeter(), parts.spec.codecs.build())
    ids = torch.arange(8) if sender.needs_ids else None
    for _ in range(2):  # a per-sample codec's second visit: the steady state
        payload = sender.send("forward", x, None, ids)
    grad = sender.send("backward", torch.randn_like(x), sender.support(payload), ids)
    assert (got.forward_bytes, got.backward_bytes) == (payload.numel(), grad.numel())


def test_bad_plan_keys_are_one_line_naming_the_key() -> None:
    for override, key in [("plan.fronts=[]", "plan.fronts"), ("plan.backs=[0]", "plan.backs"),
                          ("plan.edge_slowdown=0", "plan.edge_slowdown"),
                          ("plan.chunks=[1000]", "plan.chunks"),
                          ("plan.compressors=[nope]", "plan.compressors"), ("plan.frontz=1", "plan.frontz"),
                          ("plan.compressors=[bottleneck]", "plan.compressors")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
            plan_inputs([*TINY, *TEST_MODEL, override])
        assert "\n" not in str(e.value)


def test_planned_bytes_equal_the_meters_of_a_trained_run(trained_run: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """TRAINED (gpipe, 2 chunks, quantize2_sr_group with error feedback, front 1, back 1): the plan's
    bytes up and down per step are summary.json's per batch, to the byte. Joined with a sweep
    (plan.results): its accuracy, time to train, the unmatched group and plan_accuracy.png."""
    fake_sweep(tmp_path / "sweep")
    argv = [*TRAINED, *PLAN, "plan.fronts=[1]", "plan.backs=[1]", "plan.compressors=[quantize2_sr_group]",
            f"plan.cache_dir={tmp_path}", f"plan.out_dir={tmp_path / 'out'}",
            f"plan.results={tmp_path / 'sweep'}"]
    assert plan_main(argv) == 0
    record = json.loads((tmp_path / "out" / "plan.json").read_text())
    planned = record["candidates"][0]
    measured = trained_run.straight_summary["history"][-1]
    assert (planned["up_bytes"], planned["down_bytes"]) == (measured["up_bytes_per_batch"],
                                                            measured["down_bytes_per_batch"])
    # fake_sweep's runs without front, back, compressor or chunks overrides ran TRAINED's: best 80 at
    # epoch 2 of 4 steps (256 samples / 64); the others are no candidate of this plan
    assert (planned["best_val_acc1_mean"], planned["seeds"]) == (80.0, 1)
    assert planned["time_to_train_s"] == pytest.approx(planned["step_s"] * 4 * 2)
    assert record["results"]["unmatched"] == ["2/1 quantize4 x2", "4/1 quantize2_sr_group x2"]
    assert "| 80.00 ± — (n=1) | 2 |" in capsys.readouterr().out
    assert (tmp_path / "out" / "plan_accuracy.png").stat().st_size > 0


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture) -> None:
    """`python -m edgesplit.plan` on the test model: the ranked table, plan.json, plan.png and the
    measure command; planning again reads the cached profile (nothing is measured)."""
    argv = [*TINY, *TEST_MODEL, *PLAN, "plan.compressors=[none,quantize4]", "plan.chunks=[2,4]",
            "pipeline_backend.link.uplink_mbps=20", "pipeline_backend.link.downlink_mbps=5",
            f"plan.cache_dir={tmp_path / 'cache'}", f"plan.out_dir={tmp_path / 'out'}"]
    done = subprocess.run([sys.executable, "-m", "edgesplit.plan", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=train_env())  # the test model's module
    assert done.returncode == 0, done.stderr
    # 5 units: fronts x backs 1..3 leave the cloud a unit in 6 splits, x 2 compressors x 2 chunks
    record = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert len(record["candidates"]) == 24 and set(record["profiles"]) == {"2", "4"}
    times = [c["step_s"] for c in record["candidates"]]
    assert times == sorted(times) and all(t > 0 for t in times)
    top = record["candidates"][0]
    assert top["compressor"] == "quantize4"  # a quarter of the bytes on a link-bound step
    assert "| 1 | " in done.stdout and f"bound by the {top['bottleneck']}" in done.stdout
    assert "python train.py -m pipeline_backend=dist" in done.stdout and "partition.front=" in done.stdout
    assert (tmp_path / "out" / "plan.png").stat().st_size > 0
    monkeypatch.setattr(measure, "profile_units", lambda *a: pytest.fail("measured again"))
    assert plan_main(argv) == 0
    # this host's profiles written for another machine's plan (from the cache: nothing measured)
    brought = tmp_path / "host.json"
    assert profile_main([*argv, f"plan.profile={brought}"]) == 0
    assert plan_main([*argv, f"plan.profile={brought}", f"plan.out_dir={tmp_path / 'brought'}"]) == 0
    assert json.loads((tmp_path / "brought" / "plan.json").read_text())["candidates"] == record["candidates"]
    capsys.readouterr()
    assert plan_main([*argv, "plan.top=0"]) == 1
    assert capsys.readouterr().err.strip() == "error: plan.top=0 is invalid: must be >= 1"


def test_the_measure_command_sweeps_the_top_candidates_on_the_planned_edge() -> None:
    figures = [Figures(Candidate(f, b, c, 4), 1.0 + i, 1.0, 1, 1, 1, 1, "cloud", {})
               for i, (f, b, c) in enumerate([(2, 3, "quantize2"), (2, 2, "quantize2"), (1, 3, "prune")])]
    command = measure_command(figures, 2, ["data=digits", "plan.edge_slowdown=4", "compressor=none"], 4.0)
    assert command == ("python train.py -m data=digits pipeline_backend.edge_slowdown=4 partition.front=2 "
                       "partition.back=3,2 compressor=quantize2 pipeline_backend.chunks=4")
    assert "edge_slowdown" not in measure_command(figures, 2, ["data=digits"])


def test_the_heatmap_shows_each_splits_fastest_candidate() -> None:
    """plan.png's right panel: per (front, back) the least predicted step time over compressors and
    chunks (rows fronts 1, 2; columns backs 1, 2), a split the space leaves out blank (NaN)."""
    times = {(1, 1, "none"): 3.0, (1, 1, "quantize4"): 2.0, (1, 2, "none"): 5.0, (2, 1, "prune"): 1.0}
    figures = [Figures(Candidate(f, b, c, 4), t, 1.0, 1, 1, 1, 1, "cloud", {})
               for (f, b, c), t in times.items()]
    drawn = plot(figures, "title").axes[1].images[0].get_array()
    assert drawn.filled(-1).tolist() == [[2.0, 5.0], [1.0, -1]]
    assert best_per_split(figures)[1, 1].candidate.compressor == "quantize4"
