"""Nothing is downloaded at run time: the whole job runs with every network connection refused.

A sitecustomize on PYTHONPATH (so the command and each worker it spawns load it) refuses and
records any connection or name lookup that leaves this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import NAMED, ROOT, TESTS, run_cli
from tests.test_fashion import write_fashion

GUARD = """
import os, socket

LOG = os.environ["OFFLINE_LOG"]
LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}


def _note(what):
    with open(LOG, "a") as f:
        f.write(f"{os.getpid()} {what}\\n")


def _local(address):
    return not isinstance(address, tuple) or str(address[0]) in LOCAL


def _refuse(name, original):
    def guarded(self, address, *rest):
        if self.family != getattr(socket, "AF_UNIX", None) and not _local(address):
            _note(f"{name} {address!r}")
            raise OSError(f"no network in this test: {name} {address!r}")
        return original(self, address, *rest)
    return guarded


def _lookup(original):
    def guarded(host, *rest, **kw):
        if host is not None and str(host) not in LOCAL and not str(host).startswith("127."):
            _note(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"no network in this test: {host!r}")
        return original(host, *rest, **kw)
    return guarded


socket.socket.connect = _refuse("connect", socket.socket.connect)
socket.socket.connect_ex = _refuse("connect_ex", socket.socket.connect_ex)
socket.socket.sendto = _refuse("sendto", socket.socket.sendto)
socket.getaddrinfo = _lookup(socket.getaddrinfo)
_note("guard loaded")
"""


def _offline(tmp_path: Path) -> tuple[dict[str, str], Path]:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network.log"
    path = os.pathsep.join([str(guard), str(ROOT), str(TESTS)])
    return {"PYTHONPATH": path, "OFFLINE_LOG": str(log)}, log


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_guard_catches_a_download(tmp_path):
    env, log = _offline(tmp_path)
    code = "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/', timeout=5)"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert any("pypi.org" in line for line in _lines(log)), _lines(log)


def test_the_whole_job_downloads_nothing(tmp_path):
    """The quickstart's job on digits and a Fashion-MNIST job on files in a folder, each through
    the search, the race and the report, in the command and its workers."""
    env, log = _offline(tmp_path)
    write_fashion(tmp_path / "data" / "FashionMNIST" / "raw")
    small = [
        "search.n_trials=4",
        "trainer.max_epochs=1",
        "search.batch_sizes=[32]",
        "search.optimizers=[adam,sgd]",
        "race.seeds=[1]",
        "race.conditions=1",
        "search.n_workers=2",
        *NAMED,
    ]
    for task, extra in (
        ("digits", []),
        ("fashion_mnist", [f"task.data.root={tmp_path / 'data'}", "task.data.n_train=100"]),
    ):
        cwd = tmp_path / task
        cwd.mkdir()
        result = run_cli("pipeline", f"task={task}", *extra, *small, cwd=cwd, env=env)
        assert result.returncode == 0, result.stderr
        assert (cwd / "reports" / "index.html").is_file()
    lines = _lines(log)
    refused = [line for line in lines if not line.endswith("guard loaded")]
    assert not refused, refused
    loaded = {line.split()[0] for line in lines}
    assert len(loaded) >= 4, lines  # each command and its workers ran guarded
