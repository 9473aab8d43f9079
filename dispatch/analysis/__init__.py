"""Hotspot analysis: where and when to place each kind of team, from the hub's record.

Data flows down the modules in this order:

- `network`: the agency's GTFS feed (gtfs-kit) as stations, lines and the station
  adjacency (neighbours on a line, transfers join lines) as a libpysal weights object;
  the mapping from the gateways' station ids to GTFS stations.
- `record`: the hub's alerts (one row per request) read from its database (SQLAlchemy,
  PostgreSQL or SQLite) into a pandas frame, with hour-of-week and time band.
- `grids`: station x hour-of-week grids, service figures, concentration, repeat locations.
- `hotspots`: Getis-Ord Gi* per time band (esda), false-discovery control, clusters,
  emerging trends (Mann-Kendall on weekly Gi* z), recommendations.
- `privacy`: the one rule for small cells in exports (fewer than k requests are suppressed).
- `figures`: the report's figures as plotly.js JSON, from small prepared inputs; the
  reader's browser draws them (with the plotly.js the page carries or the console serves).
- `report`: the HTML report (its figures and plotly.js inlined) and a CSV/Parquet file
  per table (pyarrow); its
  views as fragments (`render`), which the web console's hotspots page embeds.
- `console`: that page's source: the report's views per period, computed in a worker
  thread and cached for a short time (light to import: the hub loads it at start).
- `period`: `90d` / `12w` / `36h` as seconds (standard library only).
- `simulate`: the simulated metro (a shipped GTFS feed) and months of history written
  straight into the hub's tables, with planted hotspots from a documented seed.

None of this is imported by the station daemon: pandas, esda and friends stay at the
dispatch centre (`pip install station-gateway[analysis]`).
"""

from __future__ import annotations

#: The small-cell rule's default k (`privacy`): exports show no figure of 1..k-1 requests.
DEFAULT_MIN_CELL = 5
