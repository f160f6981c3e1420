"""The writable side of a draft, with no FUSE import: the overlay and its journal, the commit
of its changes, and the session that holds the draft's lease while it is mounted."""
