"""logger=mlflow: each run's config as params, its per-epoch figures as metrics named as TensorBoard's
tags, and its config and summary.json as artifacts, in MLflow."""
import fcntl
import logging
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional
from urllib.parse import urlsplit

from edgesplit.errors import ConfigError, UserError

log = logging.getLogger(__name__)
RUN_DIR_TAG = "edgesplit.run_dir"  # finds a resumed run's MLflow run again
STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED
MAX_PARAM = 500  # characters of a param value (older MLflow servers take no more)
BATCH = 100  # params or metrics per log_batch call (MLflow's limit for params)
CONNECT_S = 10.0  # the deadline of the tracking server's check at start (MLflow itself retries for minutes)
VAL_ACC1 = "val/acc1"  # a metric every finished epoch has: how far a resumed run's MLflow run got


def sweep_root(run_dir: Path) -> Path:
    """Where a run's default store lies: its sweep's dir in a Hydra multirun, else the run dir."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(HydraConfig.get().sweep.dir).resolve()
    except (ImportError, ValueError):
        pass
    return run_dir.resolve()


def flat_params(config: Mapping[str, Any], prefix: str = "") -> Dict[str, str]:
    """`a.b.c` -> value as text (lists as text, values cut to MAX_PARAM); the tracking URI is left
    out (it may hold credentials)."""
    out: Dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif name != "logger.tracking_uri":
            out[name] = str(value)[:MAX_PARAM]
    return out


def check_tracking_uri(uri: Optional[str], timeout_s: float = CONNECT_S) -> None:
    """An http(s) tracking server answers a connection within `timeout_s`, checked at start (a local
    store needs no network); ConfigError naming the URI without its credentials otherwise."""
    parts = urlsplit(uri or "")
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        reason = "no answer" if isinstance(e, socket.timeout) else (getattr(e, "strerror", None) or e)
        raise ConfigError(f"logger.tracking_uri={shown} cannot be reached within {timeout_s:g} s ({reason}): "
                          f"start the tracking server or fix the URI") from None


@contextmanager
def store_opening(uri: str) -> Iterator[None]:
    """One process at a time opens a SQLite store: the jobs of a parallel sweep (hydra/launcher=joblib,
    submitit) would otherwise race to create its tables (alembic: "expected to match one row")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    lock = db.with_name(f".{db.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MLflowLogger:
    """One MLflow run per edgesplit run (a resumed run goes on in the same one); every store call
    goes through MlflowClient, so the jobs of a sweep in one process share no global state."""

    def __init__(self, run_dir: str, config: Dict[str, Any], overrides: List[str],
                 tracking_uri: Optional[str] = None, experiment_name: Optional[str] = None) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ConfigError(f"logger=mlflow needs the mlflow package: pip install -e '.[mlflow]' ({e})")
        root = sweep_root(Path(run_dir))
        self.uri = tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        try:
            with store_opening(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                experiment = self._experiment(experiment_name or root.name, root)
            found = [] if "'" in run_dir else self.client.search_runs(
                [experiment], f"tags.`{RUN_DIR_TAG}` = '{run_dir}'", max_results=1)
            if found:
                self.run_id = found[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                have = found[0].data.params
            else:
                run = self.client.create_run(experiment, run_name=Path(run_dir).name, tags={
                    RUN_DIR_TAG: run_dir, "edgesplit.overrides": " ".join(overrides)[:MAX_PARAM]})
                self.run_id, have = run.info.run_id, {}
            params = [Param(k, v) for k, v in flat_params(config).items() if k not in have]
            for i in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[i:i + BATCH])
            self.logged = max((m.step for m in self.client.get_metric_history(self.run_id, VAL_ACC1)),
                              default=0)
        except UserError:
            raise
        except Exception as e:
            raise ConfigError(f"logger=mlflow cannot use the tracking store {self.uri} "
                              f"(logger.tracking_uri): {type(e).__name__}: {' '.join(str(e).split())[:300]}")
        log.info(f"mlflow: run {self.run_id} in {self.uri}")
        self.run_dir = Path(run_dir)
        self._artifact("config.yaml", lambda: self.client.log_dict(self.run_id, config, "config.yaml"))

    def _artifact(self, name: str, upload: Callable[[], None]) -> None:
        """An artifact store that refuses a file costs the file, not the run."""
        try:
            upload()
        except Exception as e:
            why = " ".join(str(e).split())[:300]
            log.warning(f"mlflow: could not store {name}: {type(e).__name__}: {why}")

    def _experiment(self, name: str, root: Path) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri()))
        except Exception:  # another job of the sweep created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def log_epochs(self, rows: List[Dict[str, Any]]) -> None:
        """The figures of every epoch not logged yet, by TensorBoard tag (the step is the epoch): a
        resumed run fills in an epoch that a kill kept from MLflow."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(row["epoch"])) for row in rows
                   if row["epoch"] > self.logged for key, value in row.items()
                   if key != "epoch" and value is not None]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])
        self.logged = max([self.logged] + [int(row["epoch"]) for row in rows])

    def close(self, status: str) -> None:
        """summary.json as it ends the run, then the run's end."""
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            self._artifact(summary.name, lambda: self.client.log_artifact(self.run_id, str(summary)))
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))
