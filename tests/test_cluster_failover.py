"""A primary of the Redis Cluster is SIGKILLed while its owner posts: its replica takes over.

A cluster of its own (tests/cluster.py; the session's cluster is shared and must
not lose a node). The app runs through its lifespan on it; one user posts real
photos in a loop; the primary that holds that user's slot is SIGKILLed mid-way.
What must hold:
- while the slot has no primary, posting answers 503 problem+json with
  Retry-After (never a 500, never a traceback), and the app keeps serving what
  lives on the other shards (a user there reads her items; her posts may need a
  bucket of the global indexes on the dead shard, so they are not asserted);
- within the cluster's failover time (node timeout 3 s + election) posting
  answers 201 again, with no restart of anything;
- every post acknowledged with 201 at least a second before the kill is still
  there after the failover (read back and in the owner's ring).
What may be lost, and why: Redis replicates asynchronously, and the server does not
`WAIT` for a replica before answering 201, so a post acknowledged in the last
moments before its primary dies can be missing after the replica takes over
(docs/deploy.md). The test counts those and allows only posts of that last second.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import uuid

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.core.keys import Keys
from tests.cluster import running_cluster
from tests.conftest import MEDIA, Api


def _slot_owner(cluster, key: str) -> int:
    """The port of the primary serving `key`'s slot now."""
    with cluster.node(cluster.ports[0]) as r:
        slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(primary[1])
    raise AssertionError(f"no primary serves slot {slot}")


@pytest.mark.timeout(120)
def test_a_killed_primary_fails_over_and_acknowledged_posts_survive(settings, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with running_cluster(tmp_path / "cluster") as cluster:
        prefix = f"fo{uuid.uuid4().hex[:8]}:"
        on_cluster = dataclasses.replace(settings, redis_url=cluster.url, redis_prefix=prefix)
        with TestClient(create_app(on_cluster)) as client:
            r = client.post("/api/v1/auth/dev-login", json={"handle": "bob"})
            bob = Api(client, r.json()["token"], r.json()["user"])
            keys = Keys(prefix)
            victim = _slot_owner(cluster, keys.items(bob.id))
            for n in range(50):  # someone whose keys live on another shard
                r = client.post("/api/v1/auth/dev-login", json={"handle": f"ann{n}"})
                ann = Api(client, r.json()["token"], r.json()["user"])
                if _slot_owner(cluster, keys.items(ann.id)) != victim:
                    break
            assert _slot_owner(cluster, keys.items(ann.id)) != victim
            with (MEDIA / "rocket.jpg").open("rb") as fh:
                ann_item = ann.post("/stories", files={"media": ("r.jpg", fh)}).json()["id"]
            others_served: list[int] = []
            posted: list[tuple[float, str]] = []  # (acknowledged at, item id)
            refused: list[int] = []
            killed_at = recovered_at = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with (MEDIA / "rocket.jpg").open("rb") as fh:
                    resp = bob.post("/stories", files={"media": ("r.jpg", fh)})
                now = time.monotonic()
                if resp.status_code == 201:
                    posted.append((now, resp.json()["id"]))
                    if killed_at is not None and recovered_at is None:
                        recovered_at = now
                else:
                    assert resp.status_code == 503, resp.text
                    assert resp.headers["content-type"].startswith("application/problem+json")
                    assert int(resp.headers["retry-after"]) >= 1
                    refused.append(resp.status_code)
                    others_served.append(ann.get(f"/stories/{ann_item}").status_code)
                    time.sleep(0.2)
                if killed_at is None and len(posted) == 8:
                    time.sleep(1.2)  # these 8 have surely reached the replica
                    os.kill(cluster.pids[cluster.ports.index(victim)], signal.SIGKILL)
                    killed_at = time.monotonic()
                if recovered_at is not None and len(posted) >= 8 + 5:
                    break
            assert killed_at is not None and recovered_at is not None, (len(posted), refused)
            assert recovered_at - killed_at < 30, "the replica took over and posting resumed"
            assert others_served and set(others_served) == {200}, others_served
            assert victim not in cluster.primaries(), "the killed node's replica is the primary"

            def still_there(item: str) -> bool:
                return bool(bob.get(f"/stories/{item}").status_code == 200)

            safe = [i for at, i in posted if at < killed_at - 1.0]
            assert safe and all(still_there(i) for i in safe), "acknowledged posts were lost"
            lost = [i for at, i in posted if not still_there(i)]
            assert all(at >= killed_at - 1.0 for at, i in posted if i in lost), lost
            own = bob.get(f"/users/{bob.id}/stories").json()["items"]
            assert {i["id"] for i in own} == {i for _, i in posted if i not in lost}
        assert "Traceback" not in caplog.text
