"""The add-on's process-wide runtime state: one object, off bpy data.

The timer, the connection, the local monitor and the pictures all keep what they need
between ticks here (never on the window manager, which the artist's file could carry).
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import bpy

STATE = "movie_director_health"  # the WindowManager property the panels read


class Runtime:
    """One Blender, one add-on instance."""

    def __init__(self) -> None:
        from .discovery import Discovery
        from .monitor import LocalMonitor

        self.client = None                   # bus MonitorClient, None while not connected
        self.endpoints = None
        self.interval = 0.05                 # seconds between timer ticks (preferences)
        self.required: dict[str, str] = {}   # service -> AUTO / REQUIRED / OPTIONAL (preferences)
        self.active_model = ""
        self.thresholds = {"p95_ms": 500.0, "p95_bad_ms": 2000.0, "success": 0.99, "down_s": 60.0}
        self.monitor = LocalMonitor()
        self.discovery = Discovery()         # Find Backends: its child and its last answer
        self.written: dict[Any, Any] = {}    # what the timer last wrote, to skip unchanged values
        self.samples: dict[str, deque] = {}  # a local trend per service (no aggregator history yet)
        self.cards: dict[str, tuple] = {}    # service -> (record, range, view.card): the panels' texts
        self.range = "5m"
        self.next_second = 0.0               # monotonic time of the next once-a-second pass
        self.next_history = 0.0              # monotonic time of the next history request
        self.testing_until = 0.0             # monotonic deadline of "Test Connection"
        self.errors_logged: set[str] = set()
        self.trace_path = os.environ.get("MD_HEALTH_UI_TRACE", "")
        self.trace_last: dict[str, str] = {}

    @property
    def log_path(self) -> Path | None:
        return self.monitor.log_path


RT = Runtime()


def prefs():
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def wm_state(wm):
    return getattr(wm, STATE, None) if wm is not None else None
