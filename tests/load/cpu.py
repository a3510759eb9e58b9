"""CPU accounting from /proc, per server component, for "CPU seconds per stored frame".

Method (per process, not machine-wide): every `interval` seconds the sampler reads utime+stime of each
process it tracks from /proc/<pid>/stat and adds the increase since that pid's previous reading to the
pid's group. A process first seen after the window started counts from zero (it did all its work inside the
window); one that exits loses at most one interval of CPU. Groups:
- web:      the ASGI server processes (the ones the tool started, or those listening on the --url ports)
            and their children;
- workers:  the Celery worker processes and their children (prefork pool processes): the ones the tool
            started, or (--url) every `celery -A research_portal worker` on this host whose REDIS_URL is
            the run's, e.g. in containers (their processes are the host's too);
- postgres: backends connected to the run's database, plus Postgres' own background processes
            (checkpointer, WAL writer, autovacuum ...), i.e. not other databases' backends;
- redis:    redis-server (the whole server: other users of the same Redis would be counted too).
Postgres and Redis are the servers listening on the ports of the run's URLs (not other instances).
The machine-wide figure from /proc/stat (busy time of all CPUs minus this generator's own CPU) is kept as a
cross-check; it also contains anything else running on the machine.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
# Postgres processes that serve no particular database.
POSTGRES_AUX = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "io worker",
    "walsummarizer",
)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    cpu_s: float  # utime + stime of the process itself (all its threads)


def read_proc(pid: int) -> ProcInfo | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces; the fields after the last ")" are fixed.
    left, right = raw.find("("), raw.rfind(")")
    fields = raw[right + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return ProcInfo(pid, int(fields[1]), raw[left + 1 : right], (utime + stime) / CLOCK_TICKS)


def all_processes() -> list[ProcInfo]:
    infos = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = read_proc(int(entry.name))
            if info is not None:
                infos.append(info)
    return infos


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def postgres_database(title: str) -> str | None:
    """The database a Postgres child process serves, from its process title; None for background processes.

    Titles: "postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE",
    "postgres: [CLUSTER: ]autovacuum worker DB",
    "postgres: [CLUSTER: ]checkpointer"."""
    rest = title.split("postgres: ", 1)[-1].strip()
    first = rest.split(" ", 1)[0]
    if first.endswith(":"):  # cluster_name prefix (Debian: "15/main:")
        rest = rest[len(first) :].strip()
    if any(rest.startswith(job) for job in POSTGRES_AUX):
        return None
    if rest.startswith("autovacuum worker"):
        words = rest.split()
        return words[2] if len(words) > 2 else None
    words = rest.split()
    return words[1] if len(words) > 1 else None


def descendants(roots: Iterable[int], processes: list[ProcInfo]) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for info in processes:
        children[info.ppid].append(info.pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


def pids_listening_on(port: int) -> set[int]:
    """Processes holding a listening TCP socket on `port` (for --url targets the tool did not start)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    if not inodes:
        return pids
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    pids.add(int(entry.name))
                    break
        except OSError:
            continue
    return pids


def is_celery_worker(argv: list[str]) -> bool:
    """`celery -A research_portal worker ...` (also `python -m celery`, `--app=...`, a venv's path)."""
    names = [Path(arg).name for arg in argv]
    if "celery" not in names or "worker" not in argv:
        return False
    for index, arg in enumerate(argv):
        if arg in {"-A", "--app"} and index + 1 < len(argv):
            app = argv[index + 1]
        elif arg.startswith(("--app=", "-A=")):
            app = arg.split("=", 1)[1]
        elif arg.startswith("-A") and len(arg) > 2:
            app = arg[2:]
        else:
            continue
        return app.split(".", 1)[0].split(":", 1)[0] == "research_portal"
    return False


def redis_endpoint(url: str) -> tuple[str, int, int] | None:
    """(address, port, db) of a redis:// URL, the host name resolved, so that equal servers compare equal."""
    try:
        parsed = urlparse(url)
        address = socket.gethostbyname(parsed.hostname or "localhost")
        return address, parsed.port or 6379, int(parsed.path.strip("/") or 0)
    except (OSError, ValueError):
        return None


def process_environment(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def celery_worker_pids(redis_url: str) -> set[int]:
    """Celery workers of the portal on this host that use the run's Redis, whoever started them: workers in
    containers show on the host with their command line (and environment), as every process does. Only
    processes whose environment can be read (root, or the same user) are found."""
    wanted = redis_endpoint(redis_url)
    found = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if not is_celery_worker(cmdline(pid).split()):
            continue
        broker = process_environment(pid).get("REDIS_URL")
        if broker and wanted is not None and redis_endpoint(broker) == wanted:
            found.add(pid)
    return found


def machine_busy_s() -> float:
    """Busy CPU seconds of all CPUs since boot (/proc/stat: everything but idle and iowait)."""
    values = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuSampler:
    """Accumulates per-group CPU seconds between start() and stop(); call sample() about once a second."""

    web_roots: set[int]
    worker_roots: set[int]
    database_name: str
    postgres_roots: set[int]  # the postmaster serving the run's database
    redis_roots: set[int]  # the redis-server of the run's Redis URL
    groups: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    last: dict[int, float] = field(default_factory=dict)
    started_at: float = 0.0
    stopped_at: float = 0.0
    machine_start: float = 0.0
    machine_stop: float = 0.0
    own_start: float = 0.0
    own_stop: float = 0.0
    running: bool = False

    def _classify(self, processes: list[ProcInfo]) -> dict[int, str]:
        groups: dict[int, str] = {}
        for pid in descendants(self.web_roots, processes):
            groups[pid] = "web"
        for pid in descendants(self.worker_roots, processes):
            groups[pid] = "workers"
        # Only the Postgres and Redis servers the run uses (a machine may run others, e.g. for tests).
        for info in processes:
            if info.pid in self.postgres_roots:
                groups[info.pid] = "postgres"
            elif info.ppid in self.postgres_roots and info.comm == "postgres":
                if postgres_database(cmdline(info.pid)) in (None, self.database_name):
                    groups[info.pid] = "postgres"
            elif info.pid in self.redis_roots:
                groups[info.pid] = "redis"
        return groups

    def sample(self) -> None:
        processes = all_processes()
        by_pid = {info.pid: info for info in processes}
        for pid, group in self._classify(processes).items():
            cpu = by_pid[pid].cpu_s
            if self.running:
                # a pid seen for the first time while running did all of its work inside the window
                self.groups[group] += max(0.0, cpu - self.last.get(pid, 0.0))
            self.last[pid] = cpu

    def start(self) -> None:
        self.sample()  # baseline for every process already alive
        self.running = True
        self.started_at = time.monotonic()
        self.machine_start = machine_busy_s()
        self.own_start = own_cpu_s()

    def stop(self) -> None:
        self.sample()
        self.running = False
        self.stopped_at = time.monotonic()
        self.machine_stop = machine_busy_s()
        self.own_stop = own_cpu_s()

    def result(self) -> dict[str, float]:
        groups = {
            name: round(self.groups.get(name, 0.0), 3) for name in ("web", "workers", "postgres", "redis")
        }
        generator = self.own_stop - self.own_start
        machine = self.machine_stop - self.machine_start
        return {
            "window_s": round(self.stopped_at - self.started_at, 3),
            "server_by_component_s": groups,
            "server_s": round(sum(groups.values()), 3),
            "generator_s": round(generator, 3),
            "machine_busy_s": round(machine, 3),
            "machine_minus_generator_s": round(machine - generator, 3),
            # busy time neither the generator nor the tracked server processes account for: other work on
            # the machine (a test suite, a build) that makes this run's numbers less trustworthy
            "other_s": round(machine - generator - sum(groups.values()), 3),
        }
