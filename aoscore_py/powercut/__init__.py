"""The power-cut laboratory, a product package: real processes killed at named crash points or
at random moments, a lossy file system that drops what was not synced, a testbed of real parts
(cloud, registry, agents, Docker engine), a three-node unit of real processes (the CM and one SM
per node) with its scenario, proxies for blob transfers and for impaired networks, and the
reports. It sits on top of everything else and reads the unit's state only through `Storage`,
the machine's journal API, the SM's node config store and the engine's container labels.

Nothing is imported here: the lossy file system's own process (`aoscore powercut lossyfs`)
loads only what it serves with."""
