"""``llmserve serve --ray``: the CLI is the Ray driver.

It starts a local cluster (or joins ``--ray-address``), deploys one model deployment per served
model and the ingress in front of them, then waits. SIGTERM or SIGINT: Serve drains (requests in
flight get ``DRAIN_SECONDS`` to finish), then the deployments, Serve and a cluster this driver
started are shut down, leaving no process behind.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

from llmserve.serve_ray import cluster
from llmserve.serve_ray.sizing import in_flight_limit, most_replicas, parse_autoscale
from llmserve.serve_ray.vocab import check_supported
from llmserve.settings import ModelSettings, Settings

logger = logging.getLogger(__name__)

APP_NAME = "llmserve"
HUB_NAME = "llmserve-metrics-hub"
DRAIN_SECONDS = 10.0
HEALTH_CHECK_PERIOD = 2.0


def check(settings: Settings) -> None:
    """What --ray refuses before Ray starts (clear CLI errors; model paths are the engines'
    preflight, as for a plain server)."""
    for model in settings.model_list():
        check_supported(model)
    if settings.autoscale:
        parse_autoscale(settings.autoscale)
    if settings.workers > 1:
        raise ValueError("--workers does not apply with --ray: scale with --replicas (the ingress is one process)")


def _cpus(model: ModelSettings) -> int:
    return model.resolved_threads()


def replica_models(settings: Settings) -> list[ModelSettings]:
    """The served models as each replica runs them: ``threads: 0`` becomes this machine's cores
    divided among a model's replicas (set --threads for the nodes of a multi-node cluster)."""
    share = max(1, (os.cpu_count() or 1) // most_replicas(settings))
    return [m if m.threads else m.model_copy(update={"threads": share}) for m in settings.model_list()]


def serve_logging(settings: Settings) -> dict:
    """Serve's own logs: warnings only (llmserve logs its requests itself), all of them in debug."""
    debug = settings.log_level == "debug"
    return {"log_level": "DEBUG" if debug else "WARNING", "enable_access_log": debug}


def model_deployment(model: ModelSettings, settings: Settings):
    """The Serve deployment of one model: replicas, admission, router, health checks."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from llmserve.serve_ray.replica import ModelReplica
    from llmserve.serve_ray.router import PrefixAffinityRouter

    options = dict(
        name=f"model-{model.served_name()}",
        max_ongoing_requests=model.slots(),  # the engine's slots: more wait at the handle, not in the engine
        max_queued_requests=in_flight_limit(model, settings),  # a backstop: see sizing.py
        ray_actor_options={"num_cpus": _cpus(model), "num_gpus": settings.replica_gpus},
        request_router_config=RequestRouterConfig(request_router_class=PrefixAffinityRouter,
                                                  request_router_kwargs={"imbalance": max(2, model.slots() // 4)}),
        health_check_period_s=HEALTH_CHECK_PERIOD,
        graceful_shutdown_timeout_s=DRAIN_SECONDS,
        logging_config=serve_logging(settings),
    )
    if settings.autoscale:
        lo, hi = parse_autoscale(settings.autoscale)
        options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                         "initial_replicas": min(max(settings.replicas, lo), hi),
                                         "target_ongoing_requests": max(1, math.ceil(model.slots() * 0.75))}
    else:
        options["num_replicas"] = settings.replicas
    return serve.deployment(ModelReplica).options(**options).bind(
        model.model_dump_json(), settings.ray_stream_interval, HUB_NAME, settings.log_level)


def build(settings: Settings):
    from ray import serve

    from llmserve.serve_ray.ingress import Ingress

    models = {m.served_name(): model_deployment(m, settings) for m in replica_models(settings)}
    limit = sum(in_flight_limit(m, settings) for m in settings.model_list())
    return serve.deployment(Ingress).options(
        name="ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(1000, 4 * limit), graceful_shutdown_timeout_s=DRAIN_SECONDS,
        logging_config=serve_logging(settings),
    ).bind(settings.model_dump_json(), models, HUB_NAME)


def serve_forever(settings: Settings) -> int:
    """Runs until SIGTERM or SIGINT; ``check`` and the engines' preflight come first (the CLI)."""
    address = settings.ray_address or cluster.LOCAL
    cluster.prepare_environment(address)
    import ray
    from ray import serve

    from llmserve.serve_ray.metrics import MetricsHub

    need = sum(_cpus(m) * most_replicas(settings) for m in replica_models(settings))  # a local cluster fits every replica
    t0 = time.monotonic()
    cluster.init(address, num_cpus=max(os.cpu_count() or 1, need), log_level=settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        hub = ray.remote(num_cpus=0)(MetricsHub).options(name=HUB_NAME, lifetime=None).remote()
        serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=serve_logging(settings))
        try:
            serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # a replica failed to start (Serve logged why, above)
            logger.error("could not deploy on Ray Serve: %s", exc)
            return 1
        logger.info("serving %s on http://%s:%d through Ray Serve (%s replica(s) each, ready in %.1f s)",
                    ", ".join(m.served_name() for m in settings.model_list()), settings.host, settings.port,
                    settings.autoscale or settings.replicas, time.monotonic() - t0)
        while not stop.wait(1.0):
            pass
        logger.info("shutting down: draining requests in flight (up to %.0f s)", DRAIN_SECONDS)
        serve.delete(APP_NAME)
        del hub
    finally:
        cluster.shutdown()
    logger.info("Ray Serve is down%s", ", and the cluster" if address == cluster.LOCAL else "")
    return 0
