"""``livesnap storage``: each storage target's state, read from the server's ``/metrics``
(which adds up every capture process of the node)."""

from __future__ import annotations

from typing import Any

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from livesnap.commands.common import Cli, api_command

app = typer.Typer(help="Storage targets: status.", no_args_is_help=True)

TARGET_GAUGES = {
    "livesnap_storage_outage": "Outage",
    "livesnap_storage_pending": "Pending",
    "livesnap_storage_uploads_in_flight": "InFlight",
    "livesnap_storage_oldest_upload_seconds": "OldestUploadSeconds",
}


def storage_state(metrics_text: str) -> dict[str, Any]:
    """``{"Targets": [{Target, Outage, Pending, InFlight, OldestUploadSeconds}],
    "Captures": {outcome: n}, "SpoolBytes": n}`` from an exposition."""
    targets: dict[str, dict[str, Any]] = {}
    captures: dict[str, int] = {}
    spool = 0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            field = TARGET_GAUGES.get(sample.name)
            if field is not None:
                row = targets.setdefault(sample.labels["target"],
                                         {"Target": sample.labels["target"]})
                row[field] = sample.value if field == "OldestUploadSeconds" else int(sample.value)
            elif sample.name == "livesnap_storage_captures_total":
                captures[sample.labels["outcome"]] = int(sample.value)
            elif sample.name == "livesnap_spool_bytes":
                spool = int(sample.value)
    for row in targets.values():
        row["Outage"] = bool(row.get("Outage"))
    return {"Targets": sorted(targets.values(), key=lambda r: r["Target"]),
            "Captures": captures, "SpoolBytes": spool}


def _table(state: dict[str, Any]) -> Table:
    counts = state["Captures"]
    caption = (f"since start: {counts.get('uploaded', 0)} uploaded, "
               f"{counts.get('spooled', 0)} spooled, {counts.get('dropped', 0)} dropped, "
               f"{counts.get('failed', 0)} failed; spool {state['SpoolBytes']} bytes")
    table = Table(title="Storage targets", caption=caption)
    for name in ("Target", "State", "Pending", "In flight", "Oldest upload"):
        table.add_column(name, overflow="fold")
    for row in state["Targets"]:
        table.add_row(row["Target"], "OUTAGE (spooling)" if row["Outage"] else "up",
                      str(row.get("Pending", 0)), str(row.get("InFlight", 0)),
                      f"{row.get('OldestUploadSeconds', 0.0):.1f} s")
    if not state["Targets"]:
        table.add_row("(nothing written since start)", "", "", "", "")
    return table


@app.command("status")
@api_command
def status(cli: Cli) -> None:
    """Each storage target this server has written to since it started: up or in outage,
    captures waiting, uploads in flight and the oldest one's age; totals by outcome."""
    state = storage_state(cli.client.metrics_text())
    cli.show(state, lambda: _table(state))
