"""Hub memory: the hub's RSS with 500 stations' retained state and 1M stored events, beside
a raw paho subscriber process taking the same retained messages in the same run.

Setup, per database (`--db postgresql sqlite`): a fresh hub database with `--events`
events written straight into it by one `INSERT ... SELECT` (PostgreSQL `generate_series`,
SQLite a recursive CTE: no Python per row): `--stations` stations' sensor readings, every
`--alert-every`-th seq a help-point press, and the alerts those presses raised (each
station's newest open, the rest resolved). The broker holds every station's retained
status, health report and open-alerts snapshot (the one open alert), as gateways leave them.

Then `stationgw hub run` starts under a new client id, takes the retained state (it is done
when the `stations` table has every station's status and health), settles for `--settle-s`,
and its VmRSS (median of 5 readings a second apart) and VmHWM (peak) are read from
/proc/PID/status. Then the same with `--web` after an operator has logged in and loaded the
page and `/api/alerts` (the open alerts and every station's health). Reference rows: the
hub on an empty database with no stations; the baseline: a raw paho-mqtt subscriber process
(QoS 1, paho's network thread, one set of the seen keys) subscribed to the same topics.

    python -m bench.hub_memory [--stations 500] [--events 1000000] [--db postgresql sqlite]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, func, inspect, select, text

from bench import REPO
from bench.figures import Figure, print_table, write_json
from bench.hubkit import HubProcess, RawCounter, migrated
from bench.machine import print_machine, workdir
from bench.procs import proc_memory_kib
from dispatch.hub.schema import stations
from dispatch.hub.store import HubStore
from dispatch.inbound import Inbound, read
from gateway.testing.mosquitto import Mosquitto, free_port
from gateway.testing.postgres import PostgreSQL

PASSWORD = "bench operator password"  # noqa: S105 - a throwaway operator
BASE_WALL = 1_800_000_000.0
COUNTERS = (
    "accepted_P0", "accepted_P1", "accepted_P2", "accepted_P3", "delivered_P0",
    "delivered_P1", "delivered_P2", "delivered_P3", "evicted_P3", "expired_P3",
    "presses", "holds", "repeats", "escalations", "commands_applied", "commands_rejected",
    "command_replies_suppressed", "reconnects", "broker_failovers", "no_subscribers",
    "publish_refused", "store_write_errors", "store_read_errors", "alerts_snapshot_refused",
)
BOARD = ("frames", "rejected_bad_crc", "rejected_oversize", "gaps", "lost", "duplicates",
         "resets", "reopens", "online", "offline", "commands_acked", "commands_failed")


def station_name(i: int) -> str:
    """The i-th station's id (as the bulk load writes it)."""
    return f"st-{i:03d}"


def retained_state(prefix: str, n_stations: int, per_station: int,
                   alert_every: int) -> list[tuple[str, bytes]]:
    """Every station's retained status, health and open-alerts snapshot."""
    last_alert = ((per_station - 1) // alert_every) * alert_every + 1
    out = []
    now = time.time()
    for i in range(n_stations):
        name = station_name(i)
        root = f"{prefix}/{name}"
        status = {"state": "online", "station": name, "version": "0.1.0", "wall_time": now}
        health = {
            "station": name, "version": "0.1.0", "uptime_s": 86_400.0 + i, "wall_time": now,
            "outbox": {"by_class": {"P3": {"pending": 2}}, "rows": 2, "bytes": 812,
                       "memory_rows": 0, "in_flight": 1, "oldest_unsent_age_s": 0.4},
            "faults": [{"code": "device_offline:edge-2",
                        "message": "board edge-2 missed 3 heartbeats", "since": now - 60}]
            if i % 10 == 0 else [],
            "links": {"broker:mqtts://broker-a.transit.example:8883": "up",
                      "broker:mqtts://broker-b.transit.example:8883": "standby",
                      "board:edge-1": "up", "board:edge-2": "up"},
            "counters": {c: (i * 7 + k * 13) % 5000 for k, c in enumerate(COUNTERS)},
            "boards": {b: {c: (i + k) % 900 for k, c in enumerate(BOARD)}
                       for b in ("edge-1", "edge-2")},
        }
        alert_id = f"a-{name}-{last_alert}"
        body = {"help_point": "hp-1", "location": "platform 1, north stairs",
                "platform": "1", "alert_id": alert_id, "press_count": 1,
                "first_press": now - 30, "last_press": now - 30, "held": False,
                "escalated": False, "evidence": ["button pressed"], "state": "open"}
        snapshot = {"schema": "stationgw/alerts/1", "station": name, "wall_time": now,
                    "alerts": [{"alert_id": alert_id, "source": "hp-1", "class": "P1",
                                "requested_response": "crisis_team", "state": "open",
                                "body": body}]}
        for channel, message in (("status", status), ("health", health),
                                 ("alerts", snapshot)):
            payload = json.dumps(message, allow_nan=False).encode()
            checked = read(f"{root}/{channel}", payload, prefix)
            if not isinstance(checked, Inbound):
                raise TypeError(f"the hub would refuse the {channel} message: {checked}")
            out.append((f"{root}/{channel}", payload))
    return out


def publish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained at QoS 1 and wait for every PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"bench-stations-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1, retain=True) for t, p in messages]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def bulk_load(engine: Engine, n_events: int, n_stations: int, alert_every: int) -> float:
    """Write the events and the alerts they raised in one statement each; seconds taken."""
    per_station = n_events // n_stations
    columns = {c["name"] for c in inspect(engine).get_columns("events")}
    pg = engine.dialect.name == "postgresql"
    station = ("'st-' || lpad((i % :st)::text, 3, '0')" if pg
               else "'st-' || printf('%03d', i % :st)")
    seq = "(i / :st + 1)"
    is_alert = f"(({seq} - 1) % :ae = 0)"
    alert_id = f"'a-' || {station} || '-' || {seq}"
    if pg:
        body = (f"CASE WHEN {is_alert} THEN json_build_object('help_point', 'hp-1', "
                f"'location', 'platform 1, north stairs', 'platform', '1', 'alert_id', "
                f"{alert_id}, 'press_count', 1, 'held', false, 'escalated', false, "
                "'evidence', json_build_array('button pressed'), 'state', 'open') "
                "ELSE json_build_object('value', i) END")
        event_id = "gen_random_uuid()::text"
        source = "FROM generate_series(0, :n - 1) AS g(i)"
        head = ""
    else:
        body = (f"CASE WHEN {is_alert} THEN json_object('help_point', 'hp-1', "
                f"'location', 'platform 1, north stairs', 'platform', '1', 'alert_id', "
                f"{alert_id}, 'press_count', 1, 'held', json('false'), 'escalated', "
                "json('false'), 'evidence', json_array('button pressed'), 'state', 'open') "
                "ELSE json_object('value', i) END")
        event_id = "lower(hex(randomblob(16)))"
        source = "FROM c"
        head = "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :n - 1) "
    values = {
        "event_id": event_id, "station": station, "seq": seq,
        "class": f"CASE WHEN {is_alert} THEN 'P1' ELSE 'P3' END",
        "kind": f"CASE WHEN {is_alert} THEN 'help_point.press' ELSE 'sensor.reading' END",
        "source": f"CASE WHEN {is_alert} THEN 'hp-1' ELSE 's-1' END",
        "wall_time": ":base + i * 0.01", "received_at": ":base + i * 0.01 + 0.05",
        "body": body, "alert_id": f"CASE WHEN {is_alert} THEN {alert_id} END",
    }
    values = {k: v for k, v in values.items() if k in columns}
    names = ", ".join(f'"{k}"' for k in values)
    insert_events = (f"{head}INSERT INTO events ({names}) "
                     f"SELECT {', '.join(values.values())} {source}")
    insert_alerts = (
        'INSERT INTO alerts (station, alert_id, "class", state, source, location, '
        "requested_response, opened_at, closed_at, escalations, last_seq, updated_at) "
        "SELECT station, 'a-' || station || '-' || seq, 'P1', "
        "CASE WHEN seq > :per - :ae THEN 'open' ELSE 'resolved' END, 'hp-1', "
        "'platform 1, north stairs', 'crisis_team', wall_time, "
        "CASE WHEN seq > :per - :ae THEN NULL ELSE wall_time + 300 END, 0, seq, wall_time "
        "FROM events WHERE kind = 'help_point.press'")
    params = {"st": n_stations, "ae": alert_every, "n": per_station * n_stations,
              "base": BASE_WALL, "per": per_station}
    start = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text(insert_events), params)
        conn.execute(text(insert_alerts), params)
    if pg:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    return time.monotonic() - start


def counts(engine: Engine) -> tuple[int, int, int]:
    """(events, alerts, open alerts)."""
    with engine.connect() as conn:
        return (conn.execute(text("SELECT count(*) FROM events")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM alerts")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM alerts WHERE state = 'open'"))
                .scalar_one())


def stations_taken(engine: Engine) -> int:
    """Stations whose retained status and health the hub has committed."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(stations).where(
            stations.c.status.is_not(None) & stations.c.health.is_not(None))).scalar_one())


def memory(pid: int, samples: int = 5) -> dict[str, float]:
    """Median VmRSS of `samples` readings a second apart, and VmHWM, in MiB."""
    rss = []
    for k in range(samples):
        if k:
            time.sleep(1.0)
        rss.append(proc_memory_kib(pid)["VmRSS"] / 1024)
    info = proc_memory_kib(pid)
    return {"rss": statistics.median(rss), "hwm": info["VmHWM"] / 1024,
            "anon": info["RssAnon"] / 1024}


def log_in_and_load(port: int, expect_alerts: int) -> int:
    """Log in to the web console, load the page and /api/alerts; the alerts it listed."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as web:
        page = web.get("/login")
        csrf = page.text.split('name=csrf value="')[1].split('"')[0]
        done = web.post("/login", data={"csrf": csrf, "username": "bench",
                                        "password": PASSWORD})
        if done.status_code != 303:
            raise RuntimeError(f"log-in failed: {done.status_code} {done.text[:200]}")
        web.get("/").raise_for_status()
        listed = 0
        for _ in range(3):  # as a page does: load, then refresh on changes
            data = web.get("/api/alerts").json()
            listed = len(data["alerts"])
        if listed < expect_alerts:
            raise RuntimeError(f"the console listed {listed} of {expect_alerts} open alerts")
        return listed


@contextlib.contextmanager
def hub_running(url: str, port: int, prefix: str, folder: Path, engine: Engine, *,
                n_stations: int, web: tuple[int, Path] | None = None,
                timeout: float = 120.0) -> Iterator[tuple[HubProcess, float]]:
    """A hub under a new client id, once it has committed every station's retained state;
    yields it with the seconds from its start to that point."""
    extra: list[str] = []
    if web is not None:
        extra = ["--web", f"127.0.0.1:{web[0]}", "--web-secret-file", str(web[1])]
    tag = uuid.uuid4().hex[:8]
    hub = HubProcess(url, port, prefix, f"bench-hub-mem-{tag}", folder / f"hub-{tag}.log",
                     extra=extra)
    began = time.monotonic()
    hub.start(timeout)
    try:
        deadline = began + timeout
        while n_stations and stations_taken(engine) < n_stations:
            if time.monotonic() > deadline or not hub.alive():
                raise RuntimeError(f"the hub took {stations_taken(engine)} of {n_stations} "
                                   f"stations:\n{hub.tail()}")
            time.sleep(0.1)
        yield hub, time.monotonic() - began
    finally:
        hub.stop()


FLOOR = """
import sys
from dispatch.hub.service import run_hub
from dispatch.hub.store import HubStore, migrate, open_engine
import gateway.ops.cli
engine = open_engine(sys.argv[1])
migrate(engine)
HubStore(engine).station_rows()
print("ready", flush=True)
sys.stdin.read()
"""


def import_floor(url: str, settle_s: float) -> dict[str, float]:
    """A process that imports what `stationgw hub run` imports and migrates the database,
    then idles: the part of the hub's memory that is code, not data."""
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, url], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the import-floor process did not start")
        time.sleep(settle_s)
        return memory(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def raw_baseline(port: int, prefix: str, expect: int, settle_s: float) -> dict[str, float]:
    """A raw paho subscriber process taking the retained state: its memory."""
    with RawCounter(port, f"{prefix}/#", expect) as raw:
        got, _, _ = raw.result(60)
        if got < expect:
            raise RuntimeError(f"the raw subscriber got {got} of {expect} retained messages")
        time.sleep(settle_s)
        return memory(raw.pid)


def measure(db: str, args: argparse.Namespace, broker: Mosquitto, pg: PostgreSQL | None,
            folder: Path) -> dict[str, Any]:
    """Every figure for one database."""
    prefix = f"mem{uuid.uuid4().hex[:6]}/v1"
    per_station = args.events // args.stations
    out: dict[str, Any] = {"db": db}

    def new_url(stem: str) -> str:
        if pg is not None:
            return pg.new_database(stem)
        return f"sqlite:///{folder / f'{stem}-{uuid.uuid4().hex[:6]}.db'}"

    # The reference: an empty database, no stations.
    url = new_url("empty")
    engine = migrated(url)
    out["floor"] = import_floor(url, args.settle_s)
    with hub_running(url, broker.port, prefix, folder, engine, n_stations=0) as (hub, _):
        time.sleep(args.settle_s)
        out["empty"] = memory(hub.pid)
    engine.dispose()

    url = new_url("memory")
    engine = migrated(url)
    out["load_s"] = bulk_load(engine, args.events, args.stations, args.alert_every)
    out["events"], out["alerts"], out["open"] = counts(engine)
    HubStore(engine).add_operator("bench", _hash(PASSWORD))
    retained = retained_state(prefix, args.stations, per_station, args.alert_every)
    publish_retained(broker.port, retained)
    out["retained_messages"] = len(retained)
    out["retained_bytes"] = sum(len(p) for _, p in retained)
    out["raw"] = raw_baseline(broker.port, prefix, len(retained), args.settle_s)
    quiet = f"mem{uuid.uuid4().hex[:6]}/v1"  # nothing retained under this prefix
    with hub_running(url, broker.port, quiet, folder, engine, n_stations=0) as (hub, _):
        time.sleep(args.settle_s)
        out["db_only"] = memory(hub.pid)
    with hub_running(url, broker.port, prefix, folder, engine,
                     n_stations=args.stations) as (hub, took):
        out["take_s"] = took
        time.sleep(args.settle_s)
        out["hub"] = memory(hub.pid)
    secret = folder / "web-secret"
    secret.write_text(secrets.token_hex(32))
    web_port = free_port()
    with hub_running(url, broker.port, prefix, folder, engine, n_stations=args.stations,
                     web=(web_port, secret)) as (hub, _):
        _wait_http(web_port)
        time.sleep(args.settle_s)
        out["web_idle"] = memory(hub.pid)
        out["listed"] = log_in_and_load(web_port, out["open"])
        time.sleep(args.settle_s)
        out["web"] = memory(hub.pid)
    engine.dispose()
    return out


def _hash(password: str) -> str:
    from dispatch.web.app import hash_password  # noqa: PLC0415 - argon2, the web side only

    return hash_password(password)


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=500)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--alert-every", type=int, default=50,
                        help="every Nth seq of a station is a press that raised an alert")
    parser.add_argument("--db", nargs="+", choices=["postgresql", "sqlite"],
                        default=["postgresql", "sqlite"])
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.stations, args.events, args.db = 100, 50_000, ["sqlite"]
    print_machine()
    results = []
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(workdir("hub-memory"))
        broker = stack.enter_context(Mosquitto())
        pg = stack.enter_context(PostgreSQL()) if "postgresql" in args.db else None
        for db in args.db:
            out = measure(db, args, broker, pg if db == "postgresql" else None, folder)
            results.append(out)
            print(f"\n{db}: {out['events']:,} events and {out['alerts']:,} alerts "
                  f"({out['open']} open) loaded in {out['load_s']:.1f}s; "
                  f"{out['retained_messages']} retained messages "
                  f"({out['retained_bytes'] / 1024:.0f} KiB) taken {out['take_s']:.2f}s after "
                  f"the hub's start; the console listed {out['listed']} open alerts")
            for key in ("raw", "floor", "empty", "db_only", "hub", "web_idle", "web"):
                m = out[key]
                print(f"  {key:8}  VmRSS {m['rss']:.1f} MiB  VmHWM {m['hwm']:.1f} MiB  "
                      f"RssAnon {m['anon']:.1f} MiB")
    figures = []
    for out in results:
        raw = out["raw"]["rss"]
        where = f"{out['db']}, {args.stations} stations, {out['events'] / 1e6:g}M events"
        figures += [
            Figure("imports and migration only (no MQTT, no data)", out["floor"]["rss"], "MiB",
                   raw, "raw paho subscriber"),
            Figure(f"hub RSS, empty {out['db']}, no stations", out["empty"]["rss"], "MiB",
                   raw, "raw paho subscriber"),
            Figure(f"hub RSS, {out['events'] / 1e6:g}M events in {out['db']}, no stations",
                   out["db_only"]["rss"], "MiB", raw, "raw paho subscriber"),
            Figure(f"hub RSS ({where})", out["hub"]["rss"], "MiB", raw,
                   "raw paho subscriber", note=f"peak (VmHWM) {out['hub']['hwm']:.1f} MiB"),
            Figure(f"hub --web RSS, before any log-in ({out['db']})",
                   out["web_idle"]["rss"], "MiB", raw, "raw paho subscriber",
                   note=f"peak (VmHWM) {out['web_idle']['hwm']:.1f} MiB"),
            Figure(f"hub --web RSS after a log-in and /api/alerts ({out['db']})",
                   out["web"]["rss"], "MiB", raw, "raw paho subscriber",
                   note=f"peak (VmHWM) {out['web']['hwm']:.1f} MiB"),
        ]
    print_table("Hub memory", figures)
    write_json(args.json, "hub_memory", figures, results)


if __name__ == "__main__":
    main()
