"""The cloud link's crash points (powercut/registry.py collects every component's).

- OUTBOX_STORED: a message to the cloud is committed in the outbox, not yet sent; after a
  restart it goes out (in order, with its txn) once the link is up.
- OUTBOX_ACKED: the cloud's ack deleted a message from the outbox (committed).
- HEALTH_STORED: a change of the link's health is committed (the last 64 are kept).
"""

OUTBOX_STORED = "link.outbox.stored"
OUTBOX_ACKED = "link.outbox.acked"
HEALTH_STORED = "link.health.stored"

CRASH_POINTS = (HEALTH_STORED, OUTBOX_STORED, OUTBOX_ACKED)
