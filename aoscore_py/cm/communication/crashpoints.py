"""The cloud link's crash points (powercut/registry.py collects every component's).

- OUTBOX_STORED: a message to the cloud is committed in the outbox, not yet sent; after a
  restart it goes out (in order, with its txn) once the link is up.
- OUTBOX_ACKED: the cloud's ack deleted a message from the outbox (committed).
"""

OUTBOX_STORED = "link.outbox.stored"
OUTBOX_ACKED = "link.outbox.acked"

CRASH_POINTS = (OUTBOX_STORED, OUTBOX_ACKED)
