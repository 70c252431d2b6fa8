"""`aoscore powercut`: the power-cut laboratory."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from .. import logs
from .common import exit_codes, with_logs


def _output(kind: str) -> click.Path:
    return click.Path(dir_okay=kind == "dir", file_okay=kind == "file", path_type=Path)


@click.group(invoke_without_command=True)
@click.option(
    "--fs",
    type=click.Choice(["plain", "lossy"]),
    default=None,
    help="Where the CM and the SMs keep their data: plain folders (a kill -9 keeps every "
    "write), or lossy file systems that are cut after each kill and drop what was not synced. "
    "Default: plain for the matrix, lossy for --random.",
)
@click.option(
    "--torn", is_flag=True, help="With --fs lossy: tear the last write at each cut (sectors)."
)
@click.option(
    "--random",
    "random_cuts",
    type=click.IntRange(min=1),
    default=None,
    help="Instead of the crash points: cut N times at pseudo-random moments during a scenario "
    "of successive desired statuses.",
)
@click.option(
    "--network",
    type=click.Choice(["clean", "cellular", "flaky"]),
    default=None,
    help="Instead of the crash points: run the scenario (install, upgrade, unit config) with "
    "the cloud link, the blob downloads and the SM links behind a proxy imposing this profile "
    "(cellular: 256 kbit/s, 2 % loss, jitter, a 30 s latency spike every 200 s; flaky: every "
    "connection reset once a minute), and check convergence and the cloud's timeline.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.01, max=1.0),
    default=1.0,
    show_default=True,
    help="With --network: compress the profile's time (0.1: 3 s spikes every 20 s).",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="The seed of --random (the same seed gives the same schedule) and of torn writes.",
)
@click.option(
    "--points",
    default=None,
    help="Comma-separated rows to run: a row as --list prints it, a bare point for all its "
    "rows, POINT:N for its N-th arrival, POINT[:N]@NODE to kill that node's SM instead, "
    "`node:NODE` or `node:NODE@POINT[:N]` for a node's power loss (default: every row).",
)
@click.option("--list", "list_rows", is_flag=True, help="Print the matrix's rows and exit.")
@click.option(
    "--json",
    "json_path",
    type=_output("file"),
    default=None,
    help="Write the rows and a summary as JSON.",
)
@click.option(
    "--junit",
    "junit_path",
    type=_output("file"),
    default=None,
    help="Write a JUnit XML file, one test case per cut, for CI systems.",
)
@click.option(
    "--report",
    "report_dir",
    type=_output("dir"),
    default=None,
    help="Write an HTML report into this folder: the table, and a timeline picture for each cut.",
)
@click.option(
    "--work-dir",
    type=_output("dir"),
    default=None,
    help="Where to keep the run's files (default: a new temporary folder).",
)
@click.pass_context
def powercut(
    ctx: click.Context,
    fs: str | None,
    torn: bool,
    random_cuts: int | None,
    network: str | None,
    time_scale: float,
    seed: int,
    points: str | None,
    list_rows: bool,
    json_path: Path | None,
    junit_path: Path | None,
    report_dir: Path | None,
    work_dir: Path | None,
) -> None:
    """Kill the CM or an SM at every crash point of a three-node unit, or cut a whole node's
    power, and check that the unit still converges.

    The unit is the agent as CM only (--no-local-sm) and one `aoscore sm` per node (node-1,
    node-2, node-3), with mutual TLS from a unit PKI of its own, on this machine's Docker
    engine, against a reference cloud and registry the run starts. The rows come from the
    crash-point registry: every point a component declares, each in the scenario that reaches
    it (an install spread over the three nodes, an upgrade that replaces and retires a version,
    a unit config of a greater version, a spoiled store, or an injected fault for the sticky
    failed phase). The SM's points kill node-2's SM; every other point kills the agent; the
    points both pass have a row for each. The node rows cut a whole node: its SM killed, its
    containers killed, its disk cut; then it boots again.

    With --fs lossy every process keeps its data dir on a lossy file system of its own
    (`aoscore powercut lossyfs`): after each kill the file system drops what the process had
    not made durable (unsynced data, unsynced directory entries) and is mounted again, as after
    a power loss. With --random N the run cuts N times at pseudo-random moments instead.

    A row passes when the armed process died by SIGKILL at its point, was started again
    unarmed, and the unit converged: exactly the desired containers, once each, at their
    versions, on nodes with room for them; items installed; the unit config installed on
    every node; the cloud's last full status all active with every node connected; no status
    missing from the cloud's timeline.

    Prints one line per row (row, process killed, killed, converged, seconds, detail).
    Exit codes: 0 every row passed; 1 a row did not; 2 bad usage; 130 interrupted.

    `aoscore powercut lossyfs BACKING MOUNTPOINT` runs the lossy file system on its own.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..powercut.matrix import ALL_ROWS, CASES, NODE_CASES, describe, run_matrix, select_cases

    if network and (random_cuts or points):
        raise click.BadParameter("--network runs its own scenario", param_hint="--network")
    fs = fs or ("lossy" if random_cuts else "plain")
    if torn and fs != "lossy":
        raise click.BadParameter("--torn needs --fs lossy", param_hint="--torn")
    if list_rows:
        width = max(len(case.row) for case in CASES)
        click.echo(f"{'row':<{width}}  {'kills':<12}  scenario")
        for case in CASES:
            fault = f" (after a fault at {case.fault})" if case.fault else ""
            click.echo(f"{case.row:<{width}}  {describe(case.process):<12}  {case.scenario}{fault}")
        for node_case in NODE_CASES:
            when = f"at {node_case.at}" if node_case.at else "once converged"
            what = f"node {node_case.node}"
            click.echo(
                f"{node_case.row:<{width}}  {what:<12}  {node_case.scenario}, power lost {when}"
            )
        return
    selected = list(ALL_ROWS)
    if points:
        if random_cuts:
            raise click.BadParameter(
                "--points and --random exclude each other", param_hint="--points"
            )
        selected = [p.strip() for p in points.split(",") if p.strip()]
        try:
            select_cases(selected)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--points") from None
    logs.configure("warning")
    with exit_codes("interrupted; what the run started was stopped"):
        if network:
            from ..powercut.network import run_network

            rows = run_network(network, work_dir, scale=time_scale, seed=seed)
            for row in rows:
                verdict = "converged" if row.converged else "NOT converged"
                click.echo(f"{row.point}  {verdict}  {row.seconds:.2f} s  {row.detail}")
        elif random_cuts:
            from ..powercut.randomcuts import run_random

            rows = run_random(random_cuts, seed, work_dir, fs=fs, torn=torn)
        else:
            rows = run_matrix(selected, work_dir, fs=fs, torn=torn)
        _write_reports(rows, json_path, junit_path, report_dir)
    sys.exit(0 if rows and all(r.passed for r in rows) else 1)


def _write_reports(
    rows: list, json_path: Path | None, junit_path: Path | None, report_dir: Path | None
) -> None:
    from ..powercut import report

    if json_path is not None:
        report.write_json(rows, json_path)
    if junit_path is not None:
        report.write_junit(rows, junit_path)
    if report_dir is not None:
        page = report.write_html(rows, report_dir)
        click.echo(f"report: {page}")


@powercut.command("lossyfs")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--control",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The control socket (default: BACKING/.lossyfs/control.sock).",
)
@click.option(
    "--torn", is_flag=True, help="At a cut, write only some 512-byte sectors of the last write."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the torn sectors.")
@with_logs
def lossyfs(
    backing: Path,
    mountpoint: Path,
    control: Path | None,
    torn: bool,
    seed: int,
    log_level: str,
    log_format: str,
) -> None:
    """Mount a view of BACKING at MOUNTPOINT that forgets, at a cut, whatever was not made
    durable: file data written since that file's last fsync or fdatasync, and entries created,
    linked, renamed or removed in a directory since that directory's last fsync. BACKING holds
    the durable state, and nothing else is written to it until an fsync says so.

    Cut the power with `aoscore powercut lossyctl BACKING cut` (a command on its control
    socket) or SIGUSR1: the file system drops what was not durable, stops serving and
    unmounts; mount it again to see what survived. `lossyctl BACKING status` prints what a cut
    would drop, `lossyctl BACKING sync` makes everything durable. SIGTERM, SIGINT or
    `fusermount3 -u MOUNTPOINT` unmount cleanly, after a sync, as an orderly shutdown would.
    Needs /dev/fuse and fusermount3 (Debian's fuse3).

    Exit codes: 0 cut or unmounted; 1 the mount failed; 2 bad usage.
    """
    try:
        from ..powercut.lossyfs.fuse import serve, unmount
    except ImportError as exc:
        click.echo(
            f"aoscore powercut lossyfs: {exc}; the lossy file system needs the laboratory's "
            "extra (pip install 'aoscore-py[lab]', with Debian's fuse3, libfuse3-dev and "
            "pkg-config)",
            err=True,
        )
        sys.exit(1)

    if not mountpoint.is_dir():
        unmount(mountpoint)  # a mount left by a process that died answers ENOTCONN
    if not backing.is_dir():
        raise click.BadParameter(f"{backing} is not a folder", param_hint="BACKING")
    if not mountpoint.is_dir():
        raise click.BadParameter(f"{mountpoint} is not a folder", param_hint="MOUNTPOINT")
    if (
        mountpoint.resolve() == backing.resolve()
        or backing.resolve() in mountpoint.resolve().parents
    ):
        raise click.BadParameter("MOUNTPOINT must not be inside BACKING", param_hint="MOUNTPOINT")
    logs.configure(log_level, log_format)
    try:
        serve(backing, mountpoint, control, torn=torn, seed=seed)
    except RuntimeError as exc:
        click.echo(f"aoscore powercut lossyfs: could not mount {mountpoint}: {exc}", err=True)
        sys.exit(1)


@powercut.command("lossyctl")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.argument("command", type=click.Choice(["cut", "status", "sync"]))
@click.option(
    "--control",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The control socket, if the file system was mounted with one of its own.",
)
def lossyctl(backing: Path, command: str, control: Path | None) -> None:
    """Tell the lossy file system over BACKING to `cut` the power (drop what was not durable,
    then stop serving), to `sync` (make everything durable), or print its `status` (what a cut
    would drop now). Prints its answer as JSON.

    Exit codes: 0 answered; 1 no file system answers there; 2 bad usage.
    """
    from ..powercut.lossyfs.fuse import default_control
    from ..powercut.lossyfs.mount import ask

    sock = control or default_control(backing)
    try:
        answer = ask(sock, command)
    except (OSError, ValueError) as exc:
        click.echo(
            f"aoscore powercut lossyctl: no lossy file system answers at {sock}: {exc}", err=True
        )
        sys.exit(1)
    click.echo(orjson.dumps(answer).decode())
