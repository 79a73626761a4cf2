"""What every benchmark prints above its table: the command that reproduces it, the date, the machine."""
import datetime
import os
import platform
import shlex
from typing import List

import torch

from edgesplit.report.build import human_bytes

__all__ = ["header_lines", "human_bytes"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}; {cpu}, {os.cpu_count()} cores; {gpu}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def header_lines(name: str, argv: List[str]) -> List[str]:
    return [
        f"    python -m edgesplit.bench {name} {shlex.join(argv)}".rstrip(),
        "",
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; {machine()}",
    ]
