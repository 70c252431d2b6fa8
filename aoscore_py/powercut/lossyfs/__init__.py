"""The lossy file system: a FUSE view of a backing folder that keeps in memory every change not
yet made durable, and drops it all on a cut, as a power loss would.

`tree` is the model (what is durable, what is not, and how a cut and a sync change the backing
folder); `fuse` serves it through pyfuse3 as a process of its own; `mount` starts, cuts and
stops that process from the laboratory.
"""
