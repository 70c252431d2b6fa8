"""The SM link's wire definitions: our own `.proto` files for the subset of AosCore's
`servicemanager.v5` and `common.v2` that we use, and the code grpcio-tools generates from them.

The package names, service, message names, field numbers and types are AosCore's (repository
`aosedge/aos_core_api`), so the bytes on the wire are the same; the file paths are ours. Edit a
`.proto` here, then run `scripts/gen-proto`: `tests/unit/nodes/test_proto_generated.py` fails
while the committed `_pb2` modules are stale. Import the generated modules from here, never by
their long paths:

    from aoscore_py.nodes.proto import common_pb2, sm_pb2, sm_pb2_grpc
"""

from .common.v2 import common_pb2
from .servicemanager.v5 import servicemanager_pb2 as sm_pb2
from .servicemanager.v5 import servicemanager_pb2_grpc as sm_pb2_grpc

__all__ = ["common_pb2", "sm_pb2", "sm_pb2_grpc"]
