"""The supervisor's PROMETHEUS_MULTIPROC_DIR: one temporary directory per supervisor.

It is named `fluxhook-metrics-<supervisor pid>-<random>` and the supervisor holds an
exclusive `flock` on it for as long as it runs, then removes it. A supervisor killed with
SIGKILL removes nothing, but the kernel drops its lock: the next supervisor to start removes
every such directory that is its own user's and that nobody holds (a lock works across pid
namespaces and pid reuse, where a pid alone would not say whether its owner still runs). The
pid in the name only keeps a directory whose supervisor is still between creating and locking
it.
"""

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("fluxhook")
PREFIX = "fluxhook-metrics-"
PID_MAX = 4_194_304  # Linux's highest pid_max (2**22)
NAMED = re.compile(re.escape(PREFIX) + r"[0-9]{1,10}-[a-z0-9_]+", re.ASCII)


@contextlib.contextmanager
def held_metrics_dir() -> Iterator[str]:
    """A fresh metrics directory, locked while in use and removed after (orphans first)."""
    parent = Path(tempfile.gettempdir())
    remove_orphans(parent)
    directory = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
    try:
        with _locked(directory, wait=True):
            yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_orphans(parent: Path) -> None:
    """Removes the metrics directories under `parent` that no running supervisor holds. Never
    raises: what cannot be looked at or removed is left as it is."""
    try:
        candidates = [path for path in parent.iterdir() if NAMED.fullmatch(path.name)]
    except OSError as exc:
        log.warning("could not look for old metrics directories in %s: %s", parent, exc)
        return
    for directory in candidates:
        try:
            if _ours(directory) and not _owner_runs(directory) and _unheld(directory):
                shutil.rmtree(directory)
        except OSError as exc:
            log.warning("left an old metrics directory %s: %s", directory, exc)


def _ours(path: Path) -> bool:
    """A real directory (no symlink) of this process's user."""
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _owner_runs(directory: Path) -> bool:
    """Whether the pid in its name is another process here (one that may be between creating
    the directory and locking it). A pid may have been reused: the directory then waits."""
    pid = int(directory.name.removeprefix(PREFIX).partition("-")[0])
    if pid == os.getpid() or not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _unheld(directory: Path) -> bool:
    try:
        with _locked(directory, wait=False):
            return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def _locked(directory: str | os.PathLike, *, wait: bool) -> Iterator[None]:
    """An exclusive lock on the directory (released when its descriptor closes, or when the
    process dies). Without `wait`, BlockingIOError if another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
