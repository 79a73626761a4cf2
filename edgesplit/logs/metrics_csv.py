"""metrics.csv in the run dir: one row per finished epoch, rewritten whole from the summary's history."""
import csv
import io
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List

from edgesplit.run.rundir import atomic_write
from edgesplit.logs.summary import EpochRecord, RunSummary

NAME = "metrics.csv"
# EpochRecord's figures in its order, with the best validation accuracy so far after val_acc5, and
# then each privacy figure a run measured as `privacy/<name>` (edgesplit.privacy)
_RECORD = [f.name for f in fields(EpochRecord) if f.name != "privacy"]
_AT = _RECORD.index("val_acc5") + 1
COLUMNS = _RECORD[:_AT] + ["best_val_acc1"] + _RECORD[_AT:]


def privacy_columns(summary: RunSummary) -> List[str]:
    return [f"privacy/{name}" for name in dict.fromkeys(n for h in summary.history for n in h.privacy)]


def client_columns(summary: RunSummary) -> List[str]:
    """A multi-client run's extra columns, its figures' tags (`client<k>/...`, `clients/...`)."""
    history = (summary.clients or {}).get("history") or []
    return list(dict.fromkeys(tag for figures in history for tag in figures if tag != "epoch"))


def columns(summary: RunSummary) -> List[str]:
    return COLUMNS + privacy_columns(summary) + client_columns(summary)


def epoch_rows(summary: RunSummary) -> List[Dict[str, Any]]:
    """One dict per finished epoch, keyed by columns() (None where unknown)."""
    rows, best = [], -math.inf
    by_epoch = {f["epoch"]: f for f in (summary.clients or {}).get("history") or []}
    for record in summary.history:
        best = max(best, record.val_acc1)
        privacy = {f"privacy/{name}": v for name, v in record.privacy.items()}
        rows.append({**record.to_dict(), "best_val_acc1": best, **privacy, **by_epoch.get(record.epoch, {})})
    return [{key: row.get(key) for key in columns(summary)} for row in rows]


def write_metrics_csv(run_dir: Path, summary: RunSummary) -> None:
    """The whole history at every epoch end (atomically): a resumed run, whose history comes from
    the checkpoint, rewrites it with no row twice and none lost to a kill between two writes."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns(summary), lineterminator="\n")
    writer.writeheader()
    for row in epoch_rows(summary):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write(run_dir / NAME, text.getvalue().encode())
