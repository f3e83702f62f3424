"""Export: CSV and JSON round trips (formula cells escaped), over the bus and from the CLI."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from aggregator.engine import Engine
from aggregator.export import COLUMNS, export
from bus.protocol import Message, Publisher
from bus.sockets import close, new_context, pub_socket
from tests.conftest import ROOT, wait_for
from tests.test_engine import Clock, beat, status, timing


def _engine() -> Engine:
    clock = Clock()
    engine = Engine(clock)
    for name in ("comfyui", "=HYPERLINK(\"http://x\")"):
        engine.ingest(Message(f"heartbeat.probe.{len(name)}", f"probe.{len(name)}", 1, 0.0,
                              {"interval": 1.0, "services": [name]}))
        engine.ingest(Message("status.s", f"probe.{len(name)}", 1, 0.0, {"service": name, "state": "connected"}))
    for i in range(180):
        for name in engine.services:
            timing(engine, name, 100.0 + i)
        if i == 5:
            timing(engine, "comfyui", 0.0, ok=False, kind="+cmd|' /C calc'!A0")
        clock.t += 1
        engine.tick()
    return engine


def test_csv_round_trip_with_formula_escaping():
    engine = _engine()
    content, rows = export(engine, "csv", "10s", "1h")
    table = list(csv.DictReader(io.StringIO(content)))
    assert len(table) == rows and tuple(table[0]) == COLUMNS
    services = {r["service"] for r in table}
    assert services == {"comfyui", "'=HYPERLINK(\"http://x\")"}  # a formula becomes text
    for r in table:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    bad = [r for r in table if r["errors"]]
    assert bad and bad[0]["errors"].startswith("'+cmd")
    comfy = [r for r in table if r["service"] == "comfyui"]
    assert sum(int(r["count"]) for r in comfy) == 181
    assert comfy[0]["time"].endswith("Z") and float(comfy[0]["ts"]) % 10 == 0
    full = [r for r in comfy if r["complete"] == "true" and int(r["count"]) == 10]
    assert full and float(full[0]["p95_ms"]) > float(full[0]["p50_ms"]) > 0


def test_json_round_trip_matches_csv_and_filters():
    engine = _engine()
    text, rows = export(engine, "json", "1s", "1m", service="comfyui")
    doc = json.loads(text)
    assert doc["columns"] == list(COLUMNS) and len(doc["rows"]) == rows
    assert {r["service"] for r in doc["rows"]} == {"comfyui"}
    assert 60 <= rows <= 62 and all(set(r) == set(COLUMNS) for r in doc["rows"])
    csv_text, csv_rows = export(engine, "csv", "1s", "1m", service="comfyui")
    table = list(csv.DictReader(io.StringIO(csv_text)))
    assert csv_rows == rows
    for j, c in zip(doc["rows"], table):
        assert int(c["count"]) == j["count"]
        if j["p95_ms"] is not None:
            assert float(c["p95_ms"]) == pytest.approx(j["p95_ms"], rel=1e-6)
    for args, words in ((("xml", "1s", "1m"), "unknown format"), (("csv", "5s", "1m"), "unknown tier"),
                        (("csv", "1s", "soon"), "duration"), (("csv", "1s", "1m", "nope"), "unknown service")):
        with pytest.raises(ValueError, match=words):
            export(engine, *args)


def test_export_over_the_bus_and_from_the_cli(endpoints, procs, client, tmp_path):
    procs.aggregator()
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.e")
    try:
        def fed():
            pub.send("heartbeat.probe.e", {"interval": 1.0, "services": ["e"]})
            pub.send("status.e", {"service": "e", "state": "connected"})
            pub.send("timing.e", {"service": "e", "endpoint": "/", "duration_ms": 25.0, "ok": True})
            return client.services.get("e", {}).get("stats", {}).get("count", 0) >= 3 and client.has_snapshot
        wait_for(fed, timeout=20, client=client, every=0.1)  # has_snapshot: our DEALER is connected
        rid = client.export("json", "1s", "5m", "e")
        reply = wait_for(lambda: client.replies.get(rid), timeout=10, client=client)
        assert reply["ok"] and reply["format"] == "json" and reply["rows"] >= 1
        assert sum(r["count"] for r in json.loads(reply["content"])["rows"]) >= 3
        rid = client.export("csv", "3s", "5m")
        bad = wait_for(lambda: client.replies.get(rid), timeout=10, client=client)
        assert bad["ok"] is False and "unknown tier" in bad["error"]

        out = tmp_path / "m.csv"
        run = subprocess.run([sys.executable, "-m", "aggregator", "export", "--format", "csv", "--tier", "1m",
                              "--since", "24h", "-o", str(out)], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
        assert run.returncode == 0, run.stderr
        table = list(csv.DictReader(out.open()))
        assert table and table[0]["service"] == "e" and "wrote" in run.stderr
        wrong = subprocess.run([sys.executable, "-m", "aggregator", "export", "--tier", "2m"],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert wrong.returncode == 2 and "unknown tier" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        close(pub.socket)
        ctx.term()


class _EngineWithOddFigures:
    """An engine whose bucket rows hold non-finite figures (what a damaged history or a future
    bug could hand the exporter): the export must stay strict JSON either way."""

    def __init__(self) -> None:
        self.real = _engine()

    def rows(self, tier, since_s, service=None):
        rows = self.real.rows(tier, since_s, service)
        rows[0]["avg_ms"], rows[0]["p95_ms"], rows[-1]["uptime"] = float("nan"), float("inf"), float("-inf")
        return rows

    def now(self):
        return self.real.now()


def _refuse_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def test_json_export_is_strict_json_with_non_finite_figures_as_null():
    content, n = export(_EngineWithOddFigures(), "json", "10s", "1h")
    doc = json.loads(content, parse_constant=_refuse_constant)  # NaN / Infinity would raise here
    rows = doc["rows"]
    assert len(rows) == n > 1
    assert rows[0]["avg_ms"] is None and rows[0]["p95_ms"] is None and rows[-1]["uptime"] is None
    assert rows[1]["avg_ms"] is not None  # finite figures are untouched
    text, _ = export(_EngineWithOddFigures(), "csv", "10s", "1h")
    assert "nan" not in text.lower().replace("'", "") and "inf" not in text.lower()
    # and a real engine's export (gaps as None) is strict JSON too
    content, _ = export(_engine(), "json", "1s", "5m")
    json.loads(content, parse_constant=_refuse_constant)
