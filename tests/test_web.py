"""The dispatchers' web console: no anonymous use, CSRF, and the whole loop in a real
browser (Debian's chromium and chromium-driver, driven by Selenium) against a real hub on
PostgreSQL, Mosquitto and a gateway on mock pins: a press appears, a dispatcher acknowledges
it in the page, and the rider's lamp shows acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import Engine, update

from dispatch.hub.commands import Commander
from dispatch.hub.schema import stations
from dispatch.hub.service import run_hub
from dispatch.hub.store import HubStore, migrate, open_engine
from dispatch.inbound import printable, read
from dispatch.web.app import ProxyLogin, create_app, hash_password
from gateway.core.model import Event, Priority
from gateway.daemon import Gateway
from gateway.testing.browser import chromium, log_in
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto, free_port
from gateway.testing.postgres import PostgreSQL
from gateway.uplink.topics import Topics
from tests.helpers import (
    lamp_becomes,
    lifecycle_config,
    publish_all,
    publisher,
    raise_alert,
    subscribe,
)
from tests.webhelpers import PASSWORD, SECRET, logged_in, serving

WAIT = 30.0
@pytest.fixture
def store(tmp_path: Path) -> Iterator[HubStore]:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    hub = HubStore(engine)
    hub.add_operator("desk-1", hash_password(PASSWORD))
    yield hub
    engine.dispose()


def client(store: HubStore) -> httpx.AsyncClient:
    app = create_app(store, Commander("stationgw/v1", reply_timeout_s=0.5), asyncio.Event(),
                     secret=SECRET)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://console")


async def test_nothing_is_served_to_anyone_not_logged_in(store: HubStore) -> None:
    async with client(store) as web:
        assert (await web.get("/")).status_code == 303
        assert (await web.get("/api/alerts")).status_code == 401
        assert (await web.get("/api/stream")).status_code == 401
        assert (await web.post("/api/command", json={})).status_code == 401
        assert (await logged_in(web, "wrong password")).status_code == 401
        assert (await web.get("/api/alerts")).status_code == 401


async def test_commands_need_the_csrf_token_and_are_audited(store: HubStore) -> None:
    async with client(store) as web:
        assert (await logged_in(web)).status_code == 303
        assert (await web.get("/api/alerts")).json()["alerts"] == []
        command = {"station": "s-1", "alert_id": "a1", "action": "acknowledge"}
        assert (await web.post("/api/command", json=command)).status_code == 403
        page = await web.get("/")
        csrf = page.text.split('name="csrf" content="')[1].split('"')[0]
        bad = await web.post("/api/command", json={**command, "action": "explode"},
                             headers={"X-CSRF-Token": csrf})
        assert bad.status_code == 400
        sent = await web.post("/api/command", json=command, headers={"X-CSRF-Token": csrf})
        assert sent.status_code == 504  # the hub is not connected to a broker here
    (entry,) = store.audit_log()
    assert (entry["operator"], entry["action"], entry["outcome"]) == (
        "desk-1", "acknowledge", "no_reply")


@pytest.mark.parametrize("name", ["desk-7", "ops\x1b[2J\u202eeve", "x" * 300])
async def test_a_trusted_proxy_names_the_operator_and_no_one_else_can(
    store: HubStore, name: str
) -> None:
    """Single sign-on through a reverse proxy: its header is believed from its address
    only; a client that sends the header itself is anonymous."""
    def app() -> object:
        return create_app(store, Commander("stationgw/v1", reply_timeout_s=0.2),
                          asyncio.Event(), secret=SECRET,
                          proxy=ProxyLogin("X-Remote-User", frozenset({"10.0.0.2"})))

    headers = {b"X-Remote-User": name.encode()}  # bytes on the wire, read as latin-1
    for peer, allowed in ((("10.0.0.2", 5000), True), (("10.0.0.66", 5000), False),
                          (("127.0.0.1", 5000), False)):
        transport = httpx.ASGITransport(app=app(), client=peer)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as web:
            assert (await web.get("/api/alerts", headers=headers)).status_code == (
                200 if allowed else 401)
            if allowed:
                page = await web.get("/", headers=headers)
                csrf = page.text.split('name="csrf" content="')[1].split('"')[0]
                await web.post("/api/command", headers={**headers, b"X-CSRF-Token": csrf.encode()},
                               json={"station": "s-1", "alert_id": "a1",
                                     "action": "acknowledge"})
    (entry,) = store.audit_log()
    # As the proxy named them, with no control characters or bidi marks.
    assert entry["operator"] == printable(name.encode().decode("latin-1")).strip()[:64]


async def test_a_station_not_heard_from_is_flagged_silent(store: HubStore) -> None:
    topics = Topics("stationgw/v1", "north")
    status = read(topics.status, json.dumps({"state": "online", "station": "north",
                                             "version": "1", "wall_time": 1000.0}).encode(),
                  "stationgw/v1")
    assert store.record([status])["status"] == 1
    async with client(store) as web:
        await logged_in(web)
        (north,) = (await web.get("/api/alerts")).json()["stations"]
        assert (north["status"], north["silent"]) == ("online", False)
        with store.engine.begin() as conn:  # the station's last word, 91 s ago
            conn.execute(update(stations).values(heard_at=time.time() - 91))
        (north,) = (await web.get("/api/alerts")).json()["stations"]
        assert (north["status"], north["silent"]) == ("online", True)


async def until_stored(store: HubStore, count: int) -> None:
    """Until the hub has stored `count` events."""
    async with asyncio.timeout(WAIT):
        while await asyncio.to_thread(store.event_count) < count:
            await asyncio.sleep(0.1)


def hub_store(postgres: PostgreSQL) -> tuple[Engine, HubStore]:
    """A new hub database on `postgres`, migrated, with operator desk-1."""
    engine = open_engine(postgres.new_database("web"))
    migrate(engine)
    store = HubStore(engine)
    store.add_operator("desk-1", hash_password(PASSWORD))
    return engine, store


def timeline(browser: Chrome, alert_id: str) -> tuple[str, list[str], list[str]]:
    """The alert's details: (summary, event rows, command rows), once acknowledged."""
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-alert="{alert_id}"]')
    row.find_element(By.CSS_SELECTOR, "button.details").click()
    WebDriverWait(browser, WAIT).until(
        ec.text_to_be_present_in_element((By.ID, "detail-events"),
                                         "acknowledged"))
    # Read at once in the page: the view is redrawn on every change.
    return tuple(browser.execute_script(
        "const rows = s => [...document.querySelectorAll(s)].map(r => r.innerText);"
        "return [document.getElementById('detail-summary').innerText,"
        " rows('#detail-events tr'), rows('#detail-commands tr')];"))


def type_eta(browser: Chrome, alert_id: str) -> None:
    """Type 12 into the alert's ETA box."""
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-alert="{alert_id}"]')
    row.find_element(By.CSS_SELECTOR, 'input[aria-label="ETA minutes"]').send_keys(
        "12")


def eta_after_another_alert(browser: Chrome, alert_id: str) -> str:
    """The alert's ETA box, once a second alert is in the queue."""
    WebDriverWait(browser, WAIT).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#alerts tr")) == 2)
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-alert="{alert_id}"]')
    return str(row.find_element(
        By.CSS_SELECTOR, 'input[aria-label="ETA minutes"]').get_attribute("value"))


#: The page's fetches of /api/alerts answered 300 ms late, counting how many are in flight
#: at once (`window.mostInFlight`).
SLOW_ALERTS_FETCH = """
                window.inFlight = 0; window.mostInFlight = 0; window.fetches = 0;
                const real = window.fetch;
                window.fetch = async (...args) => {
                  if (String(args[0]) !== "/api/alerts") return real(...args);
                  window.fetches++; window.inFlight++;
                  window.mostInFlight = Math.max(window.mostInFlight, window.inFlight);
                  try {  // a loaded hub: each answer takes a while
                    await new Promise(done => setTimeout(done, 300));
                    return await real(...args);
                  } finally { window.inFlight--; }
                };"""


async def telemetry_burst(broker: Mosquitto, store: HubStore, station_id: str) -> None:
    """40 readings of the station published one every 50 ms, until the hub has stored them
    all, and a second more."""
    topics = Topics("stationgw/v1", station_id)
    burst = [topics.render(Event("sensor.reading", "s-1", Priority.P3, {"value": n}),
                           10_000 + n, time.time()) for n in range(40)]
    before = await asyncio.to_thread(store.event_count)
    with publisher(broker.port) as raw:
        for message in burst:  # a commit, and a "changed", every 50 ms
            publish_all(raw, [message])
            await asyncio.sleep(0.05)
    await until_stored(store, before + len(burst))
    await asyncio.sleep(1.0)


async def test_a_dispatcher_acknowledges_a_press_in_the_browser_and_the_lamp_follows(
    broker: Mosquitto, tmp_path: Path, postgres: PostgreSQL
) -> None:
    engine, store = hub_store(postgres)
    commander, changed = Commander("stationgw/v1"), asyncio.Event()
    app = create_app(store, commander, changed, secret=SECRET)
    port = free_port()
    config = lifecycle_config(tmp_path, broker.url)
    root = f"stationgw/v1/{config.station_id}"
    hub = asyncio.create_task(run_hub(store, "127.0.0.1", broker.port,
                                      client_id=f"hub-{uuid.uuid4().hex[:8]}",
                                      commander=commander, changed=changed))
    browser = await asyncio.to_thread(chromium)
    try:
        async with (
            serving(app, port),
            subscribe(broker.port, f"{root}/events/#") as sub,
            running(Gateway(config)) as gw,
        ):
            await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
            await asyncio.to_thread(log_in, browser, port, "desk-1", PASSWORD, WAIT)
            alert_id = await raise_alert(gw, sub)

            def acknowledge() -> str:
                row = WebDriverWait(browser, WAIT).until(ec.presence_of_element_located(
                    (By.CSS_SELECTOR, f'tr[data-alert="{alert_id}"]')))
                assert "P1" in row.text and config.station_id in row.text
                row.find_element(By.CSS_SELECTOR,
                                 'button[data-action="acknowledge"]').click()
                WebDriverWait(browser, WAIT).until(
                    ec.text_to_be_present_in_element((By.ID, "result"), "applied"))
                return browser.find_element(By.ID, "result").text

            result = await asyncio.to_thread(acknowledge)
            await lamp_becomes(gw, "hp-1", "acknowledged")
            assert "applied" in result

            # A dispatcher typing an ETA keeps it while the queue changes under them.
            await asyncio.to_thread(type_eta, browser, alert_id)
            await raise_alert(gw, sub, "hp-2")
            assert await asyncio.to_thread(eta_after_another_alert, browser, alert_id) == "12"

            # A burst of telemetry while the hub answers slowly: the page never has more
            # than one refresh of its own in flight (the stream brings the queue).
            await asyncio.to_thread(browser.execute_script, SLOW_ALERTS_FETCH)
            await telemetry_burst(broker, store, config.station_id)
            most = await asyncio.to_thread(
                browser.execute_script, "return window.mostInFlight;")
            assert most <= 1

            summary, events, commands = await asyncio.to_thread(timeline, browser, alert_id)
            assert "1 press(es)" in summary and "acknowledged" in summary
            assert "help_point.press" in events[0] and "open" in events[0]
            assert "alert.acknowledged" in events[-1] and "web:desk-1" in events[-1]
            assert len(commands) == 1
            assert "desk-1" in commands[0] and "applied" in commands[0]
            await asyncio.to_thread(browser.quit)  # closes its event stream
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(browser.quit)
        hub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hub
    (entry,) = store.audit_log()
    assert (entry["operator"], entry["action"], entry["outcome"], entry["alert_id"]) == (
        "desk-1", "acknowledge", "applied", alert_id)
    await asyncio.sleep(0)
    engine.dispose()
