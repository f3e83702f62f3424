"""Probes: one process per backend service, each checking it through its real API and
publishing status.*, timing.* and heartbeat.* events on the bus."""
