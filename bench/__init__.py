"""Benchmarks of the station gateway against a real Mosquitto (run with `python -m bench.NAME`)."""
