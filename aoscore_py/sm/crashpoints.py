"""The service manager's crash points (powercut/registry.py collects every component's)."""

CONTAINER_CREATED = "sm.container.created"
CONTAINER_STARTED = "sm.container.started"
# The state file (wanted instances, health records) was written; an install reaches it first
# when the CM's instance list is stored, before any container is created.
STATE_STORED = "sm.state.stored"
# Blue-green: the new container became active and the one it replaced was removed. Only an
# upgrade (a new version of a running instance) reaches it.
CONTAINER_REPLACED = "sm.container.replaced"

# The node config the CM set (SetNodeConfig) was written durably (temp, fsync, rename, fsync
# the folder), before the SM answers it installed. Only a unit config reaches it.
NODE_CONFIG_STORED = "sm.node_config.stored"
BLOB_CACHED = "sm.blob.cached"

CRASH_POINTS = (
    STATE_STORED,
    CONTAINER_CREATED,
    CONTAINER_STARTED,
    CONTAINER_REPLACED,
    NODE_CONFIG_STORED,
    BLOB_CACHED,
)
