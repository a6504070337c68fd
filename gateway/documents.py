"""Trusted documents and Automatic Persisted Queries (Apollo's APQ protocol).

- Trusted documents: an allow-list of GraphQL documents keyed by the SHA-256 of their
  text, in a JSON file (`{"<sha256>": "<document>"}`, the format of graphql-codegen's
  persisted documents) written by `c360 documents add`. With `only_trusted`, nothing
  else runs: production clients send a hash (or a trusted text), anyone else is refused.
- APQ: a client sends `extensions.persistedQuery = {"version": 1, "sha256Hash": …}`
  without the text; an unknown hash answers PERSISTED_QUERY_NOT_FOUND and the client sends
  the hash with the text once, which registers it. Registrations stay in this instance's
  memory (bounded): a client can never add to the trusted file, which only people write.

Error codes: PERSISTED_QUERY_NOT_FOUND (HTTP 200, as Apollo Server answers, so that
clients retry with the text), PERSISTED_QUERY_NOT_SUPPORTED (200, the feature is off),
QUERY_NOT_TRUSTED (400, `only_trusted` and the document is not in the file) and
BAD_REQUEST (400, a hash that does not match the text, or an unknown protocol version).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from graphql import GraphQLError, GraphQLSchema, parse, validate

from gateway.errors import ConfigError

SHA256 = re.compile(r"^[0-9a-f]{64}$")
NO_CACHE = {"cache-control": "private, no-cache, must-revalidate"}


def document_hash(document: str) -> str:
    """What clients send as `sha256Hash`: SHA-256 of the exact text, lowercase hex."""
    return hashlib.sha256(document.encode()).hexdigest()


class DocumentStoreError(Exception):
    """The store or a file to add is unusable; the message names the file."""


@dataclass(frozen=True, slots=True)
class TrustedDocuments:
    """`[documents]`."""

    enabled: bool = False
    file: Path | None = None  # the trusted documents' JSON file
    only_trusted: bool = False  # refuse every document that is not in the file
    apq: bool = True  # let clients register documents by hash (not with only_trusted)
    apq_cache_size: int = 10_000  # APQ registrations kept per instance

    @classmethod
    def parse(cls, table: Mapping[str, Any], base_dir: Path | None = None) -> TrustedDocuments:
        known = {"enabled", "file", "only_trusted", "apq", "apq_cache_size"}
        for key in table:
            if key not in known:
                raise ConfigError(f"documents.{key}: unknown key")
        for key in ("enabled", "only_trusted", "apq"):
            if not isinstance(table.get(key, False), bool):
                raise ConfigError(f"documents.{key}: expected true or false")
        size = table.get("apq_cache_size", 10_000)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("documents.apq_cache_size: expected an integer >= 1")
        name = table.get("file", "")
        if not isinstance(name, str):
            raise ConfigError("documents.file: expected a path")
        path = (base_dir / name if base_dir else Path(name)) if name else None
        settings = cls(
            enabled=table.get("enabled", False),
            file=path,
            only_trusted=table.get("only_trusted", False),
            apq=table.get("apq", True),
            apq_cache_size=size,
        )
        if settings.enabled and settings.only_trusted and settings.file is None:
            raise ConfigError("documents.file: required with only_trusted = true")
        return settings


class DocumentStore:
    """Trusted documents by hash (from the file), and APQ registrations (memory only,
    least recently used forgotten first)."""

    def __init__(
        self,
        path: Path | None = None,
        trusted: Mapping[str, str] | None = None,
        apq_cache_size: int = 10_000,
    ) -> None:
        self.path = path
        self.apq_cache_size = apq_cache_size
        self._trusted: dict[str, str] = dict(trusted or {})
        self._registered: OrderedDict[str, str] = OrderedDict()

    @classmethod
    def load(cls, path: Path, apq_cache_size: int = 10_000) -> DocumentStore:
        """The store in `path`; empty when the file does not exist yet."""
        return cls(path, _read_store(path), apq_cache_size)

    def reload(self) -> None:
        """Read the file again (after `c360 documents add`, e.g. on SIGHUP); a broken file
        raises and leaves the documents as they were."""
        if self.path is not None:
            self._trusted = _read_store(self.path)

    def __len__(self) -> int:
        return len(self._trusted)

    def add(self, document: str) -> str:
        """Trust a document (in memory; `save()` writes the file). Returns its hash."""
        digest = document_hash(document)
        self._trusted[digest] = document
        return digest

    def save(self) -> None:
        """Write the file atomically: a reader sees the old file or the new one."""
        if self.path is None:
            raise DocumentStoreError("this document store has no file")
        body = orjson.dumps(self._trusted, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body + b"\n")
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def is_trusted(self, digest: str) -> bool:
        return digest in self._trusted

    def get(self, digest: str) -> str | None:
        """The document with this hash: trusted, or registered through APQ."""
        found = self._trusted.get(digest)
        if found is None:
            found = self._registered.get(digest)
            if found is not None:
                self._registered.move_to_end(digest)
        return found

    def register(self, digest: str, document: str) -> None:
        """An APQ registration; the caller has checked that the hash matches."""
        self._registered[digest] = document
        self._registered.move_to_end(digest)
        while len(self._registered) > self.apq_cache_size:
            self._registered.popitem(last=False)


def _read_store(path: Path) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise DocumentStoreError(f"{path}: {error.strerror}") from error
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise DocumentStoreError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DocumentStoreError(f"{path}: expected an object of sha256 hash -> document")
    for digest, document in data.items():
        if not isinstance(document, str) or document_hash(document) != digest:
            # A document that does not hash to its key would let one text pass as another.
            raise DocumentStoreError(f"{path}: the document under {digest[:16]}… has another hash")
    return data


@dataclass(frozen=True, slots=True)
class DocumentError:
    """A refusal for the view to send as it is: status, headers and a GraphQL body."""

    code: str
    message: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)

    def error(self) -> GraphQLError:
        return GraphQLError(self.message, extensions={"code": self.code})

    def body(self) -> dict[str, Any]:
        return {"errors": [self.error().formatted]}


class DocumentRefused(Exception):
    """For a view hook that cannot return a response (strawberry's `parse_http_body`):
    raised with the refusal, answered by whoever catches it."""

    def __init__(self, refusal: DocumentError) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


NOT_FOUND = DocumentError("PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound", 200, NO_CACHE)
NOT_SUPPORTED = DocumentError(
    "PERSISTED_QUERY_NOT_SUPPORTED", "PersistedQueryNotSupported", 200, NO_CACHE
)
NOT_TRUSTED = DocumentError(
    "QUERY_NOT_TRUSTED", "Only trusted documents may run here; this one is not.", 400
)
HASH_MISMATCH = DocumentError("BAD_REQUEST", "provided sha does not match query", 400)
BAD_VERSION = DocumentError("BAD_REQUEST", "Unsupported persisted query version", 400)


def resolve_document(
    request_data: Mapping[str, Any], store: DocumentStore, settings: TrustedDocuments
) -> str | DocumentError | None:
    """The document to run for one request (`query` and `extensions` of its JSON body or
    GET parameters), None when it has none (strawberry answers that), or the refusal."""
    query = request_data.get("query")
    extensions = request_data.get("extensions")
    persisted = extensions.get("persistedQuery") if isinstance(extensions, Mapping) else None

    if persisted is None:
        if settings.enabled and settings.only_trusted and not _is_trusted_text(query, store):
            return NOT_TRUSTED
        return query if isinstance(query, str) else None

    if not settings.enabled:
        return NOT_SUPPORTED
    digest = persisted.get("sha256Hash") if isinstance(persisted, Mapping) else None
    if (
        not isinstance(persisted, Mapping)
        or persisted.get("version") != 1
        or not isinstance(digest, str)
        or not SHA256.match(digest.lower())
    ):
        return BAD_VERSION
    digest = digest.lower()

    if isinstance(query, str) and query:
        if document_hash(query) != digest:
            return HASH_MISMATCH
        if store.is_trusted(digest):
            return query
        if settings.only_trusted:
            return NOT_TRUSTED
        if settings.apq:
            store.register(digest, query)
        return query

    if store.is_trusted(digest):
        return store.get(digest)
    if settings.only_trusted:
        # Not NOT_FOUND: the client would only retry with a text that is refused as well.
        return NOT_TRUSTED
    found = store.get(digest) if settings.apq else None
    return found if found is not None else NOT_FOUND


def _is_trusted_text(query: Any, store: DocumentStore) -> bool:
    return isinstance(query, str) and store.is_trusted(document_hash(query))


# --- `c360 documents add FILE...` ------------------------------------------------------------


def documents_in(path: Path) -> list[str]:
    """The documents a file holds: a `.graphql`/`.gql` file is one document (its whole
    text: the hash clients send is of the exact text); a `.json` file is an Apollo
    persisted query manifest (`operations[].body`) or a `{hash: document}` map
    (graphql-codegen's persisted documents, or another store)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DocumentStoreError(f"{path}: cannot be read ({error})") from error
    if path.suffix in (".graphql", ".gql"):
        return [text]
    if path.suffix != ".json":
        raise DocumentStoreError(f"{path}: expected a .graphql, .gql or .json file")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise DocumentStoreError(f"{path}: not valid JSON ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("operations"), list):
        bodies = [op.get("body") for op in data["operations"] if isinstance(op, dict)]
        if len(bodies) != len(data["operations"]) or not all(isinstance(b, str) for b in bodies):
            raise DocumentStoreError(f"{path}: every operation needs a string 'body'")
        return [str(body) for body in bodies]
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        for digest, document in data.items():
            if SHA256.match(digest) and document_hash(document) != digest:
                raise DocumentStoreError(f"{path}: {digest[:16]}… is not the document's sha256")
        return list(data.values())
    raise DocumentStoreError(f"{path}: expected a persisted query manifest or a hash map")


def add_documents(
    store_path: Path, files: Iterable[Path], schema: GraphQLSchema | None = None
) -> list[tuple[str, Path]]:
    """Trust every document of `files`: (hash, file) for each, in order. Each must parse
    (and validate against `schema`, when given); one bad document adds nothing at all."""
    store = DocumentStore.load(store_path)
    added: list[tuple[str, Path]] = []
    for path in files:
        for document in documents_in(path):
            try:
                ast = parse(document)
            except GraphQLError as error:
                raise DocumentStoreError(f"{path}: {error.message}") from error
            if schema is not None and (errors := validate(schema, ast)):
                raise DocumentStoreError(f"{path}: {errors[0].message}")
            added.append((store.add(document), path))
    store.save()
    return added
