"""The laboratory's reports: what a run of cuts found, in the forms its readers take.

An operator opens the HTML page (a table, then one timeline picture per row, to see where a cut
landed in the update cycle); CI reads the JUnit file; scripts and later comparisons read the JSON.
All three are built from the same `Row`s, and each file appears whole or not at all (written
through `fsutil.atomic_write`), so a report a CI job picks up mid-run is never half a file.

Pictures are drawn with matplotlib's object API (`Figure` on an Agg canvas), never pyplot: no
global figure registry, so drawing is thread-safe and nothing has to be closed afterwards.
"""

from __future__ import annotations

import html
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from statemachine import UPDATE_CYCLE

from ..fsutil import atomic_write
from .results import CONVERGED, CUT, KILLED, PHASE, RESTARTED, Mark, Row

# Timeline pictures: small enough that a hundred rows render in seconds and a page of them loads.
FIG_SIZE_IN = (8.0, 2.5)
FIG_EMPTY_SIZE_IN = (8.0, 0.6)
FIG_DPI = 90
CUTS_DIR = "cuts"

# How each kind of vertical mark is drawn: colour, line style.
_LINES: dict[str, tuple[str, str]] = {
    KILLED: ("#d62728", "-"),
    CUT: ("#8b0000", "--"),
    RESTARTED: ("#1f77b4", "-"),
    CONVERGED: ("#2ca02c", "-"),
}

# Characters XML 1.0 cannot carry even escaped; a process's output in `detail` may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def row_name(row: Row) -> str:
    """How a row is named in every report: its point, then the process it kills."""
    return f"{row.point} ({row.process})"


def verdict(row: Row) -> str:
    """`pass`, or why the row failed: first whether the kill happened where it was armed."""
    if row.passed:
        return "pass"
    if not row.killed:
        if row.kind == "network":
            return "met no spike or disconnect"
        return f"not killed at {row.point}"
    return "did not converge"


def summarize(rows: Iterable[Row]) -> dict[str, Any]:
    """The counts every report opens with, overall and per kind of cut and per file system."""
    rows = list(rows)

    def counts(group: list[Row]) -> dict[str, int]:
        return {"rows": len(group), "passed": sum(r.passed for r in group)}

    return {
        "rows": len(rows),
        "passed": sum(r.passed for r in rows),
        "failed": sum(not r.passed for r in rows),
        "killed": sum(r.killed for r in rows),
        "not_killed": sum(not r.killed for r in rows),
        "converged": sum(r.converged for r in rows),
        "not_converged": sum(r.killed and not r.converged for r in rows),
        "seconds": round(sum(r.seconds for r in rows), 3),
        "by_kind": {k: counts([r for r in rows if r.kind == k]) for k in _in_order(rows, "kind")},
        "by_fs": {f: counts([r for r in rows if r.fs == f]) for f in _in_order(rows, "fs")},
    }


def _in_order(rows: list[Row], attr: str) -> list[str]:
    return list(dict.fromkeys(getattr(r, attr) for r in rows))


def write_json(rows: Iterable[Row], path: Path, summary: Mapping[str, Any] | None = None) -> Path:
    """Write `{"summary": ..., "rows": [...]}` for scripts and for comparing runs.

    Args:
        rows: the run's rows, every field kept (detail and timeline marks included).
        path: the file to write; its folder is created.
        summary: extra facts about the run (seed, duration, unit...), merged over the counts of
            `summarize`, so a caller's value wins for a key both name.

    Returns:
        `path`.
    """
    rows = list(rows)
    body = {
        "summary": {**summarize(rows), **(summary or {})},
        "rows": [{**asdict(r), "passed": r.passed} for r in rows],
    }
    atomic_write(Path(path), orjson.dumps(body, option=orjson.OPT_INDENT_2, default=str))
    return Path(path)


def write_junit(rows: Iterable[Row], path: Path, suite: str = "aoscore-powercut") -> Path:
    """Write the rows as JUnit XML, the format Jenkins, GitLab and GitHub's reporters read.

    One `<testsuite>` (inside `<testsuites>`, which every reader accepts); one `<testcase>` per
    row, its class `powercut.<kind>.<fs>` so CI groups rows by kind of cut. A row that did not
    pass carries a `<failure>` whose type is `not-killed` (the process did not die at its point,
    so the row tested nothing) or `not-converged`; its text is the detail. `<system-out>` holds
    the timeline, one mark a line.

    Returns:
        `path`.
    """
    rows = list(rows)
    failures = sum(not r.passed for r in rows)
    total = f"{sum(r.seconds for r in rows):.3f}"
    attrs = {"tests": str(len(rows)), "failures": str(failures), "errors": "0", "time": total}
    root = ET.Element("testsuites", {"name": suite, **attrs})
    suite_el = ET.SubElement(
        root,
        "testsuite",
        {
            "name": suite,
            **attrs,
            "skipped": "0",
            "timestamp": datetime.now().isoformat("T", "seconds"),
        },
    )
    for row in rows:
        case = ET.SubElement(
            suite_el,
            "testcase",
            {
                "classname": f"powercut.{row.kind}.{row.fs}",
                "name": _xml_text(row_name(row)),
                "time": f"{row.seconds:.3f}",
            },
        )
        if not row.passed:
            failure = ET.SubElement(
                case,
                "failure",
                {
                    "type": "not-killed" if not row.killed else "not-converged",
                    "message": _xml_text(f"{row_name(row)}: {verdict(row)}"),
                },
            )
            failure.text = _xml_text(row.detail)
        if row.timeline:
            ET.SubElement(case, "system-out").text = _xml_text(timeline_text(row.timeline))
    ET.indent(root)
    atomic_write(Path(path), ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return Path(path)


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)


def timeline_text(marks: Iterable[Mark]) -> str:
    """A timeline as lines a person reads in a CI log: seconds, kind, label."""
    return "\n".join(
        f"{m.t:9.3f} s  {m.kind:<9} {m.label}".rstrip() for m in sorted(marks, key=lambda m: m.t)
    )


def phase_axis(marks: Iterable[Mark]) -> list[str]:
    """The phases a picture's y axis shows, bottom to top: the whole update cycle in its order
    (so every row's picture reads the same), then any phase the cycle does not name, as seen."""
    names = list(UPDATE_CYCLE.phases)
    for m in marks:
        if m.kind == PHASE and m.label not in names:
            names.append(m.label)
    return names


def draw_timeline(row: Row) -> bytes:
    """One row's timeline as a PNG.

    x is seconds since the row started. A step line shows the CM's phase over time (from the
    PHASE marks, the last one held to the row's end); vertical lines mark the kill (red), the
    file system's cut (dark red, dashed), the restart (blue) and convergence (green), each
    labelled. The title names the row and its verdict. A row without marks gets a thin picture
    that says so, so every row of the page has its picture.
    """
    # Imported here: the CLI imports this module, and only drawing needs matplotlib (~0.3 s).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    marks = sorted(row.timeline, key=lambda m: m.t)
    colour = "#222222" if row.passed else "#b00000"
    title = f"{row_name(row)}: {verdict(row)}"
    if not marks:
        fig = Figure(figsize=FIG_EMPTY_SIZE_IN, dpi=FIG_DPI)
        FigureCanvasAgg(fig)
        fig.text(0.01, 0.5, f"{title} (no timeline recorded)", va="center", color=colour)
        return _png(fig)

    fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.13, right=0.98, top=0.88, bottom=0.18)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=9, loc="left", color=colour)
    end = max(row.seconds, marks[-1].t)
    names = phase_axis(marks)
    phases = [m for m in marks if m.kind == PHASE]
    if phases:
        xs = [m.t for m in phases] + [end]
        ys = [names.index(m.label) for m in phases]
        ax.step(xs, [*ys, ys[-1]], where="post", color="#555555", linewidth=1.5)
        ax.plot(xs[:-1], ys, "o", color="#555555", markersize=3)
    near, last_t, stacked = end * 0.015, float("-inf"), 0
    for m in marks:
        if m.kind not in _LINES:
            continue
        # A kill and its cut often share an instant: put their labels side by side.
        stacked = stacked + 1 if m.t - last_t <= near else 0
        last_t = m.t
        line_colour, style = _LINES[m.kind]
        ax.axvline(m.t, color=line_colour, linestyle=style, linewidth=1.2)
        ax.annotate(
            f"{m.kind} {m.label}".strip(),
            xy=(m.t, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2 + 9 * stacked, -2),
            textcoords="offset points",
            rotation=90,
            ha="left",
            va="top",
            fontsize=7,
            color=line_colour,
        )
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(-0.5, len(names) - 0.5)
    ax.set_xlim(0, end * 1.03 if end > 0 else 1.0)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("seconds since the row started", fontsize=7)
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def picture_name(index: int, row: Row, width: int = 3) -> str:
    """`NNN-<safe name>.png`: numbered so the files sort as the table does, named so a person
    finds a row's picture in the folder without the page."""
    safe = _UNSAFE_NAME.sub("-", f"{row.point}-{row.process}").strip("-.")[:80] or "row"
    return f"{index:0{width}d}-{safe}.png"


def write_html(
    rows: Iterable[Row],
    folder: Path,
    title: str = "aoscore power-cut laboratory",
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write `folder/index.html` and one timeline picture per row in `folder/cuts/`.

    The page holds no script and no external style, only the pictures beside it, so it can be
    archived as a CI artifact and opened from disk. Every text from a row is escaped: a detail
    is a process's output and may hold anything. Failed rows are tinted and their verdict says
    why. Every row gets a picture (see `draw_timeline`; a row without marks gets a thin one that
    says so). `cuts/` belongs to the report: pictures from an earlier run that this one did not
    write are removed, so the folder matches the page.

    Args:
        rows: the run's rows, in the order the table shows them.
        folder: where the page goes; created if missing.
        title: the page's title and heading.
        summary: extra facts about the run, shown under the counts.

    Returns:
        the path of `index.html`.
    """
    rows = list(rows)
    folder = Path(folder)
    cuts = folder / CUTS_DIR
    cuts.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(rows))))
    names = [picture_name(i, r, width) for i, r in enumerate(rows, 1)]
    for name, row in zip(names, rows, strict=True):
        atomic_write(cuts / name, draw_timeline(row))
    for stale in cuts.glob("*.png"):
        if stale.name not in names:
            stale.unlink(missing_ok=True)
    index = folder / "index.html"
    atomic_write(index, _page(rows, names, title, summary).encode())
    return index


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td { background: #fde2e2; }
tr.fail td.verdict { color: #b00000; font-weight: bold; }
tr.pass td.verdict { color: #1a7f1a; }
td.no { color: #b00000; font-weight: bold; }
td.detail { white-space: pre-wrap; font-family: monospace; font-size: 12px; max-width: 60em; }
.summary { font-size: 16px; }
figure { margin: 1em 0; }
figure.fail figcaption { color: #b00000; font-weight: bold; }
"""


def _page(
    rows: Sequence[Row], pictures: Sequence[str], title: str, extra: Mapping[str, Any] | None
) -> str:
    e = html.escape
    counts = summarize(rows)
    line = (
        f"{counts['rows']} rows: {counts['passed']} passed, {counts['failed']} failed "
        f"({counts['not_killed']} not killed at their point, "
        f"{counts['not_converged']} did not converge); {counts['seconds']:.1f} s of cuts"
    )
    by_kind = ", ".join(f"{k} {c['passed']}/{c['rows']}" for k, c in counts["by_kind"].items())
    by_fs = ", ".join(f"{f} {c['passed']}/{c['rows']}" for f, c in counts["by_fs"].items())
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="summary">{e(line)}</p>',
        f"<p>Passed by kind: {e(by_kind)}. By file system: {e(by_fs)}.</p>",
    ]
    if extra:
        out.append("<ul>")
        out += [f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in extra.items()]
        out.append("</ul>")
    out.append(
        "<table><thead><tr><th>#</th><th>row</th><th>process</th><th>kind</th><th>fs</th>"
        "<th>killed</th><th>converged</th><th>seconds</th><th>verdict</th><th>detail</th>"
        "</tr></thead><tbody>"
    )
    for i, (row, picture) in enumerate(zip(rows, pictures, strict=True), 1):
        state = "pass" if row.passed else "fail"
        anchor = e(Path(picture).stem)
        out.append(
            f'<tr class="{state}"><td class="num"><a href="#{anchor}">{i}</a></td>'
            f"<td>{e(row.point)}</td><td>{e(row.process)}</td><td>{e(row.kind)}</td>"
            f"<td>{e(row.fs)}</td>{_yes_no(row.killed)}{_yes_no(row.converged)}"
            f'<td class="num">{row.seconds:.1f}</td>'
            f'<td class="verdict">{e(verdict(row))}</td>'
            f'<td class="detail">{e(row.detail)}</td></tr>'
        )
    out.append("</tbody></table><h2>Timelines</h2>")
    for i, (row, picture) in enumerate(zip(rows, pictures, strict=True), 1):
        state = "pass" if row.passed else "fail"
        src = e(f"{CUTS_DIR}/{picture}")
        out.append(
            f'<figure id="{e(Path(picture).stem)}" class="{state}">'
            f"<figcaption>{i}. {e(row_name(row))}: {e(verdict(row))}</figcaption>"
            f'<a href="{src}"><img src="{src}" alt="{e("timeline of " + row_name(row))}" '
            'loading="lazy"></a></figure>'
        )
    out.append("</body></html>\n")
    return "\n".join(out)


def _yes_no(value: bool) -> str:
    return "<td>yes</td>" if value else '<td class="no">no</td>'


def marks_from_log(path: Path, t0_wall: float) -> list[Mark]:
    """The CM's phases from an agent log written with `--log-format json`, as PHASE marks.

    Each `phase.entered` line becomes a mark at its `ts` minus `t0_wall` (a `time.time()` taken
    when the row started). Lines that are not JSON objects (a process's stray output, a line torn
    by the kill) or carry no readable `ts` are skipped, and so are lines before `t0_wall`: a log
    kept across rows holds earlier rows' phases. A missing log (the agent never started) yields
    no marks rather than an error, so the report still shows the row.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    marks = []
    for line in data.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("event") != "phase.entered":
            continue
        phase, ts = entry.get("phase"), entry.get("ts")
        if not isinstance(phase, str) or not isinstance(ts, str):
            continue
        try:
            at = datetime.fromisoformat(ts)
        except ValueError:
            continue
        if at.tzinfo is None:  # our logs write UTC with a `Z`; a bare time is read as UTC too
            at = at.replace(tzinfo=UTC)
        t = at.timestamp() - t0_wall
        if t >= 0:
            marks.append(Mark(t=round(t, 3), kind=PHASE, label=phase))
    return sorted(marks, key=lambda m: m.t)
