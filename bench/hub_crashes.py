"""Hub crashes: 0 lost and 0 duplicate rows over 20 SIGKILLs of the hub during a flood, and
across a PostgreSQL restart.

`--stations` simulated stations (protocol level, their events rendered as gateways render
them: per-station outbox seqs 1..`--events`, every `--alert-every`-th a help-point press
that raises an alert) publish at QoS 1 at a steady `--rate` into one Mosquitto. The hub is
`stationgw hub run` on PostgreSQL in its own process under a fixed client id (a persistent
MQTT 5 session). During the flood it is SIGKILLed `--kills` times, each at a random moment
once it is connected again, and restarted at once with the same client id; once, half-way,
PostgreSQL itself is restarted under the running hub (`pg_ctl stop -m fast`, `--pg-down-s`
seconds down, `pg_ctl start`). At the end the database is compared with what the broker
confirmed (PUBACK): rows per event id (duplicates are impossible by the primary key, and
checked), (station, seq) pairs, the hub's own seq audit (`HubStore.gaps()`), and alerts and
their "open" transitions (each recorded once). Baseline in the same run: a raw paho
subscriber process (QoS 1, never killed) on the same broker, taking the same flood.

The broker is `gateway.testing.mosquitto.Mosquitto`, whose `max_queued_messages` is 1,000,000: a hub
away for a few seconds has thousands of messages queued in its session, and Mosquitto's
default of 1000 would silently drop the rest (`--max-queued 1000` shows it).

    python -m bench.hub_crashes [--stations 100] [--events 400] [--rate 400] [--kills 20]
                                [--pg-down-s 3] [--max-queued N] [--quick]
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bench.figures import Figure, median, print_table, write_json
from bench.hubkit import (
    Flood,
    HubProcess,
    RawCounter,
    audit,
    fleet_events,
    hubs_stopped,
    migrated,
    stored_count,
    wait_stored,
)
from bench.machine import print_machine, workdir
from gateway.testing.mosquitto import Mosquitto
from gateway.testing.postgres import PostgreSQL


def restart_postgres(pg: PostgreSQL, engine: Engine, *, flood: Flood, hub: HubProcess,
                     rng: random.Random, down_s: float, pg_events: dict[str, float]) -> None:
    """Stop PostgreSQL under the running hub for `down_s` seconds and start it again; when
    it stopped and started, the hub's first commit after it, and the rows it held then, into
    `pg_events`."""
    time.sleep(rng.uniform(0.3, 0.8))
    engine.dispose()  # our own pooled connections die with the server
    pg_events["stopped"] = time.monotonic()
    pg.stop()
    time.sleep(down_s)
    pg.start()
    pg_events["started"] = time.monotonic()
    before = stored_count(engine)  # as it was at the stop
    if flood.sent > before:  # something left to commit (not when it is late)
        _, seen = wait_stored(engine, before + 1, 120)
        pg_events["resumed"] = seen
    pg_events["stored_before"] = before
    assert hub.alive(), hub.tail()


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One flood with the kills and the PostgreSQL restart; what the database holds."""
    rng = random.Random(args.seed)
    extra = f"max_queued_messages {args.max_queued}\n" if args.max_queued else ""
    tag = f"crash{uuid.uuid4().hex[:6]}"
    prefix = f"{tag}/v1"
    messages = fleet_events(prefix, args.stations, args.events, alert_every=args.alert_every)
    with Mosquitto(extra=extra) as broker, PostgreSQL() as pg:
        url = pg.new_database("crashes")
        engine = migrated(url)
        hub = HubProcess(url, broker.port, prefix, f"bench-hub-{uuid.uuid4().hex[:8]}",
                         folder / "hub.log")
        flood = Flood(broker.port, messages, args.rate)
        starts: list[float] = []
        last_start = 0.0
        kills_in_flood = 0
        pg_events: dict[str, float] = {}
        with (hubs_stopped(hub), RawCounter(broker.port, f"{prefix}/+/events/#",
                                            len(messages)) as raw):
            starts.append(hub.start())  # the persistent session exists before the flood
            flood.start()
            began = time.monotonic()
            slot = flood.seconds / args.kills
            pg_after = args.kills // 2 if args.pg_restart else -1
            for k in range(args.kills):
                planned = began + (k + rng.uniform(0.3, 1.0)) * slot
                # Up at least a little: a kill lands while it is taking and committing.
                time.sleep(max(planned - time.monotonic(), rng.uniform(0.1, 0.6)))
                hub.kill()
                kills_in_flood += not flood.done()
                starts.append(hub.start())
                last_start = time.monotonic()
                if k == pg_after:
                    restart_postgres(pg, engine, flood=flood, hub=hub, rng=rng,
                                     down_s=args.pg_down_s, pg_events=pg_events)
                    last_start = time.monotonic()
            result = flood.join()
            backlog = len(messages) - stored_count(engine)
            _, last_row = wait_stored(engine, result.published, args.timeout,
                                           stall_s=args.stall_s)
            raw_got, raw_last, raw_dup = raw.result(60)
            assert hub.alive(), hub.tail()
        found = audit(engine, messages, args.events)
        engine.dispose()
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(hub.log_path, args.keep_logs / f"hub-{tag}.log")
    return {
        "messages": len(messages), "flood": result, "audit": found,
        "drain_s": max(0.0, last_row - max(result.finished, last_start)),
        "backlog_at_end": backlog,
        "flood_s": result.finished - result.started,
        "kills_overran_flood_s": max(0.0, last_start - result.finished),
        "starts_s": starts, "kills": hub.kills, "resumed": hub.resumed,
        "kills_in_flood": kills_in_flood,
        "raw_got": raw_got, "raw_dup": raw_dup,
        "raw_drain_s": max(0.0, raw_last - result.finished),
        "pg_down_to_commit_s": pg_events.get("resumed", float("nan"))
        - pg_events.get("started", float("nan")),
        "pg_restarted": "started" in pg_events, "log": hub.tail(5),
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--events", type=int, default=400, help="events per station")
    parser.add_argument("--rate", type=float, default=400.0, help="events/s, all stations")
    parser.add_argument("--alert-every", type=int, default=20,
                        help="every Nth event of a station raises an alert (0: none)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--pg-down-s", type=float, default=3.0)
    parser.add_argument("--no-pg-restart", dest="pg_restart", action="store_false")
    parser.add_argument("--max-queued", type=int, default=0,
                        help="Mosquitto max_queued_messages (default: the test broker's "
                        "1,000,000; 1000 is Mosquitto's own default)")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="drain wait, seconds")
    parser.add_argument("--stall-s", type=float, default=60.0,
                        help="stop waiting when no row arrives for this long")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the hub's log here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.stations, args.events, args.kills, args.rate = 20, 200, 5, 800.0
    print_machine()
    print(f"{args.stations} stations x {args.events} events at {args.rate:g}/s, "
          f"{args.kills} SIGKILLs, PostgreSQL restart: {args.pg_restart} "
          f"({args.pg_down_s:g}s down), max_queued_messages "
          f"{args.max_queued or 1_000_000}")
    runs = []
    with workdir("hub-crashes") as folder:
        for rep in range(args.reps):
            out = run(args, folder)
            runs.append(out)
            a, f = out["audit"], out["flood"]
            print(f"\nrun {rep + 1}: flood {out['flood_s']:.1f}s, {f.published} confirmed "
                  f"(0x10 no subscribers: {f.no_subscribers}, refused: {dict(f.refused)}); "
                  f"{out['kills']} kills ({out['kills_in_flood']} before the last PUBACK), "
                  f"{out['resumed']} of {len(out['starts_s']) - 1} "
                  f"restarts resumed the session; hub start to connected median "
                  f"{median(out['starts_s']):.2f}s")
            print(f"  stored {a.stored}, lost {a.lost} {a.lost_ids[:5]}, never published "
                  f"{a.extra}, duplicate event ids {a.duplicate_ids}, duplicate (station, "
                  f"seq) {a.duplicate_seqs}, audit gaps {a.gaps_missing}, stations missing "
                  f"their first/last seq {a.ends_missing}; alerts {a.alerts_stored}/"
                  f"{a.alerts_expected}, 'open' transitions {a.open_transitions}")
            print(f"  backlog when both were over {out['backlog_at_end']}, drained "
                  f"{out['drain_s']:.2f}s after it and the last restart; raw subscriber "
                  f"{out['raw_got']} "
                  f"(+{out['raw_dup']} dup), last {out['raw_drain_s'] * 1000:.0f} ms after; "
                  f"PostgreSQL back -> first commit {out['pg_down_to_commit_s']:.2f}s; "
                  f"the last restart was {out['kills_overran_flood_s']:.1f}s after the flood")
            if not a.clean:
                print("  NOT CLEAN; hub log tail:\n" + out["log"])
    lost = max(r["audit"].lost for r in runs)
    dups = max(r["audit"].duplicate_ids + r["audit"].duplicate_seqs for r in runs)
    drain = median([r["drain_s"] for r in runs])
    raw_drain = median([r["raw_drain_s"] for r in runs])
    raw_lost = max(r["messages"] - r["raw_got"] for r in runs)
    total = runs[0]["messages"]
    figures = [
        Figure(f"rows lost ({total:,} events, {args.kills} SIGKILLs"
               f"{', 1 PostgreSQL restart' if args.pg_restart else ''})", lost, "rows",
               raw_lost, "raw subscriber, not killed", target="0", met=lost == 0),
        Figure("duplicate rows (by event id, and by station+seq)", dups, "rows", 0,
               "-", target="0", met=dups == 0),
        Figure("seqs missing in the hub's audit (gaps)",
               max(r["audit"].gaps_missing + r["audit"].ends_missing for r in runs), "seqs",
               target="0", met=all(r["audit"].gaps_missing == 0 for r in runs)),
        Figure("time to drain after the flood and the last restart", drain, "s",
               note=f"the raw subscriber had every event {raw_drain * 1000:.0f} ms after the "
               "last PUBACK"),
    ]
    print_table("Hub crashes", figures)
    write_json(args.json, "hub_crashes", figures, [
        {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in r.items()}
        for r in runs])


if __name__ == "__main__":
    main()
