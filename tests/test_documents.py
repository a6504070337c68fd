"""Trusted documents and APQ: every path of the protocol, the store file, `documents add`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from demo import GRAPH_FILE
from gateway.documents import (
    DocumentError,
    DocumentStore,
    DocumentStoreError,
    TrustedDocuments,
    add_documents,
    document_hash,
    resolve_document,
)
from gateway.errors import ConfigError
from resolvers.graphs import load_graph
from resolvers.schema import build_schema

TRUSTED = "query Me { customers(first: 1) { edges { cursor } } }"
OTHER = "{ customers { edges { cursor } } }"
APQ = TrustedDocuments(enabled=True, apq=True)
ONLY_TRUSTED = TrustedDocuments(enabled=True, only_trusted=True, file=Path("x.json"))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request(query: str | None = None, digest: str | None = None, version: Any = 1) -> Any:
    data: dict[str, Any] = {}
    if query is not None:
        data["query"] = query
    if digest is not None:
        data["extensions"] = {"persistedQuery": {"version": version, "sha256Hash": digest}}
    return data


def code(outcome: str | DocumentError | None) -> str:
    assert isinstance(outcome, DocumentError), outcome
    return outcome.code


@pytest.fixture
def store() -> DocumentStore:
    store = DocumentStore()
    store.add(TRUSTED)
    return store


def test_the_hash_is_sha256_of_the_exact_text() -> None:
    assert document_hash(TRUSTED) == sha(TRUSTED)
    assert document_hash(TRUSTED + " ") != document_hash(TRUSTED)


def test_plain_queries_pass_when_nothing_is_enforced(store: DocumentStore) -> None:
    for settings in (TrustedDocuments(), APQ):
        assert resolve_document(request(OTHER), store, settings) == OTHER
    assert resolve_document({}, store, APQ) is None  # strawberry answers "no query"


def test_apq_unknown_hash_then_register_then_hash_only(store: DocumentStore) -> None:
    miss = resolve_document(request(digest=sha(OTHER)), store, APQ)
    assert code(miss) == "PERSISTED_QUERY_NOT_FOUND"
    assert isinstance(miss, DocumentError)
    assert miss.status == 200 and miss.message == "PersistedQueryNotFound"  # Apollo's words
    assert miss.headers["cache-control"].startswith("private, no-cache")
    assert miss.body() == {
        "errors": [
            {
                "message": "PersistedQueryNotFound",
                "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
            }
        ]
    }

    assert resolve_document(request(OTHER, sha(OTHER)), store, APQ) == OTHER  # registers
    assert resolve_document(request(digest=sha(OTHER)), store, APQ) == OTHER
    assert resolve_document(request(digest=sha(OTHER).upper()), store, APQ) == OTHER
    assert not store.is_trusted(sha(OTHER))  # a client never adds to the trusted file


def test_apq_refuses_a_hash_that_is_not_the_texts(store: DocumentStore) -> None:
    outcome = resolve_document(request(OTHER, sha(TRUSTED)), store, APQ)
    assert code(outcome) == "BAD_REQUEST"
    assert isinstance(outcome, DocumentError) and outcome.status == 400
    assert store.get(sha(TRUSTED)) == TRUSTED  # the trusted text was not replaced


@pytest.mark.parametrize(
    "extensions",
    [
        {"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}},
        {"persistedQuery": {"version": 1, "sha256Hash": "not-a-hash"}},
        {"persistedQuery": {"version": 1}},
        {"persistedQuery": "yes"},
    ],
)
def test_apq_refuses_what_is_not_version_1(store: DocumentStore, extensions: Any) -> None:
    assert code(resolve_document({"extensions": extensions}, store, APQ)) == "BAD_REQUEST"


def test_apq_registrations_are_bounded() -> None:
    store = DocumentStore(apq_cache_size=2)
    texts = [f"{{ customers(first: {n}) {{ edges {{ cursor }} }} }}" for n in range(3)]
    for text in texts:
        resolve_document(request(text, sha(text)), store, APQ)
    assert code(resolve_document(request(digest=sha(texts[0])), store, APQ)) == (
        "PERSISTED_QUERY_NOT_FOUND"
    )
    assert resolve_document(request(digest=sha(texts[2])), store, APQ) == texts[2]


def test_apq_off_runs_texts_without_remembering_them(store: DocumentStore) -> None:
    settings = TrustedDocuments(enabled=True, apq=False)
    assert resolve_document(request(OTHER, sha(OTHER)), store, settings) == OTHER
    outcome = resolve_document(request(digest=sha(OTHER)), store, settings)
    assert code(outcome) == "PERSISTED_QUERY_NOT_FOUND"
    assert resolve_document(request(digest=sha(TRUSTED)), store, settings) == TRUSTED


def test_persisted_queries_when_the_feature_is_off(store: DocumentStore) -> None:
    outcome = resolve_document(request(digest=sha(TRUSTED)), store, TrustedDocuments())
    assert code(outcome) == "PERSISTED_QUERY_NOT_SUPPORTED"


def test_only_trusted_runs_trusted_documents_by_hash_or_text(store: DocumentStore) -> None:
    assert resolve_document(request(digest=sha(TRUSTED)), store, ONLY_TRUSTED) == TRUSTED
    assert resolve_document(request(TRUSTED), store, ONLY_TRUSTED) == TRUSTED
    assert resolve_document(request(TRUSTED, sha(TRUSTED)), store, ONLY_TRUSTED) == TRUSTED


@pytest.mark.parametrize(
    "data",
    [
        request(OTHER),  # a text not in the file
        request(OTHER, sha(OTHER)),  # nor may APQ register it
        request(digest=sha(OTHER)),  # an unknown hash: not NOT_FOUND, a retry would not help
        request(TRUSTED + " "),  # one character more is another document
        {},
    ],
)
def test_only_trusted_refuses_everything_else(store: DocumentStore, data: Any) -> None:
    outcome = resolve_document(data, store, ONLY_TRUSTED)
    assert code(outcome) == "QUERY_NOT_TRUSTED"
    assert isinstance(outcome, DocumentError) and outcome.status == 400
    assert store.get(sha(OTHER)) is None  # nothing was registered on the way


def test_the_store_file_round_trips_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "documents.json"
    assert len(DocumentStore.load(path)) == 0  # no file yet: empty
    store = DocumentStore.load(path)
    digest = store.add(TRUSTED)
    store.save()
    assert orjson.loads(path.read_bytes()) == {digest: TRUSTED}
    assert DocumentStore.load(path).get(digest) == TRUSTED

    path.write_text(orjson.dumps({sha(OTHER): TRUSTED}).decode())  # a text under a wrong key
    with pytest.raises(DocumentStoreError, match="has another hash"):
        store.reload()
    assert store.get(digest) == TRUSTED  # a broken file leaves the documents as they were
    path.write_text("[1, 2")
    with pytest.raises(DocumentStoreError, match="not valid JSON"):
        DocumentStore.load(path)


def test_documents_add_from_graphql_files_and_manifests(tmp_path: Path) -> None:
    one = tmp_path / "me.graphql"
    one.write_text(TRUSTED)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(
        orjson.dumps(
            {
                "format": "apollo-persisted-query-manifest",
                "version": 1,
                "operations": [{"id": sha(OTHER), "name": None, "type": "query", "body": OTHER}],
            }
        )
    )
    codegen = tmp_path / "persisted-documents.json"
    third = "query($id: ID!) { customer(id: $id) { id } }"
    codegen.write_bytes(orjson.dumps({sha(third): third}))
    store_path = tmp_path / "state" / "documents.json"

    added = add_documents(
        store_path, [one, manifest, codegen], build_schema(load_graph(GRAPH_FILE))._schema
    )

    assert added == [(sha(TRUSTED), one), (sha(OTHER), manifest), (sha(third), codegen)]
    store = DocumentStore.load(store_path)
    assert [store.get(digest) for digest, _ in added] == [TRUSTED, OTHER, third]
    assert add_documents(store_path, [one]) == [(sha(TRUSTED), one)]  # idempotent
    assert len(DocumentStore.load(store_path)) == 3


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.graphql", "{ customers { ", "Syntax Error"),
        ("unknown.graphql", "{ nobody { id } }", "Cannot query field 'nobody'"),
        ("wrong.json", '{"' + "0" * 64 + '": "{ customers { edges { cursor } } }"}', "sha256"),
        ("notes.txt", "{ customers { edges { cursor } } }", "expected a .graphql"),
    ],
)
def test_documents_add_refuses_bad_files_and_adds_nothing(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    good = tmp_path / "good.graphql"
    good.write_text(TRUSTED)
    bad = tmp_path / name
    bad.write_text(text)
    store_path = tmp_path / "documents.json"
    with pytest.raises(DocumentStoreError, match=message) as raised:
        add_documents(store_path, [good, bad], build_schema(load_graph(GRAPH_FILE))._schema)
    assert str(raised.value).startswith(str(bad))
    assert not store_path.exists()


def test_settings_from_the_documents_table(tmp_path: Path) -> None:
    assert TrustedDocuments.parse({}) == TrustedDocuments()
    settings = TrustedDocuments.parse(
        {"enabled": True, "file": "documents.json", "only_trusted": True}, tmp_path
    )
    assert settings.file == tmp_path / "documents.json" and settings.only_trusted
    for table, message in [
        ({"enabled": True, "only_trusted": True}, "documents.file: required"),
        ({"apq": "yes"}, "documents.apq: expected true or false"),
        ({"apq_cache_size": 0}, "documents.apq_cache_size: expected an integer >= 1"),
        ({"allow": []}, "documents.allow: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrustedDocuments.parse(table)
