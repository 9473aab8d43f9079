"""Operator and technician tools: the `stationgw` command line, selftest, install, demo.

Nothing in the daemon imports these.
"""
