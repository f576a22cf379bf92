"""No 5xx, no traceback, no dropped socket on any input (issue 9, item 2).

The named cases are the ones a security trial found (digits that are not ASCII,
a cursor past Redis integers, a non-ASCII signature, a 12-byte MP4, Range errors
as text/plain, a `seen` op that dropped the socket). The Hypothesis tests then
throw generated text at every GET route's path parameters and paging query, the
graph and seen writes, the media URL with Range headers, and `/ws` frames on a
real uvicorn: every HTTP answer is below 500 and every error is problem+json;
every frame is answered, or the socket closes with a documented code (a close
frame received, never 1006).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import websockets.sync.client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed

from server.app import create_app
from server.core.settings import Settings
from tests.conftest import MEDIA, Api, assert_problem
from tests.live import LiveServer

FUZZ = hsettings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WS_CLIENT_CLOSE_CODES = {1008, 1009}  # docs/protocol.md: what a client's frames can cause


@dataclasses.dataclass
class World:
    """An app with bob (owner of one public photo and one video) and ann (his follower)."""

    client: TestClient
    bob: Api
    ann: Api
    photo: dict[str, Any]
    video: dict[str, Any]


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    s = dataclasses.replace(settings, seen_per_minute=10**6, graph_changes_per_minute=10**6)
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        bob, ann = (_login(client, h) for h in ("bob", "ann"))
        ann.follow(bob)
        photo = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
        video = bob.post_media("city_vertical_h264.mp4", data={"audience": "public"}).json()
        yield World(client, bob, ann, photo, video)


def _login(client: TestClient, handle: str) -> Api:
    r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
    assert r.status_code == 200, r.text
    return Api(client, r.json()["token"], r.json()["user"])


def assert_not_a_server_error(r: Any) -> None:
    """Below 500; an error is problem+json whose status is the response's."""
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        if r.request.method == "HEAD":
            return
        body = r.json()
        assert body["status"] == r.status_code and body["type"] and body["title"], body


# --- the trial's cases, by name --------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_non_ascii_digits_and_huge_numbers_are_4xx_problems(world):
    bob, item = world.bob, world.photo["id"]
    assert_problem(bob.get(f"/stories/{bob.id}.²"), 404, "not-found")
    assert_problem(bob.get(f"/stories/{bob.id}.٣"), 404, "not-found")  # int() would take it
    assert_problem(bob.post(f"/stories/{bob.id}.²/seen"), 404, "not-found")
    for path in ("/me/archive", "/me/following", "/me/hidden"):
        for cursor in (_b64("o:²"), _b64("o:٣"), _b64("o:" + "9" * 30)):
            r = bob.get(path, params={"cursor": cursor})
            assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "cursor"
        for limit in ("²", "٣", "1_0", " 5"):
            r = bob.get(path, params={"limit": limit})
            assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "limit"
    for cursor in ("²:u_x", "9" * 30 + ":u_x", "5:u x"):
        r = bob.get(f"/stories/{item}/viewers", params={"cursor": cursor})
        assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "cursor"


def test_media_url_with_non_ascii_exp_or_sig_is_404(world):
    url = world.photo["media"]["url"]
    base, _, sig = url.partition("&sig=")
    exp = re.search(r"exp=(\d+)", url)
    assert exp is not None
    for bad in (
        url.replace(f"exp={exp[1]}", f"exp=²{exp[1]}"),
        f"{base}&sig=é",
        f"{base}&sig=ü{sig}",
    ):
        assert_problem(world.client.get(bad), 404, "not-found")
    assert world.client.get(url).status_code == 200


def test_range_errors_are_problems(world):
    url, size = world.video["media"]["url"], (MEDIA / "city_vertical_h264.mp4").stat().st_size
    r = world.client.get(url, headers={"Range": f"bytes={size}-"})
    assert_problem(r, 416, "range-not-satisfiable")
    assert r.headers["content-range"] == f"bytes */{size}"  # RFC 9110 section 15.5.17
    for bad in ("bytes=abc", "bytes=5-1", "bytes=²-9", "bytes=0-\u0663"):
        r = world.client.get(url, headers={"Range": bad.encode()})
        assert_problem(r, 400, "malformed")
    ok = world.client.get(url, headers={"Range": "bytes=0-9"})
    assert (
        ok.status_code == 206 and ok.content == (MEDIA / "city_vertical_h264.mp4").read_bytes()[:10]
    )
    assert ok.headers["content-range"] == f"bytes 0-9/{size}"
    tail = world.client.get(url, headers={"Range": "bytes=-4"})
    assert (
        tail.status_code == 206
        and tail.headers["content-range"] == f"bytes {size - 4}-{size - 1}/{size}"
    )
    whole = world.client.get(url, headers={"Range": "items=0-1"})  # a unit we do not know
    assert whole.status_code == 200 and len(whole.content) == size
    etag = ok.headers["etag"]
    stale = world.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == size
    fresh = world.client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206 and len(fresh.content) == 10


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x01ftypmp42",  # 12 bytes: a 64-bit box size announced, not there
        b"\x00\x00\x00\x01ftypisom\x00\x00\x00",
        b"\x00\x00\x00\x00ftypisom",
        b"\x00\x00\x00\x07ftypisom",
    ],
)
def test_truncated_mp4_box_is_422_and_nothing_stored(world, data):
    bob = world.bob
    before = bob.get(f"/users/{bob.id}/stories").json()["items"]
    r = bob.post("/stories", files={"media": ("clip.mp4", io.BytesIO(data))})
    assert_problem(r, 422, "invalid-media")
    assert bob.get(f"/users/{bob.id}/stories").json()["items"] == before


def test_seen_op_with_a_non_ascii_digit_answers_an_error_frame(world):
    with world.client.websocket_connect(f"/ws?token={world.ann.token}") as ws:
        assert orjson.loads(ws.receive_text())["type"] == "hello"
        assert orjson.loads(ws.receive_text())["type"] == "tray.snapshot"
        ws.send_text(orjson.dumps({"op": "seen", "item": f"{world.bob.id}.²"}).decode())
        frame = orjson.loads(ws.receive_text())
        assert (frame["type"], frame["op"], frame["status"]) == ("error", "seen", 404)
        ws.send_text('{"op": "ping"}')
        assert orjson.loads(ws.receive_text())["type"] == "pong"  # still serving


# --- generated input -----------------------------------------------------------------------

DIGITS = "0123456789²³¹\u0663\u0660\u06f5\u0967\uff10\U0001d7d8"  # ASCII and not: all isdigit()
NUMBERS = st.one_of(
    st.text(alphabet=DIGITS, min_size=1, max_size=24),  # digits only, often not ASCII ones
    st.text(alphabet=DIGITS + " _-+.:e\n", max_size=24),  # near misses
    st.integers(min_value=0, max_value=10**30).map(str),  # past 64 bits too
)
ANY_TEXT = st.text(max_size=60)


def ids(user_ids: list[str], item_ids: list[str]) -> st.SearchStrategy[str]:
    """Any text, `<owner>.<digit-ish>`, and the real ids and handles."""
    owner = st.sampled_from([*user_ids, "u_nobody", ""])
    return st.one_of(
        ANY_TEXT,
        st.builds(lambda o, d: f"{o}.{d}", owner, NUMBERS),
        st.sampled_from([*item_ids, *user_ids, "bob", "ann"]),
    )


def world_ids(world: World) -> st.SearchStrategy[str]:
    return ids([world.bob.id, world.ann.id], [world.photo["id"], world.video["id"]])


def cursors() -> st.SearchStrategy[str]:
    return st.one_of(
        ANY_TEXT,
        NUMBERS.map(lambda d: _b64(f"o:{d}")),
        st.builds(lambda d, t: f"{d}:{t}", NUMBERS, st.sampled_from(["u_x", "", "a b", "é"])),
    )


def get_routes(world: World) -> list[str]:
    """Every GET path template under /api/v1, read from the app itself."""
    app: Any = world.client.app
    [api] = [r for r in app.routes if isinstance(r, Mount) and r.path == "/api/v1"]
    return [r.path for r in api.routes if isinstance(r, Route) and "GET" in (r.methods or ())]


def _fill(template: str, value: str) -> str:
    return re.sub(r"\{\w+\}", quote(value, safe=""), template)


@FUZZ
@given(data=st.data())
def test_every_get_route_with_generated_ids_cursors_and_limits(world, data):
    template = data.draw(st.sampled_from(get_routes(world)), label="route")
    value = data.draw(world_ids(world), label="id")
    params = data.draw(
        st.dictionaries(st.sampled_from(["cursor", "limit", "x"]), st.one_of(cursors(), NUMBERS)),
        label="query",
    )
    api = data.draw(st.sampled_from([world.bob, world.ann]), label="caller")
    assert_not_a_server_error(api.get(_fill(template, value), params=params))


@FUZZ
@given(data=st.data())
def test_seen_and_graph_writes_with_generated_ids(world, data):
    template = data.draw(
        st.sampled_from(["/stories/{id}/seen", "/me/following/{uid}", "/me/close-friends/{uid}",
                         "/me/hidden/{uid}"]), label="route")  # fmt: skip
    method = "post" if template.endswith("/seen") else data.draw(st.sampled_from(["put", "delete"]))
    r = getattr(world.ann, method)(_fill(template, data.draw(world_ids(world), label="id")))
    assert_not_a_server_error(r)


def range_headers() -> st.SearchStrategy[str]:
    spec = st.one_of(st.builds(lambda a, b: f"{a}-{b}", NUMBERS, NUMBERS), st.text(max_size=6))
    return st.one_of(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=30),
        st.builds(
            lambda unit, parts: f"{unit}=" + ",".join(parts),
            st.sampled_from(["bytes", "BYTES", " bytes ", "items", ""]),
            st.lists(spec, max_size=5),
        ),
    )


@FUZZ
@given(data=st.data())
def test_media_urls_with_generated_parts_and_ranges(world, data):
    item = data.draw(st.sampled_from([world.photo, world.video]), label="item")
    real = dict(p.split("=", 1) for p in item["media"]["url"].partition("?")[2].split("&"))
    part = lambda name, real_value: data.draw(  # noqa: E731
        st.one_of(st.just(real_value), ANY_TEXT, NUMBERS), label=name
    )
    item_id = part("item", item["id"])
    variant = part("variant", "file")
    query = {
        "s": part("s", real["s"]),
        "exp": part("exp", real["exp"]),
        "sig": part("sig", real["sig"]),
    }
    headers = {}
    if data.draw(st.booleans(), label="with range"):
        headers["Range"] = data.draw(range_headers(), label="range").encode("utf-8")
    method = data.draw(st.sampled_from(["GET", "HEAD"]), label="method")
    r = world.client.request(
        method, f"/media/{quote(item_id, safe='')}/{quote(variant, safe='')}", params=query,
        headers=headers,
    )  # fmt: skip
    assert_not_a_server_error(r)
    if r.status_code == 416:
        assert re.fullmatch(r"bytes \*/\d+", r.headers["content-range"])
    if r.status_code == 206 and method == "GET":
        size = int(r.headers.get("content-range", "/0").rpartition("/")[2] or 0)
        assert (
            r.headers["content-type"].startswith("multipart/byteranges")
            or 0 < len(r.content) <= size
        )


# --- /ws on a real server ------------------------------------------------------------------


@dataclasses.dataclass
class LiveWorld:
    server: LiveServer
    token: str  # ann's
    user_ids: list[str]
    item_ids: list[str]


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveWorld]:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url + "/api/v1") as http:
        users = [http.post("/auth/dev-login", json={"handle": h}).json() for h in ("bob", "ann")]
        bob, ann = ({"Authorization": f"Bearer {u['token']}"} for u in users)
        assert http.put(f"/me/following/{users[0]['user']['id']}", headers=ann).status_code == 204
        with (MEDIA / "rocket.jpg").open("rb") as fh:
            item = http.post("/stories", headers=bob, files={"media": ("r.jpg", fh)}).json()
        yield LiveWorld(server, users[1]["token"], [u["user"]["id"] for u in users], [item["id"]])


def frames(user_ids: list[str], item_ids: list[str]) -> st.SearchStrategy[str | bytes]:
    some_id = ids(user_ids, item_ids)
    op = st.one_of(st.sampled_from(["seen", "ping", "auth", "nope", ""]), ANY_TEXT)
    value = st.one_of(some_id, st.integers(), st.none(), st.lists(st.integers(), max_size=2))
    obj = st.dictionaries(st.sampled_from(["op", "item", "token", "x"]), st.one_of(op, value))
    seen = some_id.map(lambda v: json.dumps({"op": "seen", "item": v}, ensure_ascii=False))
    return st.one_of(
        seen,
        seen,
        obj.map(lambda d: json.dumps(d, ensure_ascii=False)),  # (ints past 64 bits too)
        ANY_TEXT,
        st.binary(max_size=40),
    )


@contextmanager
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """ERROR records of our loggers and uvicorn's (which does not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in ("stories", "uvicorn.error", "uvicorn.asgi")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@FUZZ
@given(data=st.data())
def test_ws_frames_are_answered_or_closed_with_a_documented_code(live, data):
    sent = data.draw(st.lists(frames(live.user_ids, live.item_ids), min_size=1, max_size=4))
    url = f"{live.server.ws_url}?token={live.token}"
    with errors_logged() as errors, websockets.sync.client.connect(url, open_timeout=10) as ws:
        assert orjson.loads(ws.recv(5))["type"] == "hello"
        try:
            for frame in sent:
                ws.send(frame)
                ws.send('{"op": "ping"}')  # every frame is followed by a ping: wait for its pong
                while not any(e["type"] == "pong" for e in _events(ws.recv(5))):
                    pass
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "no close frame (1006)"
            assert closed.rcvd.code in WS_CLIENT_CLOSE_CODES, closed.rcvd
    assert not errors, [r.getMessage() for r in errors]


def _events(frame: str | bytes) -> list[dict[str, Any]]:
    data = orjson.loads(frame)
    return data if isinstance(data, list) else [data]
