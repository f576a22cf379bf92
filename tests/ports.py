"""Free TCP ports on 127.0.0.1 for servers the tests start."""

from __future__ import annotations

import socket


def is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` (we could bind it just now)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, offset: int, taken: set[int] | None = None) -> list[int]:
    """`count` ports p, each free with p + `offset` free too, none in `taken`.

    For servers with a second port at a fixed distance: SeaweedFS's gRPC side and
    Redis Cluster's bus are both p + 10000.
    """
    taken = set(taken or ())
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        pair = {port, port + offset}
        if port + offset < 65536 and not pair & taken and all(map(is_free, pair)):
            found.append(port)
            taken |= pair
    return found
