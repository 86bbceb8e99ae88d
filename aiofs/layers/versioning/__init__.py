"""The Versioning layer: history of every file, revert, compare, pins, restore, ``.versions/``.

Modules: :mod:`.layer` (the layer, its files and the virtual directory), :mod:`.compare`
(metadata and content diffs by type), :mod:`.locks` (per-file write locks). Format in
``docs/formats/versioning.md``.
"""

from aiofs.layers.versioning.layer import VERSIONS, Versioning, path_key

__all__ = ["VERSIONS", "Versioning", "path_key"]
