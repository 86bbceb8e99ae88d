"""Google Drive backend (REST v3 on aiohttp): ``DriveBackend``, OAuth in :mod:`.auth`.

Needs the ``drive`` extra (aiohttp, google-auth). Modules: ``client`` (the request loop
with retries and the error table), ``filesystem`` (``DriveBackend``), ``files`` (file
objects), ``auth`` (loopback/PKCE and web-server flows, service accounts, token store).
"""

from aiofs.backends.drive.filesystem import DriveBackend, DuplicateNameWarning

__all__ = ["DriveBackend", "DuplicateNameWarning"]
