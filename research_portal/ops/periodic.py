"""Periodic work in embedded mode, where there is no Celery beat: one thread of the web process runs the
jobs of settings.EMBEDDED_PERIODIC_JOBS (entries of CELERY_BEAT_SCHEDULE, which beat runs in production), at
the schedule's intervals, calling the same task functions in that thread. So a finished session is validated
and the rollups reconciled without Redis, a worker or cron, and no page view does that work.

The thread starts with the first request of a process (request_started, connected in apps.py): a
runserver's autoreloader parent serves none and so runs none, a forked child starts its own, management
commands and Celery workers never start one. It stops at interpreter exit once the job it is in has
finished (atexit), so no transaction is cut short. Tests switch it off (settings.EMBEDDED_PERIODIC_LOOP) and
call the jobs' functions themselves, or start a loop of their own with start_embedded_loop().
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from django.utils.module_loading import import_string

from research_portal import deployment

logger = logging.getLogger(__name__)

# How long stopping waits for the job in progress (a validation run takes well under a second).
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    run: Callable[[], object]
    interval_s: float


def embedded_jobs() -> list[PeriodicJob]:
    """The beat schedule's entries named in EMBEDDED_PERIODIC_JOBS, each running its task in this process."""
    jobs = []
    for name in settings.EMBEDDED_PERIODIC_JOBS:
        entry = settings.CELERY_BEAT_SCHEDULE[name]
        jobs.append(PeriodicJob(name, import_string(entry["task"]), float(entry["schedule"])))
    return jobs


class PeriodicLoop:
    """A daemon thread that runs each job at once, then whenever its interval has passed since its last run
    began (as beat does); a job that raises is logged and runs again at its next time."""

    def __init__(self, jobs: Sequence[PeriodicJob]) -> None:
        self.jobs = list(jobs)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="periodic-work", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop after the job in progress; True once the thread has ended."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def _run(self) -> None:
        next_run = {job.name: 0.0 for job in self.jobs}  # time.monotonic(); 0: at once
        while not self._stopping.is_set():
            for job in self.jobs:
                if self._stopping.is_set():
                    return
                if time.monotonic() >= next_run[job.name]:
                    next_run[job.name] = time.monotonic() + job.interval_s
                    self._run_job(job)
            if next_run:
                self._stopping.wait(max(0.0, min(next_run.values()) - time.monotonic()))
            else:
                self._stopping.wait()

    def _run_job(self, job: PeriodicJob) -> None:
        try:
            job.run()
        except Exception:  # the database away, a bug: logged, and the job runs again at its next time
            logger.exception("periodic job %s failed; it runs again in %s s", job.name, job.interval_s)
        finally:
            connections.close_all()  # this thread's connections only: none is left open between runs


_lock = threading.Lock()
_loop: PeriodicLoop | None = None
_loop_pid: int | None = None


def start_embedded_loop(jobs: Sequence[PeriodicJob] | None = None) -> PeriodicLoop:
    """This process's loop (of `jobs`, default embedded_jobs()), started unless it runs already."""
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or not _loop.running:
            _loop = PeriodicLoop(embedded_jobs() if jobs is None else jobs)
            _loop_pid = os.getpid()
            _loop.start()
        return _loop


def stop_embedded_loop(timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop this process's loop, if it runs one, after the job in progress."""
    global _loop
    with _lock:
        loop, _loop = _loop, None
        ours = _loop_pid == os.getpid()
    if loop is not None and ours:
        loop.stop(timeout_s)


def start_with_first_request(**kwargs: object) -> None:
    """request_started receiver: an embedded-mode web process runs its loop from its first request on."""
    if _loop is not None and _loop_pid == os.getpid():  # every later request: nothing to do
        return
    if not settings.EMBEDDED_PERIODIC_LOOP or deployment.current().mode is not deployment.Mode.EMBEDDED:
        return
    start_embedded_loop()


atexit.register(stop_embedded_loop)
