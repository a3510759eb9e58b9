"""Server and worker processes for tests and the load tool: start one, wait until it is ready, stop it.

Plain subprocesses and the standard library only, so the load generator (tests/load) and pytest share them.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from inference.resources import REPO_ROOT

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Children get SIGTERM if the generator dies, so an aborted run leaves no servers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    name: str,
    command: list[str],
    env: dict[str, str],
    log_dir: Path,
    ready,
    timeout_s: float = START_TIMEOUT_S,
    die_with_parent: bool = True,
) -> Service:
    """Start `command` logging to log_dir/<name>.log; return once `ready(service)`, else raise StackError.
    `die_with_parent`: for the generator's own (single-threaded) process; pytest passes False, since a
    pre-exec hook is not safe in a process that runs threads."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
        )
    service = Service(name, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{name} exited with {process.returncode}:\n{service.log_tail()}")
        if ready(service):
            return service
        time.sleep(0.2)
    service.stop()
    raise StackError(f"{name} was not ready in {timeout_s} s:\n{service.log_tail()}")


def accepting(port: int):
    def check(_service: Service) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    return check


def web_command(server: str, port: int) -> list[str]:
    if server == "daphne":
        # -v 0 as in make run and Docker: no access log (it would name every socket's token path)
        return [
            str(BIN / "daphne"),
            "-v",
            "0",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "research_portal.asgi:application",
        ]
    if server == "uvicorn":
        return [
            str(BIN / "uvicorn"),
            "research_portal.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets",
            "--ws-per-message-deflate",
            "false",  # as daphne: compressing JPEGs costs CPU and saves nothing
            "--lifespan",
            "off",  # channels' router has no lifespan handler
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    raise ValueError(f"unknown server {server!r}")
