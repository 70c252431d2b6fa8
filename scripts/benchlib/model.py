"""`scripts/bench model`: the stateful model of a three-node unit (aoscore_py/powercut/model.py)
run for N examples against the real processes, each example from its own seed so that one
failure does not end the run.

It writes the examples run, the steps taken, the failures (each with its seed and error) and
the seconds the run took. Replay a failure with the `--seed` and `--examples` it names (the
same seed makes the same steps), and the same `--steps`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import orjson

from benchlib import json_option


@click.command("model")
@json_option
@click.option(
    "--examples", type=click.IntRange(1, 1000), default=5, show_default=True, help="Examples."
)
@click.option(
    "--steps",
    type=click.IntRange(1, 100),
    default=6,
    show_default=True,
    help="Most steps per example.",
)
@click.option("--seed", type=int, default=None, help="The first example's seed (else random).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the units' folders here (default: a temporary folder, removed after).",
)
def model(
    json_path: Path, examples: int, steps: int, seed: int | None, work_dir: Path | None
) -> None:
    """N examples of the unit model: pushes, CM and node power cuts, the cloud away and back;
    the invariants after each step, convergence once settled."""
    from aoscore_py.logs import configure
    from aoscore_py.powercut.model import choose_seed, open_bench, run_examples

    configure("info", "logfmt")
    first = choose_seed(seed)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="aoscore-bench-model-") as scratch,
        open_bench(work_dir or Path(scratch)) as bench,
    ):
        stats = run_examples(bench, examples, steps, first)
    seconds = round(time.monotonic() - started, 1)
    result = {
        "examples": stats.examples,
        "steps": stats.steps,
        "failures": len(stats.failures),
        "seconds": seconds,
        "first_seed": first,
        "max_steps": steps,
        "failing": stats.failures,
    }
    print(
        f"{stats.examples} examples, {stats.steps} steps, {len(stats.failures)} failures in "
        f"{seconds} s (first seed {first})"
    )
    for failure in stats.failures:
        replay = f"--seed {failure['seed']} --examples {failure['examples']} --steps {steps}"
        print(f"  replay with {replay}: {str(failure['error'])[:400]}")
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {json_path}")
