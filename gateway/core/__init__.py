"""The sans-I/O core: press logic, sensor rules, alerts, the lamp, commands and clocks.

Nothing here does I/O (no asyncio, sockets, threads, files or hardware); tests/test_layers.py
keeps it so. Each module is a state machine or a pure function, tested like presses.py.
"""
