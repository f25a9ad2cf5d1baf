"""The production app with one extra route, for the webhook benchmark only.

``gunicorn 'bench.webhook_app:make_app()'`` serves exactly what ``plugin.wsgi:app`` serves (the
same ``create_app()`` from the environment, the same logging) plus ``POST /bench/bare``, which
reads the body and answers 200: issue 8's baseline, "the same server answering 200 from a bare
endpoint that reads the body". Flask, gunicorn, the worker processes and the connection handling
are shared; the difference between the two routes is the receiver's own work.

The bare route is an ordinary Flask view, as the issue defines it; the webhook URIs are answered
in front of Flask (``webhooks.receiver.Shortcut``), which is part of what the benchmark measures.
"""

from __future__ import annotations

from flask import Flask, Response, request

BARE_PATH = "/bench/bare"


def bare() -> Response:
    """Read the whole body, answer 200."""
    request.get_data(cache=False)
    return Response("ok\n", status=200, mimetype="text/plain")


def add_bare(app: Flask) -> Flask:
    app.add_url_rule(BARE_PATH, endpoint="bench_bare", view_func=bare, methods=["POST"])
    return app


def make_app() -> Flask:
    """``plugin.wsgi:app`` (built from the environment on import) with the bare route."""
    from plugin.wsgi import app

    return add_bare(app)
