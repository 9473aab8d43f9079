"""The uplink to the broker: the MQTT client edge, topics, the publisher and its reports.

The uplink never imports the inputs or the station's services (tests/test_layers.py).
"""
