"""Store keys of the Encrypt layer: passphrase (scrypt) or key file (HKDF), and the key config.

* A **passphrase** is normalised to Unicode NFC and encoded as UTF-8; the store key is
  ``scrypt(passphrase, salt=store salt, N=2^log2_n, r, p, length=32)``.
* A **key file** holds 32 random bytes: the raw bytes (a file of exactly 32 bytes), or 64
  hexadecimal characters, or the base64 (standard or URL-safe) of the 32 bytes; surrounding
  whitespace is ignored. The store key is ``HKDF-SHA256(key, salt=store salt,
  info=b"aiofs-encrypt/v1/store-key", length=32)``.
* The **key config** (``.aiofs/encrypt/key.json`` in a store) is JSON: the KDF, its salt
  and parameters, the store's block size and default cipher, and a *key check*
  ``HKDF-SHA256(store key, info=b"aiofs-encrypt/v1/key-check")`` that tells a wrong key
  (``AUTHENTICATION_FAILED``) from damaged data (``INTEGRITY_ERROR``). A SHA-256
  ``checksum`` over the other fields detects a damaged config.

No fsspec, no paths: errors are :class:`KeyConfigError` (damaged config) and
:class:`KeyFileError` (unusable key file); the layer maps them to aiofs error codes.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import os
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from aiofs.codecs.aead_blocks import (
    CIPHER_IDS, KEY_SIZE, SOURCE_KEY_FILE, SOURCE_PASSPHRASE, STORE_SALT_SIZE, BlockFormatError,
    KdfParams, block_log2, validate_kdf,
)

__all__ = [
    "KEY_CONFIG_FORMAT", "KEY_CONFIG_VERSION", "KeyConfig", "KeyConfigError", "KeyFileError",
    "Secret", "derive_store_key", "generate_key_file", "key_check", "load_key_file",
    "new_kdf_params", "normalize_passphrase",
]

KEY_CONFIG_FORMAT = "aiofs-encrypt-key"
KEY_CONFIG_VERSION = 1
STORE_KEY_INFO = b"aiofs-encrypt/v1/store-key"
KEY_CHECK_INFO = b"aiofs-encrypt/v1/key-check"
SOURCE_NAMES = {SOURCE_PASSPHRASE: "passphrase", SOURCE_KEY_FILE: "key-file"}

DEFAULT_SCRYPT_LOG2_N = 17  # 128 MiB, ~0.3 s here: OWASP's scrypt recommendation
DEFAULT_SCRYPT_R = 8
DEFAULT_SCRYPT_P = 1


class KeyConfigError(ValueError):
    """The key config is unreadable or damaged."""


class KeyFileError(ValueError):
    """A key file that is missing or does not hold a 32-byte key."""


# -- secrets -----------------------------------------------------------------------------------


def normalize_passphrase(passphrase: str | bytes) -> bytes:
    """The bytes scrypt receives: Unicode NFC, UTF-8 (bytes are taken as they are)."""
    if isinstance(passphrase, bytes):
        material = passphrase
    elif isinstance(passphrase, str):
        material = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    else:
        raise TypeError(f"a passphrase is a string, not {type(passphrase).__name__}")
    if not material:
        raise ValueError("the passphrase is empty")
    return material


def load_key_file(path: str | os.PathLike) -> bytes:
    """The 32-byte key in a key file: raw bytes, 64 hex characters or base64."""
    try:
        with open(os.path.expanduser(os.fspath(path)), "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_SIZE:
            return key
    raise KeyFileError(
        f"key file {os.fspath(path)!r} must hold a 32-byte key: 32 raw bytes, 64 hex "
        f"characters or base64")


def generate_key_file(path: str | os.PathLike) -> None:
    """Write a new random key (64 hex characters) to ``path``, readable by the owner only.

    Refuses to overwrite an existing file (``FileExistsError``): a lost key loses the data.
    """
    fd = os.open(os.path.expanduser(os.fspath(path)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(KEY_SIZE).hex() + "\n")


@dataclass(frozen=True)
class Secret:
    """What the user holds: a passphrase or a key file's key (never printed)."""

    source: int
    material: bytes

    def __repr__(self) -> str:
        return f"Secret({SOURCE_NAMES.get(self.source, self.source)}, <hidden>)"

    @classmethod
    def from_passphrase(cls, passphrase: str | bytes) -> Secret:
        return cls(SOURCE_PASSPHRASE, normalize_passphrase(passphrase))

    @classmethod
    def from_key_file(cls, path: str | os.PathLike) -> Secret:
        return cls(SOURCE_KEY_FILE, load_key_file(path))

    @property
    def kind(self) -> str:
        return SOURCE_NAMES[self.source]


# -- derivation --------------------------------------------------------------------------------

_derived: OrderedDict[tuple, bytes] = OrderedDict()
_derived_lock = threading.Lock()
_DERIVED_MAX = 64


def derive_store_key(secret: Secret, params: KdfParams) -> bytes:
    """The 32-byte store key for ``secret`` and ``params`` (cached: scrypt is slow on purpose).

    ``ValueError`` if the secret is of the other kind than ``params`` expects;
    :class:`~aiofs.codecs.aead_blocks.BlockFormatError` for parameters out of range.
    """
    if secret.source != params.source:
        raise ValueError(f"a {SOURCE_NAMES.get(params.source, params.source)} is needed, "
                         f"not a {secret.kind}")
    validate_kdf(params)
    cache_key = (params, hashlib.sha256(params.salt + secret.material).digest())
    with _derived_lock:
        key = _derived.get(cache_key)
        if key is not None:
            _derived.move_to_end(cache_key)
            return key
    if params.source == SOURCE_PASSPHRASE:
        key = Scrypt(salt=params.salt, length=KEY_SIZE, n=1 << params.log2_n, r=params.r,
                     p=params.p).derive(secret.material)
    else:
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=params.salt,
                   info=STORE_KEY_INFO).derive(secret.material)
    with _derived_lock:
        _derived[cache_key] = key
        while len(_derived) > _DERIVED_MAX:
            _derived.popitem(last=False)
    return key


def key_check(store_key: bytes) -> bytes:
    """The value stored in the key config to recognise the right key (32 bytes)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None,
                info=KEY_CHECK_INFO).derive(store_key)


def new_kdf_params(source: int, log2_n: int = DEFAULT_SCRYPT_LOG2_N, r: int = DEFAULT_SCRYPT_R,
                   p: int = DEFAULT_SCRYPT_P) -> KdfParams:
    """Parameters for a new store: a random salt; scrypt cost for a passphrase."""
    salt = os.urandom(STORE_SALT_SIZE)
    if source == SOURCE_KEY_FILE:
        return KdfParams(SOURCE_KEY_FILE, 0, 0, 0, salt)
    params = KdfParams(SOURCE_PASSPHRASE, int(log2_n), int(r), int(p), salt)
    try:
        validate_kdf(params)
    except BlockFormatError as exc:
        raise ValueError(str(exc)) from None
    return params


# -- the key config ----------------------------------------------------------------------------


def _checksum(fields: dict) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class KeyConfig:
    """The store-level key description kept in ``.aiofs/encrypt/key.json``."""

    kdf: KdfParams
    block_size: int
    cipher: str
    check: bytes
    created: str

    @classmethod
    def create(cls, store_key: bytes, kdf: KdfParams, block_size: int, cipher: str) -> KeyConfig:
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(kdf, block_size, cipher, key_check(store_key), created)

    def matches(self, store_key: bytes) -> bool:
        """True when ``store_key`` is this store's key (constant-time comparison)."""
        return hmac.compare_digest(key_check(store_key), self.check)

    def fields(self) -> dict:
        if self.kdf.source == SOURCE_PASSPHRASE:
            kdf = {"name": "scrypt", "log2_n": self.kdf.log2_n, "r": self.kdf.r,
                   "p": self.kdf.p, "salt": self.kdf.salt.hex()}
        else:
            kdf = {"name": "hkdf-sha256", "salt": self.kdf.salt.hex()}
        return {
            "format": KEY_CONFIG_FORMAT,
            "version": KEY_CONFIG_VERSION,
            "key_source": SOURCE_NAMES[self.kdf.source],
            "kdf": kdf,
            "cipher": self.cipher,
            "block_size": self.block_size,
            "key_check": self.check.hex(),
            "created": self.created,
        }

    def to_json(self) -> bytes:
        fields = self.fields()
        fields["checksum"] = _checksum(fields)
        return (json.dumps(fields, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> KeyConfig:
        """Parse and check a key config; :class:`KeyConfigError` if it is damaged."""
        try:
            fields = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise KeyConfigError("key config is not valid JSON") from None
        if not isinstance(fields, dict):
            raise KeyConfigError("key config is not a JSON object")
        if fields.get("format") != KEY_CONFIG_FORMAT:
            raise KeyConfigError(f"not an aiofs-encrypt key config (format {fields.get('format')!r})")
        if fields.get("version") != KEY_CONFIG_VERSION:
            raise KeyConfigError(f"unsupported key config version {fields.get('version')!r}")
        checksum = fields.pop("checksum", None)
        if not isinstance(checksum, str) or not hmac.compare_digest(checksum, _checksum(fields)):
            raise KeyConfigError("key config checksum mismatch (damaged or edited)")
        try:
            source = {v: k for k, v in SOURCE_NAMES.items()}[fields["key_source"]]
            kdf_fields = fields["kdf"]
            salt = bytes.fromhex(kdf_fields["salt"])
            if source == SOURCE_PASSPHRASE:
                if kdf_fields["name"] != "scrypt":
                    raise ValueError("a passphrase store uses scrypt")
                kdf = KdfParams(source, int(kdf_fields["log2_n"]), int(kdf_fields["r"]),
                                int(kdf_fields["p"]), salt)
            else:
                if kdf_fields["name"] != "hkdf-sha256":
                    raise ValueError("a key-file store uses hkdf-sha256")
                kdf = KdfParams(source, 0, 0, 0, salt)
            validate_kdf(kdf)
            block_size = int(fields["block_size"])
            block_log2(block_size)
            cipher = str(fields["cipher"])
            if cipher not in CIPHER_IDS:
                raise ValueError(f"unknown cipher {cipher!r}")
            check = bytes.fromhex(fields["key_check"])
            if len(check) != KEY_SIZE:
                raise ValueError("key check must be 32 bytes")
            created = str(fields.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:  # BlockFormatError is a ValueError
            raise KeyConfigError(f"invalid key config: {exc}") from None
        return cls(kdf, block_size, cipher, check, created)
