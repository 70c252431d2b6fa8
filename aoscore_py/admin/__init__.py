"""The local admin API: what an operator at the unit reads (and a retry), over HTTP on a Unix
socket in the data dir (and, if asked, a loopback port), behind a bearer token.

- `auth`: the token file and the check of each request's `Authorization` header.
- `listen`: where the API listens (a loopback address only: there is no TLS) and the socket.
- `views`: the JSON bodies, built by pure functions from the components' state.
- `metrics`: the Prometheus metrics, in a registry of the agent's own.
- `routes`: the route table and the OpenAPI document made from it, so they cannot drift.
- `server`: the aiohttp adapter (start, stop, the socket file removed at stop).
"""
