"""What a run reports: summary.json (the run, its sides, its link figures) and its TensorBoard scalars."""
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar

from edgesplit.boundary.meter import CommFigures
from edgesplit.run.rundir import atomic_write

STATUSES = ("running", "finished", "failed", "interrupted")
T = TypeVar("T")


class SummaryFormatError(ValueError):
    """A summary.json that holds no run summary: not an object, a key missing, a value of the wrong type."""


@dataclass
class SideStats:
    """One side (`edge`, `cloud`; dist also `cloud_stage<i>`): its share of the model and of the work."""
    parameters: int
    peak_memory_bytes: int
    compute_s_per_batch: float
    processes: int = 1
    codec_state_bytes: int = 0  # per-sample codec state held (delta references, EF residuals)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SideStats":
        """Other keys (the link byte counts older dist runs wrote here) are ignored."""
        return cls(int(data["parameters"]), int(data["peak_memory_bytes"]),
                   float(data["compute_s_per_batch"]), int(data.get("processes", 1)),
                   int(data.get("codec_state_bytes", 0)))


@dataclass
class EpochRecord:
    """One entry of the history: an epoch's learning rate and metrics."""
    epoch: int  # 1-based: the number of epochs finished
    lr: float
    train_loss: float
    train_acc1: float
    val_loss: float
    val_acc1: float
    val_acc5: float
    time_per_batch_s: float  # median over the epoch's steps (the run's warm-up step left out)
    # filled in by RunSummary.record_epoch (absent from summaries written before them)
    samples_per_s: Optional[float] = None  # batch size / time_per_batch_s
    peak_memory_bytes: Optional[int] = None  # the run's so far: the largest process or device
    up_bytes_per_batch: Optional[float] = None
    down_bytes_per_batch: Optional[float] = None
    # seconds the epoch's training loop waited for its batches (the loader, or the resident set's
    # device augmentation, see resident.py), and the steps fp16's loss scaler skipped
    data_s: Optional[float] = None
    skipped_steps: Optional[int] = None
    # privacy.label_leak / input_leak: the epoch's attack figures (edgesplit.privacy.probe), by name
    privacy: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpochRecord":
        # null: a non-finite number (summary.json is strict JSON), or a figure not recorded then
        metrics = {name: math.nan if data[name] is None else float(data[name]) for name in _METRICS}
        return cls(int(data["epoch"]), **metrics, samples_per_s=_optional(data, "samples_per_s", float),
                   peak_memory_bytes=_optional(data, "peak_memory_bytes", int),
                   up_bytes_per_batch=_optional(data, "up_bytes_per_batch", float),
                   down_bytes_per_batch=_optional(data, "down_bytes_per_batch", float),
                   data_s=_optional(data, "data_s", float),
                   skipped_steps=_optional(data, "skipped_steps", int),
                   privacy=_figures(data.get("privacy")))


_METRICS = ("lr", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5", "time_per_batch_s")


@dataclass
class RunSummary:
    """summary.json. The metrics are the last epoch's; they, comm and sides are unset (None, empty)
    until an epoch ends: a run that is running or failed early has fewer figures, not other keys."""
    backend: str
    epochs_planned: int
    eval_compressed: bool
    overrides: List[str]
    status: str = "running"  # one of STATUSES
    error: Optional[str] = None  # why the run failed or was interrupted
    resumed_with_changes: List[str] = field(default_factory=list)  # keys a `resume=force` changed
    epochs: int = 0  # finished
    best_val_acc1: Optional[float] = None
    val_acc1: Optional[float] = None
    val_acc5: Optional[float] = None
    val_loss: Optional[float] = None
    train_loss: Optional[float] = None
    train_acc1: Optional[float] = None
    time_per_batch_s: Optional[float] = None
    samples_per_s: Optional[float] = None
    peak_memory_bytes: Optional[int] = None  # the largest process or device
    # os.getloadavg() (1, 5, 15 minutes) when the run (or its last resume) started and at its
    # last epoch end, and the CPUs it could use: a loaded machine slows every figure above
    load_avg_start: Optional[List[float]] = None
    load_avg_end: Optional[List[float]] = None
    cpus: Optional[int] = None
    # the config's `precision`, and the dtypes that crossed the edge link (comm's raw bytes count
    # at their size; comm.raw_fp32_* at 4 bytes an element)
    precision: Optional[str] = None
    chunks: Optional[int] = None  # micro-batches per step as run (naive: 1, whatever the config gave)
    activation_dtype: Optional[str] = None
    gradient_dtype: Optional[str] = None
    comm: Optional[CommFigures] = None
    sides: Dict[str, SideStats] = field(default_factory=dict)
    # the last epoch's privacy figures, and each leak figure's largest over the epochs as
    # `<name>_best` (the most the cloud learned: edgesplit.privacy), empty when none was measured
    privacy: Dict[str, float] = field(default_factory=dict)
    history: List[EpochRecord] = field(default_factory=list)
    # a multi-client run's (edgesplit.clients): its options, and per epoch the figures by tag
    # (`client<k>/...`, `clients/...`) under `history`; absent from a single edge's summary
    clients: Optional[Dict[str, Any]] = None

    def record_clients(self, header: Mapping[str, Any], figures: Mapping[str, float]) -> None:
        """A finished epoch's client figures (edgesplit.clients.figures), after record_epoch."""
        history = list((self.clients or {}).get("history") or [])
        self.clients = {**header, "history": [*history, dict(figures)]}

    def client_scalars(self) -> Dict[str, float]:
        """The last epoch's client figures by TensorBoard tag ({} for a single edge)."""
        history = (self.clients or {}).get("history") or [{}]
        return {tag: float(v) for tag, v in history[-1].items() if tag != "epoch" and v is not None}

    def record_epoch(self, record: EpochRecord, batch_size: int, comm: CommFigures,
                     sides: Mapping[str, SideStats], time_per_batch_s: Optional[float] = None) -> None:
        """A finished epoch: its metrics become the run's, the best is kept, the last planned one ends
        it. `time_per_batch_s` is the run's median step so far (default: the epoch's)."""
        self.history.append(record)
        self.epochs = record.epoch
        self.best_val_acc1 = max(h.val_acc1 for h in self.history)
        self.val_acc1, self.val_acc5, self.val_loss = record.val_acc1, record.val_acc5, record.val_loss
        self.train_loss, self.train_acc1 = record.train_loss, record.train_acc1
        self.time_per_batch_s = record.time_per_batch_s if time_per_batch_s is None else time_per_batch_s
        self.samples_per_s = batch_size / self.time_per_batch_s
        self.peak_memory_bytes = max((s.peak_memory_bytes for s in sides.values()), default=0)
        self.comm, self.sides = comm, dict(sides)
        self.activation_dtype = comm.activation_dtype or self.activation_dtype
        self.gradient_dtype = comm.gradient_dtype or self.gradient_dtype
        record.samples_per_s = batch_size / record.time_per_batch_s
        record.peak_memory_bytes = self.peak_memory_bytes
        record.up_bytes_per_batch = comm.up_bytes_per_batch
        record.down_bytes_per_batch = comm.down_bytes_per_batch
        self.privacy = dict(record.privacy)
        for name in (n for n in record.privacy if n != "seconds"):  # a cost, not a leak
            values = [h.privacy[name] for h in self.history if math.isfinite(h.privacy.get(name, math.nan))]
            self.privacy[f"{name}_best"] = max(values, default=math.nan)
        if record.epoch == self.epochs_planned:
            self.status = "finished"

    def fail(self, error: str) -> None:
        self.status, self.error = "failed", error

    def interrupt(self, error: str) -> None:
        self.status, self.error = "interrupted", error

    def epoch_scalars(self) -> Dict[str, float]:
        """The TensorBoard scalars of the last recorded epoch by tag (figures not known yet left out)."""
        values: Dict[str, Optional[float]] = {
            "train/loss": self.train_loss, "train/acc1": self.train_acc1,
            "val/loss": self.val_loss, "val/acc1": self.val_acc1, "val/acc5": self.val_acc5,
            "val/best_acc1": self.best_val_acc1, "lr": self.history[-1].lr if self.history else None,
            "time/batch_s": self.time_per_batch_s, "memory/peak_bytes": self.peak_memory_bytes,
            "time/data_s": self.history[-1].data_s if self.history else None,
        }
        if self.comm is not None:
            values.update({
                "comm/up_bytes": self.comm.up_bytes_per_batch,
                "comm/down_bytes": self.comm.down_bytes_per_batch,
                "comm/raw_up_bytes": self.comm.raw_up_bytes_per_batch,
                "comm/raw_down_bytes": self.comm.raw_down_bytes_per_batch,
                "comm/overhead_up_bytes": self.comm.overhead_up_bytes_per_batch,
                "comm/overhead_down_bytes": self.comm.overhead_down_bytes_per_batch,
            })
            for (boundary, pass_), crossing in self.comm.crossings.items():
                values[f"boundary/{boundary}_{pass_}/rel_error"] = crossing.rel_error
                values[f"boundary/{boundary}_{pass_}/sparsity"] = crossing.sparsity
        if self.history:
            values.update({f"privacy/{name}": v for name, v in self.history[-1].privacy.items()})
        for side, stats in self.sides.items():
            values[f"time/{side}_compute_s"] = stats.compute_s_per_batch
            values[f"memory/{side}_peak_bytes"] = stats.peak_memory_bytes
        values.update(self.client_scalars())
        return {tag: float(value) for tag, value in values.items() if value is not None}

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object: every key always present (null where unknown), comm's as CommFigures writes."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["comm"] = None if self.comm is None else self.comm.to_dict()
        out["sides"] = {side: stats.to_dict() for side, stats in self.sides.items()}
        out["history"] = [record.to_dict() for record in self.history]
        if self.clients is None:  # a single edge's summary.json as before the clients group
            del out["clients"]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "RunSummary":
        """Inverse of to_dict; absent metrics read as None. SummaryFormatError says what does not fit."""
        if not isinstance(data, Mapping):
            raise SummaryFormatError("not an object")
        try:
            comm = data.get("comm")
            summary = cls(
                backend=str(data["backend"]), epochs_planned=int(data["epochs_planned"]),
                eval_compressed=bool(data["eval_compressed"]), overrides=[str(o) for o in data["overrides"]],
                status=str(data["status"]), error=_optional(data, "error", str), epochs=int(data["epochs"]),
                resumed_with_changes=[str(k) for k in data.get("resumed_with_changes") or []],
                best_val_acc1=_optional(data, "best_val_acc1", float),
                val_acc1=_optional(data, "val_acc1", float), val_acc5=_optional(data, "val_acc5", float),
                val_loss=_optional(data, "val_loss", float), train_loss=_optional(data, "train_loss", float),
                train_acc1=_optional(data, "train_acc1", float),
                time_per_batch_s=_optional(data, "time_per_batch_s", float),
                samples_per_s=_optional(data, "samples_per_s", float),
                peak_memory_bytes=_optional(data, "peak_memory_bytes", int),
                load_avg_start=_optional(data, "load_avg_start", _floats),
                load_avg_end=_optional(data, "load_avg_end", _floats), cpus=_optional(data, "cpus", int),
                precision=_optional(data, "precision", str), chunks=_optional(data, "chunks", int),
                activation_dtype=_optional(data, "activation_dtype", str),
                gradient_dtype=_optional(data, "gradient_dtype", str),
                comm=None if comm is None else CommFigures.from_dict(comm),
                sides={side: SideStats.from_dict(s) for side, s in (data.get("sides") or {}).items()},
                privacy=_figures(data.get("privacy")),
                history=[EpochRecord.from_dict(h) for h in data.get("history") or []],
                clients=_optional(data, "clients", dict),
            )
        except KeyError as exc:
            raise SummaryFormatError(f"no {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type
            raise SummaryFormatError(f"{type(exc).__name__}: {exc}") from None
        if summary.status not in STATUSES:
            raise SummaryFormatError(f"status {summary.status!r} is not one of {', '.join(STATUSES)}")
        return summary


def _optional(data: Mapping[str, Any], key: str, convert: Callable[[Any], T]) -> Optional[T]:
    value = data.get(key)
    return None if value is None else convert(value)


def _figures(value: Any) -> Dict[str, float]:
    """A dict of figures by name (null: NaN, summary.json's form of it); none: empty."""
    return {str(k): math.nan if v is None else float(v) for k, v in (value or {}).items()}


def _floats(value: Any) -> List[float]:
    return [float(v) for v in value]


def _finite(value: Any) -> Any:
    """`value` with every NaN/inf float as None: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    """Rewritten at every epoch end and on failure, atomically (a temporary file of this process,
    then a rename), so a killed run keeps its numbers; non-finite numbers are written as null."""
    text = json.dumps(_finite(summary.to_dict()), indent=2, allow_nan=False) + "\n"
    atomic_write(run_dir / "summary.json", text.encode())


def read_summary(run_dir: Path) -> Optional[RunSummary]:
    """None when the run wrote none yet; ValueError (JSON, SummaryFormatError) when it is no summary."""
    path = run_dir / "summary.json"
    return RunSummary.from_dict(json.loads(path.read_text())) if path.exists() else None
