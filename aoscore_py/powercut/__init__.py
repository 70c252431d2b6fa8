"""The power-cut laboratory, a product package: real processes killed at named crash points,
a testbed of real parts (cloud, registry, agents, Docker engine), and a fault proxy for blob
transfers. It sits on top of everything else and reads the unit's state only through `Storage`
and the machine's journal API."""

from .matrix import CRASH_POINTS, run_matrix

__all__ = ["CRASH_POINTS", "run_matrix"]
