"""The JSONL access log and its spill file encrypted at rest (`[audit] encrypt = true`).

Each line on disk is an envelope, `{"enc": "aes-256-gcm", "kid", "chain", "seq", "nonce",
"ct"}`: the record's JSON sealed with AES-256-GCM under the key `kid`, its associated data
the envelope's own `kid`, `chain` and `seq`, so a ciphertext moved to another record's
place (or relabelled) does not authenticate, and lines moved whole are reordered records,
which the hash chain names. The chain, the Merkle leaves and the checkpoints stay defined
over the plaintext record: every reader gets records through `LineCodec.decode`, and
verify, prove, prune, search, the console and the spill replay work as on a plain log.
Lines without `enc` are plain records (a log from before encryption was turned on).

Keys live in a directory of their own (`encryption_key_dir`), one file per key, `k1.json`,
`k2.json`, … (`{"id", "created", "key"}`, mode 0600); the highest number encrypts new
lines, every one decrypts. The first is made when a writer starts (`load_keys`, which
also refuses a key file that does not load); `c360 keys rotate audit.encryption_key` adds
the next, which writers take within a second. A key is retired by deleting its file
once no line it sealed is kept (after `c360 audit prune`, which needs no key: it reads
each line's place from its envelope).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError

ALGORITHM = "aes-256-gcm"
_KEY_FILE = re.compile(r"^k(\d{1,9})\.json$")
# How often a writer looks for a newer key (a listing of the directory).
RESCAN_S = 1.0


class LogKeyMissing(ConfigError):
    """A line is sealed under a key the key directory does not hold: nothing can read it
    (one line on stderr, exit 1: gateway/cli.py)."""


@dataclass(frozen=True, slots=True)
class EncryptionSettings:
    """`[audit] encrypt` and `encryption_key_dir`: whether new lines are sealed, and where
    the keys are (needed to read a sealed log even once `encrypt` is off)."""

    key_dir: Path
    encrypt: bool = True


@dataclass(frozen=True, slots=True)
class LogKey:
    id: str
    number: int
    created: dt.datetime
    aead: AESGCM


def _key_number(kid: str) -> int:
    return int(kid[1:])


class LogKeys:
    """The key ring of one key directory, looked at again when a line names a key it lacks
    and, for a writer, at most every RESCAN_S (a key added by `rotate` elsewhere)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: dict[str, LogKey] = {}
        self._names: frozenset[str] = frozenset()  # the key files last read
        self._checked = float("-inf")
        self._current: LogKey | None = None
        self._lock = threading.Lock()  # readers run on threads (asyncio.to_thread)

    def _load(self) -> None:
        """Read the key files again when the directory's list of them changed (by names,
        not its mtime, which some file systems keep to the second)."""
        try:
            names = frozenset(p.name for p in self.directory.iterdir() if _KEY_FILE.match(p.name))
        except FileNotFoundError:
            names = frozenset()
        if names == self._names:
            return
        found = {key.id: key for key in (_read_key(self.directory / name) for name in names)}
        self._keys, self._names = found, names

    def listing(self) -> list[LogKey]:
        """Every key, oldest first (the last one encrypts)."""
        with self._lock:
            self._load()
            return sorted(self._keys.values(), key=lambda key: key.number)

    def get(self, kid: str) -> LogKey | None:
        key = self._keys.get(kid)  # the common case, without the lock: one dict read
        if key is None:
            with self._lock:
                self._load()
                key = self._keys.get(kid)
        return key

    def current(self) -> LogKey:
        """The key new lines are sealed with; the first one is made here on first use."""
        key = self._current
        if key is not None and time.monotonic() - self._checked < RESCAN_S:
            return key
        with self._lock:
            self._checked = time.monotonic()
            self._load()
            if not self._keys:
                self._create(first_only=True)
                self._load()
            self._current = max(self._keys.values(), key=lambda key: key.number)
            return self._current

    def rotate(self) -> LogKey:
        """Add the next key: new lines are sealed with it, old ones still read."""
        with self._lock:
            made = self._create(first_only=False)
            self._load()
            self._current = None
            return self._keys[made]

    def _create(self, *, first_only: bool) -> str:
        """A new key file, numbered after the highest, under the directory's lock (two
        processes starting at once make one first key, not two)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(self.directory / ".lock"):
            numbers = [
                int(m.group(1)) for p in self.directory.iterdir() if (m := _KEY_FILE.match(p.name))
            ]
            if first_only and numbers:
                return f"k{max(numbers)}"
            kid = f"k{max(numbers, default=0) + 1}"
            body = {
                "id": kid,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "key": base64.b64encode(AESGCM.generate_key(bit_length=256)).decode(),
            }
            partial = self.directory / f".{kid}.json.partial"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, orjson.dumps(body))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, self.directory / f"{kid}.json")
            _fsync_dir(self.directory)
            return kid


def _read_key(path: Path) -> LogKey:
    try:
        body = orjson.loads(path.read_bytes())
        kid = path.name.removesuffix(".json")
        raw = base64.b64decode(body["key"], validate=True)
        created = dt.datetime.fromisoformat(body["created"])
        if body.get("id") != kid or len(raw) != 32:
            raise ValueError("not a 256-bit key of this id")
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as error:
        raise ConfigError(f"audit.encryption_key_dir: {path} is not a key file: {error}") from error
    return LogKey(kid, _key_number(kid), created, AESGCM(raw))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _associated(kid: str, chain: object, seq: object) -> bytes:
    return orjson.dumps([ALGORITHM, kid, chain, seq])


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a line is not a record, and whose place it claims (an envelope says)."""

    problem: str
    chain: str | None = None
    seq: int | None = None


NOT_A_RECORD = Unreadable("unreadable line (not JSON, or JSON but not an object)")


class LineCodec:
    """Records to lines and back: the one place every reader and writer of the JSONL log
    and the spill file goes through."""

    def __init__(self, keys: LogKeys | None = None, encrypt: bool = False) -> None:
        if encrypt and keys is None:
            raise ValueError("encrypting needs a key directory")
        self.keys = keys
        self.encrypt = encrypt

    @classmethod
    def of(cls, settings: EncryptionSettings | None) -> LineCodec:
        if settings is None:
            return PLAIN
        return cls(LogKeys(settings.key_dir), settings.encrypt)

    def load_keys(self) -> None:
        """Read the key ring now, and make the first key when sealing: a key file that
        does not load, or a key directory that cannot be made, stops start-up with one
        line instead of failing writes later."""
        if self.keys is None:
            return
        try:
            self.keys.listing()
            if self.encrypt:
                self.keys.current()
        except OSError as error:
            raise ConfigError(
                f"audit.encryption_key_dir: {self.keys.directory}: {error.strerror or error}"
            ) from error

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """One line, without its newline."""
        plain = orjson.dumps(record)
        if not self.encrypt:
            return plain
        assert self.keys is not None
        key = self.keys.current()
        chain, seq = record.get("chain"), record.get("seq")
        nonce = os.urandom(12)  # random: far below GCM's 2^32 messages per key before rotation
        sealed = key.aead.encrypt(nonce, plain, _associated(key.id, chain, seq))
        return orjson.dumps(
            {
                "enc": ALGORITHM,
                "kid": key.id,
                "chain": chain,
                "seq": seq,
                "nonce": base64.b64encode(nonce).decode(),
                "ct": base64.b64encode(sealed).decode(),
            }
        )

    def decode(self, line: bytes, where: str) -> dict[str, Any] | Unreadable:
        """The record a line holds, or why it holds none. Raises LogKeyMissing for a line
        sealed under a key this codec cannot find (naming the line and the key)."""
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            return NOT_A_RECORD
        if not isinstance(value, dict):
            return NOT_A_RECORD
        if "enc" not in value:
            return value
        kid, chain, seq = value.get("kid"), value.get("chain"), value.get("seq")
        place = (
            str(chain) if isinstance(chain, str) else None,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        )
        if value.get("enc") != ALGORITHM or not isinstance(kid, str) or not kid:
            return Unreadable("unreadable: an envelope of an unknown kind", *place)
        key = self.keys.get(kid) if self.keys is not None else None
        if key is None:
            held = (
                f"audit.encryption_key_dir ({self.keys.directory}) does not hold it"
                if self.keys is not None
                else "no audit.encryption_key_dir is configured"
            )
            raise LogKeyMissing(f"{where}: the line is encrypted under key {kid}, and {held}")
        try:
            nonce = base64.b64decode(value["nonce"], validate=True)
            sealed = base64.b64decode(value["ct"], validate=True)
            plain = key.aead.decrypt(nonce, sealed, _associated(kid, chain, seq))
            record = orjson.loads(plain)
        except (binascii.Error, ValueError, TypeError, KeyError, InvalidTag):
            return Unreadable(
                f"tampered: the ciphertext does not authenticate under key {kid} "
                "(altered, or moved from another record's place)",
                *place,
            )
        if not isinstance(record, dict) or (record.get("chain"), record.get("seq")) != (
            chain,
            seq,
        ):
            return Unreadable("tampered: the envelope does not match the record it holds", *place)
        return record


def place(line: bytes) -> tuple[str, int] | None:
    """The chain and seq a line claims, without opening it: an envelope carries them in
    clear (bound as associated data, so `verify` names a relabelled one), a plain line in
    its record. None for a line that claims no place."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    chain, seq = value.get("chain"), value.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None
    return str(chain), seq


PLAIN = LineCodec()
