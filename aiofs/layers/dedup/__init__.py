"""The Dedup layer: content-defined chunks in packs, verified reads, ``gc`` and ``check``.

Modules: :mod:`.dedup` (the layer and its files), :mod:`.store` (packs, index files, chunk
reads), :mod:`.cache` (the local SQLite index cache), :mod:`.chunking` (FastCDC and hashing),
:mod:`.formats` (persisted formats), :mod:`.locks` (writers vs ``gc``), :mod:`.maintenance`
(``gc``, ``check``, ``stats``).
"""

from aiofs.layers.dedup.dedup import DEDUP, Dedup

__all__ = ["DEDUP", "Dedup"]
