"""`python -m tests.docker_smoke` (`make docker-smoke`): the Docker deployment built and run end to end.

1. The engine: docker.io / docker-compose installed if missing; a dockerd of its own (engine.py).
2. Base images: official where they can be pulled, else stand-ins from Debian packages (images.py).
3. The product image, built once from docker/Dockerfile through docker/compose.host.yaml (`web`'s build;
   worker and beat run the same image).
4. Postgres, Redis, web, 2 workers (`--scale worker=2`) and beat on the host's network at 127.0.0.1 ports
   that leave the machine's own services alone; waits for /readyz and a heartbeat of every worker.
5. `python -m tests.load --url ...` through them, with a study that keeps its frames: passes only when
   every frame sent is stored exactly once, every worker analysed batches, every stored frame's image is in
   the shared /data volume (seen from web and every worker, none inside a container's own layer), and the
   retention job (beat -> a worker) deletes them once they are past the study's retention.
6. Teardown: containers and volumes removed, dockerd stopped, and the machine as it was: no containers,
   no mounts of the engine, the same firewall rules, forwarding sysctls and network interfaces.
Logs and numbers: var/docker-smoke/<time>/ (summary.json); the last run's summary: var/docker-smoke/last.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from inference.resources import REPO_ROOT, YUNET_FILENAME, shared_dir
from tests.docker_smoke.engine import (
    ENGINE_PACKAGES,
    SOCKET,
    Engine,
    HostState,
    SmokeError,
    compose_command,
    ensure_binaries,
    run,
)
from tests.docker_smoke.images import resolve_base_images

PROJECT = "portal-smoke"
LOCK = SOCKET.with_suffix(".lock")
DOCKER_DIR = REPO_ROOT / "docker"
LOG_ROOT = REPO_ROOT / "var" / "docker-smoke"
KEEP_RUNS = 10
PORTAL_IMAGE = "facecode-portal:smoke"
# 127.0.0.1 ports beside the machine's Postgres (5432), Redis (6379) and `make run` (8000).
WEB_PORT, POSTGRES_PORT, REDIS_PORT = 58000, 55432, 56379
POSTGRES_PASSWORD = "portal-smoke"
# Beat sends the retention job this often, so that the run sees it delete the frames it kept (--load-only:
# the production interval, 6 hours).
RETENTION_INTERVAL_S = 3
READY_TIMEOUT_S = 180
RETENTION_TIMEOUT_S = 45
TASK_DONE = re.compile(r"Task ([\w.]+)\[[^\]]*\] succeeded in [0-9.]+s: (\{[^}]*\}|\d+)")


class Phases:
    """Wall time per phase of the run, for the summary and docs/scaling.md."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.monotonic()

    @contextmanager
    def phase(self, name: str):
        began = time.monotonic()
        print(f"[{began - self.started:6.1f} s] {name} ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - began, 1)

    def total(self) -> float:
        return round(time.monotonic() - self.started, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.docker_smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker containers (2)")
    parser.add_argument("--participants", "-n", type=int, default=4, help="simulated participants (4)")
    parser.add_argument("--seconds", "-s", type=float, default=10, help="capture time (10)")
    parser.add_argument("--fps", type=float, default=5, help="frames per second per participant (5)")
    parser.add_argument(
        "--load-only",
        action="store_true",
        help="measure the capture path as deployed (frames not kept, retention at its production interval): "
        "skips the kept-frames and retention checks (docs/scaling.md)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 32:
        parser.error("--workers must be within 1..32")
    return args


@contextmanager
def single_run():
    """One smoke run at a time on this machine (they share the engine's socket, ports and project name)."""
    with LOCK.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another docker smoke run is going on; waiting for it", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stop_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(143)  # unwinds through the teardown like Ctrl-C does


def new_log_dir() -> Path:
    LOG_ROOT.mkdir(parents=True, exist_ok=True)
    old = sorted(path for path in LOG_ROOT.iterdir() if path.is_dir())
    for path in old[: max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(path, ignore_errors=True)
    path = LOG_ROOT / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(exist_ok=True)
    (path / "containers").mkdir(exist_ok=True)
    return path


def listeners_off_loopback() -> set[tuple[str, int]]:
    """TCP sockets listening on an address other than loopback (the host's and host-network containers')."""
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            loopback = address == "0100007F" or address == "00000000000000000000000001000000"
            if state == "0A" and not loopback:
                found.add((address, int(port, 16)))
    return found


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Deployment:
    """The compose project: commands, containers, and what the checks read from them."""

    def __init__(
        self, engine: Engine, compose: list[str], images: dict[str, str], log_dir: Path, retention_s: int
    ) -> None:
        self.engine = engine
        self.log_dir = log_dir
        files = ["-f", str(DOCKER_DIR / "compose.host.yaml")]
        shared = shared_dir()
        if (shared / "models" / YUNET_FILENAME).is_file():
            files += ["-f", str(DOCKER_DIR / "compose.shared.yaml")]
        self.uses_shared = len(files) > 2
        self.command = [*compose, "--project-name", PROJECT, *files]
        # Every variable the compose files read, so that nothing from the caller's environment leaks in.
        self.env = {
            **engine.env,
            **images,
            "PORTAL_IMAGE": PORTAL_IMAGE,
            "SECRET_KEY": secrets.token_urlsafe(40),
            "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
            "PORTAL_PORT": str(WEB_PORT),
            "PORTAL_POSTGRES_PORT": str(POSTGRES_PORT),
            "PORTAL_REDIS_PORT": str(REDIS_PORT),
            "ALLOWED_HOSTS": "localhost,127.0.0.1",
            "CSRF_TRUSTED_ORIGINS": "",
            "SITE_URL": f"http://127.0.0.1:{WEB_PORT}",
            "PORTAL_HTTPS": "0",
            "PORTAL_BEHIND_PROXY": "0",
            "PORTAL_TRUSTED_PROXY_HOPS": "0",
            "RETENTION_INTERVAL_S": str(retention_s),
            "PORTAL_SHARED_HOST_DIR": str(shared),
        }

    @property
    def database_url(self) -> str:
        return f"postgres://portal:{POSTGRES_PASSWORD}@127.0.0.1:{POSTGRES_PORT}/portal"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{REDIS_PORT}/0"

    def compose(self, *args: str, timeout: float = 300, check: bool = True, log: str = "compose.log"):
        return run([*self.command, *args], env=self.env, timeout=timeout, check=check, log=self.log_dir / log)

    def containers(self, service: str | None = None) -> list[str]:
        """Container ids of the project (of one service), running or not."""
        filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        done = self.engine.docker("ps", "-aq", "--no-trunc", *filters, timeout=30)
        return done.stdout.split()

    def name(self, container: str) -> str:
        done = self.engine.docker("inspect", "--format", "{{.Name}}", container, timeout=30)
        return done.stdout.strip("/\n")

    def logs(self, container: str) -> str:
        done = self.engine.docker("logs", "--timestamps", container, timeout=60, check=False)
        return done.stdout + done.stderr

    def exec(self, container: str, shell: str) -> str:
        return self.engine.docker("exec", container, "sh", "-c", shell, timeout=60).stdout

    def writable_layer(self, container: str) -> Path:
        """The container's own layer on the host (overlay2's upper directory): what it wrote outside volumes
        (walked directly: `docker diff` compares whole image trees, seconds per container)."""
        done = self.engine.docker("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", container)
        path = Path(done.stdout.strip())
        if not path.is_dir():
            raise SmokeError(f"no writable layer found for {container[:12]} ({done.stdout.strip()!r})")
        return path

    def volume_path(self, volume: str) -> Path:
        done = self.engine.docker("volume", "inspect", "--format", "{{.Mountpoint}}", f"{PROJECT}_{volume}")
        return Path(done.stdout.strip())

    def save_logs(self) -> None:
        def save(container: str) -> None:
            try:
                (self.log_dir / "containers" / f"{self.name(container)}.log").write_text(self.logs(container))
            except SmokeError as error:
                print(f"  could not save the log of {container[:12]}: {error}", flush=True)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(save, self.containers()))

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180)


def wait_ready(url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except Exception as error:  # not up yet, or 503 while a check fails
            last = str(error)
        time.sleep(0.5)
    raise SmokeError(f"{url} not ready within {timeout_s:.0f} s: {last}")


def wait_worker_heartbeats(redis_url: str, count: int, timeout_s: float) -> list[str]:
    """Worker node names that sent a heartbeat (capture/flow.py); waits until `count` distinct ones did."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    names: list[str] = []
    while time.monotonic() < deadline:
        names = sorted(name.decode() for name in client.hkeys("portal:flow:workers"))
        if len(names) >= count:
            return names
        time.sleep(0.5)
    raise SmokeError(f"{count} workers expected, heartbeats from {names} within {timeout_s:.0f} s")


def run_load(deployment: Deployment, args: argparse.Namespace, log_dir: Path) -> dict:
    report_path = log_dir / "load.json"
    command = [
        sys.executable, "-m", "tests.load",
        "--url", f"http://127.0.0.1:{WEB_PORT}", "--workers", "0",
        "--database-url", deployment.database_url, "--redis-url", deployment.redis_url,
        "--participants", str(args.participants), "--seconds", str(args.seconds), "--fps", str(args.fps),
        "--json", str(report_path),
    ]  # fmt: skip
    if not args.load_only:
        command += ["--store-frames", "--keep-data"]
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    done = run(command, env=env, timeout=args.seconds + 240, check=False, log=log_dir / "load.out")
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise SmokeError(f"the load generator failed ({done.returncode}):\n{output}")
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith(("  n=", "[")))[-2000:])
    return json.loads(report_path.read_text())


def worker_tasks(deployment: Deployment) -> dict[str, dict[str, int]]:
    """Per worker container: frame batches it analysed, the rows they stored, retention runs and the
    stored-frame folders those deleted (from Celery's "Task ... succeeded" lines in its log)."""
    tasks = {}
    for container in deployment.containers("worker"):
        row = {"batches": 0, "frames": 0, "retention_runs": 0, "frame_folders_deleted": 0}
        for name, result in TASK_DONE.findall(deployment.logs(container)):
            if name.endswith(".analyze_frame_batch_task"):
                row["batches"] += 1
                row["frames"] += int(result) if result.isdigit() else 0
            elif name.endswith(".apply_retention_task"):
                row["retention_runs"] += 1
                folders = re.search(r"'frame_folders': (\d+)", result)
                row["frame_folders_deleted"] += int(folders.group(1)) if folders else 0
        tasks[deployment.name(container)] = row
    return tasks


def tasks_accounting_for(deployment: Deployment, load: dict, timeout_s: float = 20) -> dict:
    """worker_tasks() once the workers' logs account for every stored frame, or after `timeout_s`: a batch's
    rows (and acks) are in before its task ends (rollups) and logs its success."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = worker_tasks(deployment)
        if sum(row["frames"] for row in tasks.values()) >= load["result"]["frames"]["stored"]:
            return tasks
        if time.monotonic() > deadline:
            return tasks
        time.sleep(0.5)


def stored_frame_rows(database_url: str) -> set[tuple[int, int]]:
    """(session id, seq) of every FrameResult of the studies that keep their frames."""
    rows = sql(
        database_url,
        "SELECT f.session_id, f.seq FROM capture_frameresult f "
        "JOIN capture_participantsession s ON s.id = f.session_id "
        "JOIN studies_study st ON st.id = s.study_id WHERE st.store_frames",
    )
    return {(int(session), int(seq)) for session, seq in rows}


def sql(database_url: str, statement: str) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(database_url, connect_timeout=10)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def frame_files(frames_dir: Path) -> set[tuple[int, int]]:
    if not frames_dir.is_dir():
        return set()
    return {
        (int(path.parent.name), int(path.stem))
        for path in frames_dir.glob("*/*.jpg")
        if path.parent.name.isdigit() and path.stem.isdigit()
    }


def check_frames_kept(deployment: Deployment, failures: list[str]) -> dict:
    """The kept frames lie in the shared /data volume, one image per stored row, seen alike from web and
    every worker, and in no container's own layer."""
    rows = stored_frame_rows(deployment.database_url)
    frames_dir = deployment.volume_path("portal-data") / "media" / "frames"
    files = frame_files(frames_dir)
    result: dict = {"rows_of_studies_keeping_frames": len(rows), "images_in_volume": len(files)}
    if not rows:
        failures.append("no stored rows of a study that keeps its frames")
    if files != rows:
        failures.append(
            f"frame images in the volume ({len(files)}) are not the stored rows ({len(rows)}): "
            f"{len(rows - files)} missing, {len(files - rows)} without a row"
        )

    def look_inside(container: str) -> tuple[str, int, list[str]]:
        """(name, frame images it sees in /data, frame files in its own writable layer)."""
        count = deployment.exec(container, "find /data/media/frames -name '*.jpg' 2>/dev/null | wc -l")
        layer = deployment.writable_layer(container)
        inside = ["/" + str(path.relative_to(layer)) for path in layer.rglob("*.jpg")]
        return deployment.name(container), int(count.strip() or 0), inside

    with ThreadPoolExecutor(max_workers=8) as pool:
        looks = list(pool.map(look_inside, deployment.containers("web") + deployment.containers("worker")))
    seen = {name: count for name, count, _ in looks}
    for name, _, inside in looks:
        if inside:
            failures.append(f"{name} wrote frames into its own layer: {inside[:5]}")
    result["images_seen_by_container"] = seen
    if any(count != len(files) for count in seen.values()):
        failures.append(f"containers see different frame images in /data: {seen}")
    return result


def check_retention(deployment: Deployment, failures: list[str]) -> dict:
    """Once the kept frames are past their study's retention, beat's retention job (run by a worker) deletes
    them from the shared volume and audits it."""
    frames_dir = deployment.volume_path("portal-data") / "media" / "frames"
    result: dict = {}
    sql(deployment.database_url, "UPDATE studies_study SET frame_retention_days = 0 WHERE store_frames")
    began = time.monotonic()
    while frame_files(frames_dir) and time.monotonic() - began < RETENTION_TIMEOUT_S:
        time.sleep(0.5)
    left = frame_files(frames_dir)
    result["retention_s"] = round(time.monotonic() - began, 1)
    result["images_left_after_retention"] = len(left)
    if left:
        failures.append(f"{len(left)} frame images still in the volume {RETENTION_TIMEOUT_S} s later")
    audits = sql(
        deployment.database_url, "SELECT COUNT(*) FROM privacy_auditlog WHERE action = 'retention_purge'"
    )
    result["retention_audit_rows"] = audits[0][0]
    if not audits[0][0]:
        failures.append("the retention job left no audit row")
    return result


def check_load(load: dict, tasks: dict[str, dict[str, int]], workers: int, failures: list[str]) -> None:
    frames = load["result"]["frames"]
    if not frames["sent"]:
        failures.append("no frames were sent")
    if not frames["sent"] == frames["acked"] == frames["stored"]:
        failures.append(f"sent {frames['sent']} / acked {frames['acked']} / stored {frames['stored']}")
    if frames["duplicates"] or frames["rejected"] or frames["errors"]:
        failures.append(
            f"duplicates {frames['duplicates']}, rejected {frames['rejected']}, errors {frames['errors']}"
        )
    busy = [name for name, row in tasks.items() if row["batches"]]
    if len(tasks) != workers or len(busy) != workers:
        failures.append(f"{workers} workers expected to analyse batches: {tasks}")
    analysed = sum(row["frames"] for row in tasks.values())
    if analysed < frames["stored"]:
        failures.append(f"the workers' logs account for {analysed} of {frames['stored']} stored frames")


def summary_line(load: dict) -> str:
    step = load["result"]
    frames, cpu = step["frames"], step["cpu"]
    comp = cpu["by_component_ms_per_frame"]
    return (
        f"sent/acked/stored {frames['sent']}/{frames['acked']}/{frames['stored']}, duplicates "
        f"{frames['duplicates']}; p95 capture->stored {step['latency_ms']['capture_to_stored']['p95']} ms; "
        f"server CPU {cpu['server_ms_per_stored_frame']} ms/frame (web {comp['web']} / workers "
        f"{comp['workers']} / postgres {comp['postgres']} / redis {comp['redis']})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with single_run():
        return smoke(args)


def smoke(args: argparse.Namespace) -> int:
    phases = Phases()
    log_dir = new_log_dir()
    failures: list[str] = []
    summary: dict = {
        "tool": "python -m tests.docker_smoke",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": vars(args),
    }
    before = HostState.capture()
    engine = Engine(log_dir)
    deployment: Deployment | None = None
    try:
        with phases.phase("engine"):
            summary["installed"] = ensure_binaries(ENGINE_PACKAGES, log_dir / "apt.log")
            engine.start()
            compose = compose_command(engine, log_dir / "apt.log")
            summary["engine"] = {
                "dockerd_pid": engine.pid,
                "version": engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip(),
                "compose": run([*compose, "version", "--short"], env=engine.env, check=False).stdout.strip(),
                "earlier_run_leftovers": engine.cleared,
            }
        with phases.phase("base images"):
            bases = resolve_base_images(engine, log_dir)
            summary["base_images"] = bases
            images = {variable: row["image"] for variable, row in bases.items()}
            retention_s = 6 * 3600 if args.load_only else RETENTION_INTERVAL_S
            deployment = Deployment(engine, compose, images, log_dir, retention_s)
            summary["shared_material_mounted"] = deployment.uses_shared
            # A run killed midway left its containers: they go before anything else.
            if deployment.containers():
                engine.cleared.append("removed the containers of an earlier run")
            deployment.down()
        taken = [port for port in (WEB_PORT, POSTGRES_PORT, REDIS_PORT) if port_taken(port)]
        if taken:
            raise SmokeError(f"127.0.0.1 ports {taken} are in use by something else; the run needs them")
        with phases.phase("product image"):
            build_args = [
                f"--build-arg={name}={os.environ[name]}"
                for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
                if os.environ.get(name)
            ]
            copy_extra_certificates()
            deployment.compose("build", *build_args, "web", timeout=1200, log="build.log")
        open_before = listeners_off_loopback()
        with phases.phase("up and ready"):
            deployment.compose("up", "-d", "--no-build", "--scale", f"worker={args.workers}", timeout=600)
            summary["readyz"] = wait_ready(f"http://127.0.0.1:{WEB_PORT}/readyz", READY_TIMEOUT_S)
            summary["worker_nodes"] = wait_worker_heartbeats(deployment.redis_url, args.workers, 60)
        networks = set(engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split())
        if networks - {"host", "none"}:
            failures.append(f"networks other than the host's: {sorted(networks - {'host', 'none'})}")
        opened = listeners_off_loopback() - open_before
        if opened:
            failures.append(f"containers listen beyond 127.0.0.1: {sorted(opened)}")
        with phases.phase("load"):
            load = run_load(deployment, args, log_dir)
            summary["load"] = {
                "frames": load["result"]["frames"],
                "latency_ms": load["result"]["latency_ms"],
                "rate_per_s": load["result"]["rate_per_s"],
                "cpu": load["result"]["cpu"],
            }
        with phases.phase("checks: frames stored once, by every worker"):
            check_load(load, tasks_accounting_for(deployment, load), args.workers, failures)
        if not args.load_only:
            with phases.phase("checks: kept frames in the shared volume"):
                summary["stored_frames"] = check_frames_kept(deployment, failures)
            with phases.phase("checks: retention deletes them"):
                summary["stored_frames"].update(check_retention(deployment, failures))
        summary["workers"] = worker_tasks(deployment)
        if not args.load_only:
            purged_by = [name for name, row in summary["workers"].items() if row["frame_folders_deleted"]]
            summary["stored_frames"]["deleted_by"] = purged_by
            if not purged_by:
                failures.append("no worker's retention run reports deleting frame folders")
    except SmokeError as error:
        failures.append(str(error))
    except (KeyboardInterrupt, SystemExit):
        failures.append("interrupted")
        raise
    finally:
        with phases.phase("teardown"):
            failures += teardown(engine, deployment, phases)
            after = HostState.capture()
            failures += before.differences(after)
            summary["host_state"] = {"before": before.as_json(), "after": after.as_json()}
        summary.update(
            phases_s=phases.seconds, total_s=phases.total(), failures=failures, passed=not failures,
            logs=str(log_dir.relative_to(REPO_ROOT)),
        )  # fmt: skip
        text = json.dumps(summary, indent=2) + "\n"
        (log_dir / "summary.json").write_text(text)
        (LOG_ROOT / "last.json").write_text(text)
        report(summary)
    return 0 if not failures else 1


def copy_extra_certificates() -> None:
    """The machine's own CAs (e.g. a TLS-inspecting proxy's) into the build context, for pip in the build."""
    target = DOCKER_DIR / "extra-ca"
    target.mkdir(exist_ok=True)
    local = Path("/usr/local/share/ca-certificates")
    wanted = {path.name: path for path in local.rglob("*.crt")} if local.is_dir() else {}
    for stale in target.glob("*.crt"):
        if stale.name not in wanted:
            stale.unlink()
    for name, path in wanted.items():
        if not (target / name).exists() or (target / name).read_bytes() != path.read_bytes():
            shutil.copyfile(path, target / name)


def teardown(engine: Engine, deployment: Deployment | None, phases: Phases) -> list[str]:
    problems = []
    if engine.pid is not None and engine.answers():
        try:
            if deployment is not None:
                with phases.phase("teardown: save logs"):
                    deployment.save_logs()
                with phases.phase("teardown: compose down"):
                    deployment.down()
            left = engine.docker("ps", "-aq", timeout=30).stdout.split()
            if left:
                problems.append(f"containers left after compose down: {left}")
            volumes = engine.docker(
                "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}", timeout=30
            ).stdout.split()
            if volumes:
                problems.append(f"volumes left after compose down: {volumes}")
            engine.docker("image", "prune", "--force", timeout=120, check=False)  # earlier builds' layers
            # When each container was created, started, signalled, healthy and gone (for slow phases).
            events = engine.docker(
                "events", "--since", str(int(engine.started_at)), "--until", str(int(time.time()) + 1),
                "--format", "{{.TimeNano}} {{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
                timeout=30, check=False,
            )  # fmt: skip
            (engine.log_dir / "events.log").write_text(readable_events(events.stdout))
        except SmokeError as error:
            problems.append(f"teardown: {error}")
    with phases.phase("teardown: stop dockerd"):
        problems += engine.stop()
    return problems


def readable_events(lines: str) -> str:
    out = []
    for line in lines.splitlines():
        nanos, _, rest = line.partition(" ")
        if nanos.isdigit():
            stamp = time.strftime("%H:%M:%S", time.localtime(int(nanos) / 1e9))
            out.append(f"{stamp}.{int(nanos) % 10**9 // 10**6:03d} {rest}")
    return "\n".join(out) + "\n"


def report(summary: dict) -> None:
    print("-" * 100)
    for name, row in summary.get("base_images", {}).items():
        print(f"{name:<16} {row['image']} ({row['source']})")
    if "load" in summary:
        print("load:", summary_line({"result": summary["load"]}))
    for name, row in summary.get("workers", {}).items():
        print(f"{name:<28} {row['batches']} batches, {row['frames']} frames, retention runs "
              f"{row['retention_runs']} (frame folders deleted: {row['frame_folders_deleted']})")  # fmt: skip
    if "stored_frames" in summary:
        print("stored frames:", json.dumps(summary["stored_frames"]))
    print("phases (s):", json.dumps(summary["phases_s"]), f"total {summary['total_s']} s")
    print(f"logs: {summary['logs']}/")
    if summary["failures"]:
        print("FAILED:\n  " + "\n  ".join(summary["failures"]))
    else:
        print("docker smoke passed")
