"""The run dir: one live run per dir (flock on `run.lock`, whose JSON names the holder), atomic writes."""
import datetime
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Optional, Type

from edgesplit.errors import RunDirBusy, write_failed

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
# The files a run writes with atomic_write: their temporaries are `<name>.<pid>.tmp`
ATOMIC_NAMES = ("checkpoint.pt", "summary.json", "metrics.csv", "checkpoint_best.pt", "eval.json")
# A lock written on another host, whose flock this host may not see (a shared file system without
# lock support): taken over once its holder has shown no sign of life (an epoch end) for this long.
FOREIGN_STALE_S = 24 * 3600.0


def _holder_text(holder: Dict[str, Any]) -> str:
    return (f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} "
            f"started {holder.get('started', '?')}")


class RunDirLock:
    """Held while a run writes its dir; released (the file removed) on exit, failure or Ctrl-C.

    flock ends with its process, so a lock file that can be flocked was left by a dead run of
    this host (taken over, saying so); one from another host is taken over only past
    FOREIGN_STALE_S since its last refresh, since that host's flock may be invisible here."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise RunDirBusy(f"{self.path.parent} is in use by a live run ({_holder_text(holder)}): "
                                 f"wait for it or pick another hydra.run.dir") from None
            if self._replaced(fd):  # its holder released (removed) it between our open and flock
                os.close(fd)
                continue
            try:
                self._check_previous(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
        self._write_holder()
        remove_stale_temps(self.path.parent)
        return self

    def _replaced(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            return True

    @staticmethod
    def _read(fd: int) -> Dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            holder = json.loads(os.read(fd, 4096).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _check_previous(self, fd: int) -> None:
        holder = self._read(fd)
        if not holder:
            return
        if holder.get("host") != socket.gethostname():
            age = time.time() - os.fstat(fd).st_mtime
            if age < FOREIGN_STALE_S:
                raise RunDirBusy(
                    f"{self.path} is held by a run on another host ({_holder_text(holder)}, last sign "
                    f"of life {age / 3600:.1f} h ago): if that run is gone, delete {self.path}; it is "
                    f"taken over by itself after {FOREIGN_STALE_S / 3600:.0f} h without one")
        log.warning(f"taking over the lock {self.path} of a run that ended without releasing it "
                    f"({_holder_text(holder)})")

    def _write_holder(self) -> None:
        assert self.fd is not None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        data = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data.encode(), 0)

    def refresh(self) -> None:
        """A sign of life (the file's mtime) for hosts that cannot see this host's flock."""
        if self.fd is not None:
            os.utime(self.fd)

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self.fd is None:
            return
        # removed while still flocked: a waiting opener then sees another inode and retries
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def check_free(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """RunDirBusy if a live run of this host holds run_dir's lock; creates and writes nothing (so a
    refused run can be told before anything of it lands in the dir). `key`: the way out named."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock: free (RunDirLock takes it later and says more where needed)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirBusy(f"{run_dir} is in use by a live run ({_holder_text(RunDirLock._read(fd))}): "
                         f"wait for it or pick another {key}") from None
    finally:
        os.close(fd)


SWEEP_DEPTH = 4  # levels of job dirs below a sweep dir (an override's value may nest its subdir)


def check_sweep_free(sweep_dir: Path) -> None:
    """RunDirBusy if a live run of this host holds a run dir at or below sweep_dir, where every job
    of a sweep has its dir (hydra.sweep.subdir is relative to it); reads locks, writes nothing."""
    for level in range(SWEEP_DEPTH + 1):
        for lock in sorted(sweep_dir.glob("/".join(["*"] * level + [LOCK_NAME]))):
            check_free(lock.parent, "hydra.sweep.dir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(run_dir: Path) -> None:
    """Remove the temporaries of interrupted writes (ATOMIC_NAMES' `<name>.<pid>.tmp`) whose
    process is gone; called with the dir's lock held, so no live run of this host writes them."""
    for name in ATOMIC_NAMES:
        for tmp in run_dir.glob(f"{name}.*.tmp"):
            pid = tmp.name[len(name) + 1:-len(".tmp")]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
                log.info(f"removed {tmp}, left by an interrupted write of pid {pid}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write a temporary file of this process, fsync, rename: a crash mid-write leaves the previous
    file intact, and two processes never share a temporary name. A failure is one line naming the
    path (a full disk says how much space is free), and no temporary file stays behind."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()
