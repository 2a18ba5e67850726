"""The transparency log: RFC 9162 Merkle tree (``merkle``), C2SP signed notes, checkpoints and
tlog-proof text (``note``), SQL storage (``store``), the tlog-tiles export (``tiles``) and a
tlog-tiles client over HTTP or a directory (``tile_client``), a C2SP tlog-witness
(``witness``) and the log's side of witnessing: asking witnesses to cosign (``witnessing``)."""
