"""The browser demo (client_demo/) driven by headless Chromium through Playwright.

Each test starts the real server (`python -m server serve --demo`) on a free port
with its own data dir and stops it by its PID. Most tests need only the REST API:
the tray falls back to `GET /api/v1/tray` while no WebSocket is connected, and one
test swaps `window.WebSocket` for a scripted fake, so the client's frame handling,
reconnects and close codes are checked whatever the server does. The last test runs
two users against the real `/ws` and records a live clip from Chromium's fake camera.

`make test` installs Debian's `chromium` when it is missing; without a Chromium
binary these tests fail (they never skip). A failing test leaves a screenshot in
test-artifacts/. `UPDATE_SCREENSHOT=1 make test` refreshes docs/screenshot.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

expect = sync_api.expect

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT / "tests" / "media"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",  # "Go live": a synthetic camera, no permission prompt
    "--use-fake-device-for-media-stream",
]
PHONE = {"width": 430, "height": 932}

pytestmark = pytest.mark.timeout(180)


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM_PATH"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the server then stops its embedded Redis), wait, then kill what is left."""
    children: list[Any] = []
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in children:
        try:
            child.wait(5)
        except Exception:
            try:
                child.kill()
            except Exception:
                pass


class DemoServer:
    """`python -m server serve --demo` on a free port; restartable on the same port and data."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.data = tmp_path / "data"
        self.log_path = tmp_path / "server.log"
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--demo", "--port", str(self.port),
                 "--data-dir", str(self.data)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as res:
                    if res.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoServer]:
    server = DemoServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(demo: DemoServer) -> str:
    """A demo server with fresh seeded data: its base URL."""
    return demo.base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium()
    assert path, "no Chromium binary: `apt-get install chromium`, or set CHROMIUM_PATH"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=1, permissions=["camera", "microphone"]
    )
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    try:
        yield pg
    finally:
        context.close()


@contextmanager
def shot_on_failure(page: Any, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        raise


def api(base: str, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + "/api/v1" + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as res:
        raw = res.read()
    return json.loads(raw) if raw else None


def login(page: Any, base: str, handle: str) -> None:
    page.goto(base + "/")
    page.get_by_test_id("login-handle").fill(handle)
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("tray")).to_be_visible()


def ring_states(page: Any) -> list[tuple[str, str]]:
    return [
        (testid.removeprefix("ring-"), unseen)
        for testid, unseen in page.eval_on_selector_all(
            "[data-testid=tray] [data-testid^=ring-]",
            "els => els.map(e => [e.dataset.testid, e.dataset.unseen])",
        )
    ]


def post_photo(page: Any, caption: str) -> None:
    page.get_by_test_id("add-story").first.click()
    page.get_by_test_id("upload-input").set_input_files(str(MEDIA / "rocket.jpg"))
    page.locator("#composer-caption").fill(caption)
    page.get_by_test_id("post-button").click()
    expect(page.get_by_test_id("ring-alice")).to_be_visible(timeout=30_000)


def test_readme_screenshot(server: str, page: Any) -> None:
    """docs/screenshot.png: alice's tray with unseen (gradient) and seen (grey) rings."""
    with shot_on_failure(page, "readme_screenshot"):
        login(page, server, "alice")
        expect(page.get_by_test_id("ring-frank")).to_be_visible()
        expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", "connected", timeout=10_000
        )
        page.wait_for_timeout(300)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "screenshot.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_SCREENSHOT"):
            shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")


def test_tray_viewer_seen_and_upload(server: str, page: Any) -> None:
    with shot_on_failure(page, "tray_viewer_seen_and_upload"):
        login(page, server, "alice")
        expect(page.get_by_test_id("ring-bob")).to_have_attribute("data-unseen", "true")
        expect(page.get_by_test_id("ring-dan")).to_have_attribute("data-unseen", "false")
        states = ring_states(page)
        assert {h for h, _ in states} == {"bob", "carol", "dan", "erin", "frank"}
        unseen_flags = [u for _, u in states]
        assert unseen_flags == sorted(unseen_flags, reverse=True), states  # unseen first

        # The viewer opens at the first unseen item, with one progress segment per item.
        page.get_by_test_id("ring-bob").click()
        viewer = page.get_by_test_id("viewer")
        expect(viewer).to_be_visible()
        expect(page.get_by_test_id("progress").locator(".seg")).to_have_count(2)
        expect(viewer.locator(".stage img")).to_have_attribute("alt", "Launch day!")
        # Only a displayed item counts as viewed: wait for the photo to load before moving on.
        viewer.locator(".stage img").evaluate(
            "img => img.complete || new Promise(r => img.addEventListener('load', r))"
        )
        page.keyboard.press("ArrowRight")
        expect(viewer.locator(".stage video")).to_have_count(1)
        expect(viewer.locator(".stage video")).to_have_attribute("aria-label", "City lights")
        expect(page.get_by_test_id("ring-bob")).to_have_attribute("data-unseen", "false")
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()
        expect(page.get_by_test_id("ring-bob")).to_have_attribute("data-unseen", "false")

        # The server agrees (the seen op may still be on its way over the socket).
        bob = api(server, "POST", "/auth/dev-login", body={"handle": "bob"})
        items = api(server, "GET", "/users/bob/stories", bob["token"])["items"]

        def seen_by_alice(item_id: str) -> bool:
            viewers = api(server, "GET", f"/stories/{item_id}/viewers", bob["token"])["items"]
            return "alice" in [v["user"]["handle"] for v in viewers]

        for item in items:
            deadline = time.monotonic() + 10
            while not seen_by_alice(item["id"]):
                assert time.monotonic() < deadline, f"alice never recorded on {item['id']}"
                time.sleep(0.1)

        # Posting a photo makes the own ring appear, first in the tray.
        post_photo(page, "From the browser test")
        assert ring_states(page)[0] == ("alice", "false")

        # Someone views it; the creator's panel shows the count and the seen-by list.
        mine = api(server, "GET", "/users/alice/stories", bob["token"])["items"]
        assert [i["caption"] for i in mine] == ["From the browser test"]
        api(server, "POST", f"/stories/{mine[0]['id']}/seen", bob["token"])
        page.get_by_test_id("ring-alice").click()
        expect(page.get_by_test_id("view-count")).to_have_text("1")
        page.get_by_test_id("view-count").click()
        expect(page.get_by_test_id("viewers-list")).to_contain_text("bob")
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()
        assert page.errors == []


FAKE_SOCKET = """
(() => {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
    constructor(url) {
      this.url = String(url); this.readyState = 0; this.sent = []; this.openedAt = Date.now();
      sockets.push(this);
      setTimeout(() => { this.readyState = 1; this.onopen && this.onopen({}); }, 5);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close(code = 1000, reason = '') {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
    }
    serverSend(frame) { this.onmessage && this.onmessage({ data: JSON.stringify(frame) }); }
    serverClose(code, reason = '') { this.readyState = 3; this.onclose && this.onclose({ code, reason }); }
  }
  window.WebSocket = FakeWebSocket;
  window.__sockets = sockets;
})();
"""


def test_live_updates_over_a_fake_socket(server: str, page: Any) -> None:
    """Snapshot/deltas, seen over the socket, creator events, 1012 retry_after_ms, 4001."""
    page.add_init_script(FAKE_SOCKET)
    last = "window.__sockets[window.__sockets.length - 1]"

    def send(frame: Any) -> None:
        page.evaluate(f"f => {last}.serverSend(f)", frame)

    with shot_on_failure(page, "live_updates_over_a_fake_socket"):
        login(page, server, "alice")
        page.wait_for_function(f"window.__sockets.length === 1 && {last}.sent.length > 0")
        token = page.evaluate("localStorage.getItem('stories.token')")
        assert page.evaluate(f"{last}.sent[0]") == {"op": "auth", "token": token}
        me = page.evaluate("storiesClient.user")
        tray = page.evaluate("storiesClient.get('/tray')")["items"]
        status = page.get_by_test_id("connection-status")
        expect(status).to_have_attribute("data-state", "reconnecting")

        # hello + snapshot packed in one array frame; the snapshot replaces the tray.
        snapshot = [e for e in tray if e["owner"]["handle"] != "carol"]
        send([
            {"type": "hello", "user": me, "session_id": "s1", "server_time": "2026-01-01T00:00:00.000Z", "ts": "x"},
            {"type": "tray.snapshot", "items": snapshot, "ts": "x"},
        ])  # fmt: skip
        expect(status).to_have_attribute("data-state", "connected")
        expect(page.get_by_test_id("ring-carol")).to_have_count(0)

        # tray.update upserts one owner (dan: new item, unseen, newest) and re-sorts.
        dan = next(e for e in tray if e["owner"]["handle"] == "dan")
        send({"type": "tray.update", "ts": "x", "entry": {**dan, "has_unseen": True,
              "latest_at": "2099-01-01T00:00:00.000Z", "first_unseen_id": "nope"}})  # fmt: skip
        expect(page.get_by_test_id("ring-dan")).to_have_attribute("data-unseen", "true")
        assert ring_states(page)[0] == ("dan", "true")
        send({"type": "tray.remove", "ts": "x", "owner_id": dan["owner"]["id"]})
        expect(page.get_by_test_id("ring-dan")).to_have_count(0)

        # Watching erin's item sends the seen op over the socket.
        erin = next(e for e in tray if e["owner"]["handle"] == "erin")
        page.get_by_test_id("ring-erin").click()
        page.wait_for_function(
            f"{last}.sent.some(f => f.op === 'seen' && f.item === {json.dumps(erin['first_unseen_id'])})"
        )
        page.keyboard.press("Escape")
        expect(page.get_by_test_id("ring-erin")).to_have_attribute("data-unseen", "false")
        sent_seen = f"{last}.sent.filter(f => f.op === 'seen').map(f => f.item)"
        assert page.evaluate(sent_seen) == [erin["first_unseen_id"]]  # one op, the item shown

        # A seen is a view of the item shown. bob's item 2 was seen on another device, so
        # the read pointer covers both items and his ring opens at item 1: showing it
        # reports item 1 (seen by the pointer, never viewed); item 2, not shown, is not.
        first, second = page.evaluate("storiesClient.get('/users/bob/stories')")["items"]
        page.evaluate(f"storiesClient.post('/stories/{second['id']}/seen')")
        page.get_by_test_id("ring-bob").click()
        expect(page.get_by_test_id("viewer").locator(".stage img")).to_have_attribute(
            "alt", first["caption"]
        )
        page.wait_for_function(f"{sent_seen}.includes({json.dumps(first['id'])})")
        page.keyboard.press("Escape")  # before the photo's 5 s are up: item 2 is never shown
        expect(page.get_by_test_id("viewer")).to_be_hidden()
        assert page.evaluate(sent_seen) == [erin["first_unseen_id"], first["id"]]

        # The creator's panel follows story.viewed / view_count / reaction / reply.
        post_photo(page, "Watch me")
        item = page.evaluate("storiesClient.get('/users/alice/stories')")["items"][0]
        page.get_by_test_id("ring-alice").click()
        expect(page.get_by_test_id("viewer").locator(".stage img")).to_have_attribute(
            "alt", "Watch me"
        )
        expect(page.get_by_test_id("view-count")).to_have_text("0")
        bob = next(e["owner"] for e in tray if e["owner"]["handle"] == "bob")
        frank = next(e["owner"] for e in tray if e["owner"]["handle"] == "frank")
        send({"type": "story.viewed", "ts": "x", "item_id": item["id"], "viewer": bob,
              "seen_at": "2026-11-29T12:00:00.000Z", "view_count": 1})  # fmt: skip
        expect(page.get_by_test_id("view-count")).to_have_text("1")
        send({"type": "story.view_count", "ts": "x", "item_id": item["id"], "view_count": 7})
        expect(page.get_by_test_id("view-count")).to_have_text("7")
        send({"type": "story.reaction", "ts": "2026-11-29T12:00:01.000Z", "item_id": item["id"],
              "user": frank, "emoji": "🔥"})  # fmt: skip
        send({"type": "story.reply", "ts": "2026-11-29T12:00:02.000Z", "item_id": item["id"],
              "user": bob, "text": "nice one"})  # fmt: skip
        page.get_by_test_id("view-count").click()
        viewers = page.get_by_test_id("viewers-list")
        expect(viewers).to_contain_text("bob")
        expect(viewers.locator("[data-user=frank]")).to_contain_text("🔥")
        expect(page.get_by_test_id("viewer")).to_contain_text("nice one")
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")
        expect(page.get_by_test_id("viewer")).to_be_hidden()
        expect(page.locator("#activity")).to_contain_text("nice one")

        # 1012 with a suggested wait: reconnect no sooner than that, then connected again.
        page.evaluate(f"""() => {{ window.__closedAt = Date.now();
            {last}.serverClose(1012, JSON.stringify({{retry_after_ms: 1500}})); }}""")
        expect(status).to_have_attribute("data-state", "reconnecting")
        page.wait_for_function("window.__sockets.length === 2", timeout=5000)
        waited = page.evaluate(f"{last}.openedAt - window.__closedAt")
        assert 1500 <= waited <= 2500, waited
        page.wait_for_function(f"{last}.readyState === 1")
        send({"type": "hello", "user": me, "session_id": "s2", "server_time": "x", "ts": "x"})
        expect(status).to_have_attribute("data-state", "connected")

        # 4001: no reconnect; back to sign in, token dropped.
        page.evaluate(f"{last}.serverClose(4001, 'unauthorized')")
        expect(page.get_by_test_id("login-button")).to_be_visible()
        assert page.evaluate("localStorage.getItem('stories.token')") is None
        page.wait_for_timeout(1500)
        assert page.evaluate("window.__sockets.length") == 2
        assert page.errors == []


def test_two_users_live_over_the_real_socket(demo: DemoServer, browser: Any) -> None:
    """bob posts → alice's ring turns unseen within 1 s; alice watches → bob's count and
    seen-by move within 1 s; alice goes live for 3 s from the fake camera → bob's ring
    for her lights up and the clip plays; the server restarts → "reconnecting", then
    the true tray."""
    server = demo.base
    contexts = [
        browser.new_context(viewport=PHONE, permissions=["camera", "microphone"]) for _ in range(2)
    ]
    alice, bob = (c.new_page() for c in contexts)
    try:
        with shot_on_failure(alice, "real_socket_alice"), shot_on_failure(bob, "real_socket_bob"):
            for pg, handle in ((alice, "alice"), (bob, "bob")):
                login(pg, server, handle)
                expect(pg.get_by_test_id("connection-status")).to_have_attribute(
                    "data-state", "connected", timeout=15_000
                )
            # alice has seen bob's stories: grey ring. bob posts: it turns unseen, no reload.
            alice.get_by_test_id("ring-bob").click()
            expect(alice.get_by_test_id("viewer").locator(".stage img")).to_be_visible()
            alice.keyboard.press("ArrowRight")  # bob's second item, a video
            expect(alice.get_by_test_id("ring-bob")).to_have_attribute(
                "data-unseen", "false", timeout=10_000
            )
            alice.keyboard.press("Escape")
            bob.get_by_test_id("add-story").first.click()
            bob.get_by_test_id("upload-input").set_input_files(str(MEDIA / "coffee.png"))
            bob.get_by_test_id("post-button").click()
            bob.wait_for_function(  # the post is stored: bob now has 3 items
                "async () => (await storiesClient.get('/users/bob/stories')).items.length === 3",
                polling=100,
                timeout=30_000,
            )
            expect(alice.get_by_test_id("ring-bob")).to_have_attribute(
                "data-unseen", "true", timeout=1_000
            )

            # bob keeps his new item open (paused); alice watches it; bob's panel updates.
            bob.get_by_test_id("ring-bob").click()
            expect(bob.get_by_test_id("progress").locator(".seg")).to_have_count(3)
            bob.keyboard.press("ArrowRight")
            bob.keyboard.press("ArrowRight")
            bob.keyboard.press(" ")
            expect(bob.get_by_test_id("viewer").locator(".stage img")).to_have_attribute(
                "alt", "Photo by bob"
            )
            expect(bob.get_by_test_id("view-count")).to_have_text("0")
            alice.get_by_test_id("ring-bob").click()
            expect(alice.get_by_test_id("ring-bob")).to_have_attribute(
                "data-unseen", "false", timeout=10_000
            )
            alice.keyboard.press("Escape")
            expect(bob.get_by_test_id("view-count")).to_have_text("1", timeout=1_000)
            bob.get_by_test_id("view-count").click()
            expect(bob.get_by_test_id("viewers-list")).to_contain_text("alice", timeout=1_000)
            bob.keyboard.press("Escape")

            # Go live: countdown, record ~2 s, stop → alice's own ring; bob sees it live.
            alice.get_by_test_id("go-live").click()
            alice.get_by_role("button", name="Start recording").click()
            stop = alice.get_by_test_id("stop-capture")
            expect(stop).to_be_enabled(timeout=20_000)
            alice.wait_for_timeout(3000)
            stop.click()
            expect(alice.get_by_test_id("ring-alice")).to_be_visible(timeout=30_000)
            expect(bob.get_by_test_id("ring-alice")).to_have_attribute(
                "data-unseen", "true", timeout=10_000
            )
            clip = alice.evaluate("storiesClient.get('/users/alice/stories')")["items"][-1]
            assert clip["source"] == "capture"
            assert clip["media"]["kind"] == "video"
            bob.get_by_test_id("ring-alice").click()
            bob.wait_for_function(
                "() => { const v = document.querySelector('[data-testid=viewer] video');"
                " return v && v.currentTime > 1; }",
                timeout=15_000,
            )
            bob.keyboard.press("Escape")

            # The server restarts: the badge says reconnecting, then the tray is true again.
            demo.stop()
            expect(bob.get_by_test_id("connection-status")).to_have_attribute(
                "data-state", "reconnecting", timeout=10_000
            )
            demo.start()
            expect(bob.get_by_test_id("connection-status")).to_have_attribute(
                "data-state", "connected", timeout=30_000
            )
            truth = bob.evaluate("storiesClient.get('/tray')")["items"]
            for entry in truth:
                expect(bob.get_by_test_id(f"ring-{entry['owner']['handle']}")).to_have_attribute(
                    "data-unseen", "true" if entry["has_unseen"] else "false"
                )
    finally:
        for c in contexts:
            c.close()
