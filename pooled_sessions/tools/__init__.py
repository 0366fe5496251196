"""The ``pooled-sessions`` command and what it is built from: migrate, inspect, verify, demo."""
