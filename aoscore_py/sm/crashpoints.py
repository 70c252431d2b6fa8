"""The service manager's crash points (powercut/registry.py collects every component's)."""

CONTAINER_CREATED = "sm.container.created"
CONTAINER_STARTED = "sm.container.started"

CRASH_POINTS = (CONTAINER_CREATED, CONTAINER_STARTED)
