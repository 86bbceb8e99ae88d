"""Encrypt layer: the shipped suites over Local and Memory, keys, tampering, partial writes."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import pytest

from aiofs import Layer, LocalBackend, internal_access
from aiofs.codecs.aead_blocks import HEADER_SIZE, TAG_SIZE, stored_size
from aiofs.codecs.keys import KeyConfig, Secret, derive_store_key, generate_key_file
from aiofs.errors import AuthenticationFailed, ConfigError, IntegrityError
from aiofs.layers import Encrypt
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.faults import FaultInjectingFileSystem
from aiofs.testing.stateful import run_stateful
from conftest import drop_memory_root, new_memory_root, snapshot_tree

PASSPHRASE = "correct horse battery staple"
BS = 256  # tiny blocks: multi-block files stay cheap
FAST = {"scrypt_log2_n": 10, "block_size": BS}
DOC = Path(__file__).resolve().parent.parent / "docs" / "formats" / "encrypt.md"


@pytest.fixture(autouse=True, scope="module")
def _forget_memory_key_config():
    """The memory tests share fsspec's global memory store: drop their key config after."""
    yield
    drop_memory_root("/.aiofs/encrypt")


def encrypted_local(root, **options) -> Encrypt:
    return Encrypt(fs=LocalBackend(str(root), fsync=False),
                   **{"passphrase": PASSPHRASE, **FAST, **options})


# -- the shipped suites ---------------------------------------------------------------------------


class MemoryStore:
    def make_fs(self, tmp_path):
        return Encrypt(fs=fsspec.filesystem("memory"), passphrase=PASSPHRASE, **FAST), new_memory_root()

    def cleanup_fs(self, fs, root):
        drop_memory_root(root)


class TestEncryptOverLocalAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return encrypted_local(tmp_path / "store"), "/data"


class TestEncryptOverLocalConformance(ConformanceSuite):
    # Not the store root: the root's .aiofs/ holds the key config, which the suite's
    # "internal_access lists exactly what the test wrote" check does not expect.
    def make_fs(self, tmp_path):
        return encrypted_local(tmp_path / "store"), "/data"


class TestEncryptOverMemoryAbstract(MemoryStore, FsspecAbstractSuite):
    pass


class TestEncryptOverMemoryConformance(MemoryStore, ConformanceSuite):
    pass


def test_encrypt_over_local_stateful_model(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=500) >= 500


def test_encrypt_over_memory_stateful_model():
    fs = Encrypt(fs=fsspec.filesystem("memory"), passphrase=PASSPHRASE, **FAST)
    roots = []

    def factory():
        roots.append(new_memory_root())
        return fs, roots[-1]

    try:
        assert run_stateful(factory, max_examples=500) >= 500
    finally:
        for root in roots:
            drop_memory_root(root)
    assert len(roots) >= 500


# Compress(Encrypt(LocalBackend)): the combined stack.
def _compress_over_encrypt(tmp_path):
    from aiofs.layers.compress import Compress

    return Compress(fs=encrypted_local(tmp_path / "store")), "/data"


class TestCompressOverEncryptAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return _compress_over_encrypt(tmp_path)


class TestCompressOverEncryptConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return _compress_over_encrypt(tmp_path)


def test_compress_over_encrypt_stateful_model(tmp_path):
    fs, _ = _compress_over_encrypt(tmp_path)
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=500) >= 500


# -- what is stored ---------------------------------------------------------------------------------


def test_stored_bytes_are_encrypted_and_sized_as_documented(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    secret = b"top secret words " * 100
    fs.pipe_file("notes/a.txt", secret)
    stored = (tmp_path / "store" / "notes" / "a.txt").read_bytes()
    assert b"secret" not in stored and stored[:8] == b"AIOFSENC"
    assert len(stored) == stored_size(len(secret), BS) == HEADER_SIZE + len(secret) + 7 * TAG_SIZE
    assert fs.info("notes/a.txt")["size"] == len(secret)
    assert fs.ls("notes")[0]["size"] == len(secret)
    fs.pipe_file("empty", b"")
    assert (tmp_path / "store" / "empty").stat().st_size == HEADER_SIZE + TAG_SIZE
    assert fs.cat_file("empty") == b"" and fs.info("empty")["size"] == 0
    # Names stay in clear text (documented), the key config is clear JSON and hidden.
    assert sorted(os.listdir(tmp_path / "store")) == [".aiofs", "empty", "notes"]
    assert sorted(fs.ls("", detail=False)) == ["/empty", "/notes"]
    config = json.loads((tmp_path / "store" / ".aiofs" / "encrypt" / "key.json").read_text())
    assert config["format"] == "aiofs-encrypt-key" and config["block_size"] == BS
    with internal_access():  # the layer's own data passes through in clear
        assert json.loads(fs.cat_file(".aiofs/encrypt/key.json")) == config


def test_two_writes_of_the_same_content_differ(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    fs.pipe_file("a", b"same content")
    fs.pipe_file("b", b"same content")
    a, b = ((tmp_path / "store" / n).read_bytes() for n in "ab")
    assert a[32:64] != b[32:64] and a[80:] != b[80:]  # fresh file salt, fresh file key


def test_chacha20_and_mixed_ciphers(tmp_path):
    store = tmp_path / "store"
    chacha = encrypted_local(store, cipher="chacha20-poly1305")
    chacha.pipe_file("c.bin", b"c" * 1000)
    assert (store / "c.bin").read_bytes()[9] == 2
    aes = encrypted_local(store, cipher="aes-256-gcm")  # the store's default is ChaCha20 now
    aes.pipe_file("a.bin", b"a" * 1000)
    assert (store / "a.bin").read_bytes()[9] == 1
    assert aes.cat_file("c.bin") == b"c" * 1000 and chacha.cat_file("a.bin") == b"a" * 1000
    assert aes.cat_file("c.bin", 500, 700) == b"c" * 200


def test_large_file_streams_both_ways(tmp_path):
    fs = encrypted_local(tmp_path / "store", block_size=64 * 1024)
    data = os.urandom(3 * 1024 * 1024) + b"tail" * 300_000  # a few sequential windows
    with fs.open("big.bin", "wb") as f:
        for offset in range(0, len(data), 1_000_003):
            f.write(data[offset:offset + 1_000_003])
    assert fs.info("big.bin")["size"] == len(data)
    with fs.open("big.bin", "rb") as f:
        assert f.size == len(data)
        parts = []
        while chunk := f.read(333_333):
            parts.append(chunk)
        assert b"".join(parts) == data
        f.seek(5_000_000)
        assert f.read(1 << 20) == data[5_000_000:5_000_000 + (1 << 20)]
        f.seek(17)
        assert f.read(10) == data[17:27]
        f.seek(-3, 2)
        assert f.read() == data[-3:]
    assert fs.cat_file("big.bin") == data
    assert fs.cat_file("big.bin", 4_000_000, 4_100_000) == data[4_000_000:4_100_000]
    local = tmp_path / "out.bin"
    fs.get_file("big.bin", str(local))
    assert local.read_bytes() == data
    fs.put_file(str(local), "copy.bin")
    assert fs.cat_file("copy.bin") == data
    with pytest.raises(FileExistsError):
        fs.put_file(str(local), "copy.bin", mode="create")


def test_append_touch_cp_mv_and_transactions(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    with fs.open("log.txt", "ab") as f:
        f.write(b"one\n")
    with fs.open("log.txt", "ab") as f:
        f.write(b"two\n" * 100)
    assert fs.cat_file("log.txt") == b"one\n" + b"two\n" * 100
    fs.touch("t")
    assert fs.cat_file("t") == b"" and fs.info("t")["size"] == 0
    fs.touch("log.txt", truncate=False)
    assert fs.cat_file("log.txt").startswith(b"one\n")
    fs.cp_file("log.txt", "copy.txt")  # stored bytes copied as they are: still valid
    assert (tmp_path / "store" / "copy.txt").read_bytes() == (tmp_path / "store" / "log.txt").read_bytes()
    assert fs.cat_file("copy.txt") == fs.cat_file("log.txt")
    fs.mv("copy.txt", "d/moved.txt")
    assert fs.cat_file("d/moved.txt", 0, 4) == b"one\n"
    with fs.transaction:
        with fs.open("tx.bin", "wb") as f:
            f.write(b"in a transaction")
    assert fs.cat_file("tx.bin") == b"in a transaction"
    with pytest.raises(FileExistsError):
        fs.open("tx.bin", "xb")
    assert fs.cat(["log.txt", "t"]) == {"/log.txt": fs.cat_file("log.txt"), "/t": b""}
    assert fs.head("log.txt", 4) == b"one\n" and fs.tail("log.txt", 4) == b"two\n"
    with fs.open("log.txt", "r") as f:  # text mode over the buffered reader
        assert f.readline() == "one\n"


def test_pickle_rebuilds_from_arguments(tmp_path):
    key = tmp_path / "k.key"
    generate_key_file(key)
    fs = Encrypt(fs=LocalBackend(str(tmp_path / "store")), key_file=str(key), block_size=BS)
    fs.pipe_file("a", b"pickled")
    clone = pickle.loads(pickle.dumps(fs))
    assert clone is not fs and repr(clone) == repr(fs) == f"Encrypt(Local({str(tmp_path / 'store')!r}))"
    assert clone.cat_file("a") == b"pickled"
    assert "k.key" not in repr(fs) and PASSPHRASE not in repr(encrypted_local(tmp_path / "s2"))


def test_stack_config_builds_an_encrypted_stack(tmp_path):
    from aiofs.config import load_config
    from aiofs.stack import forget_open_stacks, open_stack

    key = tmp_path / "stack.key"
    key.write_text(os.urandom(32).hex() + "\n")
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [stacks.private]
        layers = [{{ type = "encrypt", key_file = "{key}", block_size = 4096 }}]
        backend = {{ type = "local", root = "{tmp_path / 'private'}" }}
    """))
    try:
        fs = open_stack("private", load_config(str(config)))
        assert isinstance(fs, Encrypt) and fs.block_size == 4096
        fs.pipe_file("a.txt", b"from the config")
        assert b"from the config" not in (tmp_path / "private" / "a.txt").read_bytes()
        assert fs.cat_file("a.txt") == b"from the config"
    finally:
        forget_open_stacks()


# -- keys ---------------------------------------------------------------------------------------------


def test_wrong_passphrase_is_authentication_failed_and_changes_nothing(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    fs.pipe_file("a", b"data")
    before = snapshot_tree(tmp_path)
    with pytest.raises(AuthenticationFailed) as err:
        encrypted_local(tmp_path / "store", passphrase="Tr0ub4dor&3")
    assert err.value.code == "AUTHENTICATION_FAILED" and "wrong passphrase" in str(err.value)
    assert isinstance(err.value, PermissionError)
    assert snapshot_tree(tmp_path) == before


def test_key_file_forms_and_errors(tmp_path):
    key = os.urandom(32)
    forms = {
        "raw.key": key,
        "hex.key": (key.hex() + "\n").encode(),
        "b64.key": base64.b64encode(key) + b"\n",
        "url.key": base64.urlsafe_b64encode(key).rstrip(b"="),
    }
    for name, content in forms.items():
        (tmp_path / name).write_bytes(content)
    store = tmp_path / "store"
    first = Encrypt(fs=LocalBackend(str(store)), key_file=str(tmp_path / "raw.key"), block_size=BS)
    first.pipe_file("a", b"key file data")
    for name in forms:  # every form is the same key
        fs = Encrypt(fs=LocalBackend(str(store)), key_file=str(tmp_path / name))
        assert fs.cat_file("a") == b"key file data"
    (tmp_path / "other.key").write_text(os.urandom(32).hex())
    with pytest.raises(AuthenticationFailed, match="wrong key-file"):
        Encrypt(fs=LocalBackend(str(store)), key_file=str(tmp_path / "other.key"))
    with pytest.raises(AuthenticationFailed, match="protected by a key-file, not a passphrase"):
        encrypted_local(store)
    with pytest.raises(AuthenticationFailed, match="protected by a passphrase"):
        Encrypt(fs=LocalBackend(str(tmp_path / "pw")), passphrase="x", scrypt_log2_n=10)
        Encrypt(fs=LocalBackend(str(tmp_path / "pw")), key_file=str(tmp_path / "raw.key"))
    (tmp_path / "short.key").write_text("abcd")
    for bad in (tmp_path / "short.key", tmp_path / "missing.key"):
        with pytest.raises(ConfigError, match="key file"):
            Encrypt(fs=LocalBackend(str(tmp_path / "s3")), key_file=str(bad))
    with pytest.raises(FileExistsError):
        generate_key_file(tmp_path / "raw.key")


@pytest.mark.parametrize("options, message", [
    ({}, "exactly one of passphrase= or key_file="),
    ({"passphrase": "a", "key_file": "/k"}, "exactly one"),
    ({"passphrase": ""}, "passphrase is empty"),
    ({"passphrase": "a", "cipher": "rot13"}, "unknown cipher 'rot13'"),
    ({"passphrase": "a", "block_size": 1000}, "power of two"),
    ({"passphrase": "a", "block_size": 128}, "between 256"),
    ({"passphrase": "a", "scrypt_log2_n": 40}, "scrypt"),
])
def test_bad_options_are_config_errors(tmp_path, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        Encrypt(fs=LocalBackend(str(tmp_path / "s")), **options)
    assert err.value.code == "CONFIG_ERROR"
    assert not (tmp_path / "s" / ".aiofs").exists()


def test_block_size_is_fixed_per_store(tmp_path):
    encrypted_local(tmp_path / "store")
    assert encrypted_local(tmp_path / "store", block_size=None).block_size == BS
    with pytest.raises(ConfigError, match=f"uses block_size={BS}"):
        encrypted_local(tmp_path / "store", block_size=4096)


def key_config_path(root: Path) -> Path:
    return root / ".aiofs" / "encrypt" / "key.json"


def test_every_flipped_byte_of_the_key_config_is_an_integrity_error(tmp_path):
    store = tmp_path / "store"
    encrypted_local(store).pipe_file("a", b"x")
    path = key_config_path(store)
    original = path.read_bytes()
    for offset in range(len(original)):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError) as err:
            encrypted_local(store)
        assert err.value.code == "INTEGRITY_ERROR", offset
        assert ".aiofs/encrypt/key.json" in str(err.value), offset
    for cut in (0, 1, len(original) // 2, len(original) - 3):
        path.write_bytes(original[:cut])
        with pytest.raises(IntegrityError):
            encrypted_local(store)
    path.write_bytes(original)
    assert encrypted_local(store).cat_file("a") == b"x"


def test_key_config_edited_with_a_fixed_checksum_fails_the_key_check(tmp_path):
    store = tmp_path / "store"
    encrypted_local(store)
    path = key_config_path(store)
    fields = json.loads(path.read_text())
    del fields["checksum"]
    fields["kdf"]["salt"] = "00" * 16
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    import hashlib
    fields["checksum"] = hashlib.sha256(canonical).hexdigest()
    path.write_text(json.dumps(fields))
    with pytest.raises(AuthenticationFailed):
        encrypted_local(store)


def test_lost_key_config_files_still_decrypt_with_the_secret(tmp_path):
    store = tmp_path / "store"
    encrypted_local(store).pipe_file("old.bin", b"written before" * 50)
    key_config_path(store).unlink()
    fresh = encrypted_local(store)  # makes a new key config (new salt)
    assert fresh.cat_file("old.bin") == b"written before" * 50
    assert fresh.cat_file("old.bin", 300, 310) == (b"written before" * 50)[300:310]
    fresh.pipe_file("new.bin", b"after")
    key_config_path(store).unlink()
    wrong = encrypted_local(store, passphrase="not it")  # nothing to check it against...
    for name in ("old.bin", "new.bin"):  # ...but it never decrypts to garbage
        with pytest.raises(IntegrityError, match="header failed authentication"):
            wrong.cat_file(name)


def test_documented_key_config_example_checks_out():
    text = DOC.read_text()
    example = re.search(r"```json\n(\{.*?\})\n```", text, re.S).group(1)
    config = KeyConfig.from_json(example.encode())
    assert config.kdf.log2_n == 17 and config.block_size == 65536
    assert config.matches(derive_store_key(Secret.from_passphrase(PASSPHRASE), config.kdf))


# -- tampering: never wrong bytes ---------------------------------------------------------------------

DATA = bytes(range(256)) * 3 + b"last block!" * 9 + b"x"  # 3 full blocks + 100 bytes
STORED = stored_size(len(DATA), BS)                      # 80 + 868 + 4 * 16 = 1012
STEP = BS + TAG_SIZE                                      # stored bytes per full block
RANGES = [(None, None), (0, 10), (250, 260), (256, 512), (300, 301), (500, None), (-5, None),
          (None, -3), (760, 868), (767, 769), (0, 2000), (868, None)]


def assert_never_wrong(fs: Encrypt, path: str, original: bytes, must_fail: bool = True) -> None:
    """Every way of reading ``path`` raises INTEGRITY_ERROR naming it, or returns exact bytes."""

    def check(read, expected):
        try:
            got = read()
        except IntegrityError as exc:
            assert exc.code == "INTEGRITY_ERROR" and path in str(exc), str(exc)
            return True
        assert got == expected, "wrong bytes returned"
        return False

    full = [
        lambda: fs.cat_file(path),
        lambda: fs.open(path, "rb").read(),
        lambda: fs.cat([path])[f"/{path}"],
        lambda: b"".join(iter(lambda f=fs.open(path, "rb"): f.read(100), b"")),
    ]
    failed = [check(read, original) for read in full]
    if must_fail:
        assert all(failed), "a full read of a damaged file succeeded"
    for start, end in RANGES:
        check(lambda: fs.cat_file(path, start, end), original[start:end])

        def seek_read(start=start, end=end):
            with fs.open(path, "rb") as f:
                size = len(original)
                lo = 0 if start is None else (start if start >= 0 else max(size + start, 0))
                f.seek(lo)
                hi = size if end is None else end if end >= 0 else size + end
                return f.read(max(hi - lo, 0))

        expected = original[start:end]
        check(seek_read, expected)
    fs.ls("", detail=True)  # listing a damaged file never fails
    fs.info(path)


@pytest.fixture
def tamper(tmp_path):
    """A store with ``a.bin`` (3.4 blocks) and ``b.bin``; ``damage(fn)`` edits a.bin on disk."""
    store = tmp_path / "store"
    fs = encrypted_local(store)
    fs.pipe_file("a.bin", DATA)
    fs.pipe_file("b.bin", DATA)
    path = store / "a.bin"

    class Tamper:
        original = path.read_bytes()
        other = (store / "b.bin").read_bytes()

        def damage(self, edit):
            path.write_bytes(bytes(edit(bytearray(self.original))))
            fs.invalidate_cache()
            return fs

    assert len(Tamper.original) == STORED
    return Tamper()


def flip(offset, bit=0x01):
    def edit(b):
        b[offset] ^= bit
        return b
    return edit


HEADER_FIELDS = {
    "magic": 0, "magic-end": 7, "version": 8, "cipher": 9, "block-size": 10, "key-source": 11,
    "scrypt-n": 12, "scrypt-r": 13, "scrypt-p": 14, "reserved": 15, "store-salt": 16,
    "store-salt-end": 31, "file-salt": 32, "file-salt-end": 63, "header-tag": 64,
    "header-tag-end": 79,
}


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_flipped_header_byte(tamper, field):
    assert_never_wrong(tamper.damage(flip(HEADER_FIELDS[field])), "a.bin", DATA)


def test_header_naming_the_other_cipher(tamper):
    assert_never_wrong(tamper.damage(flip(9, 0x03)), "a.bin", DATA)  # 1 -> 2: ChaCha20


@pytest.mark.parametrize("offset", [
    HEADER_SIZE,                                 # block 0, first ciphertext byte
    HEADER_SIZE + STEP + 128,                    # block 1, middle
    HEADER_SIZE + 3 * STEP + 50,                 # last block, ciphertext
    HEADER_SIZE + BS,                            # block 0 tag, first byte
    HEADER_SIZE + STEP - 1,                      # block 0 tag, last byte
    STORED - TAG_SIZE,                           # last block tag
    STORED - 1,                                  # last byte of the file
])
def test_flipped_block_byte(tamper, offset):
    assert_never_wrong(tamper.damage(flip(offset, 0x80)), "a.bin", DATA)


def block(stored: bytes, index: int) -> bytes:
    return stored[HEADER_SIZE + index * STEP:HEADER_SIZE + (index + 1) * STEP]


def replace_block(index, sealed):
    def edit(b):
        b[HEADER_SIZE + index * STEP:HEADER_SIZE + (index + 1) * STEP] = sealed
        return b
    return edit


def test_swapped_blocks(tamper):
    o = tamper.original

    def swap(b):
        b[HEADER_SIZE:HEADER_SIZE + 2 * STEP] = block(o, 1) + block(o, 0)
        return b
    assert_never_wrong(tamper.damage(swap), "a.bin", DATA)


def test_reordered_blocks(tamper):
    o = tamper.original

    def rotate(b):
        b[HEADER_SIZE:HEADER_SIZE + 3 * STEP] = block(o, 1) + block(o, 2) + block(o, 0)
        return b
    assert_never_wrong(tamper.damage(rotate), "a.bin", DATA)


def test_duplicated_block(tamper):
    assert_never_wrong(tamper.damage(replace_block(1, block(tamper.original, 0))), "a.bin", DATA)


def test_block_from_another_file(tamper):
    # b.bin has the same content and layout, but its own file key.
    assert_never_wrong(tamper.damage(replace_block(1, block(tamper.other, 1))), "a.bin", DATA)


def test_header_from_another_file(tamper):
    def edit(b):
        b[:HEADER_SIZE] = tamper.other[:HEADER_SIZE]
        return b
    assert_never_wrong(tamper.damage(edit), "a.bin", DATA)


def test_block_from_an_earlier_version_of_the_same_file(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    fs.pipe_file("a.bin", DATA)
    old = (tmp_path / "store" / "a.bin").read_bytes()
    new_data = DATA[::-1]
    fs.pipe_file("a.bin", new_data)
    new = bytearray((tmp_path / "store" / "a.bin").read_bytes())
    new[HEADER_SIZE + STEP:HEADER_SIZE + 2 * STEP] = block(old, 1)
    (tmp_path / "store" / "a.bin").write_bytes(bytes(new))
    fs.invalidate_cache()
    assert_never_wrong(fs, "a.bin", new_data)


@pytest.mark.parametrize("cut", [
    0, 40, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 10, HEADER_SIZE + TAG_SIZE,
    HEADER_SIZE + STEP,            # exactly at a block boundary
    HEADER_SIZE + STEP + TAG_SIZE,  # a boundary plus a tag's worth
    HEADER_SIZE + 3 * STEP,        # exactly before the last block
    STORED - TAG_SIZE, STORED - 5, STORED - 1,
])
def test_truncation(tamper, cut):
    assert_never_wrong(tamper.damage(lambda b: b[:cut]), "a.bin", DATA)


@pytest.mark.parametrize("extra", [b"\x00", b"g" * TAG_SIZE, os.urandom(STEP), None])
def test_appended_bytes(tamper, extra):
    extra = block(tamper.original, 0) if extra is None else extra
    assert_never_wrong(tamper.damage(lambda b: b + extra), "a.bin", DATA)


def test_truncation_of_a_file_of_whole_blocks(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    data = os.urandom(4 * BS)
    fs.pipe_file("w.bin", data)
    path = tmp_path / "store" / "w.bin"
    path.write_bytes(path.read_bytes()[:HEADER_SIZE + 3 * STEP])  # drop the whole last block
    fs.invalidate_cache()
    assert fs.info("w.bin")["size"] == 3 * BS  # looks like a whole file of 3 blocks...
    assert fs.cat_file("w.bin", 0, 100) == data[:100]  # ...early blocks are still authentic
    with pytest.raises(IntegrityError, match="last block 2"):  # ...but its end is not
        fs.cat_file("w.bin", 3 * BS - 1)
    assert_never_wrong(fs, "w.bin", data[:3 * BS])


@pytest.mark.parametrize("edit", [
    flip(HEADER_SIZE), flip(HEADER_SIZE + TAG_SIZE - 1), flip(5), lambda b: b[:HEADER_SIZE],
    lambda b: b[:HEADER_SIZE + 3], lambda b: b + b"\x00", lambda b: b + b"z" * TAG_SIZE,
], ids=["tag-first", "tag-last", "magic", "no-block", "cut-tag", "plus-1", "plus-16"])
def test_tampered_empty_file(tmp_path, edit):
    fs = encrypted_local(tmp_path / "store")
    fs.pipe_file("e", b"")
    path = tmp_path / "store" / "e"
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))
    fs.invalidate_cache()
    assert_never_wrong(fs, "e", b"")


def test_file_from_another_store_is_an_integrity_error(tmp_path):
    mine, theirs = encrypted_local(tmp_path / "mine"), encrypted_local(tmp_path / "theirs", passphrase="other")
    theirs.pipe_file("t.bin", DATA)
    (tmp_path / "mine" / "t.bin").write_bytes((tmp_path / "theirs" / "t.bin").read_bytes())
    with pytest.raises(IntegrityError, match="header failed authentication"):
        mine.cat_file("t.bin")
    key = tmp_path / "k"
    generate_key_file(key)
    keyed = Encrypt(fs=LocalBackend(str(tmp_path / "keyed")), key_file=str(key), block_size=BS)
    keyed.pipe_file("k.bin", DATA)
    (tmp_path / "mine" / "k.bin").write_bytes((tmp_path / "keyed" / "k.bin").read_bytes())
    with pytest.raises(IntegrityError, match="written under a key-file"):
        mine.cat_file("k.bin", 0, 10)
    (tmp_path / "mine" / "plain.txt").write_bytes(b"never encrypted " * 10)
    with pytest.raises(IntegrityError, match="bad magic"):
        mine.cat_file("plain.txt")


# -- failed writes leave nothing ------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("target", ["local", "memory"])
def test_exception_inside_with_leaves_no_object(tmp_path, target):
    if target == "local":
        fs, root = encrypted_local(tmp_path / "store"), ""
    else:
        fs, root = MemoryStore().make_fs(tmp_path)
    try:
        fs.pipe_file(f"{root}/kept.bin", b"old content")
        before = snapshot_tree(tmp_path)
        for name in ("new.bin", "kept.bin"):
            with pytest.raises(Boom):
                with fs.open(f"{root}/{name}", "wb") as f:
                    f.write(os.urandom(5000))
                    raise Boom()
        fs.invalidate_cache()
        assert not fs.exists(f"{root}/new.bin")
        if target == "local":
            assert snapshot_tree(tmp_path) == before  # no temporary file left either
            assert fs.cat_file("kept.bin") == b"old content"
        else:  # memory replaces a file when it is opened: the old one cannot survive
            assert not fs.exists(f"{root}/kept.bin")
        f = fs.open(f"{root}/discarded.bin", "wb")
        f.write(b"abc" * 1000)
        f.discard()
        assert not fs.exists(f"{root}/discarded.bin")
    finally:
        if target == "memory":
            drop_memory_root(root)


@pytest.mark.parametrize("target", ["local", "memory"])
@pytest.mark.parametrize("when", ["header", "middle", "close"])
def test_failing_target_writes_leave_no_object(tmp_path, target, when):
    below = (LocalBackend(str(tmp_path / "store"), fsync=False) if target == "local"
             else fsspec.filesystem("memory"))
    root = "" if target == "local" else new_memory_root()
    flaky = FaultInjectingFileSystem(fs=below, failure_rate=0.0, operations=["write"])
    fs = Encrypt(fs=flaky, passphrase=PASSPHRASE, **FAST)
    path = f"{root}/f.bin"
    try:
        with pytest.raises(OSError) as err:
            if when == "header":
                flaky.failure_rate = 1.0
            with fs.open(path, "wb") as f:
                f.write(os.urandom(3000))
                if when == "middle":  # fails in a batch written behind, seen by the next write
                    flaky.failure_rate = 1.0
                    f.write(bytes(5 << 20))
                f.write(os.urandom(3000))
                flaky.failure_rate = 1.0 if when == "close" else flaky.failure_rate
        assert err.value.code in ("BACKEND_UNAVAILABLE", "TIMEOUT")
        flaky.failure_rate = 0.0
        assert not fs.exists(path) and not below.exists(path)
        if target == "local":
            assert os.listdir(tmp_path / "store") == [".aiofs"]
    finally:
        if target == "memory":
            drop_memory_root(root)


def test_failed_pipe_file_leaves_no_object(tmp_path):
    flaky = FaultInjectingFileSystem(fs=LocalBackend(str(tmp_path / "s")), failure_rate=0.0,
                                     operations=["pipe_file", "pipe"], errors=["ConnectionError"])
    fs = Encrypt(fs=flaky, passphrase=PASSPHRASE, **FAST)  # writes the key config
    flaky.failure_rate = 1.0
    with pytest.raises(ConnectionError):
        fs.pipe_file("a", b"data")
    with pytest.raises(ConnectionError):
        fs.pipe({"b": b"1", "c": b"2"})
    assert sorted(os.listdir(tmp_path / "s")) == [".aiofs"]


# -- range reads read only what they need ------------------------------------------------------------


class CountingFile(io.RawIOBase):
    def __init__(self, f, owner):
        self.f, self.owner = f, owner
        self.size = os.fstat(f.fileno()).st_size

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, buffer):
        n = self.f.readinto(buffer)
        self.owner.read_bytes += n
        return n

    def close(self):
        self.f.close()
        super().close()


class Counting(Layer):
    """Counts the stored bytes read and the read calls made through it."""

    read_bytes = 0
    read_calls = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.read_calls += 1
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self.read_bytes += len(data)
        return data

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            self.read_calls += 1
            return CountingFile(super()._open(path, mode, **kwargs), self)
        return super()._open(path, mode, **kwargs)


def test_range_reads_read_only_the_covering_blocks(tmp_path):
    counting = Counting(fs=LocalBackend(str(tmp_path / "store"), fsync=False))
    fs = Encrypt(fs=counting, passphrase=PASSPHRASE, **FAST)
    data = os.urandom(100 * BS + 7)
    fs.pipe_file("big.bin", data)
    counting.read_bytes = 0
    assert fs.cat_file("big.bin", 20 * BS + 5, 20 * BS + 105) == data[20 * BS + 5:20 * BS + 105]
    assert counting.read_bytes == HEADER_SIZE + STEP  # the header, then one block
    counting.read_bytes = 0
    assert fs.cat_file("big.bin", 30 * BS - 10, 30 * BS + 10) == data[30 * BS - 10:30 * BS + 10]
    assert counting.read_bytes == 2 * STEP  # header cached: two blocks, one read
    counting.read_bytes = 0
    with fs.open("big.bin", "rb") as f:
        f.seek(50 * BS + 3)
        assert f.read(100) == data[50 * BS + 3:50 * BS + 103]
    assert counting.read_bytes == HEADER_SIZE + STEP
    counting.read_bytes = counting.read_calls = 0
    assert fs.cat_file("big.bin", -3) == data[-3:]  # the end: the short last block only
    assert counting.read_bytes == 7 + TAG_SIZE
    counting.read_bytes = counting.read_calls = 0
    fs.ls("", detail=True)
    fs.info("big.bin")
    fs.find("", detail=True)
    fs.du("")
    assert counting.read_calls == 0 and counting.read_bytes == 0  # sizes need no reads


def test_range_read_after_the_file_changed_elsewhere(tmp_path):
    fs = encrypted_local(tmp_path / "store")
    other = encrypted_local(tmp_path / "store")
    fs.pipe_file("a.bin", DATA)
    assert fs.cat_file("a.bin", 300, 310) == DATA[300:310]  # header now cached
    other.pipe_file("a.bin", DATA[::-1])  # same size, written by another instance
    assert fs.cat_file("a.bin", 300, 310) == DATA[::-1][300:310]


# -- the format page ---------------------------------------------------------------------------------


def documented_script(tmp_path) -> Path:
    code = re.search(r"```python\n(#!/usr/bin/env python3\n.*?)```", DOC.read_text(), re.S).group(1)
    script = tmp_path / "aiofs_decrypt.py"
    script.write_text(code)
    return script


def run_script(script, *args, env=None):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_documented_standalone_script_decrypts_and_checks(tmp_path):
    script = documented_script(tmp_path)
    key = tmp_path / "k.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    keyed = Encrypt(fs=LocalBackend(str(tmp_path / "keyed")), key_file=str(key), block_size=BS)
    pw = encrypted_local(tmp_path / "pw", cipher="chacha20-poly1305")
    for fs, store, extra, env in ((keyed, "keyed", ["--key-file", key], None),
                                  (pw, "pw", ["--passphrase-env", "PW"], {"PW": PASSPHRASE})):
        for name, data in (("multi.bin", DATA), ("whole.bin", bytes(4 * BS)), ("empty", b"")):
            fs.pipe_file(name, data)
            out = tmp_path / f"{store}-{name}.out"
            done = run_script(script, tmp_path / store / name, out, *extra, env=env)
            assert done.returncode == 0, done.stderr
            assert out.read_bytes() == data
    stored = tmp_path / "keyed" / "multi.bin"
    for damaged in (stored.read_bytes()[:HEADER_SIZE + STEP],
                    bytes(flip(HEADER_SIZE + STEP + 3)(bytearray(stored.read_bytes())))):
        stored.write_bytes(damaged)
        done = run_script(script, stored, tmp_path / "bad.out", "--key-file", key)
        assert done.returncode != 0 and "failed authentication" in done.stderr
        assert not (tmp_path / "bad.out").exists()
    done = run_script(script, tmp_path / "pw" / "multi.bin", tmp_path / "x.out",
                      "--passphrase-env", "PW", env={"PW": "wrong"})
    assert done.returncode != 0 and "header authentication failed" in done.stderr


def test_documented_worked_example_decrypts(tmp_path):
    text = DOC.read_text()
    section = text[text.index("## Worked example"):text.index("## Decrypting without aiofs")]
    dump = re.search(r"```\n(00000000:.*?)```", section, re.S).group(1)
    stored = bytes.fromhex("".join(line[10:57] for line in dump.strip().splitlines()))
    assert len(stored) == 109
    (tmp_path / "example.enc").write_bytes(stored)
    (tmp_path / "example.key").write_text(bytes(range(32)).hex())
    done = run_script(documented_script(tmp_path), tmp_path / "example.enc",
                      tmp_path / "example.out", "--key-file", tmp_path / "example.key")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "example.out").read_bytes() == b"hello, aiofs\n"
