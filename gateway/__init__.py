"""Station gateway: help points and platform sensors to prioritized crisis requests."""

__version__ = "0.1.0"
