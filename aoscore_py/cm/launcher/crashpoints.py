"""The launcher's crash points (powercut/registry.py collects every component's)."""

PLACEMENT_STORED = "launcher.placement.stored"
NODE_ANSWERED = "launcher.node.answered"
# What the nodes run, recorded on a store that had no instance record (one moved aside).
INSTANCES_ADOPTED = "launcher.instances.adopted"

CRASH_POINTS = (PLACEMENT_STORED, NODE_ANSWERED, INSTANCES_ADOPTED)
