"""The storage's crash points (powercut/registry.py collects every component's).

- LOCK_TAKEN: the data-dir lock is held and its file names this process (fsynced).
- GENERATION_COMMITTED: the store's generation is one higher, committed in the database.
- SIDECAR_WRITTEN: the sidecar names the store and that generation (written durably).
- MOVED_ASIDE: a damaged store, or one that lost committed state, was renamed aside (the folder
  fsynced); a new store is made next. Only a store that cannot be trusted reaches it: damaged,
  emptied, missing or replaced, or behind its sidecar (its write-ahead log was lost).
"""

LOCK_TAKEN = "storage.lock.taken"
GENERATION_COMMITTED = "storage.generation.committed"
SIDECAR_WRITTEN = "storage.sidecar.written"
MOVED_ASIDE = "storage.moved_aside"

CRASH_POINTS = (LOCK_TAKEN, GENERATION_COMMITTED, SIDECAR_WRITTEN, MOVED_ASIDE)
