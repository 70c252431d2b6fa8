"""Benchmarks of aoscore-py, run through `scripts/bench NAME --json FILE`.

supersede: with the real agent, cloud, registry and Docker engine, the time from the
superseding desired status's arrival to the end of the old phase's task, in downloading,
launching and waitingActive (several runs each; the median is reported).
"""

from __future__ import annotations

import statistics
import tempfile
import uuid
from pathlib import Path

import click
import orjson

from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.state import CloudState
from aoscore_py.sm.docker_runtime import DockerRuntime
from aoscore_py.testbed import CloudProcess, publish_test_set, scenario, supersede_run


@click.group()
def bench() -> None:
    """aoscore-py benchmarks."""


@bench.command()
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the results here.",
)
@click.option(
    "--runs", type=click.IntRange(1, 50), default=5, show_default=True, help="Runs per phase."
)
def supersede(json_path: Path, runs: int) -> None:
    """Supersede latency per phase (message received -> old phase task finished)."""
    work = Path(tempfile.mkdtemp(prefix="aoscore-bench-"))
    runtime = DockerRuntime()
    samples: dict[str, list[float]] = {"downloading": [], "launching": [], "waitingActive": []}
    with Registry(work / "registry") as registry:
        cloud = CloudProcess(work / "cloud", registry.url).start()
        slow = CloudProcess(work / "slow-cloud", registry.url, blob_urls_delay_s=2.0)
        try:
            images = publish_test_set(cloud.cloud_dir, registry.url, "bench")
            for name, image in images.items():
                CloudState(slow.cloud_dir).add_blobs(name, image.blobs)
            slow.start()
            a, b, c = images["bench-alpha"], images["bench-beta"], images["bench-gamma"]
            cases = {
                "downloading": (
                    slow,
                    scenario([("svc-a", a)]),
                    scenario([("svc-b", b)], num_instances=1),
                ),
                "launching": (
                    cloud,
                    scenario([("svc-a", a), ("svc-c", c)], num_instances=6),
                    scenario([("svc-b", b)], num_instances=1),
                ),
                "waitingActive": (
                    cloud,
                    scenario([("svc-s", images["bench-stuck"])], num_instances=1),
                    scenario([("svc-b", b)], num_instances=1),
                ),
            }
            for phase, (where, first, second) in cases.items():
                for _ in range(runs):
                    unit = f"bench-{uuid.uuid4().hex[:8]}"
                    run = supersede_run(where, runtime, work, unit, first, second, phase)
                    if run.superseded_in != phase or not run.convergence.ok:
                        raise click.ClickException(
                            f"{phase}: superseded in {run.superseded_in}, "
                            f"converged={run.convergence.ok} {run.convergence.problems}"
                        )
                    samples[phase].append(run.latency_s)
        finally:
            slow.stop()
            cloud.stop()
    runtime.close()
    print(f"{'phase':<14} {'median ms':>10} {'min ms':>8} {'max ms':>8}  runs")
    for phase, values in samples.items():
        print(
            f"{phase:<14} {statistics.median(values) * 1000:>10.2f} "
            f"{min(values) * 1000:>8.2f} {max(values) * 1000:>8.2f}  {len(values)}"
        )
    result = {f"{phase}_s": round(statistics.median(v), 6) for phase, v in samples.items()}
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    bench()
