"""The ``kizuna`` command: web, worker, devstore, run, clock, tick, rebuild."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime

import isodate

from crm.errors import ConfigError

from .logs import configure
from .settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kizuna", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    web = sub.add_parser("web", help="serve the app with gunicorn")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", 2)))
    web.add_argument("--threads", type=int, default=4)

    wrk = sub.add_parser("worker", help="run an RQ worker on Kizuna's queues")
    wrk.add_argument("--burst", action="store_true", help="process what is queued, then exit")
    wrk.add_argument(
        "queues", nargs="*", help="queues to listen on, in priority order (default: all)"
    )

    dev = sub.add_parser("devstore", help="run the local Shopify stand-in")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8081)
    dev.add_argument("action", nargs="?", choices=["serve", "seed"], default="serve")

    run = sub.add_parser(
        "run", help="devstore, web app, worker and scheduler together (development)"
    )
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--devstore-port", type=int, default=8081)

    clock = sub.add_parser("clock", help="move the development clock (KIZUNA_DEV_CLOCK=1)")
    clock.add_argument("action", choices=["set", "advance", "show"])
    clock.add_argument("value", nargs="?", help="an ISO time (set) or ISO 8601 duration (advance)")

    sub.add_parser("tick", help="queue the sequence steps that are due, once, and exit")
    sch = sub.add_parser("scheduler", help="queue due sequence steps every --interval seconds")
    sch.add_argument("--interval", type=float, default=60.0)
    rec = sub.add_parser("reconcile", help="read what changed in Shopify and merge it now")
    rec.add_argument("--shop", help="one shop (default: queue a reconcile for every shop)")
    reb = sub.add_parser("rebuild", help="rebuild a shop's profile cache from Shopify")
    reb.add_argument("--shop", required=True)

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"kizuna: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(production=settings.production)
    handler = {
        "web": _web,
        "worker": _worker,
        "devstore": _devstore,
        "run": _run,
        "clock": _clock,
        "tick": _tick,
        "scheduler": _scheduler,
        "reconcile": _reconcile,
        "rebuild": _rebuild,
    }[args.command]
    try:
        return handler(settings, args)
    except ConfigError as exc:
        print(f"kizuna: configuration error: {exc}", file=sys.stderr)
        return 2


#: How long gunicorn keeps an idle client connection open.
KEEP_ALIVE_SECONDS = 75


def gunicorn_command(
    bind: str, workers: int, threads: int, app: str = "plugin.wsgi:app"
) -> list[str]:
    """The gunicorn command line ``kizuna web`` runs (the webhook benchmark runs it too)."""
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--workers", str(workers),
        "--threads", str(threads),
        # Longer than a proxy's or a client's idle timeout (nginx 60 s, most load balancers 60 s):
        # with gunicorn's 2 s, a request sent on a reused connection just as gunicorn closed it
        # was reset before it reached the app (one in 65,000 in the soak).
        "--keep-alive", str(KEEP_ALIVE_SECONDS),
        # The path only (%(U)s), never the query: the admin's id_token travels there.
        "--access-logfile", "-",
        "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
        app,
    ]  # fmt: skip


def _web(settings: Settings, args: argparse.Namespace) -> int:
    from .connections import check_durable, connect

    if settings.production:
        check_durable(connect(settings.redis_url))
    cmd = gunicorn_command(f"{args.host}:{args.port}", args.workers, args.threads)
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def preload_job_modules() -> None:
    """Import, once in the worker's parent process, what jobs import lazily.

    RQ forks a work-horse per job; a module first imported inside a job is imported again by
    every horse (``worker.ingest.thresholds_for`` pulls in Flask through
    ``plugin.api_settings``: about 0.5 s per step job, measured by the fault tests).
    """
    import plugin.admin_client  # noqa: F401
    import plugin.api_settings  # noqa: F401
    import plugin.tokens  # noqa: F401
    import worker.batch_ingest  # noqa: F401
    import worker.drain  # noqa: F401
    import worker.ingest  # noqa: F401
    import worker.steps  # noqa: F401


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    """A forking RQ worker that takes turns between its queues (:class:`worker.queues.Turns`:
    priority order, but none is passed over more than a few jobs in a row)."""
    from worker.queues import ALL_QUEUES, make_worker

    from .connections import check_durable, connect

    preload_job_modules()
    conn = connect(settings.redis_url)
    if settings.production:
        check_durable(conn)
    make_worker(conn, args.queues or ALL_QUEUES).work(burst=args.burst, with_scheduler=True)
    return 0


def _devstore(settings: Settings, args: argparse.Namespace) -> int:
    from devstore.server import main as devstore_main

    return devstore_main(settings, args)


def _clock(settings: Settings, args: argparse.Namespace) -> int:
    from .clock import DevClock
    from .connections import connect

    if not settings.dev_clock:
        raise ConfigError("KIZUNA_DEV_CLOCK: set KIZUNA_DEV_CLOCK=1 to move the clock")
    clock = DevClock(connect(settings.redis_url))
    if args.action == "set":
        clock.set(datetime.fromisoformat(_need(args.value, "an ISO time")))
    elif args.action == "advance":
        clock.advance(isodate.parse_duration(_need(args.value, "an ISO 8601 duration")))
    print(clock.now().isoformat())
    return 0


def _tick(settings: Settings, args: argparse.Namespace) -> int:
    from worker.scheduler import tick

    from .clock import DevClock, SystemClock
    from .connections import connect

    conn = connect(settings.redis_url)
    clock = DevClock(conn) if settings.dev_clock else SystemClock()
    print(tick(conn, clock.now()))
    return 0


def _scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from worker.scheduler import run_forever

    from .clock import DevClock, SystemClock
    from .connections import connect

    conn = connect(settings.redis_url)
    clock = DevClock(conn) if settings.dev_clock else SystemClock()
    run_forever(conn, clock.now, interval=args.interval)
    return 0


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """With --shop, reconcile that shop now (in this process); else queue every shop."""
    from worker.app_events import job_context
    from worker.reconcile import reconcile_shop, schedule_all

    from .shops import normalize_shop

    ctx = job_context()
    if args.shop:
        print(reconcile_shop(ctx, normalize_shop(args.shop)))
    else:
        print(schedule_all(ctx.conn, ctx.clock.now()))
    return 0


def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from worker.app_events import job_context
    from worker.reconcile import rebuild

    from .shops import normalize_shop

    print(rebuild(job_context(), normalize_shop(args.shop)))
    return 0


def _need(value: str | None, what: str) -> str:
    if not value:
        raise ConfigError(f"clock: give {what}")
    return value


def _run(settings: Settings, args: argparse.Namespace) -> int:
    """Start everything for development on one (embedded, unless REDIS_URL) Redis."""
    from .connections import embedded_url

    env = dict(os.environ)
    env.setdefault("KIZUNA_DEV_CLOCK", "1")
    env.setdefault("SHOPIFY_APP_URL", f"http://127.0.0.1:{args.port}")
    env.setdefault("KIZUNA_SHOPIFY_ORIGIN", f"http://127.0.0.1:{args.devstore_port}/store/{{shop}}")
    if not settings.redis_url:
        env["REDIS_URL"] = embedded_url()
    kizuna = [sys.executable, "-m", "plugin.cli"]
    procs = [
        subprocess.Popen([*kizuna, "devstore", "--port", str(args.devstore_port)], env=env),
        subprocess.Popen([*kizuna, "web", "--port", str(args.port), "--workers", "1"], env=env),
        subprocess.Popen([*kizuna, "worker"], env=env),
        subprocess.Popen([*kizuna, "scheduler", "--interval", "5"], env=env),
    ]
    try:
        from devstore.demo import first_visit
        from devstore.server import wait_and_seed

        url = wait_and_seed(env, args.devstore_port, timeout=30)
        shop = url.split("/store/", 1)[1].split("/", 1)[0]
        made = first_visit(env, args.devstore_port, shop)
        print(f"\n  Kizuna is running. Open the admin: {url}", flush=True)
        if made:
            print(f"  {made} demo sequences are on: move the clock in the admin to watch them.")
        print(flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
