"""Starting or joining the Ray cluster, quiet and on loopback unless told otherwise.

A local cluster (``--ray-address local``) is pinned to 127.0.0.1: Ray picks a node address that
other machines can reach unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it use the loopback
one, and on a loopback node Ray's own servers (GCS, raylet, object manager, core workers, agents)
bind to 127.0.0.1. Serve's replicas also open an inter-deployment gRPC server on ``[::]``
whatever the node address; ``bind_replica_grpc_to_loopback`` (called in each replica) moves it to
loopback on a loopback node. Usage stats are off and the dashboard is not started.
"""

from __future__ import annotations

import ipaddress
import logging
import os

logger = logging.getLogger(__name__)

LOCAL = "local"


def prepare_environment(address: str) -> None:
    """Before ``import ray``: the variables Ray reads once, at import or in the processes it starts."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if address == LOCAL or _is_loopback(address.rpartition(":")[0] or address):  # a cluster on this machine
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node address 127.0.0.1 (see above)
    if address == LOCAL:
        # Ray runs its workers at nice 15 by default: the replicas are the engines, so on a busy
        # machine they would lose the CPU to everything else (a plain server runs at nice 0)
        os.environ.setdefault("RAY_worker_niceness", "0")


def init(address: str, *, num_cpus: int | None, log_level: str) -> None:
    import ray

    kwargs = dict(include_dashboard=False, logging_level=logging.DEBUG if log_level == "debug" else logging.WARNING,
                  configure_logging=True, namespace="llmserve")
    if address == LOCAL:
        ray.init(address=LOCAL, num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    logger.info("ray %s: node %s, %s CPUs in the cluster", "started" if address == LOCAL else f"joined at {address}",
                ray.util.get_node_ip_address(), ray.cluster_resources().get("CPU", 0))


def shutdown() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind_replica_grpc_to_loopback() -> None:
    """In a replica's constructor (it runs before Serve opens that server): on a loopback node,
    Serve's inter-deployment gRPC server listens on 127.0.0.1 instead of every interface."""
    import ray
    from ray.serve._private import replica as serve_replica

    if not _is_loopback(ray.util.get_node_ip_address()):
        return
    original = serve_replica.add_port_to_grpc_server
    if getattr(original, "_llmserve_loopback", False):
        return

    def add_port(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        return original(server, address)

    add_port._llmserve_loopback = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = add_port
