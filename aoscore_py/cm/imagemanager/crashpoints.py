"""The image manager's crash points (powercut/registry.py collects every component's)."""

BLOB_VERIFIED = "imagemanager.blob.verified"
BLOB_ADOPTED = "imagemanager.blob.adopted"  # a stored file with no record, hashed and kept
ITEM_FIRST_BLOB = "imagemanager.item.first_blob"
ITEM_PENDING = "imagemanager.item.pending"
ITEM_INSTALLED = "imagemanager.item.installed"
ITEM_REMOVED = "imagemanager.item.removed"
ITEM_REMOVING = "imagemanager.item.removing"
ITEM_COLLECTED = "imagemanager.item.collected"

CRASH_POINTS = (
    BLOB_VERIFIED,
    BLOB_ADOPTED,
    ITEM_FIRST_BLOB,
    ITEM_PENDING,
    ITEM_INSTALLED,
    ITEM_REMOVED,
    ITEM_REMOVING,
    ITEM_COLLECTED,
)
