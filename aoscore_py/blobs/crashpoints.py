"""The blob downloader's crash points (powercut/registry.py collects every component's)."""

# Half-way through a blob's bytes (the name predates the move out of the image manager).
BLOB_TRANSFER = "imagemanager.blob.transfer"

CRASH_POINTS = (BLOB_TRANSFER,)
