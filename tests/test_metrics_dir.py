"""The supervisor's metrics directory (`service.metrics_dir`): held while in use, removed
after, and removed by the next supervisor when a SIGKILL left it behind; nothing else is."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import metrics_dir
from service.metrics_dir import PREFIX, held_metrics_dir, remove_orphans
from service.supervisor import _children_env

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def _a_pid_that_has_exited() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def _orphan(parent: Path, owner: int | str) -> Path:
    directory = parent / f"{PREFIX}{owner}-k2j4_x"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"\0" * 16)
    return directory


def test_a_directory_nobody_holds_is_removed(tmp_path):
    gone = [_orphan(tmp_path, _a_pid_that_has_exited()), _orphan(tmp_path, os.getpid())]
    remove_orphans(tmp_path)  # the second: a restarted container's supervisor has its old pid
    assert not any(directory.exists() for directory in gone)


def test_a_directory_another_process_holds_is_kept(tmp_path):
    """As a supervisor in another pid namespace sharing /tmp would: its pid means nothing
    here, its lock does."""
    held = _orphan(tmp_path, _a_pid_that_has_exited())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        remove_orphans(tmp_path)
        assert held.exists()
    finally:
        holder.communicate(b"")  # stdin closes: it exits, and its lock goes with it
    remove_orphans(tmp_path)
    assert not held.exists()


@pytest.mark.parametrize("owner", ["99999999999999999999", "4294967296", "²", "0", "-1"])
def test_names_that_hold_no_pid_neither_stop_the_sweep_nor_are_removed_blindly(tmp_path, owner):
    directory = tmp_path / f"{PREFIX}{owner}-x"
    directory.mkdir()
    remove_orphans(tmp_path)
    named_like_ours = owner in ("4294967296", "0")  # digits, though no process has such a pid
    assert directory.exists() != named_like_ours


def test_symlinks_files_and_other_names_are_left_alone(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    dead = _a_pid_that_has_exited()
    (tmp_path / f"{PREFIX}{dead}-link").symlink_to(victim)
    (tmp_path / f"{PREFIX}{dead}-file").write_text("x")
    others = [tmp_path / f"{PREFIX}q8x_w1", tmp_path / "fluxhook-other-1-x"]
    for directory in others:
        directory.mkdir()
    remove_orphans(tmp_path)
    assert (victim / "keep").exists() and (tmp_path / f"{PREFIX}{dead}-file").exists()
    assert all(directory.exists() for directory in others)


def test_a_held_directory_is_named_after_its_supervisor_and_goes_with_it(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics_dir.tempfile, "tempdir", str(tmp_path))
    with held_metrics_dir() as held:
        directory = Path(held)
        assert directory.parent == tmp_path and directory.is_dir()
        assert directory.name.startswith(f"{PREFIX}{os.getpid()}-")
        remove_orphans(tmp_path)  # a second supervisor starting meanwhile
        assert directory.is_dir()
    assert not directory.exists()


def test_the_children_get_a_held_directory_unless_the_operator_set_one(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics_dir.tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with _children_env() as env:
        assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).parent == tmp_path
    chosen = tmp_path / "mine"
    chosen.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(chosen))
    with _children_env() as env:
        assert env["PROMETHEUS_MULTIPROC_DIR"] == str(chosen)
    assert chosen.is_dir()
