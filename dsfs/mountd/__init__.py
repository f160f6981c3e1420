"""The mount daemon: a FUSE-free view of a version plus thin pyfuse3 / high-level adapters."""
