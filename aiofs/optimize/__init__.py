"""Storage overview and optimization (issue 6): one concept per module.

* :mod:`~aiofs.optimize.scan`: the one listing walk, stack introspection (duck typed), types
  and ages of files;
* :mod:`~aiofs.optimize.overview`: :func:`overview`, the JSON the API serves;
* :mod:`~aiofs.optimize.usage_history`: :class:`UsageHistory`, daily usage in SQLite;
* :mod:`~aiofs.optimize.duplicates`: :func:`find_duplicates`, :func:`merge_duplicates`;
* :mod:`~aiofs.optimize.cleanup`: :func:`cleanup` (dry run unless ``apply=True``);
* :mod:`~aiofs.optimize.recommend`: :func:`recommend`, ranked by estimated saving.

Every function takes a stack name (``"default"``, ``"aiofs://work"``) or any fsspec
filesystem (a stack built in Python), and a path inside it.
"""

from aiofs.optimize.cleanup import CleanupRules, apply_cleanup, cleanup, find_cleanup
from aiofs.optimize.duplicates import find_duplicates, merge_duplicates
from aiofs.optimize.overview import overview
from aiofs.optimize.recommend import recommend
from aiofs.optimize.usage_history import UsageHistory

__all__ = ["overview", "UsageHistory", "find_duplicates", "merge_duplicates", "CleanupRules",
           "find_cleanup", "apply_cleanup", "cleanup", "recommend"]
