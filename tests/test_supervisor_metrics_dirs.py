"""The supervisor's metrics directory: named after its pid, removed on exit, and removed by
the next supervisor when a SIGKILL left it behind."""

import os
import subprocess
import sys
from pathlib import Path

from service import supervisor
from service.supervisor import METRICS_DIR_PREFIX, _children_env, _remove_orphaned_metrics


def _a_pid_that_has_exited() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def test_a_directory_left_by_a_supervisor_that_is_gone_is_removed(tmp_path):
    orphaned = tmp_path / f"{METRICS_DIR_PREFIX}{_a_pid_that_has_exited()}-k2j4"
    orphaned.mkdir()
    (orphaned / "counter_123.db").write_bytes(b"\0" * 16)
    kept = [
        tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-ab_c",  # its supervisor still runs
        tmp_path / f"{METRICS_DIR_PREFIX}q8x_w1",  # named before pids were: owner unknown
        tmp_path / "fluxhook-other-1-x",
    ]
    for directory in kept:
        directory.mkdir()

    _remove_orphaned_metrics(tmp_path)

    assert not orphaned.exists()
    assert all(directory.exists() for directory in kept)


def test_the_childrens_directory_is_the_supervisors_own_and_goes_with_it(monkeypatch, tmp_path):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(supervisor.tempfile, "tempdir", str(tmp_path))
    with _children_env() as env:
        directory = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.parent == tmp_path and directory.is_dir()
        assert directory.name.startswith(f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    assert not directory.exists()


def test_a_directory_the_operator_set_is_used_and_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with _children_env() as env:
        assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert tmp_path.is_dir()
