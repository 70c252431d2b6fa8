"""The launcher's crash points (powercut/registry.py collects every component's)."""

PLACEMENT_STORED = "launcher.placement.stored"
NODE_ANSWERED = "launcher.node.answered"

CRASH_POINTS = (PLACEMENT_STORED, NODE_ANSWERED)
