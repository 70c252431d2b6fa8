"""`aoscore status`: what the running agent says of the unit, through its admin API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from .common import data_dir_option, exit_codes

MIB = 1 << 20


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _error(error: Any) -> str:
    if not error:
        return ""
    return error["message"] if isinstance(error, dict) else str(error)


def summary_lines(body: dict[str, Any]) -> list[str]:
    """The status as plain lines (a pipe, a log, a test): one fact per line."""
    cycle, items, nodes, link = body["cycle"], body["items"], body["nodes"], body["link"]
    lines = [f"cycle: {cycle['phase']}" + (" (running)" if cycle["running"] else "")]
    if cycle.get("failure"):
        lines.append(f"  failed ({cycle['failure']}): {cycle.get('error') or ''}".rstrip())
        if cycle.get("failedItems"):
            lines.append(f"  failed items: {', '.join(cycle['failedItems'])}")
    if cycle["journal"]:
        last = cycle["journal"][-1]
        lines.append(f"  last move: {last['from']} -{last['event']}-> {last['to']}")
    outbox = link["outbox"]
    age = outbox.get("oldestAgeSeconds")
    lines.append(
        f"link: {link['health']}, {'connected' if link['connected'] else 'not connected'}, "
        f"publish {link['publishMode']}, outbox {outbox['depth']}"
        + (f" (oldest {age:g} s)" if age is not None else "")
    )
    lines.append(f"items: {len(items['items'])}")
    for item in items["items"]:
        error = _error(item.get("error"))
        lines.append(
            f"  {item['id']} {item['version']} {item['state']}" + (f": {error}" if error else "")
        )
    for d in items["downloads"]:
        pct = f"{d['percent']:.1f} %" if d["percent"] is not None else "?"
        eta = f", {d['etaSeconds']:g} s left" if d.get("etaSeconds") is not None else ""
        lines.append(
            f"  downloading {d['digest'][:19]} {pct} of {_size(d['size'])} "
            f"at {_size(d['bytesPerSecond'])}/s{eta}"
        )
    lines.append(f"nodes: {len(nodes['nodes'])}")
    for node in nodes["nodes"]:
        gone = "" if node["connected"] else f", SM gone {node['goneForSeconds']:g} s"
        lines.append(f"  {node['id']} {node['state']}{gone}")
        for i in node["instances"]:
            error = _error(i.get("error"))
            lines.append(
                f"    {i['item']}/{i['subject']}/{i['instance']} {i['version']} {i['state']}"
                + (f": {error}" if error else "")
            )
    for i in nodes.get("unplaced") or ():
        lines.append(f"  on unknown node {i['node']}: {i['item']}/{i['subject']}/{i['instance']}")
    return lines


def render_rich(body: dict[str, Any], console: Any) -> None:
    """The status as tables, for a terminal."""
    from rich.table import Table

    cycle, items, nodes, link = body["cycle"], body["items"], body["nodes"], body["link"]
    phase = f"[bold]{cycle['phase']}[/bold]" + (" (running)" if cycle["running"] else "")
    if cycle.get("failure"):
        phase += f"  [red]failed ({cycle['failure']}): {cycle.get('error') or ''}[/red]"
    console.print(f"cycle: {phase}")
    colour = {"online": "green", "degraded": "yellow"}.get(link["health"], "red")
    outbox = link["outbox"]
    console.print(
        f"link: [{colour}]{link['health']}[/{colour}]  publish {link['publishMode']}  "
        f"outbox {outbox['depth']}"
        + (
            f" (oldest {outbox['oldestAgeSeconds']:g} s)"
            if outbox.get("oldestAgeSeconds") is not None
            else ""
        )
    )
    table = Table(title="items", title_justify="left")
    for column in ("item", "version", "state", "error"):
        table.add_column(column)
    for item in items["items"]:
        table.add_row(item["id"], item["version"], item["state"], _error(item.get("error")))
    console.print(table)
    if items["downloads"]:
        downloads = Table(title="downloading", title_justify="left")
        for column in ("blob", "%", "size", "rate", "left"):
            downloads.add_column(column)
        for d in items["downloads"]:
            downloads.add_row(
                d["digest"][:19],
                f"{d['percent']:.1f}" if d["percent"] is not None else "?",
                _size(d["size"]),
                f"{_size(d['bytesPerSecond'])}/s",
                f"{d['etaSeconds']:g} s" if d.get("etaSeconds") is not None else "",
            )
        console.print(downloads)
    instances = Table(title="nodes", title_justify="left")
    for column in ("node", "state", "instance", "version", "instance state", "error"):
        instances.add_column(column)
    for node in nodes["nodes"]:
        state = node["state"] + ("" if node["connected"] else " (SM away)")
        rows = node["instances"] or [None]
        for n, i in enumerate(rows):
            first = (node["id"], state) if n == 0 else ("", "")
            if i is None:
                instances.add_row(*first, "-", "", "", "")
            else:
                instances.add_row(
                    *first,
                    f"{i['item']}/{i['subject']}/{i['instance']}",
                    i["version"],
                    i["state"],
                    _error(i.get("error")),
                )
    console.print(instances)


@click.command()
@data_dir_option
@click.option(
    "--admin",
    "admin_url",
    default=None,
    metavar="URL",
    help="Ask the agent at this http://HOST:PORT (its --admin-listen) instead of its socket "
    "<data-dir>/admin.sock; the token is still read from --data-dir unless --token is given.",
)
@click.option(
    "--token",
    default=None,
    envvar="AOSCORE_ADMIN_TOKEN",
    show_envvar=True,
    help="The admin token (default: read from <data-dir>/admin.token).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead.")
def status(data_dir: Path, admin_url: str | None, token: str | None, as_json: bool) -> None:
    """The unit as its running agent sees it: the update cycle, items and downloads, nodes
    and their instances, the cloud link and its outbox.

    Exit codes: 0 shown; 1 no agent answers (or it refused the token); 2 bad usage.
    """
    from ..admin.client import check_admin_url, get_json, read_token, socket_of

    with exit_codes():
        base = check_admin_url(admin_url) if admin_url is not None else None
        token = token or read_token(data_dir)
        body = get_json(
            "/status",
            token,
            socket_path=None if base is not None else socket_of(data_dir),
            base_url=base,
        )
    if as_json:
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    if sys.stdout.isatty():
        from rich.console import Console

        render_rich(body, Console())
        return
    for line in summary_lines(body):
        click.echo(line)
