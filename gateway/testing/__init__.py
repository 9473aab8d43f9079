"""Reusable test support (fault injection, real resources); never imported by the daemon."""
