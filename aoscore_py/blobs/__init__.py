"""Content-addressed blobs, shared by the CM's image manager and each node's SM: the store
(verified files, partial downloads), the downloader (every URL, Range resume, digest and a
verifier before commit) and the partial file. Neither side owns it; both import it."""
