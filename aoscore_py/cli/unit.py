"""`aoscore unit ...`: the unit itself; for now its PKI for the CM<->SM link."""

from __future__ import annotations

from pathlib import Path

import click

from .common import exit_codes


@click.group()
def unit() -> None:
    """The unit itself: the certificates its CM and its nodes' SMs use between them."""


@unit.group("pki")
def unit_pki() -> None:
    """A unit CA with certificates for the CM and each node (development and tests; a
    provisioned unit gets real ones)."""


@unit_pki.command("init")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the CA, the CM's and the nodes' certificates and keys go.",
)
@click.option(
    "--node",
    "nodes",
    multiple=True,
    help="A node id to issue a client certificate for (repeat; default node-1 to node-3).",
)
@click.option(
    "--cm-name",
    "cm_names",
    multiple=True,
    help="A host name or address SMs dial the CM by (repeat; default localhost, 127.0.0.1).",
)
@click.option("--force", is_flag=True, help="Make a new CA and every certificate again.")
def unit_pki_init(
    folder: Path, nodes: tuple[str, ...], cm_names: tuple[str, ...], force: bool
) -> None:
    """Make the unit PKI in DIR, or add the nodes and CM names it lacks; print the paths.

    Running it again keeps what is there: a node not there yet gets a certificate from the same
    CA, new CM names a new CM certificate. Only --force makes a new CA.
    """
    from ..iam.unitpki import DEFAULT_CM_NAMES, DEFAULT_NODES, init_unit_pki

    with exit_codes():
        pki = init_unit_pki(
            folder, cm_names or DEFAULT_CM_NAMES, nodes or DEFAULT_NODES, force=force
        )
    width = max(len(label) for label, _ in pki.paths())
    for label, path in pki.paths():
        click.echo(f"{label:<{width}}  {path}")
