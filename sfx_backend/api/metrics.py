"""GET /metrics: Prometheus text for the API (see sfx_backend/metrics.py for what it holds).

Protection: the figures name upstream keys and show traffic, queue and pool state, so they are not
for the public. With `METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <METRICS_TOKEN>`
(Prometheus: `authorization: {credentials: ...}`). Without it the route is open in development and
test, and refused (403) in production. Also keep /metrics off the public load balancer.
"""
from __future__ import annotations

import hmac

from flask import Response, current_app, request

from .. import metrics
from ..errors import Forbidden, Unauthorized
from .common import Blueprint, problem_responses

blp = Blueprint("metrics", __name__, description="Operations: Prometheus metrics")

_TEXT_RESPONSE = {"200": {"description": "Prometheus text exposition format 0.0.4.",
                          "content": {"text/plain": {"schema": {"type": "string"}}}}}


def _check_access() -> None:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        if current_app.config["APP_ENV"] == "production":
            raise Forbidden("Metrics are disabled until METRICS_TOKEN is configured.")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("Send `Authorization: Bearer <METRICS_TOKEN>`.",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


@blp.route("/metrics", methods=["GET"])
@blp.doc(responses=_TEXT_RESPONSE, security=[{}, {"metricsToken": []}],
         description="Request latency by route, jobs by status, queue depth, quota units and the upstream "
                     "key pool (by key name). Needs `Bearer <METRICS_TOKEN>` when that is configured; "
                     "refused in production without it. Workers serve their own figures "
                     "(see docs/operations.md).")
@problem_responses(blp, 401, 403)
def prometheus_metrics():
    """Prometheus metrics for this API."""
    _check_access()
    return Response(metrics.render(current_app), mimetype=None,
                    headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"})
