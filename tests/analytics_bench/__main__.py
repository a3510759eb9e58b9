"""Dashboard benchmark against Postgres: an ad with 10 million FrameResults, server time per view.

    python -m tests.analytics_bench [--frames 10000000] [--ads 1] [--runs 10] [--keep]

With --ads N the frames are shared by N ads of the study, each watched by its own participants: the
scorecard's norm then holds N - 1 ads (docs/analytics.md, "Scorecard and norms": run with --ads 50).

Creates a throwaway database (`portal_bench` on the server of --server, default the local trust-auth
Postgres), migrates it, generates the data inside Postgres (data.py), builds the rollups, then times the
ad dashboard (page and data.json under several filter sets), the study overview and a trace export through
Django's full request path in this process (middleware, access check, queries, statistics, figure
JSON, template). Also times one incremental rollup update and, for comparison, the same per-second means
computed straight from raw frames. Writes var/bench/analytics.json and drops the database unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg2
from psycopg2 import sql

SERVER = "postgres://postgres@127.0.0.1:5432"
DATABASE = "portal_bench"


def admin_connection(server: str):
    connection = psycopg2.connect(f"{server}/postgres")
    connection.autocommit = True
    return connection


def recreate_database(server: str, name: str) -> None:
    drop_database(server, name)
    connection = admin_connection(server)  # not `with connection`: that would open a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        connection.close()


def drop_database(server: str, name: str) -> None:
    connection = admin_connection(server)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        connection.close()


def timed(function, runs: int) -> dict:
    function()  # warm-up: first-use caches (t quantiles, templates, plotly.js gzip) are not page-view costs
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "runs": runs,
        "median_ms": round(statistics.median(samples), 1),
        "p90_ms": round(samples[min(len(samples) - 1, int(0.9 * len(samples)))], 1),
        "max_ms": round(samples[-1], 1),
        "min_ms": round(samples[0], 1),
    }


def measure(data, runs: int) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from research_portal.accounts.models import Membership, Role
    from research_portal.analytics import dashboard as dash
    from research_portal.analytics.norms import build_scorecard
    from research_portal.analytics.rollups import do_reconcile_due_studies
    from research_portal.analytics.services import parse_filters
    from research_portal.capture.models import FrameResult, ParticipantSession
    from research_portal.capture.storage import store_results

    user = get_user_model().objects.create_user("bench-analyst", password="unused-bench-password")
    Membership.objects.create(user=user, organization=data.study.organization, role=Role.ANALYST)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    ad = data.ad
    page = reverse("analytics:ad", args=[ad.pk])
    data_url = reverse("analytics:ad-data", args=[ad.pk])
    today = date.today()
    week = {"from": (today - timedelta(days=7)).isoformat(), "to": today.isoformat()}
    scenarios = {
        "ad page (HTML, default filters)": (page, {}),
        "ad data.json, default filters": (data_url, {}),
        "ad data.json, baseline-corrected, quality >= 0.5, validated only": (
            data_url, {"baseline": "1", "quality": "0.5", "completed": "1"}),
        "ad data.json, 2 countries, mobile, 7-day range": (
            data_url, {"country": ["DE", "JP"], "device": "mobile", **week}),
        "ad data.json, small multiples, JP vs BR valence, Holm": (
            data_url, {"layout": "multiples", "compare": ["JP", "BR"], "measure": "valence",
                       "correction": "holm"}),
        "study overview page": (reverse("analytics:study", args=[data.study.pk]), {}),
        "aggregated traces CSV export": (reverse("analytics:ad-export", args=[ad.pk, "traces"]), {}),
    }  # fmt: skip
    if len(data.ads) > 1:  # ad vs ad (analytics/ad_comparison.py): the first two ads, by share of length
        pair = {"a": str(data.ads[0].pk), "b": str(data.ads[1].pk)}
        scenarios["ad vs ad data.json, by share of length"] = (
            reverse("analytics:compare-data"), {**pair, "axis": "share"})  # fmt: skip
        scenarios["ad vs ad page (HTML), by second, baseline-corrected"] = (
            reverse("analytics:compare"), {**pair, "baseline": "1"})  # fmt: skip
    results: dict = {"views": {}}
    for name, (url, query) in scenarios.items():

        def get(url=url, query=query):
            response = client.get(url, query)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            assert response.status_code == 200, (url, response.status_code, body[:300])
            return body

        results["views"][name] = timed(get, runs)
        with CaptureQueriesContext(connection) as queries:
            size = len(get())
        results["views"][name].update(queries=len(queries), response_kb=round(size / 1024, 1))
        print(f"  {name}: {results['views'][name]}", flush=True)

    filters = parse_filters({})
    model = dash.ad_facets(ad).default_model("")
    parts = {
        # Periodic work since dashboards stopped reconciling on read: timed for its own cost, not a page's.
        "periodic reconcile (find re-filed sessions, all studies)": do_reconcile_due_studies,
        "facets (filter choices)": lambda: dash.ad_facets(ad),
        "per-second sums (SecondCell GROUP BY second, country)": lambda: dash.load_traces(ad, filters, model),
        "country summary (ParticipantAdSummary GROUP BY country)": lambda: dash.country_summary(
            ad, filters.with_model(model), model, dash.load_traces(ad, filters, model), {}
        ),
        "whole build_ad_dashboard": lambda: dash.build_ad_dashboard(ad, filters),
        # Every ad of the organisation at once (analytics/norms.py): run with --ads 50 for a norm of 49 ads.
        f"scorecard against the norm ({len(data.ads) - 1} other ads; ParticipantAdSummary GROUP BY ad)": (
            lambda: build_scorecard(ad, model)
        ),
    }
    results["breakdown"] = {name: timed(function, runs) for name, function in parts.items()}
    for name, value in results["breakdown"].items():
        print(f"  {name}: {value}", flush=True)

    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT second, country, SUM(participants), SUM(n_smile), "
            "SUM(s_smile), SUM(q_smile) FROM analytics_secondcell "
            "WHERE ad_id = %s AND level = 0 AND model_version = %s GROUP BY second, country",
            [ad.pk, model],
        )
        results["cell_query_plan"] = [row[0] for row in cursor.fetchall()]

    # One live batch: 5 new frames of one participant through store_results (insert + rollup update).
    sessions = list(ParticipantSession.objects.filter(study=data.study).order_by("pk")[:20])
    template = FrameResult.objects.filter(session=sessions[0], ad=ad, face_found=True).first()

    def store_batch(counter=[0]):  # noqa: B006 - a deliberate call counter
        session = sessions[counter[0] % len(sessions)]
        counter[0] += 1
        rows = []
        for offset in range(5):
            row = FrameResult(
                **{f.attname: getattr(template, f.attname) for f in FrameResult._meta.concrete_fields}
            )
            row.pk, row.session_id = None, session.pk
            row.seq = 100_000 + counter[0] * 10 + offset
            row.media_time_ms = 29_000 + offset * 150
            rows.append(row)
        store_results(rows)

    results["incremental_update_5_frames"] = timed(store_batch, runs)
    print(f"  incremental update (5 frames): {results['incremental_update_5_frames']}", flush=True)

    naive_sql = (
        "SELECT second, count(*), avg(m), stddev_samp(m) FROM ("
        "  SELECT session_id, media_time_ms / 1000 AS second, avg(smile) AS m FROM capture_frameresult"
        "  WHERE ad_id = %s AND face_found GROUP BY session_id, media_time_ms / 1000) p GROUP BY second"
    )

    def naive():
        with connection.cursor() as cursor:
            cursor.execute(naive_sql, [ad.pk])
            cursor.fetchall()

    started = time.perf_counter()
    naive()
    results["raw_frames_smile_trace_only_ms"] = round((time.perf_counter() - started) * 1000, 1)
    print(
        f"  for comparison, one smile trace from raw frames: {results['raw_frames_smile_trace_only_ms']} ms"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=10_000_000, help="FrameResults of the ad(s)")
    parser.add_argument("--ads", type=int, default=1, help="ads sharing the frames (the scorecard's norm)")
    parser.add_argument("--runs", type=int, default=10, help="timed requests per view")
    parser.add_argument("--server", default=SERVER, help="Postgres server URL without database")
    parser.add_argument("--database", default=DATABASE, help="throwaway database to create (and drop)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--output", default="var/bench/analytics.json")
    args = parser.parse_args(argv)
    if "bench" not in args.database:
        parser.error("the benchmark database name must contain 'bench' (it is dropped and recreated)")

    print(f"creating database {args.database} ...", flush=True)
    recreate_database(args.server, args.database)
    os.environ["DATABASE_URL"] = f"{args.server}/{args.database}"
    os.environ.pop("REDIS_URL", None)  # live pushes go to the in-memory layer, not a real Redis
    # No embedded periodic loop in this process: its work is timed on its own ("periodic reconcile"), and it
    # would still be running against the database when the benchmark drops it.
    os.environ["PORTAL_EMBEDDED_PERIODIC_LOOP"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research_portal.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections

    from tests.analytics_bench.data import do_generate_bench_data

    try:
        call_command("migrate", verbosity=0)
        print(f"generating {args.frames} frames ...", flush=True)
        started = time.perf_counter()
        data = do_generate_bench_data(args.frames, ads=args.ads)
        generation_s = time.perf_counter() - started
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM capture_frameresult WHERE ad_id = %s", [data.ad.pk])
            ad_frames = cursor.fetchone()[0]
            cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database())), version()")
            database_size, version = cursor.fetchone()
            cursor.execute("SELECT count(*) FROM analytics_secondcell WHERE ad_id = %s", [data.ad.pk])
            cells = cursor.fetchone()[0]
        print(f"measuring ({ad_frames} frames of the ad, {cells} SecondCell rows) ...", flush=True)
        report = {
            "command": "python -m tests.analytics_bench " + " ".join(argv or sys.argv[1:]),
            "postgres": version,
            "cpu_count": os.cpu_count(),
            "ad_frame_results": ad_frames,
            "baseline_frame_results": data.baseline_frames,
            "sessions": data.sessions,
            "second_cells": cells,
            "database_size": database_size,
            "generation_s": {
                **{k: round(v, 1) for k, v in data.timings_s.items()},
                "total": round(generation_s, 1),
            },
            **measure(data, args.runs),
        }
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
        slowest = max(v["max_ms"] for k, v in report["views"].items() if k.startswith("ad "))
        print(f"\nslowest ad dashboard request: {slowest} ms (budget 1000 ms); report in {output}")
        return 0 if slowest < 1000 else 1
    finally:
        connections.close_all()
        if not args.keep:
            drop_database(args.server, args.database)
            print(f"dropped database {args.database}")


if __name__ == "__main__":
    sys.exit(main())
