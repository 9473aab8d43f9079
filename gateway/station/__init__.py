"""The station's services: help points, the alert lifecycle with dispatch, the status file.
"""
