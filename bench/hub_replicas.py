"""Hub replicas: two hubs in one MQTT 5 shared subscription over one PostgreSQL, one of them
SIGKILLed mid-flood: lost and duplicate rows.

Two `stationgw hub run --share GROUP` processes (hub A and hub B, each under its own stable
`--client-id`, so each has a persistent session) write to one PostgreSQL database.
`--stations` simulated stations publish `--events` events each (per-station seqs) at QoS 1 at
a steady `--rate`. At `--kill-at` of the flood hub B is SIGKILLed. Two scenarios, each with
a fresh database, group and flood:

- **restarted**: hub B comes back `--down-s` seconds later under the same client id;
- **not restarted**: hub B stays down; once hub A has drained (no new row for `--stall-s`),
  the rows still missing are counted; then hub B is started again (same client id) and
  the rows are counted once more.

Mosquitto (2.0) keeps giving an offline member of a shared subscription its share of the
group's messages, queued in that member's session: they reach the database only when that
member returns. Baseline in the same run: a raw paho subscriber process (not shared, never
killed) taking the same flood.

    python -m bench.hub_replicas [--stations 50] [--events 400] [--rate 800] [--kill-at 0.4]
                                 [--down-s 5] [--quick]
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from pathlib import Path
from typing import Any

from bench.figures import Figure, print_table, write_json
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


def scenario(args: argparse.Namespace, broker: Mosquitto, pg: PostgreSQL, folder: Path,
             *, restart: bool) -> dict[str, Any]:
    """One flood into two hubs, hub B killed at `--kill-at` (and restarted or not)."""
    tag = uuid.uuid4().hex[:6]
    prefix = f"rep{tag}/v1"
    order = None if args.order == "rotation" else random.Random(args.seed)
    messages = fleet_events(prefix, args.stations, args.events, alert_every=args.alert_every,
                            shuffle=order)
    url = pg.new_database("replicas")
    engine = migrated(url)
    group = f"hubs-{tag}"
    a = HubProcess(url, broker.port, prefix, f"bench-hub-a-{tag}", folder / f"a-{tag}.log",
                   share=group)
    b = HubProcess(url, broker.port, prefix, f"bench-hub-b-{tag}", folder / f"b-{tag}.log",
                   share=group)
    out: dict[str, Any] = {"restart": restart, "messages": len(messages)}
    with hubs_stopped(a, b), RawCounter(broker.port, f"{prefix}/+/events/#",
                                        len(messages)) as raw:
        a.start()
        b.start()
        flood = Flood(broker.port, messages, args.rate).start()
        time.sleep(flood.seconds * args.kill_at)
        out["sent_at_kill"] = flood.sent
        out["stored_at_kill"] = stored_count(engine)
        b.kill()
        killed = time.monotonic()
        if restart:
            time.sleep(args.down_s)
            out["stored_before_return"] = stored_count(engine)
            out["sent_at_return"] = flood.sent
            out["b_start_s"] = b.start()
            out["b_away_s"] = time.monotonic() - killed
        result = flood.join()
        out["flood"] = result
        if not restart:
            got, _ = wait_stored(engine, result.published, args.timeout, stall_s=args.stall_s)
            out["missing_while_down"] = result.published - got
            out["audit_while_down"] = audit(engine, messages, args.events)
            out["b_start_s"] = b.start()
        returned = time.monotonic()
        got, last = wait_stored(engine, result.published, args.timeout, stall_s=args.stall_s)
        out["drain_s"] = last - max(result.finished, returned)
        raw_got, raw_last, raw_dup = raw.result(60)
        out |= {"raw_got": raw_got, "raw_dup": raw_dup,
                "raw_drain_s": max(0.0, raw_last - result.finished)}
        if not (a.alive() and b.alive()):
            raise RuntimeError(f"a hub exited:\n{a.tail()}\n{b.tail()}")
        out["resumed_b"] = b.resumed
    out["audit"] = audit(engine, messages, args.events)
    engine.dispose()
    return out


def report(out: dict[str, Any]) -> None:
    """Print one scenario's details."""
    f, a = out["flood"], out["audit"]
    name = "restarted" if out["restart"] else "not restarted"
    print(f"\nhub B {name}: {f.published} confirmed (0x10 no subscribers: "
          f"{f.no_subscribers}, refused {dict(f.refused)}) in {f.finished - f.started:.1f}s; "
          f"B killed after {out['sent_at_kill']} published")
    if out["restart"]:
        print(f"  B away {out['b_away_s']:.2f}s ({out['b_start_s']:.2f}s of it starting "
              f"up), {out['sent_at_return'] - out['sent_at_kill']} published meanwhile; "
              f"session resumed: {out['resumed_b'] >= 1}")
    else:
        w = out["audit_while_down"]
        print(f"  while B stayed down (A drained, nothing new for the stall time): "
              f"{out['missing_while_down']} of {f.published} not in the database "
              f"({100 * out['missing_while_down'] / max(1, f.published):.1f}%), audit gaps "
              f"{w.gaps_missing}, stations missing first/last seq {w.ends_missing}; then B "
              f"restarted with its client id (session resumed: {out['resumed_b'] >= 1})")
    print(f"  final: stored {a.stored}, lost {a.lost} {a.lost_ids[:3]}, duplicate ids "
          f"{a.duplicate_ids}, duplicate (station, seq) {a.duplicate_seqs}, audit gaps "
          f"{a.gaps_missing}, ends missing {a.ends_missing}, alerts {a.alerts_stored}/"
          f"{a.alerts_expected}, 'open' transitions {a.open_transitions}; drained "
          f"{out['drain_s']:.2f}s after the last PUBACK and B's return; raw subscriber "
          f"{out['raw_got']} "
          f"(+{out['raw_dup']} dup), last {out['raw_drain_s'] * 1000:.0f} ms after")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--events", type=int, default=400, help="events per station")
    parser.add_argument("--rate", type=float, default=800.0, help="events/s, all stations")
    parser.add_argument("--alert-every", type=int, default=20)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of the flood")
    parser.add_argument("--down-s", type=float, default=5.0)
    parser.add_argument("--stall-s", type=float, default=10.0,
                        help="a hub has drained when no row arrives for this long")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", choices=["restarted", "not-restarted"])
    parser.add_argument("--order", choices=["shuffled", "rotation"], default="shuffled",
                        help="stations take turns in a random order each round (default) "
                        "or in a fixed rotation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.stations, args.events, args.down_s, args.stall_s = 20, 200, 2.0, 5.0
    print_machine()
    print(f"{args.stations} stations x {args.events} events at {args.rate:g}/s "
          f"({args.order} order); hub B SIGKILLed at {args.kill_at:.0%} of the flood")
    outs = []
    with workdir("hub-replicas") as folder, Mosquitto() as broker, PostgreSQL() as pg:
        for restart in (True, False):
            if args.only and args.only != ("restarted" if restart else "not-restarted"):
                continue
            outs.append(scenario(args, broker, pg, folder, restart=restart))
            report(outs[-1])
    figures = []
    for out in outs:
        a = out["audit"]
        raw_lost = out["messages"] - out["raw_got"]
        if out["restart"]:
            name = f"B killed, back after {args.down_s:g}s"
        else:
            name = "B killed, not restarted"
            figures.append(Figure(
                f"{name}: rows missing while B stays down", out["missing_while_down"],
                "rows", raw_lost, "raw subscriber, not shared",
                note=f"{100 * out['missing_while_down'] / max(1, a.published):.1f}% of "
                f"{a.published:,}: B's share, queued in B's session by Mosquitto"))
            w = out["audit_while_down"]
            figures.append(Figure(
                f"{name}: of them, seqs the hub's audit shows missing meanwhile",
                w.gaps_missing, "seqs",
                note=f"the rest are stations' newest seqs, after the last one stored, which "
                f"a gap audit cannot see; {w.ends_missing} of {args.stations} stations "
                "lacked their last seq"))
            name = "B killed, restarted only after A drained"
        figures += [
            Figure(f"{name}: rows lost", a.lost, "rows", raw_lost,
                   "raw subscriber, not shared", target="0", met=a.lost == 0),
            Figure(f"{name}: duplicate rows", a.duplicate_ids + a.duplicate_seqs, "rows",
                   target="0", met=a.duplicate_ids + a.duplicate_seqs == 0),
        ]
    print_table("Hub replicas", figures)
    write_json(args.json, "hub_replicas", figures, [
        {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in o.items()}
        for o in outs])


if __name__ == "__main__":
    main()
