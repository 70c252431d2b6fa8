"""The committed `_pb2` modules are what `scripts/gen-proto` makes from our `.proto` files now.

The generated code is committed (so that installing the agent needs no compiler); this test
regenerates it into a temporary folder with the pinned grpcio-tools and compares bytes, so a
`.proto` edited without running `scripts/gen-proto` fails here rather than on the wire.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aoscore_py.nodes.proto import common_pb2, sm_pb2, sm_pb2_grpc

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = Path("aoscore_py/nodes/proto")
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def _generated(root: Path) -> dict[str, bytes]:
    base = root / PROTO_DIR
    return {
        str(path.relative_to(base)): path.read_bytes()
        for pattern in GENERATED
        for path in base.rglob(pattern)
    }


def test_committed_code_is_what_gen_proto_makes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gen-proto"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh, committed = _generated(tmp_path), _generated(ROOT)
    assert sorted(fresh) == sorted(committed), "run scripts/gen-proto"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code, run scripts/gen-proto: {stale}"


def test_generated_code_runs_on_the_installed_runtime():
    """Importing the modules (above) ran protobuf's and grpc's own version checks: the pinned
    grpcio-tools made code that the installed protobuf and grpcio accept."""
    assert common_pb2.DESCRIPTOR.package == "common.v2"
    assert sm_pb2.DESCRIPTOR.package == "servicemanager.v5"
    assert sm_pb2.DESCRIPTOR.dependencies[-1] is common_pb2.DESCRIPTOR
    assert hasattr(sm_pb2_grpc, "SMServiceServicer")
