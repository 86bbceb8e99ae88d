"""Storage layers, one per module. Each wraps any fsspec filesystem (see ``aiofs.Layer``).

Layers land with their issues: Versioning, Dedup, Compress, Encrypt, Quota, Offline.
"""

__all__: list[str] = []
