"""`python -m edgesplit.evaluate RUN_DIR [checkpoint=best|last]`: a run's checkpoint evaluated on its
validation set, assembled from the config the checkpoint recorded (the backend, split, codecs and
`compressor.eval_compressed` as trained); prints the metrics (stdout; the log and errors go to
stderr) and writes them to RUN_DIR/eval.json."""
import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from edgesplit.assemble import assemble
from edgesplit.backends import build_backend
from edgesplit.boundary.meter import CommMeter
from edgesplit.config import Config
from edgesplit.errors import ConfigError, UserError
from edgesplit.run import best, checkpoint, trainer
from edgesplit.run.resume import ADDED_DEFAULTS
from edgesplit.run.rundir import atomic_write
from edgesplit.validate import validate

log = logging.getLogger("edgesplit.evaluate")
CHECKPOINTS = {"best": best.NAME, "last": checkpoint.NAME}
RESULT = "eval.json"  # in the run dir
USAGE = "usage: python -m edgesplit.evaluate RUN_DIR [checkpoint=best|last]"
SIGINT_EXIT = 130


def parse_args(argv: List[str]) -> Tuple[Path, str]:
    """RUN_DIR and which checkpoint (best unless `checkpoint=last`)."""
    if not 1 <= len(argv) <= 2 or argv[0].startswith("-"):
        raise UserError(USAGE)
    which = "best"
    if len(argv) == 2:
        key, _, which = argv[1].partition("=")
        if key != "checkpoint" or which not in CHECKPOINTS:
            raise ConfigError(f"{argv[1]!r} is invalid: allowed: checkpoint=best, checkpoint=last")
    return Path(argv[0]), which


def recorded_config(state: Mapping[str, Any], path: Path) -> DictConfig:
    """The config a checkpoint recorded, with the defaults of keys added since it was written, and
    a dist run's ranks all started here (`role` null: the cloud hosts of a two-host run may be gone)."""
    saved = state.get("config")
    if not isinstance(saved, Mapping):
        raise checkpoint.CheckpointError(f"{path} holds no config to build the run from")
    config = copy.deepcopy(dict(saved))
    schema = cast(Dict[str, Any], OmegaConf.to_container(OmegaConf.structured(Config)))
    added = {k: v for k, v in schema.items() if v != "???" and not isinstance(v, dict)}
    for key, value in {**added, "checkpoint": schema["checkpoint"], **ADDED_DEFAULTS}.items():
        *groups, name = key.split(".")
        node = config
        for group in groups:
            node = node.setdefault(group, {})
        node.setdefault(name, value)
    if "role" in config.get("pipeline_backend", {}):
        config["pipeline_backend"]["role"] = None
    return OmegaConf.create(config)


def evaluate_run(run_dir: Path, which: str = "best") -> Dict[str, Any]:
    """The validation metrics of the run's `which` checkpoint, also written to RUN_DIR/eval.json."""
    if not (run_dir / checkpoint.NAME).is_file() and not (run_dir / best.NAME).is_file():
        raise UserError(f"{run_dir} is not a run dir: it holds no {checkpoint.NAME} or {best.NAME}")
    path = run_dir / CHECKPOINTS[which]
    if not path.is_file():
        raise UserError(f"{path} does not exist (a run written before edgesplit kept {best.NAME} has "
                        f"none): checkpoint=last evaluates {checkpoint.NAME}")
    state = checkpoint.load(path)
    cfg = recorded_config(state, path)
    try:
        validate(cfg)
        parts = assemble(cfg)
    except OmegaConfBaseException as e:  # a recorded config this edgesplit cannot read
        reason = " ".join(str(e).split())[:300]
        raise checkpoint.CheckpointError(f"the config {path} recorded cannot be built: {reason}") from None
    assert parts.datasets is not None  # assembled from the config's data
    backend = build_backend(parts, CommMeter())
    try:
        backend.load_state_dict(state)
        metrics = trainer.evaluate(backend, trainer.val_loader(cfg, parts.datasets))
    finally:
        backend.close()
    result = {"checkpoint": str(path), "epoch": state.get("epoch"), "backend": cfg.pipeline_backend.name,
              "eval_compressed": cfg.compressor.eval_compressed, **metrics}
    atomic_write(run_dir / RESULT, (json.dumps(result, indent=2) + "\n").encode())
    return result


def main(argv: List[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        run_dir, which = parse_args(argv)
        result = evaluate_run(run_dir, which)
    except UserError as e:
        log.error(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log.error("error: interrupted")
        return SIGINT_EXIT
    print(f"{which} checkpoint (epoch {result['epoch']}): val loss {result['val_loss']:.4f} "
          f"acc1 {result['val_acc1']:.2f} acc5 {result['val_acc5']:.2f}; written to {run_dir / RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
