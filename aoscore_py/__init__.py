"""aoscore-py: an edge agent that keeps a unit converged on its cloud's desired status."""

__version__ = "0.1.0"
