"""`llmserve status` as a readable table: services, revisions, replicas with their load, the autoscaler's last
decision. A pure function of the status dict (the shape of GET /admin/v1/services; keys it lacks show as "-")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DASH = "-"


def render_status(status: Mapping[str, Any]) -> str:
    """The whole report, ending with a newline.

    warm pool: size 1 (1 idle)

    SERVICE  MODEL    RUNTIME      READY  MIN..MAX  HELD  AUTOSCALER
    chat     smollm2  vllm         1/1    0..2      0     stable -> 1: stable: 1.0 over 60 s

    chat
      REVISION  TRAFFIC  READY
      chat-r1   100%     1
      REPLICA  STATE  REVISION  LOAD                         RESTARTS  PID   URL                     LAST EXIT
      chat-0   ready  chat-r1   1 in flight, 0 waiting, KV 12%  0      4242  http://127.0.0.1:41000  -
    """
    lines: list[str] = []
    pool = (status.get("backend") or {}).get("warm_pool")
    if pool:
        states = [p.get("state", "?") for p in pool.get("processes", ())]
        summary = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) or "empty"
        lines += [f"warm pool: size {pool.get('size', DASH)} ({summary})", ""]
    services = list(status.get("services") or ())
    if not services:
        return "\n".join([*lines, "no services"]) + "\n"
    held = status.get("activator") or {}
    lines += table(
        ("SERVICE", "MODEL", "RUNTIME", "READY", "MIN..MAX", "HELD", "AUTOSCALER"),
        [
            (
                s.get("name"),
                s.get("model"),
                s.get("runtime"),
                f"{_text(s.get('ready_replicas'))}/{_text(s.get('desired_replicas'))}",
                f"{_text(s.get('min_replicas'))}..{_text(s.get('max_replicas'))}",
                held.get(s.get("name"), 0),
                decision(s.get("autoscaler")),
            )
            for s in services
        ],
    )
    for service in services:
        lines += ["", str(service.get("name"))]
        if service.get("pull_error"):
            lines.append(f"  pull error: {service['pull_error']}")
        revisions = service.get("revisions") or ()
        if revisions:
            traffic = [(r.get("name"), _percent(r.get("traffic_percent")), r.get("ready_replicas")) for r in revisions]
            lines += ["  " + line for line in table(("REVISION", "TRAFFIC", "READY"), traffic)]
        replicas = service.get("replicas") or ()
        if not replicas:
            lines.append("  no replicas")
            continue
        rows = [
            (r.get("id"), r.get("state"), r.get("revision"), load(r.get("load")), r.get("restarts"), r.get("pid"),
             r.get("url"), r.get("last_exit"))
            for r in replicas
        ]  # fmt: skip
        header = ("REPLICA", "STATE", "REVISION", "LOAD", "RESTARTS", "PID", "URL", "LAST EXIT")
        lines += ["  " + line for line in table(header, rows)]
    return "\n".join(lines) + "\n"


def decision(autoscaler: Mapping[str, Any] | None) -> str:
    if not autoscaler:
        return DASH
    text = f"{_text(autoscaler.get('mode'))} -> {_text(autoscaler.get('desired'))}"
    return f"{text}: {autoscaler['reason']}" if autoscaler.get("reason") else text


def load(load: Mapping[str, Any] | None) -> str:
    """A replica's load as the gateway's ledger and its scraped signals see it."""
    if not load:
        return DASH
    counts = (("in_flight", "in flight"), ("running", "running"), ("waiting", "waiting"))
    parts = [f"{load[key]} {label}" for key, label in counts if load.get(key) is not None]
    if load.get("kv_cache_usage") is not None:
        parts.append(f"KV {float(load['kv_cache_usage']) * 100:.0f}%")
    return ", ".join(parts) or DASH


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    cells = [list(header), *[[_text(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]


def _text(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _percent(value: Any) -> str:
    return DASH if value is None else f"{value:g}%"
