"""The production path the generator loads: W ASGI server processes and K Celery worker processes on the
real Postgres and Redis, started as subprocesses (logs under var/load/logs/) and stopped afterwards."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import (
    BIN,
    START_TIMEOUT_S,
    Service,
    StackError,
    accepting,
    free_port,
    start_service,
    web_command,
)


def worker_command(index: int, pool: str, loglevel: str, core: int | None = None) -> list[str]:
    """`core`: run the worker pinned to that CPU (taskset), as the bare pipeline's processes are."""
    pinned = ["taskset", "-c", str(core)] if core is not None else []
    return [
        *pinned,
        str(BIN / "celery"),
        "-A",
        "research_portal",
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        "--concurrency=1",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname=load{index}@%h",
    ]


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    web: list[Service] = field(default_factory=list)
    workers: list[Service] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def start_web(self, server: str, count: int) -> None:
        if not (BIN / server).exists():
            raise StackError(
                f"{server} is not installed in this environment ({BIN}); e.g. pip install uvicorn"
            )
        for index in range(count):
            port = free_port()
            self.web.append(
                start_service(
                    f"{server}-{index}", web_command(server, port), self.env, self.log_dir, accepting(port)
                )
            )
            self.urls.append(f"http://127.0.0.1:{port}")

    def start_workers(self, count: int, pool: str, loglevel: str, pin: bool = False) -> None:
        """K workers booted in parallel; ready once each logs " ready." (INFO) or answers a ping. `pin`:
        worker i runs on core i modulo the cores this process may use."""
        from research_portal.celery import app

        if pin and not shutil.which("taskset"):
            raise StackError("--pin-workers needs taskset (util-linux)")
        cores = sorted(os.sched_getaffinity(0))
        names = [f"load{index}@{socket.gethostname()}" for index in range(count)]
        for index in range(count):
            command = worker_command(index, pool, loglevel, cores[index % len(cores)] if pin else None)
            self.workers.append(
                start_service(f"worker-{index}", command, self.env, self.log_dir, lambda _s: True)
            )
        pending = dict(zip(names, self.workers, strict=True))
        deadline = time.monotonic() + START_TIMEOUT_S
        while pending:
            for name, service in list(pending.items()):
                if service.process.poll() is not None:
                    raise StackError(f"{service.name} exited:\n{service.log_tail()}")
                if " ready." in service.log_tail(20000):
                    del pending[name]
            if pending and loglevel.lower() not in {"info", "debug"}:
                with app.connection_for_write(self.env["REDIS_URL"]) as connection:
                    answers = app.control.ping(list(pending), timeout=1.0, connection=connection)
                for answer in answers:
                    for name in answer:
                        pending.pop(name, None)
            if time.monotonic() > deadline:
                raise StackError(f"workers not ready in {START_TIMEOUT_S} s: {sorted(pending)}")
            time.sleep(0.2)

    def pids(self, services: list[Service]) -> set[int]:
        return {service.process.pid for service in services if service.process.poll() is None}

    def offsets(self) -> dict[str, int]:
        return log_sizes(self.workers)

    def profile(self, since: dict[str, int]) -> dict[str, dict[str, float]]:
        return task_profile(self.workers, since)

    def check_alive(self) -> list[str]:
        return [
            f"{service.name} exited with {service.process.returncode}"
            for service in self.web + self.workers
            if service.process.poll() is not None
        ]

    def stop(self) -> None:
        for service in self.web + self.workers:
            if service.process.poll() is None:
                service.process.terminate()
        for service in self.web + self.workers:
            service.stop()


TASK_DONE = re.compile(r"Task ([\w.]+)\[[^\]]*\] succeeded in ([0-9.]+)s: (\d+)?")


def log_sizes(services: list[Service]) -> dict[str, int]:
    return {
        service.name: service.log_path.stat().st_size for service in services if service.log_path.exists()
    }


def task_profile(services: list[Service], since: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per task name: how many ran in the workers since `since` (log offsets), their summed run time, and
    (frame tasks) the frames they stored, from Celery's INFO "Task ... succeeded in Ns: result" lines."""
    profile: dict[str, dict[str, float]] = {}
    for service in services:
        with service.log_path.open("rb") as log:
            log.seek(since.get(service.name, 0))
            text = log.read().decode(errors="replace")
        for name, seconds, result in TASK_DONE.findall(text):
            row = profile.setdefault(name.rsplit(".", 1)[-1], {"count": 0, "run_s": 0.0, "result_sum": 0})
            row["count"] += 1
            row["run_s"] += float(seconds)
            row["result_sum"] += int(result or 0)
    for row in profile.values():
        row["run_s"] = round(row["run_s"], 3)
        row["ms_per_task"] = round(1000 * row["run_s"] / row["count"], 2)
    return profile


def service_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def purge_queue(redis_url: str) -> int:
    """Drop frame batches an aborted earlier run left in the broker (they would load this run's workers)."""
    from research_portal.celery import app

    with app.connection_for_write(redis_url) as connection:
        return app.control.purge(connection=connection) or 0


def queue_length(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).llen("celery"))
