"""The power-cut laboratory, a product package: real processes killed at named crash points,
a testbed of real parts (cloud, registry, agents, Docker engine), a three-node unit of real
processes (the CM and one SM per node) with its scenario, and a fault proxy for blob
transfers. It sits on top of everything else and reads the unit's state only through `Storage`,
the machine's journal API, the SM's node config store and the engine's container labels."""

from .matrix import CRASH_POINTS, run_matrix

__all__ = ["CRASH_POINTS", "run_matrix"]
