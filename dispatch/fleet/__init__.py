"""The fleet twin: a simulated metro run live, into a real Mosquitto and the hub.

Data flows down the modules in this order:

- `network`: the fleet's metro. Up to 116 stations it is the shipped simulated metro
  (`dispatch.analysis.metro`); beyond, districts of that generator, each from its own seed,
  side by side and joined by walking transfers, written as one GTFS feed with its station
  mapping and ridership (so the analysis can report on a fleet run).
- `schedule`: what every station will be asked, when (sans-I/O): the requests of
  `dispatch.analysis.simulate`'s rate model (weekly rhythm, ridership, planted hotspots, one
  seed), on a compressed clock, and the station that takes each, real or simulated.
- `stations`: protocol-level simulated stations, one MQTT client each: their own outbox seq,
  retained status with a Last Will, periodic health, events rendered as gateways render them.
- `daemons`: real gateway daemons (`stationgw run` on mock pins), pressed through their
  simulate sockets, and the fleet's dispatcher that acknowledges, assigns and resolves their
  alerts over MQTT as a dispatcher would.
- `run`: the whole run (broker, hub, stations, schedule, settling, the hub's audit).
- `cli`: `stationgw hub fleet` (wired by `add_hub_actions`) and `python -m dispatch.fleet`.

Nothing here is imported by the station daemon (gateway/ never imports dispatch/).
"""

from __future__ import annotations
