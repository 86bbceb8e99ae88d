"""The aiofs-encrypt block format, version 1: header, sealed blocks, size arithmetic.

A stored file is one fixed 80-byte header followed by the plaintext cut into blocks of
``block_size`` bytes (the last one shorter, or empty for an empty file), each sealed with an
AEAD (AES-256-GCM or ChaCha20-Poly1305) into ``ciphertext || 16-byte tag``::

    header (80) | block 0 (B + 16) | block 1 (B + 16) | ... | last block (1..B + 16)

Header (all integers unsigned, big-endian; the full description with a worked example is
``docs/formats/encrypt.md``)::

    0   8  magic b"AIOFSENC"
    8   1  format version (1)
    9   1  cipher: 1 = AES-256-GCM, 2 = ChaCha20-Poly1305
    10  1  log2(block size)
    11  1  key source: 1 = passphrase (scrypt), 2 = key file (HKDF-SHA256)
    12  1  scrypt log2(N)   (0 for a key file)
    13  1  scrypt r         (0 for a key file)
    14  1  scrypt p         (0 for a key file)
    15  1  reserved, 0
    16 16  store salt (the salt of the store key derivation)
    32 32  file salt (random for every write of every file)
    64 16  header tag: AEAD(file key).encrypt(nonce=ff*12, b"", aad=header[0:64])

Keys: the *store key* comes from the passphrase (scrypt) or the key file (HKDF) and the
store salt; the *file key* is ``HKDF-SHA256(store key, salt=file salt,
info=b"aiofs-encrypt/v1/file-key")``, so every file (and every rewrite of it) has its own
key. Block ``i`` is sealed with nonce ``i`` (8 bytes) ``|| final`` (4 bytes, 1 on the last
block, else 0) and the whole 80-byte header as associated data: a block moved to another
index, to another file, or a file cut at a block boundary (whose new last block is not
marked final) all fail authentication.

This module knows nothing of fsspec or paths: it raises :class:`BlockFormatError` with a
message, and the layer turns it into an ``INTEGRITY_ERROR`` naming the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "BlockFormatError", "FileCipher", "Header", "KdfParams", "HEADER_SIZE", "TAG_SIZE",
    "MAGIC", "VERSION", "CIPHER_IDS", "CIPHER_NAMES", "SOURCE_PASSPHRASE", "SOURCE_KEY_FILE",
    "MIN_BLOCK_LOG2", "MAX_BLOCK_LOG2", "block_log2", "logical_size", "stored_size", "layout",
    "block_offset", "block_stored_size", "covering_blocks", "file_key", "nonce",
    "validate_kdf",
]

MAGIC = b"AIOFSENC"
VERSION = 1
HEADER_BODY_SIZE = 64
TAG_SIZE = 16
HEADER_SIZE = HEADER_BODY_SIZE + TAG_SIZE  # 80
NONCE_SIZE = 12
STORE_SALT_SIZE = 16
FILE_SALT_SIZE = 32
KEY_SIZE = 32
HEADER_NONCE = b"\xff" * NONCE_SIZE  # never a block nonce: block nonces end in 0 or 1
_NOT_FINAL = b"\x00\x00\x00\x00"
_FINAL = b"\x00\x00\x00\x01"
FILE_KEY_INFO = b"aiofs-encrypt/v1/file-key"

CIPHER_IDS = {"aes-256-gcm": 1, "chacha20-poly1305": 2}
CIPHER_NAMES = {number: name for name, number in CIPHER_IDS.items()}
_AEADS = {1: AESGCM, 2: ChaCha20Poly1305}

SOURCE_PASSPHRASE = 1
SOURCE_KEY_FILE = 2

MIN_BLOCK_LOG2 = 8    # 256 bytes: tests use tiny blocks to get many of them cheaply
MAX_BLOCK_LOG2 = 24   # 16 MiB

# scrypt bounds accepted from a header or key config: a tampered header must not make a
# reader allocate gigabytes or spin for minutes before it fails authentication.
MAX_SCRYPT_LOG2_N = 22
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MAX_SCRYPT_MEMORY = 1 << 30  # 128 * r * N bytes


class BlockFormatError(ValueError):
    """Stored bytes that are not a valid, authentic aiofs-encrypt file (message only)."""


@dataclass(frozen=True)
class KdfParams:
    """How the store key is derived: source (passphrase or key file), scrypt cost, salt."""

    source: int
    log2_n: int
    r: int
    p: int
    salt: bytes

    def describe(self) -> str:
        if self.source == SOURCE_KEY_FILE:
            return "key file (HKDF-SHA256)"
        return f"passphrase (scrypt N=2^{self.log2_n}, r={self.r}, p={self.p})"


def validate_kdf(params: KdfParams) -> None:
    """Raise :class:`BlockFormatError` for parameters no aiofs writer produces."""
    if len(params.salt) != STORE_SALT_SIZE:
        raise BlockFormatError(f"store salt must be {STORE_SALT_SIZE} bytes")
    if params.source == SOURCE_KEY_FILE:
        if (params.log2_n, params.r, params.p) != (0, 0, 0):
            raise BlockFormatError("key-file header with scrypt parameters")
        return
    if params.source != SOURCE_PASSPHRASE:
        raise BlockFormatError(f"unknown key source {params.source}")
    if not (1 <= params.log2_n <= MAX_SCRYPT_LOG2_N and 1 <= params.r <= MAX_SCRYPT_R
            and 1 <= params.p <= MAX_SCRYPT_P
            and 128 * params.r * (1 << params.log2_n) <= MAX_SCRYPT_MEMORY):
        raise BlockFormatError(
            f"scrypt parameters out of range: N=2^{params.log2_n}, r={params.r}, p={params.p}")


def block_log2(block_size: int) -> int:
    """log2 of a block size, or ``ValueError`` if it is not an allowed power of two."""
    if not isinstance(block_size, int) or block_size <= 0 or block_size & (block_size - 1):
        raise ValueError(f"block size must be a power of two, not {block_size!r}")
    log2 = block_size.bit_length() - 1
    if not MIN_BLOCK_LOG2 <= log2 <= MAX_BLOCK_LOG2:
        raise ValueError(f"block size must be between {1 << MIN_BLOCK_LOG2} and "
                         f"{1 << MAX_BLOCK_LOG2} bytes, not {block_size}")
    return log2


# -- size arithmetic ---------------------------------------------------------------------------


def stored_size(logical: int, block_size: int) -> int:
    """Bytes stored for ``logical`` plaintext bytes (an empty file has one empty block)."""
    blocks = max(1, -(-logical // block_size))
    return HEADER_SIZE + logical + blocks * TAG_SIZE


def logical_size(stored: int, block_size: int) -> int:
    """Plaintext size for a stored size: exact for every size a writer produces.

    For sizes no writer produces (a damaged file) this is a best guess, never negative;
    reading such a file raises :class:`BlockFormatError` through :func:`layout`.
    """
    rest = stored - HEADER_SIZE
    if rest < TAG_SIZE:
        return 0
    full, rem = divmod(rest, block_size + TAG_SIZE)
    return full * block_size + max(rem - TAG_SIZE, 0)


def layout(stored: int, block_size: int) -> tuple[int, int]:
    """``(number of blocks, plaintext size)`` of a stored size, or :class:`BlockFormatError`."""
    rest = stored - HEADER_SIZE
    if rest < 0:
        raise BlockFormatError(f"truncated header: {stored} bytes stored, header is {HEADER_SIZE}")
    if rest < TAG_SIZE:
        raise BlockFormatError("truncated: the file has no complete block")
    full, rem = divmod(rest, block_size + TAG_SIZE)
    if rem == 0:
        return full, full * block_size
    if rem < TAG_SIZE or (rem == TAG_SIZE and full > 0):
        raise BlockFormatError(
            f"size {stored} is impossible for block size {block_size}: truncated or extended")
    return full + 1, full * block_size + rem - TAG_SIZE


def block_offset(index: int, block_size: int) -> int:
    """Stored offset of block ``index``."""
    return HEADER_SIZE + index * (block_size + TAG_SIZE)


def block_stored_size(index: int, n_blocks: int, logical: int, block_size: int) -> int:
    """Stored bytes of block ``index`` (ciphertext plus tag)."""
    if index < n_blocks - 1:
        return block_size + TAG_SIZE
    return logical - index * block_size + TAG_SIZE


def covering_blocks(start: int, end: int, n_blocks: int, block_size: int) -> tuple[int, int]:
    """First and last block (inclusive) holding plaintext ``[start, end)`` (``end > start``)."""
    return start // block_size, min((end - 1) // block_size, n_blocks - 1)


# -- keys and nonces ---------------------------------------------------------------------------


def file_key(store_key: bytes, file_salt: bytes) -> bytes:
    """The per-file key: ``HKDF-SHA256(store key, salt=file salt, info=FILE_KEY_INFO)``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=file_salt,
                info=FILE_KEY_INFO).derive(store_key)


def nonce(index: int, final: bool) -> bytes:
    """Block nonce: 8-byte index, then 4 bytes ``1`` for the last block, ``0`` otherwise."""
    return index.to_bytes(8, "big") + (_FINAL if final else _NOT_FINAL)


# -- header ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """A parsed header (its tag not yet checked: :meth:`FileCipher.open` checks it)."""

    cipher_id: int
    block_log2: int
    kdf: KdfParams
    file_salt: bytes
    tag: bytes
    raw: bytes

    @property
    def block_size(self) -> int:
        return 1 << self.block_log2

    @property
    def cipher(self) -> str:
        return CIPHER_NAMES[self.cipher_id]


def build_header_body(cipher_id: int, log2: int, kdf: KdfParams, file_salt: bytes) -> bytes:
    """The first 64 bytes of a header (everything the header tag covers)."""
    body = b"".join([
        MAGIC, bytes([VERSION, cipher_id, log2, kdf.source, kdf.log2_n, kdf.r, kdf.p, 0]),
        kdf.salt, file_salt,
    ])
    assert len(body) == HEADER_BODY_SIZE
    return body


def parse_header(data: bytes) -> Header:
    """Parse (not authenticate) a header; :class:`BlockFormatError` if it is malformed."""
    data = bytes(data[:HEADER_SIZE])
    if len(data) < HEADER_SIZE:
        raise BlockFormatError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
    if data[:8] != MAGIC:
        raise BlockFormatError("not an aiofs-encrypt file (bad magic)")
    version, cipher_id, log2, source, log2_n, r, p, reserved = data[8:16]
    if version != VERSION:
        raise BlockFormatError(f"unsupported format version {version}")
    if cipher_id not in _AEADS:
        raise BlockFormatError(f"unknown cipher id {cipher_id}")
    if not MIN_BLOCK_LOG2 <= log2 <= MAX_BLOCK_LOG2:
        raise BlockFormatError(f"block size 2^{log2} out of range")
    if reserved != 0:
        raise BlockFormatError("reserved header byte is not zero")
    kdf = KdfParams(source, log2_n, r, p, data[16:32])
    validate_kdf(kdf)
    return Header(cipher_id, log2, kdf, data[32:64], data[64:80], data)


# -- sealing and opening -----------------------------------------------------------------------


class FileCipher:
    """The keys of one stored file: seals and opens its header tag and blocks.

    ``FileCipher.new(store_key, ...)`` starts a new file (fresh random file salt);
    ``FileCipher.open(store_key, header_bytes)`` authenticates an existing header.
    """

    __slots__ = ("header", "aead", "aad", "block_size")

    def __init__(self, header: Header, key: bytes):
        self.header = header
        self.aead = _AEADS[header.cipher_id](key)
        self.aad = header.raw
        self.block_size = header.block_size

    @classmethod
    def new(cls, store_key: bytes, cipher_id: int, log2: int, kdf: KdfParams,
            file_salt: bytes | None = None) -> FileCipher:
        """A cipher for a new file; ``file_salt`` is random unless given (tests)."""
        salt = os.urandom(FILE_SALT_SIZE) if file_salt is None else file_salt
        key = file_key(store_key, salt)
        body = build_header_body(cipher_id, log2, kdf, salt)
        tag = _AEADS[cipher_id](key).encrypt(HEADER_NONCE, b"", body)
        raw = body + tag
        return cls(Header(cipher_id, log2, kdf, salt, tag, raw), key)

    @classmethod
    def open(cls, store_key: bytes, header: Header | bytes) -> FileCipher:
        """Authenticate a header with the store key; :class:`BlockFormatError` if it fails."""
        if not isinstance(header, Header):
            header = parse_header(header)
        key = file_key(store_key, header.file_salt)
        try:
            _AEADS[header.cipher_id](key).decrypt(HEADER_NONCE, header.tag, header.raw[:HEADER_BODY_SIZE])
        except InvalidTag:
            raise BlockFormatError("header failed authentication (tampered, or written "
                                   "under another key)") from None
        return cls(header, key)

    @property
    def header_bytes(self) -> bytes:
        return self.aad

    # -- blocks --------------------------------------------------------------------------

    def seal(self, index: int, plaintext, final: bool) -> bytes:
        """``ciphertext || tag`` of block ``index``."""
        return self.aead.encrypt(nonce(index, final), plaintext, self.aad)

    def seal_into(self, index: int, plaintext, final: bool, out) -> int:
        """Seal into ``out`` (exactly ``len(plaintext) + 16`` bytes); returns that length."""
        return self.aead.encrypt_into(nonce(index, final), plaintext, self.aad, out)

    def open_block(self, index: int, sealed, final: bool) -> bytes:
        """The plaintext of block ``index``; :class:`BlockFormatError` if it is not authentic."""
        try:
            return self.aead.decrypt(nonce(index, final), sealed, self.aad)
        except InvalidTag:
            raise self._block_error(index, final) from None

    def open_block_into(self, index: int, sealed, final: bool, out) -> int:
        """Open into ``out`` (exactly ``len(sealed) - 16`` bytes); ``out`` is zeroed on failure."""
        try:
            return self.aead.decrypt_into(nonce(index, final), sealed, self.aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))  # never leave unauthenticated plaintext behind
            raise self._block_error(index, final) from None

    def _block_error(self, index: int, final: bool) -> BlockFormatError:
        where = "last block" if final else "block"
        return BlockFormatError(
            f"{where} {index} failed authentication (tampered, reordered, truncated or "
            f"extended)")

    # -- whole files -----------------------------------------------------------------------

    def seal_all(self, data) -> bytearray:
        """The complete stored file (header and blocks) for ``data``."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        size = view.nbytes
        bs = self.block_size
        out = bytearray(stored_size(size, bs))
        out[:HEADER_SIZE] = self.aad
        target = memoryview(out)
        n_blocks = max(1, -(-size // bs))
        pos = HEADER_SIZE
        for index in range(n_blocks):
            chunk = view[index * bs:(index + 1) * bs]
            n = len(chunk) + TAG_SIZE
            self.aead.encrypt_into(nonce(index, index == n_blocks - 1), chunk, self.aad,
                                   target[pos:pos + n])
            pos += n
        return out

    def open_all(self, stored) -> bytes:
        """The plaintext of a complete stored file (its header already authenticated)."""
        view = memoryview(stored)
        n_blocks, size = layout(view.nbytes, self.block_size)
        out = bytearray(size)
        self.open_range_into(view[HEADER_SIZE:], 0, n_blocks, n_blocks, size, memoryview(out), 0, size)
        return bytes(out)

    def open_range_into(self, sealed, first: int, stop: int, n_blocks: int, logical: int,
                        out, start: int, end: int) -> None:
        """Open blocks ``first`` to ``stop - 1`` from ``sealed`` (their stored bytes, in a row) and
        write plaintext ``[start, end)`` into ``out`` (``end - start`` bytes).

        Blocks entirely inside the range are decrypted straight into ``out``; the ones cut by
        the range go through a scratch buffer, so no unauthenticated byte reaches ``out``.
        """
        bs = self.block_size
        step = bs + TAG_SIZE
        aead, aad = self.aead, self.aad
        # Fast path: the whole non-final blocks in the middle of the range, which start and
        # end inside it (the common case of a large sequential read).
        inner_first = first if start <= first * bs else first + 1
        inner_stop = min(stop, n_blocks - 1, end // bs)
        if len(sealed) < (inner_stop - first) * step:
            inner_stop = first + len(sealed) // step
        for index in range(first, inner_first):
            self._open_partial(index, sealed, first, n_blocks, logical, out, start, end)
        if inner_stop > inner_first:
            decrypt_into = aead.decrypt_into
            pos = (inner_first - first) * step
            at = inner_first * bs - start
            index = inner_first
            try:
                for index in range(inner_first, inner_stop):
                    decrypt_into(index.to_bytes(8, "big") + _NOT_FINAL, sealed[pos:pos + step],
                                 aad, out[at:at + bs])
                    pos += step
                    at += bs
            except InvalidTag:
                out[at:at + bs] = bytes(bs)
                raise self._block_error(index, False) from None
        for index in range(max(inner_first, inner_stop), stop):
            self._open_partial(index, sealed, first, n_blocks, logical, out, start, end)

    def _open_partial(self, index, sealed, first, n_blocks, logical, out, start, end) -> None:
        """Open one block of :meth:`open_range_into` that the range cuts, or the last one."""
        bs = self.block_size
        plain_start = index * bs
        plain_len = bs if index < n_blocks - 1 else logical - plain_start
        pos = (index - first) * (bs + TAG_SIZE)
        chunk = sealed[pos:pos + plain_len + TAG_SIZE]
        if len(chunk) != plain_len + TAG_SIZE:
            raise BlockFormatError(f"block {index} is truncated")
        final = index == n_blocks - 1
        lo = max(start, plain_start)
        hi = min(end, plain_start + plain_len)
        if lo == plain_start and hi == plain_start + plain_len:
            target = out[lo - start:hi - start]
            try:
                self.aead.decrypt_into(nonce(index, final), chunk, self.aad, target)
            except InvalidTag:
                target[:] = bytes(len(target))
                raise self._block_error(index, final) from None
        else:
            plain = self.open_block(index, chunk, final)
            if hi > lo:
                out[lo - start:hi - start] = plain[lo - plain_start:hi - plain_start]
