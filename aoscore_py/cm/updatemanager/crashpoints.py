"""The update manager's crash points (powercut/registry.py collects every component's)."""

DESIRED_STORED = "updatemanager.desired.stored"
NODES_STORED = "updatemanager.nodes.stored"
UNITCONFIG_STORED = "updatemanager.unitconfig.stored"

CRASH_POINTS = (DESIRED_STORED, NODES_STORED, UNITCONFIG_STORED)
