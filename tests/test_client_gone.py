"""A client that goes away mid-upload costs a log line, not a traceback, and leaves nothing.

Over a real uvicorn server (tests/live.py) and a raw TCP socket, since no HTTP
client library lets one stop half-way through a body on purpose.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import MEDIA
from tests.live import Client, LiveServer


def _half_upload(port: int, token: str, idempotency_key: str) -> None:
    body_file = (MEDIA / "city_vertical_h264.mp4").read_bytes()
    boundary = "b" + uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="media"; filename="v.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + body_file
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /api/v1/stories HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nIdempotency-Key: {idempotency_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)  # the server is now inside the multipart parser
    # closed: the server's next receive() is http.disconnect


def test_a_client_gone_mid_upload_is_logged_without_traceback(settings, caplog):
    caplog.set_level(logging.INFO)
    with LiveServer(settings) as server:
        bob = Client(server, "bob")
        _half_upload(server.port, bob.token, "k-1")
        deadline = time.monotonic() + 5
        while "client disconnected" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]
        assert "Traceback" not in caplog.text
        scratch = Path(settings.data_dir) / "tmp"
        assert not [p for p in scratch.rglob("*") if p.is_file()], "scratch removed"
        with (MEDIA / "rocket.jpg").open("rb") as fh:  # the key was released: a retry posts
            r = httpx.post(server.url + "/api/v1/stories", files={"media": ("r.jpg", fh)},
                           headers={"Authorization": f"Bearer {bob.token}",
                                    "Idempotency-Key": "k-1"}, timeout=30)  # fmt: skip
        assert r.status_code == 201, r.text
