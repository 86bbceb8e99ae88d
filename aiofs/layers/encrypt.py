"""``Encrypt``: authenticated encryption of file contents, in blocks, over any filesystem.

``Encrypt(fs=target, passphrase="...")`` or ``Encrypt(fs=target, key_file="~/.aiofs.key")``.
Every file is stored as an 80-byte header followed by blocks of ``block_size`` plaintext bytes
(64 KiB by default), each sealed with AES-256-GCM (or ChaCha20-Poly1305) under a key of its
own; the format is :mod:`aiofs.codecs.aead_blocks` and ``docs/formats/encrypt.md``.

Contract, beyond the layer contract in :mod:`aiofs.layer`:

* **Key check at construction.** The store's key config (``.aiofs/encrypt/key.json`` at the
  target's root, in clear JSON) is created on first use, or read and checked: a wrong
  passphrase or key file raises ``AUTHENTICATION_FAILED`` right away. The KDF parameters
  (``scrypt_log2_n``, ``scrypt_r``, ``scrypt_p``), ``block_size`` and the default ``cipher``
  are taken from the options only when the store is created; afterwards the key config rules
  (an explicit, different ``block_size`` is a ``CONFIG_ERROR``; ``cipher`` may differ: it
  applies to files written from then on and every file names its own cipher).
* **Never wrong bytes.** Any change to a stored file (a flipped byte anywhere, blocks swapped,
  reordered or taken from another file, truncation, appended bytes) raises
  ``INTEGRITY_ERROR`` naming the path. A read that does not reach the end of a file returns
  authenticated bytes of the blocks it covers; every read that reaches the end checks the
  last block, which carries a "final" mark, so truncation is always seen there.
* **Logical sizes from stored sizes.** ``ls``/``info``/``find`` report plaintext sizes
  computed from the stored size alone (fixed header and per-block overhead, one block size
  per store), with no extra reads.
* **Range reads stay range reads.** ``cat_file(path, start, end)`` and seeks on an open file
  read only the covering blocks (plus the 80-byte header, cached per path, size and mtime).
* **No partial objects.** A write goes to one target file opened ``"wb"``; when it fails (or
  the ``with`` block raises) the target file is discarded, and if the target had already
  made it visible (fsspec's memory filesystem), the partial object is removed.
* **Names and directory structure stay in clear text**, as do sizes (to within a block tag)
  and timestamps. Internal data that layers *above* write through this layer under
  ``.aiofs/`` is encrypted like any file; this layer's own ``.aiofs/encrypt/`` is not.
* Files are not bound to their path: ``cp_file`` and ``mv`` move stored bytes as they are
  (server-side), and the copy stays valid. Use one Encrypt layer per stack.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from aiofs.codecs.aead_blocks import (
    CIPHER_IDS, HEADER_SIZE, BlockFormatError, FileCipher, block_log2, block_offset,
    block_stored_size, covering_blocks, layout, logical_size, parse_header,
)
from aiofs.codecs.keys import (
    DEFAULT_SCRYPT_LOG2_N, DEFAULT_SCRYPT_P, DEFAULT_SCRYPT_R, SOURCE_NAMES, KeyConfig,
    KeyConfigError, KeyFileError, Secret, derive_store_key, new_kdf_params,
)
from aiofs.errors import AuthenticationFailed, ConfigError, IntegrityError, Unsupported
from aiofs.layer import (
    INTERNAL_DIR, Layer, WriteOnlyFile, has_glob, hide_internal_path, internal_access,
    refuse_internal_write,
)

__all__ = ["Encrypt", "KEY_CONFIG_PATH", "DEFAULT_BLOCK_SIZE", "DEFAULT_CIPHER"]

KEY_CONFIG_PATH = f"{INTERNAL_DIR}/encrypt/key.json"
DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_CIPHER = "aes-256-gcm"

_HEADER_CACHE_SIZE = 1024
_READ_WINDOW = 4 << 20      # plaintext decrypted per read call on an open file, at most
_SEQUENTIAL_WINDOW = 8 << 20  # stored bytes read (and read ahead) per step of a sequential read
_WRITE_BATCH = 4 << 20      # sealed bytes gathered before one target write (run behind)
_BEHIND_MIN = 256 << 10     # smaller target writes are made in the caller's thread
_COPY_CHUNK = 4 << 20       # put_file / get_file / append copy size
# Keys of a target's info() that change when the stored object is replaced.
_FINGERPRINT_KEYS = ("size", "mtime", "created", "ino", "ETag", "etag", "md5", "generation",
                     "LastModified", "last_modified", "version_id")


def _normalize_range(start, end, size: int) -> tuple[int, int]:
    """fsspec's range semantics: negative offsets count from the end; clamp to the size."""
    start = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
    end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
    return start, end


def _scrypt_work(kdf) -> int:
    return (1 << kdf.log2_n) * kdf.r * kdf.p


_DEFAULT_WORK = (1 << DEFAULT_SCRYPT_LOG2_N) * DEFAULT_SCRYPT_R * DEFAULT_SCRYPT_P


def _fingerprint(info: dict) -> tuple:
    return tuple(str(info.get(key)) for key in _FINGERPRINT_KEYS)


# Target I/O (reading ahead, writing behind) overlaps with sealing and opening blocks: the
# AEAD calls of `cryptography` hold the GIL, file reads and writes release it.
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="aiofs-encrypt-io")
        return _pool


def _run_behind(fn, *args):
    """Run ``fn(*args)`` in the I/O pool; return its future once the thread has started.

    Waiting for the start hands the GIL over: a pool thread would otherwise sit waiting
    for it (up to the 5 ms switch interval) while this thread seals or opens blocks, and
    its read or write would not overlap with that work at all.
    """
    started = threading.Event()

    def task():
        started.set()
        return fn(*args)

    future = _io_pool().submit(task)
    started.wait()
    return future


def _forget_pool() -> None:  # a forked child must not use its parent's threads
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


class Encrypt(Layer):
    """Authenticated block encryption of file contents (AES-256-GCM / ChaCha20-Poly1305).

    Options (plain data, so the layer pickles and rebuilds from its arguments):

    * ``passphrase``: the store key is derived with scrypt; or
    * ``key_file``: path of a file holding a 32-byte key (raw, 64 hex characters or base64);
    * ``cipher``: ``"aes-256-gcm"`` (default) or ``"chacha20-poly1305"``, for new files;
    * ``block_size``: plaintext bytes per sealed block, a power of two from 256 B to 16 MiB
      (default 64 KiB); fixed when the store is created;
    * ``scrypt_log2_n``, ``scrypt_r``, ``scrypt_p``: scrypt cost when the store is created
      (default N=2^17, r=8, p=1: ~128 MiB and a few tenths of a second; tests use less).
    """

    protocol = "aiofs-encrypt"

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict | None = None,
        passphrase: str | None = None,
        key_file: str | None = None,
        cipher: str | None = None,
        block_size: int | None = None,
        scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N,
        scrypt_r: int = DEFAULT_SCRYPT_R,
        scrypt_p: int = DEFAULT_SCRYPT_P,
        **options: Any,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        if (passphrase is None) == (key_file is None):
            raise ConfigError("Encrypt needs exactly one of passphrase= or key_file=")
        if cipher is not None and cipher not in CIPHER_IDS:
            raise ConfigError(f"unknown cipher {cipher!r} (known: {', '.join(CIPHER_IDS)})")
        if block_size is not None:
            try:
                block_log2(int(block_size))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"Encrypt block_size: {exc}") from None
            block_size = int(block_size)
        try:
            if passphrase is not None:
                secret = Secret.from_passphrase(passphrase)
            else:
                secret = Secret.from_key_file(key_file)
        except (KeyFileError, TypeError, ValueError) as exc:
            raise ConfigError(f"Encrypt: {exc}") from None
        self._secret = secret
        self._config, self._store_key = self._open_key_config(
            block_size, cipher, (scrypt_log2_n, scrypt_r, scrypt_p))
        self.block_size = self._config.block_size
        self._block_log2 = block_log2(self.block_size)
        self.cipher = cipher or self._config.cipher
        self._cipher_id = CIPHER_IDS[self.cipher]
        self._headers: OrderedDict[tuple, FileCipher] = OrderedDict()
        self._headers_lock = threading.Lock()

    # -- the store key ---------------------------------------------------------------------

    def _key_config_path(self) -> str:
        return self.fs._strip_protocol(KEY_CONFIG_PATH)

    def _open_key_config(self, block_size, cipher, scrypt) -> tuple[KeyConfig, bytes]:
        """Read and check the store's key config, or create it; returns it and the store key."""
        path = self._key_config_path()
        secret = self._secret
        with internal_access():
            try:
                raw = self.fs.cat_file(path)
            except FileNotFoundError:
                raw = None
            if raw is None:
                try:
                    kdf = new_kdf_params(secret.source, *scrypt)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"Encrypt scrypt parameters: {exc}") from None
                store_key = derive_store_key(secret, kdf)
                config = KeyConfig.create(store_key, kdf, block_size or DEFAULT_BLOCK_SIZE,
                                          cipher or DEFAULT_CIPHER)
                try:
                    self.fs.pipe_file(path, config.to_json(), mode="create")
                    return config, store_key
                except FileExistsError:  # another process created the store meanwhile
                    raw = self.fs.cat_file(path)
        try:
            config = KeyConfig.from_json(bytes(raw))
        except KeyConfigError as exc:
            raise IntegrityError(f"encryption key config is damaged: {exc}", path) from None
        if config.kdf.source != secret.source:
            raise AuthenticationFailed(
                f"this store is protected by a {SOURCE_NAMES[config.kdf.source]}, "
                f"not a {secret.kind}", path)
        store_key = derive_store_key(secret, config.kdf)
        if not config.matches(store_key):
            raise AuthenticationFailed(f"wrong {secret.kind} for this encrypted store", path)
        if block_size is not None and block_size != config.block_size:
            raise ConfigError(f"this encrypted store uses block_size={config.block_size}, "
                              f"not {block_size}")
        return config, store_key

    @staticmethod
    def _is_own(path) -> bool:
        """True for this layer's own (clear) data under ``.aiofs/encrypt/``."""
        if not isinstance(path, str) or INTERNAL_DIR not in path:
            return False
        parts = path.replace("\\", "/").lstrip("/").split("/")
        return parts[:2] == [INTERNAL_DIR, "encrypt"]

    # -- per-file ciphers ------------------------------------------------------------------

    def _integrity(self, path, problem) -> IntegrityError:
        return IntegrityError(f"encrypted file failed verification: {problem}", str(path))

    def _new_cipher(self) -> FileCipher:
        return FileCipher.new(self._store_key, self._cipher_id, self._block_log2, self._config.kdf)

    def _open_header(self, path, header_bytes) -> FileCipher:
        """Authenticate a stored header; ``INTEGRITY_ERROR`` naming ``path`` if it fails."""
        try:
            header = parse_header(header_bytes)
            if header.block_log2 != self._block_log2:
                raise BlockFormatError(f"block size {header.block_size} differs from this "
                                       f"store's {self.block_size}")
            if header.kdf == self._config.kdf:
                store_key = self._store_key
            elif header.kdf.source != self._secret.source:
                raise BlockFormatError(f"written under a {SOURCE_NAMES[header.kdf.source]}; "
                                       f"this layer holds a {self._secret.kind}")
            else:  # written under an earlier key config of this store (same secret)
                if _scrypt_work(header.kdf) > max(_scrypt_work(self._config.kdf), _DEFAULT_WORK):
                    # a tampered header must not buy an expensive derivation
                    raise BlockFormatError("its scrypt cost exceeds this store's")
                store_key = derive_store_key(self._secret, header.kdf)
            return FileCipher.open(store_key, header)
        except BlockFormatError as exc:
            raise self._integrity(path, exc) from None

    def _cached_header(self, key: tuple) -> FileCipher | None:
        with self._headers_lock:
            cipher = self._headers.get(key)
            if cipher is not None:
                self._headers.move_to_end(key)
            return cipher

    def _cache_header(self, key: tuple, cipher: FileCipher) -> None:
        with self._headers_lock:
            self._headers[key] = cipher
            while len(self._headers) > _HEADER_CACHE_SIZE:
                self._headers.popitem(last=False)

    def _drop_header(self, path) -> None:
        with self._headers_lock:
            for key in [k for k in self._headers if k[0] == path]:
                del self._headers[key]

    def _seal(self, value) -> bytes:
        """The stored bytes of a whole file."""
        return bytes(self._new_cipher().seal_all(value))

    def _unseal(self, path, stored) -> bytes:
        """The plaintext of a whole stored file."""
        cipher = self._open_header(path, stored[:HEADER_SIZE])
        try:
            return cipher.open_all(stored)
        except BlockFormatError as exc:
            raise self._integrity(path, exc) from None

    # -- listing and metadata ----------------------------------------------------------------

    def _logical_entry(self, entry: dict) -> dict:
        if entry.get("type") != "file" or self._is_own(entry.get("name")):
            return entry
        size = entry.get("size")
        if not isinstance(size, int):
            return entry
        return {**entry, "size": logical_size(size, self.block_size)}

    def invalidate_cache(self, path=None):
        if path is None:
            with self._headers_lock:
                self._headers.clear()
        else:
            self._drop_header(self._strip_protocol(path))
        self.fs.invalidate_cache(path)

    # -- reading -----------------------------------------------------------------------------

    def cat_file(self, path, start=None, end=None, **kwargs):
        hide_internal_path(path)
        if self._is_own(path):
            return self.fs.cat_file(path, start=start, end=end, **kwargs)
        if not start and end is None:
            return self._unseal(path, self.fs.cat_file(path, **kwargs))
        return self._read_range(self._strip_protocol(path), start, end, **kwargs)

    def _read_range(self, path: str, start, end, **kwargs) -> bytes:
        """Plaintext ``[start, end)``: one target read of the covering blocks (+ the header
        when it is not cached). Retried once, uncached, if the file changed underneath."""
        for attempt in range(2):
            info = self.fs.info(path)
            if info.get("type") != "file":
                return self.fs.cat_file(path, start=start, end=end, **kwargs)  # target's error
            stored = info["size"]
            bs = self.block_size
            try:
                n_blocks, size = layout(stored, bs)
            except BlockFormatError as exc:
                raise self._integrity(path, exc) from None
            lo, hi = _normalize_range(start, end, size)
            if hi <= lo:
                if lo < size:
                    return b""  # an empty range inside the file: nothing to check
                # At or past the end: the (apparent) last block must be authentic and
                # marked final, or a truncated file would read as a shorter, valid one.
                lo, hi, result = max(size - 1, 0), size, b""
            else:
                result = None
            first, last = covering_blocks(lo, hi, n_blocks, bs) if hi > lo else (0, 0)
            s_lo = block_offset(first, bs)
            s_hi = block_offset(last, bs) + block_stored_size(last, n_blocks, size, bs)
            key = (path, _fingerprint(info))
            cipher = self._cached_header(key) if attempt == 0 else None
            try:
                if cipher is None:
                    if first == 0:
                        data = self.fs.cat_file(path, start=0, end=s_hi, **kwargs)
                        header, sealed = data[:HEADER_SIZE], memoryview(data)[HEADER_SIZE:]
                    else:
                        header, sealed = self.fs.cat_ranges(
                            [path, path], [0, s_lo], [HEADER_SIZE, s_hi], on_error="raise")
                    cipher = self._open_header(path, header)
                    self._cache_header(key, cipher)
                else:
                    sealed = self.fs.cat_file(path, start=s_lo, end=s_hi, **kwargs)
                if len(sealed) != s_hi - s_lo:
                    raise BlockFormatError("file is shorter than its listed size")
                out = bytearray(hi - lo)
                cipher.open_range_into(memoryview(sealed), first, last + 1, n_blocks, size,
                                       memoryview(out), lo, hi)
                return bytes(out) if result is None else result
            except (BlockFormatError, IntegrityError) as exc:
                self._drop_header(path)
                if attempt == 0:
                    continue  # replaced between info() and the read? look again, uncached
                if isinstance(exc, IntegrityError):
                    raise
                raise self._integrity(path, exc) from None
        raise AssertionError("unreachable")

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        # Bulk reads go down as one bulk call (concurrent on async targets), then each
        # value is decrypted here.
        if isinstance(path, list) and not recursive and not any(has_glob(p) for p in path):
            for p in path:
                hide_internal_path(p)
            stored = self.fs.cat(path, on_error=on_error, **kwargs)
            return self._unseal_many(stored, on_error)
        paths = self.expand_path(path, recursive=recursive)
        for p in paths:
            hide_internal_path(p)
        if len(paths) == 1 and paths[0] == self._strip_protocol(path) and not recursive \
                and not isinstance(path, list) and not has_glob(path):
            return self.cat_file(paths[0], **kwargs)
        stored = self.fs.cat(paths, on_error=on_error, **kwargs)
        return self._unseal_many(stored, on_error)

    def _unseal_many(self, stored: dict, on_error: str) -> dict:
        out = {}
        for name, value in stored.items():
            if isinstance(value, (bytes, bytearray, memoryview)) and not self._is_own(name):
                try:
                    value = self._unseal(name, value)
                except IntegrityError as exc:
                    if on_error == "raise":
                        raise
                    if on_error == "omit":
                        continue
                    value = exc
            out[name] = value
        return out

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        hide_internal_path(rpath)
        if self._is_own(rpath):
            return self.fs.get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
        if outfile is None and self.fs.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return None
        with self._open_reader(rpath) as src:
            callback.set_size(src.size)
            if outfile is not None:
                self._copy(src, outfile, callback)
                return None
            parent = os.path.dirname(os.fspath(lpath))
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(lpath, "wb") as dst:
                self._copy(src, dst, callback)
        return None

    @staticmethod
    def _copy(src, dst, callback) -> None:
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)
            callback.relative_update(len(chunk))

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" in mode:
            hide_internal_path(path)
        else:
            refuse_internal_write(path)
        if self._is_own(path):
            return self.fs._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                 cache_options=cache_options, **kwargs)
        if mode == "rb":
            return self._open_reader(path, block_size)
        if mode in ("wb", "xb"):
            return self._open_writer(path, mode, autocommit)
        if mode == "ab":
            return self._open_appender(path, autocommit)
        raise Unsupported(f"the Encrypt layer cannot open files in mode {mode!r}", str(path))

    def _open_reader(self, path, buffer_size=None) -> EncryptedReader:
        path = self._strip_protocol(path)
        target = self.fs.open(path, "rb")
        try:
            raw = _DecryptingRaw(self, path, target)
        except BaseException:
            target.close()
            raise
        # One block per buffer fill: a small read after a seek costs one block. Large reads
        # bypass the buffer (decrypted straight into the caller's bytes).
        return EncryptedReader(raw, buffer_size=int(buffer_size or self.block_size))

    # -- writing -----------------------------------------------------------------------------

    def _open_writer(self, path, mode="wb", autocommit=True) -> EncryptingWriter:
        path = self._strip_protocol(path)
        cipher = self._new_cipher()
        target = self.fs._open(path, mode=mode, autocommit=autocommit)
        return EncryptingWriter(self, path, target, cipher, autocommit)

    def _open_appender(self, path, autocommit=True) -> EncryptingWriter:
        # Appending re-encrypts: the existing content is read, authenticated and written
        # again under a fresh file key, then new data follows. O(file size), but the format
        # stays append-free (no block of a file is ever sealed twice under one key).
        try:
            reader = self._open_reader(path)
        except FileNotFoundError:
            reader = None
        try:
            writer = self._open_writer(path, "wb", autocommit)
            if reader is not None:
                try:
                    while chunk := reader.read(_COPY_CHUNK):
                        writer.write(chunk)
                except BaseException:
                    writer.discard()
                    raise
        finally:
            if reader is not None:
                reader.close()
        return writer

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        refuse_internal_write(path)
        if self._is_own(path):
            return self.fs.pipe_file(path, value, mode=mode, **kwargs)
        return self.fs.pipe_file(path, self._seal(value), mode=mode, **kwargs)

    def pipe(self, path, value=None, **kwargs):
        # One bulk call down (group commit on LocalBackend, concurrent on async targets).
        if isinstance(path, str):
            path = {path: value}
        prefix = f"{self.protocol}://"
        if any(isinstance(k, str) and k.startswith(prefix) for k in path):
            path = {type(self)._strip_protocol(k): v for k, v in path.items()}
        for p in path:
            refuse_internal_write(p)
        sealed = {p: (v if self._is_own(p) else self._seal(v)) for p, v in path.items()}
        return self.fs.pipe(sealed, **kwargs)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        refuse_internal_write(rpath)
        if self._is_own(rpath):
            return self.fs.put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return None
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with self._open_writer(rpath, "xb" if mode == "create" else "wb") as dst:
                self._copy(src, dst, callback)
        return None

    def touch(self, path, truncate=True, **kwargs):
        refuse_internal_write(path)
        if self._is_own(path):
            return self.fs.touch(path, truncate=truncate, **kwargs)
        if truncate or not self.fs.exists(path):
            return self.pipe_file(path, b"")
        return self.fs.touch(path, truncate=False, **kwargs)


# -- open files ------------------------------------------------------------------------------------


def _stored_size(f) -> int:
    """Size of an open target file: fstat, else its ``size``, else seek to the end."""
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pass
    size = getattr(f, "size", None)
    if isinstance(size, int):
        return size
    here = f.tell()
    end = f.seek(0, 2)
    f.seek(here)
    return end


class _DecryptingRaw(io.RawIOBase):
    """A seekable raw reader over one stored file: decrypts the blocks each read covers.

    Reads of whole blocks are decrypted straight into the caller's buffer (``readinto``),
    so ``EncryptedReader.read(n)`` costs one decryption pass over the bytes it returns. A
    random read fetches exactly its covering blocks; once reads are sequential, stored
    bytes come in windows of 8 MiB and the next window is read ahead in a thread while the
    current one is decrypted.
    """

    def __init__(self, layer: Encrypt, path: str, target):
        super().__init__()
        self._layer = layer
        self._path = path
        self._f = target
        self.name = path
        self._stored = _stored_size(target)
        self._buffers = [bytearray(), bytearray()]
        self._current = 0              # index of the buffer holding the window
        self._win_lo = self._win_hi = -1
        self._win: memoryview | None = None
        self._ahead = None             # (lo, hi, future) of the window being read ahead
        header = self._sealed(0, min(HEADER_SIZE, self._stored), exact=False)
        self._cipher = layer._open_header(path, header)
        try:
            self._n_blocks, self.size = layout(self._stored, layer.block_size)
        except BlockFormatError as exc:
            raise layer._integrity(path, exc) from None
        self._block_size = layer.block_size
        # Windows hold whole blocks, a whole number of MiB of plaintext when blocks allow:
        # reads of 1 MiB then never straddle two windows.
        self._window = max(1, _SEQUENTIAL_WINDOW // layer.block_size) * (layer.block_size + 16)
        self._pos = 0
        self._final_checked = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        elif whence == 2:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence!r}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    # -- stored bytes --------------------------------------------------------------------

    def _fill(self, index: int, lo: int, hi: int) -> memoryview:
        """Read stored ``[lo, hi)`` into buffer ``index``; returns the bytes read."""
        n = hi - lo
        if len(self._buffers[index]) < n:
            self._buffers[index] = bytearray(n)
        view = memoryview(self._buffers[index])[:n]
        f = self._f
        f.seek(lo)
        got = 0
        readinto = getattr(f, "readinto", None)
        while got < n:
            if readinto is not None:
                k = readinto(view[got:])
            else:
                chunk = f.read(n - got)
                k = len(chunk)
                view[got:got + k] = chunk
            if not k:
                break
            got += k
        return view[:got]

    def _settle(self):
        """Wait for the read-ahead in flight (the target file is then free); returns it."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        lo, hi, future = ahead
        try:
            return lo, future.result()
        except Exception:
            return None  # read again in the foreground, where its error is raised

    def _sealed(self, lo: int, hi: int, exact: bool = True) -> memoryview:
        """Stored bytes ``[lo, hi)``, from the current window or read now."""
        win = self._win
        if win is not None and self._win_lo <= lo and hi <= self._win_hi:
            return win[lo - self._win_lo:hi - self._win_lo]
        sequential = win is not None and self._win_lo <= lo <= self._win_hi
        ahead = self._settle()
        spare = 1 - self._current
        if ahead is not None and ahead[0] == lo and hi <= lo + len(ahead[1]):
            view = ahead[1]  # the read-ahead is exactly what comes next
        elif sequential:
            view = self._fill(spare, lo, min(self._stored, max(hi, lo + self._window)))
        else:
            view = self._fill(spare, lo, hi)
        self._current = spare
        self._win, self._win_lo, self._win_hi = view, lo, lo + len(view)
        if len(view) < hi - lo:
            if exact:
                raise self._layer._integrity(self._path, "file is shorter than its size said")
            return view
        if sequential and self._win_hi < self._stored:
            ahead_lo = self._win_hi
            ahead_hi = min(self._stored, ahead_lo + self._window)
            other = 1 - self._current
            future = _run_behind(self._fill, other, ahead_lo, ahead_hi)
            self._ahead = (ahead_lo, ahead_hi, future)
        return view[:hi - lo]

    # -- plaintext -------------------------------------------------------------------------

    def _decrypt(self, lo: int, hi: int, out) -> None:
        """Plaintext ``[lo, hi)`` into ``out`` (covering blocks read in one go)."""
        bs = self._block_size
        first, last = covering_blocks(lo, hi, self._n_blocks, bs)
        s_lo = block_offset(first, bs)
        s_hi = block_offset(last, bs) + block_stored_size(last, self._n_blocks, self.size, bs)
        sealed = self._sealed(s_lo, s_hi)
        try:
            self._cipher.open_range_into(sealed, first, last + 1, self._n_blocks, self.size,
                                         out, lo, hi)
        except BlockFormatError as exc:
            raise self._layer._integrity(self._path, exc) from None
        if last == self._n_blocks - 1:
            self._final_checked = True

    def _check_final(self) -> None:
        """At the end of the file: authenticate the last block once (it is marked final)."""
        if self._final_checked:
            return
        if self.size == 0:
            sealed = self._sealed(HEADER_SIZE, HEADER_SIZE + 16)
            try:
                self._cipher.open_block(0, sealed, True)
            except BlockFormatError as exc:
                raise self._layer._integrity(self._path, exc) from None
        else:
            self._decrypt(self.size - 1, self.size, memoryview(bytearray(1)))
        self._final_checked = True

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        pos, size = self._pos, self.size
        if not out.nbytes:
            return 0
        if pos >= size:
            self._check_final()
            return 0
        bs = self._block_size
        end = min(pos + out.nbytes, size, pos + _READ_WINDOW)
        if end < size and end // bs * bs > pos:
            # Stop on a block boundary: the next call starts on one, no block is opened
            # twice, and a small read after a seek touches a single block.
            end = end // bs * bs
        if self._win is not None and end < size:
            # Stop at the end of the current window, if the read starts inside it: the next
            # call then starts where the read-ahead does.
            if self._win_lo <= block_offset(pos // bs, bs) < self._win_hi:
                limit = (self._win_hi - HEADER_SIZE) // (bs + 16) * bs
                if pos < limit < end:
                    end = limit
        self._decrypt(pos, end, out[:end - pos])
        self._pos = end
        return end - pos

    def readall(self) -> bytes:
        remaining = max(self.size - self._pos, 0)
        out = bytearray(remaining)
        view = memoryview(out)
        got = 0
        while got < remaining:
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        self._check_final()
        return bytes(out[:got])

    def close(self) -> None:
        if not self.closed:
            try:
                self._settle()
                self._win = None
                self._buffers = []
                self._f.close()
            finally:
                super().close()


class EncryptedReader(io.BufferedReader):
    """A buffered, seekable reader of an encrypted file; ``size`` is the plaintext size."""

    @property
    def size(self) -> int:
        return self.raw.size

    @property
    def path(self) -> str:
        return self.raw.name


class EncryptingWriter(WriteOnlyFile, io.BufferedIOBase):
    """Seals blocks as data arrives and streams them to one target file.

    The last 1..B bytes are held back until more data comes or the file is closed, because
    the last block is sealed with the "final" mark. ``close`` commits (the target file's
    own close: an atomic rename on ``LocalBackend``); an exception inside the ``with`` block,
    a failed write, or :meth:`discard` abandons the target file and leaves no object behind.
    """

    def __init__(self, layer: Encrypt, path: str, target, cipher: FileCipher, autocommit=True):
        super().__init__()
        self._layer = layer
        self.path = path
        self._target = target
        self._cipher = cipher
        self._autocommit = autocommit
        self._bs = cipher.block_size
        self._tail = bytearray()
        self._out = bytearray()
        self._spare = bytearray()
        self._filled = 0      # sealed bytes in _out not yet written
        self._pending = None  # the target write running behind, if any
        self._index = 0
        self._written = 0
        self._failed = False
        self._aborted = False
        self._header_written = False
        try:
            target.write(cipher.header_bytes)
            self._header_written = True
        except BaseException:
            self._abort()
            super().close()
            raise

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        if self.closed:
            raise ValueError("flush of closed file")
        # Nothing to do: the held-back tail cannot be sealed before the file ends.

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        if self._failed:
            raise ValueError(f"an earlier write to {self.path!r} failed; the file is abandoned")
        try:
            return self._write(data)
        except BaseException:
            self._failed = True
            raise

    def _write(self, data) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        bs = self._bs
        tail = self._tail
        if len(tail) + n <= bs:
            tail += view
            self._written += n
            return n
        blocks = (len(tail) + n - 1) // bs  # seal all but the last 1..bs bytes
        step = bs + 16
        if self._filled + blocks * step > len(self._out):
            self._emit()
            if blocks * step > len(self._out):
                self._out = bytearray(max(blocks * step, min(_WRITE_BATCH + step, 2 * blocks * step)))
        out = memoryview(self._out)
        cipher, index, pos = self._cipher, self._index, self._filled
        if tail:
            need = bs - len(tail)
            tail += view[:need]
            view = view[need:]
            cipher.seal_into(index, tail, False, out[pos:pos + step])
            del tail[:]
            index += 1
            pos += step
            blocks -= 1
        for k in range(blocks):
            cipher.seal_into(index, view[k * bs:(k + 1) * bs], False, out[pos:pos + step])
            index += 1
            pos += step
        tail += view[blocks * bs:]
        self._index = index
        self._filled = pos
        if pos >= _WRITE_BATCH:
            self._emit()
        self._written += n
        return n

    def _emit(self) -> None:
        """Write the sealed bytes gathered in ``_out`` to the target, in a pool thread while
        the caller's next data is sealed into the other buffer."""
        n, self._filled = self._filled, 0
        self._wait()
        if not n:
            return
        out = self._out
        if n < _BEHIND_MIN:  # small files: a thread handoff would cost more than it saves
            self._target.write(memoryview(out)[:n])
            return
        self._pending = _run_behind(self._target.write, memoryview(out)[:n])
        self._out, self._spare = self._spare, out

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Seal the last block and commit the target file (or abandon it after a failure)."""
        if self.closed:
            return
        if self._failed:
            self.discard()
            return
        try:
            self._emit()
            self._wait()
            self._target.write(self._cipher.seal(self._index, self._tail, True))
            self._target.close()
        except BaseException:
            self._abort()
            raise
        finally:
            self._tail = self._out = self._spare = bytearray()
            super().close()

    def commit(self) -> None:
        """Inside an fsspec transaction: make the closed file visible."""
        commit = getattr(self._target, "commit", None)
        if commit is not None and not self._autocommit:
            commit()

    def discard(self) -> None:
        """Abandon the write: no object is left at the path (an old one stays as it was)."""
        if self.closed:
            # Already closed: only an uncommitted file (fsspec transaction) can be dropped.
            if not self._autocommit and not self._aborted and hasattr(self._target, "discard"):
                self._aborted = True
                self._target.discard()
            return
        self._abort()
        super().close()

    def _abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        target = self._target
        try:
            self._wait()
        except BaseException:
            pass
        try:
            if hasattr(target, "discard"):
                target.discard()
            else:
                target.close()
        except Exception:
            pass
        self._remove_if_ours()

    def _remove_if_ours(self) -> None:
        """Remove the object at the path if it is this (partial) write: targets that make a
        file visible while it is written (fsspec's memory filesystem) keep no half file."""
        fs = self._layer.fs
        try:
            head = fs.cat_file(self.path, start=0, end=HEADER_SIZE)
        except Exception:
            return
        # Our header holds a random 32-byte salt: an object that starts with it is ours. An
        # empty object, when even the header could not be written, is our fresh file too.
        if bytes(head) == self._cipher.header_bytes or (not head and not self._header_written):
            try:
                fs.rm_file(self.path)
            except Exception:
                pass

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()
        return False
