"""The Redis client every part of one process shares: one Redis, or a Redis Cluster.

`redis+cluster://host:port[,host:port...]` names a Redis Cluster by its startup
nodes (any few of its nodes; the client learns the rest and the slot map from
them); every other URL (`redis://`, `rediss://`, `unix://`) is one Redis. A
cluster URL takes no path, user or query: a cluster has one database.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

CLUSTER_SCHEME = "redis+cluster"
TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 2, "health_check_interval": 10}


def is_cluster_url(url: str) -> bool:
    """True for a `redis+cluster://` URL."""
    return url.startswith(CLUSTER_SCHEME + "://")


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """`redis+cluster://a:7000,b:7001` → `[("a", 7000), ("b", 7001)]`.

    Raises ValueError for another scheme, an empty list, a path or query, or a
    node without a valid port.
    """
    if not is_cluster_url(url):
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL: {url!r}")
    rest = url[len(CLUSTER_SCHEME) + 3 :]
    if not rest or any(c in rest for c in "/?#@"):
        raise ValueError(f"{CLUSTER_SCHEME}:// takes host:port[,host:port...] only, not {url!r}")
    nodes = []
    for part in rest.split(","):
        split = urlsplit("//" + part)
        try:
            port = split.port
        except ValueError:
            port = None
        if not split.hostname or port is None:
            raise ValueError(f"cluster node {part!r} is not host:port")
        nodes.append((split.hostname, port))
    return nodes


def redis_client(url: str, max_connections: int = 100) -> aioredis.Redis:
    """An asyncio client with short timeouts, so an outage turns into 503s quickly.

    For one Redis the pool is a blocking one: past `max_connections` a command
    waits (up to 5 s) for a free connection instead of failing. Sockets signing
    in never get that far: the hub's sign-in gate (`server/push/admission.py`)
    admits fewer at once than the pool holds (`ws_sign_in_concurrency`) and
    tells the rest to retry.

    A `redis+cluster://` URL gives a `RedisCluster` (typed here as `Redis`: it
    has the same commands, and `pipeline(transaction=False)` sends one batch per
    node) with the same timeouts and `max_connections` per node; redis-py's
    cluster pools do not block, so past it a command fails at once with
    `MaxConnectionsError`. Raises ValueError for a malformed cluster URL.
    """
    if is_cluster_url(url):
        nodes = [ClusterNode(host, port) for host, port in cluster_nodes(url)]
        cluster = RedisCluster(startup_nodes=nodes, max_connections=max_connections, **TIMEOUTS)
        return cluster
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, **TIMEOUTS
    )
    return aioredis.Redis(connection_pool=pool)


def slot_groups(redis: aioredis.Redis, names: list[str]) -> list[list[int]]:
    """Indexes of `names` (one key name per entry) grouped for one script call per group.

    One Redis: a single group of everything (a script may touch any keys). A
    Cluster: one group per hash slot, since a script call must stay in one slot.
    """
    if not names:
        return []
    if not isinstance(redis, RedisCluster):
        return [list(range(len(names)))]
    groups: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(key_slot(name.encode()), []).append(i)
    return list(groups.values())
