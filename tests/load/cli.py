"""`python -m tests.load`: N simulated participants stream real webcam JPEGs over WebSockets into the
production path (ASGI server + Celery workers + Postgres + Redis) and the tool reports what was stored, how
fast, how late and at what CPU cost. See docs/scaling.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from inference.resources import REPO_ROOT

# Hard bounds: the tool must stop by itself whatever it is asked.
MAX_PARTICIPANTS = 1000
MAX_SECONDS = 600
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/load"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__)
    parser.add_argument("--participants", "-n", type=int, default=20, help="simulated participants (20)")
    parser.add_argument("--seconds", "-s", type=float, default=30, help="capture time per step (30)")
    parser.add_argument("--fps", type=float, default=5, help="frames per second per participant (5)")
    parser.add_argument(
        "--workers", type=int, default=None, help="Celery worker processes to start (cores; 0 with --url)"
    )
    parser.add_argument("--web-processes", type=int, default=1, help="ASGI server processes to start (1)")
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="target an already running server (repeatable; participants round-robin); needs the server's "
        "own --database-url",
    )
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument(
        "--pool", choices=["solo", "prefork"], default="solo", help="Celery pool of each worker (solo)"
    )
    parser.add_argument("--worker-loglevel", default="info", help="as in production (info)")
    parser.add_argument(
        "--pin-workers",
        action="store_true",
        help="pin worker i to core i (taskset), as the bare pipeline pins its processes",
    )
    parser.add_argument("--ramp", action="store_true", help="find the largest N held at --fps")
    parser.add_argument("--ramp-start", type=int, default=8, help="first N of the ramp (8)")
    parser.add_argument("--ramp-max", type=int, default=256, help="largest N the ramp tries (256)")
    parser.add_argument("--ramp-steps", type=int, default=7, help="at most this many steps (7)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds left out of the steady window")
    parser.add_argument("--resend-after", type=float, default=5.0, help="resend frames unacked this long (5)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="wait for acks at the end (30)")
    parser.add_argument("--store-timeout", type=float, default=60.0, help="wait for rows at the end (60)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LOAD_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"Postgres of the run ($LOAD_DATABASE_URL, default {DEFAULT_DATABASE_URL}); created if missing",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LOAD_REDIS_URL", DEFAULT_REDIS_URL),
        help=f"Redis of the run ($LOAD_REDIS_URL, default {DEFAULT_REDIS_URL})",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the run's study and FrameResults")
    parser.add_argument(
        "--store-frames",
        action="store_true",
        help="the run's study keeps its frames (written by the workers; needs --keep-data)",
    )
    parser.add_argument("--compare-bare", action="store_true", help="also measure the bare pipeline")
    parser.add_argument("--bare-processes", type=int, default=2, help="bare pipeline processes (2)")
    parser.add_argument(
        "--bare-batch", type=int, default=None, help="frames per batch (fps x flush interval)"
    )
    parser.add_argument("--bare-seconds", type=float, default=10.0)
    parser.add_argument("--json", default="var/load/last.json", help="write the numbers here")
    args = parser.parse_args(argv)
    if not 1 <= args.participants <= MAX_PARTICIPANTS or not 1 <= args.ramp_max <= MAX_PARTICIPANTS:
        parser.error(f"participants must be within 1..{MAX_PARTICIPANTS}")
    if not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be within 1..{MAX_SECONDS}")
    if not 0 < args.fps <= 30:
        parser.error("--fps must be within (0, 30]")
    if args.store_frames and not args.keep_data:
        # The frames lie where the workers keep media (perhaps in a container): only the portal's own
        # deletion reaches them, so the tool does not delete such a study behind its back.
        parser.error("--store-frames needs --keep-data")
    if args.workers is None:
        args.workers = 0 if args.url else (os.cpu_count() or 1)
    if args.warmup is None:
        args.warmup = min(5.0, max(2.0, 0.2 * args.seconds))
    args.warmup = min(args.warmup, 0.5 * args.seconds)
    args.ramp_steps = max(1, min(args.ramp_steps, 12))
    return args


def run(args: argparse.Namespace) -> dict:
    from tests.load import db
    from tests.load.frames import load_frames
    from tests.load.runner import StepConfig, next_ramp_size, run_step
    from tests.load.stack import Stack, purge_queue, service_env

    started = time.monotonic()

    def progress(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}", flush=True)

    frames = load_frames()
    database_name = db.ensure_database(args.database_url)
    db.setup_django(args.database_url, args.redis_url)
    db.migrate()
    progress(f"database {database_name} migrated")
    bare_runs: list[dict] = []
    if args.compare_bare:
        # The bare pipeline runs before and after the load and the mean is the reference: on a shared VM the
        # same code's speed drifts by ~10% within minutes, and one side-run would move every ratio with it.
        from tests.load.bare import run_bare

        first_n = args.ramp_start if args.ramp else args.participants
        batch = args.bare_batch or expected_batch(first_n * args.fps)
        bare_runs.append(run_bare(frames, args.bare_processes, batch, args.bare_seconds))
        progress(f"bare pipeline before the load: {bare_runs[0]['frames_per_s']} frames/s")
    log_dir = REPO_ROOT / "var" / "load" / "logs" / time.strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(service_env(args.database_url, args.redis_url), log_dir)
    steps: list[dict] = []
    try:
        if args.url:
            urls = list(args.url)
        else:
            purge_queue(args.redis_url)
            stack.start_web(args.server, args.web_processes)
            urls = stack.urls
        if args.workers:
            stack.start_workers(args.workers, args.pool, args.worker_loglevel, pin=args.pin_workers)
        progress(f"servers {urls} and {args.workers} workers ready (logs in {log_dir})")

        def step(participants: int, label: str) -> dict:
            config = StepConfig(
                participants=participants,
                seconds=args.seconds,
                fps=args.fps,
                warmup_s=args.warmup,
                resend_after_s=args.resend_after,
                drain_timeout_s=args.drain_timeout,
                store_timeout_s=args.store_timeout,
                keep_data=args.keep_data,
                store_frames=args.store_frames,
            )
            result = run_step(
                config,
                urls,
                frames,
                stack.pids(stack.web),
                stack.pids(stack.workers),
                database_name,
                label,
                worker_logs=stack if stack.workers else None,
                database_url=args.database_url,
                redis_url=args.redis_url,
            )
            dead = stack.check_alive()
            if dead:
                result["failures"] = result["failures"] + dead
                result["held"] = False
                result["not_held_because"].append("a server process died: " + "; ".join(dead))
            print_step(result)
            return result

        if args.ramp:
            held: dict[int, bool] = {}
            size = next_ramp_size(held, args.ramp_start, args.ramp_max)
            while size is not None and len(steps) < args.ramp_steps:
                result = step(size, f"ramp {len(steps) + 1} n={size}")
                steps.append(result)
                held[size] = result["held"]
                size = next_ramp_size(held, args.ramp_start, args.ramp_max)
        else:
            steps.append(step(args.participants, f"n={args.participants}"))
    finally:
        stack.stop()
    progress("servers stopped")

    from django.conf import settings

    report: dict = {
        "tool": "python -m tests.load",
        "command": "python -m tests.load " + " ".join(sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "setup": {
            "server": "external (--url)" if args.url else args.server,
            "web_processes": len(urls) if args.url else args.web_processes,
            "workers": args.workers,
            "worker_pool": f"{args.pool} x concurrency 1"
            + (", pinned one per core" if args.pin_workers else ""),
            "fps": args.fps,
            "cores": os.cpu_count(),
            "database": database_name,
            "redis": args.redis_url,
            "frames": f"{len(frames)} JPEGs 640x480, {sum(map(len, frames)) / len(frames) / 1024:.1f} KiB",
            "flush_interval_s": settings.CAPTURE_FLUSH_INTERVAL_S,
            "flush_max_frames": settings.CAPTURE_FLUSH_MAX_FRAMES,
            "logs": str(log_dir.relative_to(REPO_ROOT)),
        },
        "cpu_note": cpu_note(args.workers, steps),
        "steps": steps,
        "result": steps[-1] if not args.ramp else None,
    }
    if args.ramp:
        held_sizes = [s["participants"] for s in steps if s["held"]]
        best = max((s for s in steps if s["held"]), key=lambda s: s["participants"], default=None)
        report["ramp"] = {
            "largest_n_held": max(held_sizes, default=0),
            "participants_per_core": round(max(held_sizes, default=0) / (os.cpu_count() or 1), 2),
            "tried": [(s["participants"], s["held"]) for s in steps],
            "criteria": "p95 capture->stored < 1 s, stored rate >= 95% of N x fps, every frame stored, "
            "throttled at most 5% of the time, no participant failed",
        }
        report["result"] = best
    if args.compare_bare:
        reference = report["result"] or steps[-1]
        # batch like the workers did: the mean frames per analysis task measured in the step
        batch = args.bare_batch or max(1, round(reference.get("frames_per_batch") or 5))
        bare_runs.append(run_bare(frames, args.bare_processes, batch, args.bare_seconds))
        report["bare"] = compare_with_bare(bare_runs, reference)
    report["wall_s"] = round(time.monotonic() - started, 1)
    return report


def cpu_note(started_workers: int, steps: list[dict]) -> str:
    found = min((step["cpu"].get("worker_processes_tracked", 0) for step in steps), default=0)
    if started_workers or found:
        origin = "" if started_workers else f" (workers found by command line: {found} processes)"
        return "per process from /proc: web + workers + postgres (run's database) + redis" + origin
    return (
        "no Celery worker of the run's Redis was found on this host: their CPU is missing from server_s; "
        "use machine_minus_generator_s"
    )


def expected_batch(frames_per_s: float) -> int:
    """Frames per analysis batch at this offered rate: what a flush interval collects, up to a full batch."""
    from django.conf import settings

    collected = math.ceil(frames_per_s * settings.CAPTURE_FLUSH_INTERVAL_S)
    return max(1, min(settings.CAPTURE_FLUSH_MAX_FRAMES, collected))


def compare_with_bare(bare_runs: list[dict], reference: dict) -> dict:
    """The bare pipeline (mean of its runs before and after the load) against the reference step."""
    frames_per_s = sum(run["frames_per_s"] for run in bare_runs) / len(bare_runs)
    processes = bare_runs[-1]["processes"]
    bare = {
        **bare_runs[-1],
        "runs": [
            {key: run[key] for key in ("batch", "frames_per_s", "cpu_ms_per_frame")} for run in bare_runs
        ],
        "batch": "/".join(str(run["batch"]) for run in bare_runs),
        "frames_per_s": round(frames_per_s, 1),
        "cpu_ms_per_frame": round(1000 * processes / frames_per_s, 3),
    }
    e2e_rate = reference["rate_per_s"]["stored"]
    e2e_cpu = reference["cpu"]["server_ms_per_stored_frame"]
    bare["end_to_end_stored_per_s"] = e2e_rate
    bare["ratio_rate"] = round(e2e_rate / bare["frames_per_s"], 3)
    bare["ratio_cpu"] = round(bare["cpu_ms_per_frame"] / e2e_cpu, 3) if e2e_cpu else None
    return bare


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def print_step(step: dict) -> None:
    frames, latency = step["frames"], step["latency_ms"]
    stored, ack = latency["capture_to_stored"], latency["capture_to_ack"]
    print(
        f"  n={step['participants']:<4} sent={frames['sent']:<6} acked={frames['acked']:<6} "
        f"stored={frames['stored']:<6} stored/s={fmt(step['rate_per_s']['stored'])} "
        f"p95 stored={fmt(stored['p95'])} ms p95 ack={fmt(ack['p95'])} ms "
        f"cpu/frame={fmt(step['cpu']['server_ms_per_stored_frame'])} ms "
        f"{'held' if step['held'] else 'NOT held: ' + '; '.join(step['not_held_because'])}",
        flush=True,
    )


def print_table(report: dict) -> None:
    setup = report["setup"]
    print(
        f"\nLoad test: {setup['server']} x{setup['web_processes']}, {setup['workers']} workers "
        f"({setup['worker_pool']}), {setup['cores']} cores, {setup['frames']}"
    )
    if "ramp" in report:
        ramp = report["ramp"]
        print(
            f"Ramp: largest N held at {setup['fps']:g} fps = {ramp['largest_n_held']} "
            f"({ramp['participants_per_core']} per core); tried {ramp['tried']}"
        )
    step = report["result"]
    if step is None:
        print("No step held.")
        step = report["steps"][-1]
    frames, latency, cpu = step["frames"], step["latency_ms"], step["cpu"]
    comp = cpu["by_component_ms_per_frame"]
    rows = [
        ("participants", step["participants"]),
        ("duration s (steady window s)", f"{step['duration_s']:g} ({step['steady_window_s']:g})"),
        ("fps per participant", step["fps"]),
        ("frames sent / acked / stored", f"{frames['sent']} / {frames['acked']} / {frames['stored']}"),
        ("duplicates (session, seq)", frames["duplicates"]),
        (
            "resent / refused (seq null) / rejected",
            f"{frames['resent']} / {frames['refused_seq_null']} / {frames['rejected']}",
        ),
        ("errors", json.dumps(frames["errors"]) if frames["errors"] else "none"),
        (
            "target / sent / stored frames/s",
            f"{step['rate_per_s']['target']:g} / {step['rate_per_s']['sent']} / "
            f"{step['rate_per_s']['stored']}",
        ),
        (
            "capture->stored ms p50/p95/p99",
            "/".join(fmt(latency["capture_to_stored"][k]) for k in ("p50", "p95", "p99")),
        ),
        (
            "capture->ack ms p50/p95/p99",
            "/".join(fmt(latency["capture_to_ack"][k]) for k in ("p50", "p95", "p99")),
        ),
        ("server CPU ms per stored frame", fmt(cpu["server_ms_per_stored_frame"])),
        (
            "  web / workers / postgres / redis",
            " / ".join(fmt(comp[k]) for k in ("web", "workers", "postgres", "redis")),
        ),
        (
            "  of which the model pipeline (in workers)",
            f"{fmt(cpu.get('analysis_ms_per_stored_frame'))} ms = "
            + (f"{cpu['analysis_share_of_server']:.1%}" if cpu.get("analysis_share_of_server") else "-")
            + " of server CPU",
        ),
        ("server CPU cores busy", fmt(cpu["server_cores"])),
        ("machine busy minus generator, s", fmt(cpu["machine_minus_generator_s"])),
        ("other busy CPU s (should be ~0)", fmt(cpu["other_s"])),
        ("generator CPU s (cores)", f"{fmt(cpu['generator_s'])} ({fmt(cpu['generator_cores'])})"),
        (
            "time throttled s / min fps",
            f"{step['throttle']['time_throttled_s']} / {step['throttle']['min_fps']:g}",
        ),
        ("faces found in stored frames", f"{frames['face_found_ratio']:.1%}"),
        (
            "held (p95 < 1 s at full rate)",
            "yes" if step["held"] else "no: " + "; ".join(step["not_held_because"]),
        ),
    ]
    if step.get("worker_tasks"):
        rows.append(("frames per analysis batch", step.get("frames_per_batch", "-")))
        for name, task in sorted(step["worker_tasks"].items(), key=lambda item: -item[1]["run_s"]):
            rows.append(
                (f"  worker task {name}", f"{task['count']} x {task['ms_per_task']} ms = {task['run_s']} s")
            )
    if "bare" in report:
        bare = report["bare"]
        rows += [
            (
                f"bare pipeline frames/s ({bare['processes']} proc, batch {bare['batch']})",
                f"{bare['frames_per_s']} (before / after the load: "
                + " / ".join(str(run["frames_per_s"]) for run in bare.get("runs", [bare]))
                + ")",
            ),
            ("bare CPU ms per frame", fmt(bare["cpu_ms_per_frame"])),
            ("end-to-end / bare (stored rate)", f"{bare['ratio_rate']:.1%}"),
            ("end-to-end / bare (CPU per frame)", f"{bare['ratio_cpu']:.1%}" if bare["ratio_cpu"] else "-"),
        ]
    width = max(len(name) for name, _ in rows)
    print("-" * (width + 40))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 40))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json:
        path = Path(args.json)
        path = path if path.is_absolute() else REPO_ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"numbers written to {path}")
    return 0
