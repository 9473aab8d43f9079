"""Benchmarks of the station gateway against a real Mosquitto (run with `python -m bench.NAME`)."""

from pathlib import Path

#: The repository's root: the working folder of the processes the benchmarks start.
REPO = Path(__file__).resolve().parent.parent
