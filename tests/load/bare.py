"""The "bare pipeline" reference: the same JPEGs through inference.Pipeline alone, one process per core,
in batches of the size the workers see (fps x flush interval), with `inference.bench.bench_frames`."""

from __future__ import annotations

import multiprocessing
import os


def _bench_one(core: int | None, jpegs: list[bytes], batch: int, seconds: float, barrier, results) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    import inference.bench as bench
    from inference.pipeline import Pipeline

    # bench_frames cuts its input into batches of the module's FRAME_BATCH: use the workers' batch size.
    bench.FRAME_BATCH = batch
    pipeline = Pipeline(intra_op_threads=1)
    pipeline.analyze_jpegs(jpegs[:batch])  # build the detector and sessions before the clock starts
    barrier.wait()
    result = bench.bench_frames(pipeline, jpegs, seconds)
    results.put((core, result["frames_per_s"], result["stage_ms_per_frame"], pipeline.detector_name))


def run_bare(jpegs: list[bytes], processes: int = 2, batch: int = 5, seconds: float = 10.0) -> dict:
    """Frames/s of `processes` pipelines running at once, each pinned to its own core."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_bench_one,
            args=(cores[i % len(cores)] if cores else None, jpegs, batch, seconds, barrier, results),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    rows = [results.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    total = sum(row[1] for row in rows)
    return {
        "processes": processes,
        "batch": batch,
        "seconds": seconds,
        "detector": rows[0][3],
        "frames_per_s": round(total, 1),
        "per_process_frames_per_s": [round(row[1], 1) for row in rows],
        # each process keeps its core busy, so CPU per frame is processes / total rate
        "cpu_ms_per_frame": round(1000 * processes / total, 3),
        "stage_ms_per_frame": {k: round(v, 3) for k, v in rows[0][2].items()},
    }
