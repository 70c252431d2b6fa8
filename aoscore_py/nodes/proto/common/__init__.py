"""Mirrors the folder of AosCore's `proto/` tree of the same name; see `aoscore_py.nodes.proto`."""
