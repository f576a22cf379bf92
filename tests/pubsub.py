"""Pub/sub checks that hold on one Redis and on the test cluster alike.

One Redis: classic channels (PUBSUB CHANNELS, PUBLISH). A cluster: sharded
channels on every primary (PUBSUB SHARDCHANNELS, SPUBLISH), as the server uses
there (`server/push/sharded.py`).
"""

from __future__ import annotations

from typing import Any

import redis

from server.push.sharded import ShardedBroker, parse_slots
from server.store.client import cluster_nodes, is_cluster_url


def publish_command(url: str) -> str:
    """ "PUBLISH" on one Redis, "SPUBLISH" on a `redis+cluster://` URL (what the Bus sends)."""
    return "SPUBLISH" if is_cluster_url(url) else "PUBLISH"


def our_channels(url: str, prefix: str) -> list[str]:
    """Sorted names under `prefix` that Redis lists as subscribed (on a cluster: every
    primary's shard channels)."""
    if not is_cluster_url(url):
        with redis.Redis.from_url(url) as client:
            return sorted(c.decode() for c in client.pubsub_channels(prefix + "*"))
    host, port = cluster_nodes(url)[0]
    with redis.Redis(host=host, port=port) as first:
        primaries = set(parse_slots(first.execute_command("CLUSTER", "SLOTS")).values())
    names: list[str] = []
    for host, port in primaries:
        with redis.Redis(host=host, port=port) as node:
            reply = node.execute_command("PUBSUB", "SHARDCHANNELS", prefix + "*")
            names += [c.decode() for c in reply]
    return sorted(names)


def canaries(broker: Any) -> list[str]:
    """The broker's own canary channels: one, or one per primary on a cluster."""
    if isinstance(broker, ShardedBroker):
        return sorted(broker.canary_channels)
    return [broker.canary_channel]
