"""The transparency log: RFC 9162 Merkle tree (``merkle``), C2SP signed notes, checkpoints and
tlog-proof text (``note``), SQL storage (``store``) and the tlog-tiles export (``tiles``)."""
