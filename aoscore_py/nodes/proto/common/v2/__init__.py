"""The `.proto` beside this file and the modules generated from it; see `aoscore_py.nodes.proto`."""
