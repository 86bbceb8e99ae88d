"""The offline layer: a local write-back store, journal and read cache above a remote.

``Offline(fs=remote, cache_dir=PATH)``; see :mod:`aiofs.layers.offline.layer` for the
contract and ``docs/formats/offline.md`` for the database and journal format.
"""

from aiofs.layers.offline.conflicts import POLICIES, conflicted_copy_name
from aiofs.layers.offline.layer import Offline, is_connection_error

__all__ = ["Offline", "POLICIES", "conflicted_copy_name", "is_connection_error"]
