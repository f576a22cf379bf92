"""Pure tests: client frame parsing, packing, the bounded outbox, view-count coalescing."""

from __future__ import annotations

import orjson
import pytest

from server.core.errors import ProtocolError
from server.core.frames import Encoded, Op, encode, pack, parse_op
from server.core.outbox import Outbox, ViewCountCoalescer


def test_parse_ops():
    assert parse_op('{"op": "ping"}') == Op("ping")
    assert parse_op(b'{"op": "seen", "item": "u_1.3"}') == Op("seen", "u_1.3")
    assert parse_op('{"op": "auth", "token": "t"}') == Op("auth", "t")
    for bad in (
        "nope",
        "[]",
        '{"op": 3}',
        '{"op": "seen"}',
        '{"op": "seen", "item": ""}',
        '{"op": "x"}',
    ):
        with pytest.raises(ProtocolError):
            parse_op(bad)


def test_encode_and_pack():
    one = encode("pong", 0)
    assert orjson.loads(one.data) == {"type": "pong", "ts": "1970-01-01T00:00:00.000Z"}
    assert pack([one]) is one
    two = pack([one, one])
    assert orjson.loads(two.data) == [orjson.loads(one.data)] * 2 and two.events == 2
    three = pack([one, two])
    assert orjson.loads(three.data) == [orjson.loads(one.data)] * 3 and three.events == 3


def test_encoded_frame_is_what_a_websockets_client_reads():
    """The shared frame bytes parse, with the library's own reader, back to the JSON text."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    for size in (10, 200, 70_000):  # 7-bit, 16-bit and 64-bit payload lengths (RFC 6455 5.2)
        event = encode("tray.update", 0, pad="é" * size)
        reader = StreamReader()
        reader.feed_data(event.frame)
        parser = Frame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as done:
            next(parser)
        frame = done.value.value
        assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == event.data
        assert not reader.buffer  # nothing left over


def test_outbox_is_bounded_by_bytes():
    a, b = Encoded(b"12345"), Encoded(b"67890")
    assert a.size == 7, "a 2-byte header (RFC 6455 5.2) and the payload"
    box = Outbox(max_bytes=14)
    assert box.push(a) and box.push(b)
    assert not box.push(Encoded(b"1"))
    assert box.take() == [a, b] and box.size == 0 and box.push(Encoded(b"1"))


def test_view_counts_coalesce_to_four_a_second_and_end_exact():
    c = ViewCountCoalescer(interval_ms=250)
    assert c.offer("i", 1, now_ms=0)
    assert not c.offer("i", 2, now_ms=100)
    assert not c.offer("i", 4, now_ms=150)
    assert not c.offer("i", 3, now_ms=160), "an out-of-order lower count is dropped"
    assert c.next_due_ms() == 250
    assert c.due(200) == []
    assert c.due(250) == [("i", 4)]
    assert c.next_due_ms() is None
    assert c.offer("i", 5, now_ms=600)


def test_tokens_are_redacted_from_log_lines():
    import logging

    from server.api.redact import RedactTokens

    record = logging.LogRecord("uvicorn.error", 20, "", 0, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5", "/ws?token=eyJhbGciOi.abc.def&x=1"), None)  # fmt: skip
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "WebSocket /ws?token=[redacted]&x=1" [accepted]'


def test_a_client_cannot_fill_the_log_with_utf8_tracebacks():
    import logging
    import sys

    from server.api.redact import RedactTokens

    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0,
                               "Invalid UTF-8 sequence received from client.", (), exc_info)  # fmt: skip
    assert RedactTokens().filter(record)
    assert record.exc_info is None and record.levelno == logging.INFO
    other = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "boom", (), exc_info)
    assert RedactTokens().filter(other) and other.exc_info is exc_info, "other tracebacks stay"


def test_redaction_keeps_the_shape_of_log_args():
    import logging

    from server.api.redact import RedactTokens

    def record(msg: str, args: object) -> logging.LogRecord:
        rec = logging.LogRecord("uvicorn.access", 20, "", 0, msg, None, None)
        rec.args = args  # type: ignore[assignment]
        assert RedactTokens().filter(rec)
        return rec

    access = record(
        '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET", "/x?token=abc&y=1", "1.1", 401)
    )
    assert access.args == ("127.0.0.1:5", "GET", "/x?token=[redacted]&y=1", "1.1", 401)
    assert record("%(path)s", {"path": "/ws?token=abc"}).getMessage() == "/ws?token=[redacted]"
    assert record("GET /?token=abc", ()).getMessage() == "GET /?token=[redacted]"
    assert record("?token=%s&x=%d", ("eyJ.a.b", 3)).getMessage() == "?token=[redacted]&x=3"
