"""The station's inputs: gpiozero pins, serial boards, and the mock-mode control socket.

Inputs turn hardware into calls on the press logic or into events; they never import the
station's services, the outbox or the uplink (tests/test_layers.py).
"""
