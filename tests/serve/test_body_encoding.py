"""Compressed and mislabelled bodies (issue 9, kind 7): ``Content-Encoding: gzip`` is decompressed with
the body limit applied to the decompressed size (a zip bomb is a 413), a body that is not the gzip it
claims is a 400, and any other encoding a 415 naming it; on every route that reads a body."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

LIMIT = 4096


@pytest.fixture(scope="module")
def gz_server(tiny_artifact, tiny_predictor, tmp_path_factory):
    from model.uri import ModelRef
    from serve.app import create_app
    from serve.settings import Settings
    from serve.state import LoadedModel
    from tests.serve.conftest import ThreadServer

    def loader(uri, dst):
        return LoadedModel(
            tiny_predictor, ModelRef(uri=uri, directory=tiny_artifact, name="risky-ads"), "now"
        )

    db = tmp_path_factory.mktemp("fb") / "feedback.db"
    settings = Settings(model=str(tiny_artifact), max_body_bytes=LIMIT, feedback_url=f"sqlite:///{db}")
    with ThreadServer(create_app(settings, loader=loader)) as srv:
        yield srv


def _post(srv, path: str, body: bytes, encoding: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"content-encoding": encoding} if encoding else {})
    return httpx.post(f"{srv.base}{path}", content=body, headers=headers, timeout=30)


def test_gzip_body_is_scored_like_the_plain_one(gz_server):
    body = json.dumps({"input": ["2 bedroom flat for rent", "call me now"]}).encode()
    plain = _post(gz_server, "/v1/classify", body, None)
    zipped = _post(gz_server, "/v1/classify", gzip.compress(body, mtime=0), "gzip")
    assert plain.status_code == zipped.status_code == 200, zipped.text
    # the same scores, decisions and reasons; each decision has its own id
    assert [{k: v for k, v in r.items() if k != "decision_id"} for r in zipped.json()["results"]] == [
        {k: v for k, v in r.items() if k != "decision_id"} for r in plain.json()["results"]
    ]
    upper = _post(gz_server, "/v1/classify", gzip.compress(body, mtime=0), "GZip")
    assert upper.status_code == 200, upper.text


def test_gzip_feedback_is_recorded(gz_server):
    body = json.dumps({"text": "cheap flat", "labels": [], "reviewer": "mod-1"}).encode()
    r = _post(gz_server, "/v1/feedback", gzip.compress(body, mtime=0), "gzip")
    assert r.status_code == 201, r.text


def test_gzip_bomb_is_413_by_its_decompressed_size(gz_server):
    body = json.dumps({"input": "a" * (LIMIT * 50)}).encode()  # 200 KB of JSON -> a few hundred bytes
    zipped = gzip.compress(body, mtime=0)
    assert len(zipped) < LIMIT
    r = _post(gz_server, "/v1/classify", zipped, "gzip")
    assert r.status_code == 413, r.text
    assert r.json()["error"]["type"] == "payload_too_large"
    assert str(LIMIT) in r.json()["error"]["message"]


@pytest.mark.parametrize("payload", [b"not gzip at all", gzip.compress(b'{"input": "x"}', mtime=0)[:-6]])
def test_body_that_is_not_the_gzip_it_claims_is_400(gz_server, payload):
    r = _post(gz_server, "/v1/classify", payload, "gzip")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_encoding"
    assert "gzip" in r.json()["error"]["message"]


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, br"])
@pytest.mark.parametrize("path", ["/v1/classify", "/v1/feedback"])
def test_other_encodings_are_415_naming_the_encoding(gz_server, encoding, path):
    r = _post(gz_server, path, b'{"input": "x"}', encoding)
    assert r.status_code == 415, r.text
    err = r.json()["error"]
    assert err["type"] == "unsupported_media_type"
    assert encoding in err["message"] and "gzip" in err["message"]


def test_identity_encoding_is_plain(gz_server):
    r = _post(gz_server, "/v1/classify", b'{"input": "x"}', "identity")
    assert r.status_code == 200, r.text
