"""Render docs/reliability.md from the rows the chaos suite recorded in ``var/reliability/*.jsonl``.

``python -m tests.chaos.report`` (``make test-chaos`` runs it last). For each scenario and variant the newest row
is shown; every row names the test that measured it, so each figure comes with the command that reproduces it.
The prose around the tables lives in ``tests/chaos/report_text.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.chaos.ledger import RESULTS
from tests.chaos.report_text import FOOTER, HEADER, SCENARIOS

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
JOB_COLUMNS = [
    ("tried", "enqueued"),
    ("survived", "survived"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("stuck", "stuck"),
    ("redeliveries", "redeliveries"),
    ("retries", "retries"),
    ("kills", "kills"),
    ("seconds", "seconds"),
]


def load(folder: Path = RESULTS) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> variant -> newest row."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["scenario"], {})[row["variant"]] = row
    return rows


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"`{code}` {n}" for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))) or "—"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def job_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["variant", *(name for name, _ in JOB_COLUMNS), "failure codes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["variant"], *(row.get(key, 0) for _, key in JOB_COLUMNS), _codes(row.get("codes", {}))]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def check_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| check | tried | held | failed |", "|---|---|---|---|"]
    for row in rows:
        out.append(f"| {_cell(row['variant'])} | {row['enqueued']} | {row['completed']} | {row['failed']} |")
    return out


def _extra(row: dict[str, Any]) -> str:
    shown = {k: v for k, v in row.get("extra", {}).items() if k != "settings"}
    return "; ".join(f"{k} {json.dumps(v, ensure_ascii=False)}" for k, v in shown.items())


def details(rows: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    settings = {json.dumps(r.get("extra", {}).get("settings"), sort_keys=True) for r in rows}
    if len(settings) == 1 and rows[0].get("extra", {}).get("settings"):
        out.append(f"Settings: `{_settings(rows[0]['extra']['settings'])}`.")
        out.append("")
    for row in rows:
        bits = [f"**{row['variant']}** — reproduce: `.venv/bin/pytest '{row.get('test', '?')}'`"]
        if len(settings) > 1 and row.get("extra", {}).get("settings"):
            bits.append(f"settings `{_settings(row['extra']['settings'])}`")
        if _extra(row):
            bits.append(_extra(row))
        if row.get("notes"):
            bits.append(row["notes"])
        bits.append(
            f"measured {row.get('recorded_at', '?')} on {row.get('machine', '?')} ({row.get('cores', '?')} cores)"
        )
        out.append("- " + ". ".join(_cell(b) for b in bits))
    return out


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def machine() -> str:
    try:
        redis_version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False, timeout=5
        ).stdout.split()[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_version = "v=?"
    memory = "?"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory = f"{total_kb / 1024 / 1024:.0f} GiB"
    return (
        f"{platform.node()}: {platform.system()} {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, {memory} RAM; Python {sys.version.split()[0]}; redis-server {redis_version}"
    )


def render(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    dates = sorted(r.get("recorded_at", "") for variants in rows.values() for r in variants.values())
    span = f"{dates[0]} to {dates[-1]}" if dates else "no rows"
    lines = [HEADER.format(span=span, machine=machine()), ""]
    for scenario, (title, intro) in SCENARIOS.items():
        lines += [f"## {title}", "", intro.strip(), ""]
        found = list(rows.get(scenario, {}).values())
        if not found:
            lines += ["_No rows recorded yet: run `make test-chaos`._", ""]
            continue
        lines += check_table(found) if scenario == "api_security" else job_table(found)
        lines += ["", *details(found), ""]
    lines.append(FOOTER.strip())
    return "\n".join(lines) + "\n"


def main() -> None:
    DOC.write_text(render(load()))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
