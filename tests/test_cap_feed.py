"""CAP 1.2 delivered to a CAD: issued once from the hub's database, served as a feed a CAD
polls, and pushed to a CAD's HTTP endpoint from a durable queue that outlives every failure
of the endpoint and a restart of the hub. Each message is checked against the official OASIS
CAP 1.2 XML Schema (tests/test_cap.py's `valid`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from lxml import etree

from dispatch.hub.capfeed import ATOM_NS, Push, issue_and_push
from dispatch.hub.commands import Commander
from dispatch.hub.store import HubStore, migrate, open_engine
from dispatch.inbound import read
from dispatch.web.app import create_app
from gateway.core.model import AlertRecord, AlertState, Event, Priority
from gateway.station.lifecycle import alert_body
from gateway.uplink.topics import Topics
from tests.helpers import CAP_NS_MAP as NS
from tests.helpers import valid_cap

TOKEN = "cad-token-0123456789abcdef"  # noqa: S105 - a test token
WAIT = 30.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HubStore]:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    yield HubStore(engine)
    engine.dispose()


def record(store: HubStore, station: str, alert_id: str, states: list[AlertState],
           first_seq: int = 1) -> None:
    """The hub records one alert's events, one per state, as the gateway sends them."""
    topics = Topics("stationgw/v1", station)
    batch = []
    for seq, state in enumerate(states, start=first_seq):
        rec = AlertRecord(alert_id, "hp-1", state, Priority.P1,
                          {"location": "platform 1", "first_press": 1000.0})
        kind = "help_point.press" if state == "open" else f"alert.{state}"
        topic, payload = topics.render(Event(kind, "hp-1", Priority.P1, alert_body(rec)),
                                       seq, 1000.0 + seq)
        batch.append(read(topic, payload, "stationgw/v1"))
    store.record(batch)


def entries(feed: bytes) -> list[etree._Element]:
    root = etree.fromstring(feed)
    assert root.tag == f"{{{ATOM_NS}}}feed"
    out = []
    for entry in root.iterfind(f"{{{ATOM_NS}}}entry"):
        (cap,) = entry.find(f"{{{ATOM_NS}}}content")  # type: ignore[misc]
        out.append(valid_cap(etree.tostring(cap)))
    return out


async def test_the_feed_serves_every_transition_once_as_valid_cap_after_a_cursor(
    store: HubStore,
) -> None:
    record(store, "north", "a1", ["open", "acknowledged", "resolved"])
    record(store, "south", "b1", ["open", "assigned"])
    assert store.issue_cap(sender="hub@x") == 5
    assert store.issue_cap(sender="hub@x") == 0  # issued once, however often it runs
    app = create_app(store, Commander("stationgw/v1"), asyncio.Event(), secret="x" * 40,
                     cap_token=TOKEN, cap_sender="hub@x")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://hub") as web:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            assert (await web.get("/cap/feed", headers=headers)).status_code == 401
        cad = {"Authorization": f"Bearer {TOKEN}"}
        feed = await web.get("/cap/feed", headers=cad)
        assert feed.headers["content-type"].startswith("application/atom+xml")
        messages = entries(feed.content)
        by_alert: dict[str, list[str]] = {}
        for m in messages:
            by_alert.setdefault(m.findtext("cap:incidents", namespaces=NS) or "", []).append(
                m.findtext("cap:msgType", namespaces=NS) or "")
        assert by_alert == {"north:a1": ["Alert", "Update", "Cancel"],
                            "south:b1": ["Alert", "Update"]}
        cancel = next(m for m in messages if m.findtext("cap:msgType", namespaces=NS)
                      == "Cancel")
        assert len((cancel.findtext("cap:references", namespaces=NS) or "").split()) == 2
        # A CAD polls on from the `next` link and gets only what came since.
        root = etree.fromstring(feed.content)
        (nxt,) = [link.get("href") for link in root.iterfind(f"{{{ATOM_NS}}}link")
                  if link.get("rel") == "next"]
        assert nxt is not None
        assert entries((await web.get(nxt, headers=cad)).content) == []
        record(store, "south", "b1", ["resolved"], first_seq=3)
        store.issue_cap(sender="hub@x")
        (late,) = entries((await web.get(nxt, headers=cad)).content)
        assert late.findtext("cap:msgType", namespaces=NS) == "Cancel"
        identifier = late.findtext("cap:identifier", namespaces=NS)
        one = await web.get(f"/cap/messages/{identifier}.xml", headers=cad)
        assert one.headers["content-type"] == "application/cap+xml"
        assert valid_cap(one.content).findtext("cap:identifier", namespaces=NS) == identifier
        assert (await web.get("/cap/messages/nope.xml", headers=cad)).status_code == 404
        assert (await web.get("/cap/feed?after=x", headers=cad)).status_code == 400


#: What a hostile or broken CAD endpoint does to successive pushes before it takes them.
FAULTS = [503, 500, 429, 400, 302, "close", "slow", 502]


class Cad:
    """A real HTTP endpoint: fails the first pushes as `FAULTS` says, then takes them."""

    def __init__(self, faults: list[object]) -> None:
        self.faults = list(faults)
        self.taken: list[bytes] = []
        self.tokens: set[str | None] = set()
        cad = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fault = cad.faults.pop(0) if cad.faults else None
                if fault == "close":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "slow":
                    time.sleep(1.0)  # past the pusher's timeout
                    fault = 503
                if fault is None:
                    cad.taken.append(body)
                    cad.tokens.add(self.headers.get("Authorization"))
                self.send_response(int(fault) if isinstance(fault, int) else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cap"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.asynccontextmanager
async def pushing(store: HubStore, url: str) -> AsyncIterator[list[str]]:
    states: list[str] = []
    task = asyncio.create_task(issue_and_push(
        store, asyncio.Event(), sender="hub@x", status="Test",
        push=Push(url, TOKEN, timeout_s=0.5, retry_max_s=0.3), on_state=states.append))
    try:
        yield states
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], object], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.05)


async def test_every_message_reaches_a_failing_cad_in_order_across_a_hub_restart(
    store: HubStore, tmp_path: Path,
) -> None:
    cad = Cad(FAULTS)
    try:
        record(store, "north", "a1", ["open", "acknowledged"])
        async with pushing(store, cad.url) as states:
            await until(lambda: cad.taken, "the first message taken after every fault")
        assert len([s for s in states if "failed" in s]) == len(FAULTS)
        # The hub stops; meanwhile more happens; a new hub process on the same database.
        record(store, "north", "a1", ["resolved"], first_seq=3)
        record(store, "south", "b1", ["open"])
        cad.faults = [503, "close"]
        restarted = HubStore(open_engine(str(store.engine.url)))
        try:
            async with pushing(restarted, cad.url):
                await until(lambda: len({*cad.taken}) == 4, "every message taken")
                await until(lambda: restarted.push_backlog()["pending"] == 0, "queue empty")
        finally:
            restarted.engine.dispose()
        feed = [row["xml"] for row in store.cap_feed()]
        first_seen = list(dict.fromkeys(cad.taken))
        assert first_seen == feed  # every one, oldest first: each alert's chain in order
        for xml in first_seen:
            assert valid_cap(xml).findtext("cap:status", namespaces=NS) == "Test"
        assert cad.tokens == {f"Bearer {TOKEN}"}
    finally:
        cad.close()
