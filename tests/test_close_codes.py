"""Close codes and errors: one list on each side of the socket, and the two agree.

`server/core/codes.py` holds every close code the server sends; `client_demo/codes.js`
mirrors it (`CLOSE`) for the demo client. These tests read the JS file as text, so a
code added, renumbered or renamed on one side only fails here; and they check that
the demo's other modules take their codes from `codes.js`, that the app serves it,
and that errors carry the codes and problem bodies the protocol documents.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from server.core import codes
from server.core.errors import (
    BadRequest,
    HttpError,
    ProtocolError,
    StoriesError,
    Unauthorized,
)
from server.core.frames import parse_op

DEMO = Path(__file__).resolve().parent.parent / "client_demo"
ENTRY = re.compile(r"^\s*(\w+)\s*:\s*(\d+)\s*,?\s*(?://.*)?$")
# a close code as a number next to what takes or compares one (`ws.close(1000`, `code === 4001`)
LITERAL_CODE = re.compile(
    r"(?:close|code|_drop|_scheduleReconnect)\b[^;\n]*?(?<![\w.])(10(?:0\d|1[0-5])|4\d{3})(?![\w.])"
)


def js_object(source: str, name: str) -> dict[str, int]:
    """The `{NAME: number}` entries of `export const <name> = Object.freeze({...});`.

    Raises AssertionError when the object is missing or holds a line that is not
    one `NAME: number,` entry (so a computed or quoted entry cannot slip past).
    """
    found = re.search(
        rf"^export const {name} = Object\.freeze\(\{{\n(.*?)^\}}\);", source, re.M | re.S
    )
    assert found, f"no `export const {name} = Object.freeze({{...}});` in codes.js"
    entries: dict[str, int] = {}
    for line in found.group(1).splitlines():
        match = ENTRY.match(line)
        assert match, f"not a `NAME: number,` entry: {line!r}"
        assert match.group(1) not in entries, f"{match.group(1)} twice"
        entries[match.group(1)] = int(match.group(2))
    return entries


def literal_codes(source: str) -> list[str]:
    """Lines of JS (comments dropped) that write a close code as a number."""
    lines = (re.sub(r"//.*", "", line) for line in source.splitlines())
    return [line.strip() for line in lines if LITERAL_CODE.search(line)]


def test_codes_js_mirrors_codes_py_exactly():
    close = js_object((DEMO / "codes.js").read_text(), "CLOSE")
    assert close == dict(codes.CLOSE_CODES)


def test_python_codes_are_named_with_their_number():
    assert codes.CLOSE_CODES, "codes.py lost its constants"
    for name, value in codes.CLOSE_CODES.items():
        assert re.fullmatch(rf"WS_{value}_[A-Z0-9_]+", name), name
        assert 1000 <= value <= 1015 or 4000 <= value <= 4999, name
    assert len(set(codes.CLOSE_CODES.values())) == len(codes.CLOSE_CODES)


def test_client_only_codes_are_apart_from_the_servers():
    local = js_object((DEMO / "codes.js").read_text(), "LOCAL")
    assert local, "codes.js lost LOCAL"
    assert not set(local) & set(codes.CLOSE_CODES)
    assert not set(local.values()) & set(codes.CLOSE_CODES.values())


def test_js_reads_close_codes_from_codes_js_only():
    client = (DEMO / "stories-client.js").read_text()
    assert "from './codes.js'" in client
    for path in sorted(DEMO.glob("*.js")):
        if path.name != "codes.js":
            assert literal_codes(path.read_text()) == [], path.name


@pytest.mark.parametrize(
    "line",
    [
        "ws.close(1000, 'bye');",
        "if (code === 4001) return x;",
        "this._drop(ws, 4000, '');",
        "this._scheduleReconnect(1006, '');",
        "if (code === 1012 || (code === 1013 && y)) {",
    ],
)
def test_the_literal_check_catches_hard_coded_codes(line):
    assert literal_codes(line) == [line]


@pytest.mark.parametrize(
    "line",
    [
        "ws.close(CLOSE.WS_1000_NORMAL_CLOSURE, 'bye');",
        "}, 10000);",
        "const delay = 500 + Math.floor(random() * 4500); // after a 1012",
        "closePlan(code, reason, 0, () => 0.5)",
    ],
)
def test_the_literal_check_lets_other_numbers_be(line):
    assert literal_codes(line) == []


def test_the_app_serves_codes_js(client):
    r = client.get("/codes.js")
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    assert r.content == (DEMO / "codes.js").read_bytes()


def test_protocol_error_is_a_bad_request_that_closes_1008():
    with pytest.raises(ProtocolError) as info:
        parse_op("not json")
    exc = info.value
    assert isinstance(exc, BadRequest) and isinstance(exc, StoriesError)
    assert exc.close_code == codes.WS_1008_POLICY_VIOLATION == 1008
    assert exc.detail == str(exc) == "frame is not JSON"
    assert exc.status == 400


def test_close_codes_of_the_tree():
    assert StoriesError().close_code == codes.WS_1011_INTERNAL_ERROR
    assert Unauthorized().close_code == codes.WS_4001_UNAUTHORIZED
    assert BadRequest().close_code == codes.WS_1011_INTERNAL_ERROR  # never closes a socket


def test_http_error_problem_is_exact():
    exc = HttpError(405, "Method Not Allowed")
    assert orjson.dumps(exc.problem()) == (
        b'{"type":"/problems/method-not-allowed","title":"Method Not Allowed",'
        b'"status":405,"detail":"Method Not Allowed"}'
    )
    assert HttpError(404, "Not Found").type == "/problems/not-found"
    assert (HttpError(418, "I'm a teapot").slug, HttpError(418, "x").status) == ("http-error", 418)
    assert (StoriesError.status, StoriesError.slug, StoriesError.title) == (
        500,
        "internal",
        "Internal error",
    )  # the instance's own, not the class's


def test_framework_errors_answer_byte_identical_problems(client):
    not_found = (
        b'{"type":"/problems/not-found","title":"Not Found","status":404,"detail":"Not Found"}'
    )
    not_allowed = (
        b'{"type":"/problems/method-not-allowed","title":"Method Not Allowed",'
        b'"status":405,"detail":"Method Not Allowed"}'
    )
    for method, path, status, body in [
        ("GET", "/api/v1/nope", 404, not_found),
        ("GET", "/api/v1/tray/", 404, not_found),
        ("GET", "/nonexistent.js", 404, not_found),
        ("DELETE", "/api/v1/auth/dev-login", 405, not_allowed),
        ("PUT", "/healthz", 405, not_allowed),
    ]:
        r = client.request(method, path)
        assert (r.status_code, r.content) == (status, body), (method, path)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["content-length"] == str(len(body))
