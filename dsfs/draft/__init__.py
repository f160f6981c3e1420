"""The writable side of a draft, with no FUSE import: the overlay (``overlay``) and its journal
(``journal``), the hashing of staged files (``digest``), ``DraftView`` (``view``), which the
writable pyfuse3 adapter (dsfs/mountd/writable.py) only translates, the commit of the changes
(``commit``), and the mounted session (``session``) holding the draft's lease (``lease``)."""
