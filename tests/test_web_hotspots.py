"""The console's hotspots page: operators only, the report's views over a chosen period with
small cells suppressed as in exports, computed off the event loop and kept for a while, and
the planted hotspots of a simulated history read off it in a real browser (Debian's chromium,
driven by Selenium)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import insert, select

from dispatch.analysis.console import HotspotSource
from dispatch.analysis.metro import SHIPPED
from dispatch.analysis.network import read_mapping, read_network
from dispatch.analysis.record import read_ridership
from dispatch.analysis.simulate import History, simulate_history
from dispatch.hub.commands import Commander
from dispatch.hub.schema import alerts
from dispatch.hub.store import HubStore, migrate, open_engine
from dispatch.web.app import create_app, hash_password
from gateway.testing.browser import chromium
from gateway.testing.mosquitto import free_port
from tests.webhelpers import PASSWORD, SECRET, logged_in, serving

UNTIL = 1_796_000_400.0  # a Monday 00:00 UTC: whole weeks
WEEKS = 8  # with RATE: every planted site is found, and the history is quick to write
RATE = 1.5
SEED = 14
WAIT = 60.0
#: A class no simulated request has: its row in "By class" holds only these few requests.
FEW = 3


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubStore, History]]:
    """A hub database with WEEKS of the simulated metro (seed SEED), an operator, and FEW
    requests of class P3 (fewer than k = 5)."""
    network = read_network(SHIPPED, read_mapping(SHIPPED / "stations.csv"))
    ridership = read_ridership(SHIPPED / "ridership.csv")
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('hotspots') / 'hub.db'}")
    done = simulate_history(engine, network, ridership, weeks=WEEKS, seed=SEED, until=UNTIL,
                            rate=RATE)
    with engine.begin() as conn:
        rows = conn.execute(select(alerts).where(alerts.c["class"] == "P2").limit(FEW))
        few = [{**row._asdict(), "alert_id": f"p3-{n}", "class": "P3"}
               for n, row in enumerate(rows)]
        conn.execute(insert(alerts), few)
    store = HubStore(engine)
    store.add_operator("desk-1", hash_password(PASSWORD))
    yield store, done
    engine.dispose()


class Clock:
    """The period's end (the page's "now"), counting how often an analysis asked for it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return UNTIL


def console(store: HubStore, clock: Clock | None = None, **source: object) -> object:
    return create_app(store, Commander("stationgw/v1", reply_timeout_s=0.2), asyncio.Event(),
                      secret=SECRET,
                      hotspots=HotspotSource(clock=clock or Clock(), **source))  # type: ignore[arg-type]


def web(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                             base_url="http://console", timeout=WAIT)


async def test_the_hotspots_page_is_for_operators_only(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    store = HubStore(engine)
    store.add_operator("desk-1", hash_password(PASSWORD))
    clock = Clock()
    async with web(console(store, clock)) as client:
        for path in ("/hotspots", "/hotspots?since=90d", "/hotspots?since=bogus"):
            answer = await client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/login"
        assert clock.calls == 0, "nothing is computed for anyone not logged in"
        await logged_in(client)
        bad = await client.get("/hotspots?since=3 months")
        assert bad.status_code == 400 and "give a length such as 90d, 12w or 36h" in bad.text
        assert (await client.get("/hotspots?since=1000w")).status_code == 400
        assert clock.calls == 0
    engine.dispose()


async def test_a_broken_set_up_is_named_and_not_kept(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    store = HubStore(engine)
    store.add_operator("desk-1", hash_password(PASSWORD))
    async with web(console(store, gtfs=tmp_path / "no-feed")) as client:
        await logged_in(client)
        for _ in range(2):  # a failure is not cached: each request tries again
            answer = await client.get("/hotspots")
            assert answer.status_code == 503
            assert "no such GTFS feed" in answer.text and "no-feed" in answer.text
    engine.dispose()


def test_the_hub_starts_without_the_analysis_stack(tmp_path: Path) -> None:
    """Building the console (what `stationgw hub run --web` does) loads no pandas: the
    analysis loads on the first request for the hotspots page."""
    probe = textwrap.dedent(f"""
        import asyncio, sys
        from dispatch.hub.commands import Commander
        from dispatch.hub.store import HubStore, migrate, open_engine
        from dispatch.web.app import create_app
        engine = open_engine("sqlite:///{tmp_path / 'hub.db'}")
        migrate(engine)
        create_app(HubStore(engine), Commander("stationgw/v1"), asyncio.Event(), secret="x" * 40)
        heavy = ("pandas", "numpy", "esda", "libpysal", "gtfs_kit", "plotly", "scipy",
                 "dispatch.analysis.report", "dispatch.analysis.record")
        print(sorted(m for m in sys.modules if m.startswith(heavy)))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=False, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_screens_on_one_period_share_one_analysis(
    history: tuple[HubStore, History],
) -> None:
    store, _ = history
    clock = Clock()
    async with web(console(store, clock, ttl_s=600)) as client:
        await logged_in(client)
        pages = await asyncio.gather(*(client.get(f"/hotspots?since={WEEKS}w")
                                       for _ in range(3)))
        assert [p.status_code for p in pages] == [200] * 3
        assert clock.calls == 1, "three screens at once: one analysis"
        again = await client.get(f"/hotspots?since={WEEKS}w")
        assert clock.calls == 1, "a reload within the ttl is served from the cache"
        assert again.text == pages[0].text
        for section in ('id="recommendations"', 'id="hotspot-map"', 'id="heat-maps"',
                        'id="service"', 'id="concentration"', 'id="suppression"'):
            assert section.replace('"', "") in again.text or section in again.text
        assert again.text.count("<div class=figure ") == 5
        # What draws them: plotly.js and the drawing lines, the same for every period.
        script = await client.get("/hotspots/figures.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "Plotly.newPlot" in script.text and len(script.text) > 1_000_000
        assert '<script defer src="/hotspots/figures.js">' in again.text
        assert "Cells with 1 to 4 requests are suppressed" in again.text


async def test_the_planted_hotspots_are_read_off_the_page_in_the_browser(
    history: tuple[HubStore, History],
) -> None:
    store, planted = history
    app = console(store)
    port = free_port()
    browser = await asyncio.to_thread(chromium)
    try:
        async with serving(app, port):

            def read_page() -> tuple[list[dict[str, str]], str, list[dict[str, str]], int]:
                browser.get(f"http://127.0.0.1:{port}/hotspots?since={WEEKS}w")
                browser.find_element(By.ID, "username").send_keys("desk-1")
                browser.find_element(By.ID, "password").send_keys(PASSWORD)
                browser.find_element(By.ID, "login").click()
                # From the queue, by its link (90 days by default), then the history's period.
                WebDriverWait(browser, WAIT).until(
                    ec.element_to_be_clickable((By.ID, "hotspots-link"))).click()
                since = WebDriverWait(browser, WAIT).until(
                    ec.presence_of_element_located((By.ID, "since")))
                assert since.get_attribute("value") == "90d"
                since.clear()
                since.send_keys(f"{WEEKS}w")
                browser.find_element(By.ID, "show").click()
                WebDriverWait(browser, WAIT).until(
                    ec.url_contains(f"since={WEEKS}w"))
                WebDriverWait(browser, WAIT).until(
                    ec.presence_of_element_located((By.ID, "recommendations")))
                recs = _rows(browser, "//h2[@id='recommendations']/following-sibling::table[1]")
                by_class = _rows(browser, "//h3[text()='By class']/following-sibling::table[1]")
                # The figures, drawn by the script the console serves: every one has its plot.
                drawn = WebDriverWait(browser, WAIT).until(lambda b: b.execute_script(
                    "var f=document.querySelectorAll('div.figure');"
                    "var d=[].filter.call(f,function(e){return e.querySelector('.main-svg')});"
                    "return f.length && d.length==f.length ? d.length : 0;"))
                return recs, browser.find_element(By.ID, "suppression").text, by_class, drawn

            recs, notice, by_class, drawn = await asyncio.to_thread(read_page)
            await asyncio.to_thread(browser.quit)  # closes its connections to the server
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(browser.quit)
    # Each planted site: a recommendation in its band, naming its stations, asking for the
    # response that was planted there.
    for spot in planted.planted:
        rows = [r for r in recs if r["band"] == spot.band
                and set(r["station_ids"].split()) & set(spot.stations)]
        assert rows, (spot, recs)
        assert rows[0]["dominant_response"] == spot.response, (spot, rows[0])
        assert float(rows[0]["per_week"]) > 0
    assert drawn == 5
    assert "Small cells suppressed" in notice
    assert "Cells with 1 to 4 requests are suppressed" in notice
    # The FEW P3 requests are a cell under k: listed as suppressed, with nothing shown.
    (p3,) = [r for r in by_class if r["class"] == "P3"]
    assert p3["suppressed"] == "True"
    assert all(p3[c] == "" for c in p3 if c not in ("class", "suppressed")), p3
    assert all(int(r["requests"]) >= 5 for r in by_class if r["class"] != "P3")


def _rows(browser: object, xpath: str) -> list[dict[str, str]]:
    """A table of the page as dicts (header -> cell text)."""
    table = browser.find_element(By.XPATH, xpath)  # type: ignore[attr-defined]
    header = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    return [dict(zip(header, [td.text for td in tr.find_elements(By.TAG_NAME, "td")],
                     strict=True))
            for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
