"""Request parsing of /v1/classify as a pure function, with known answers (no server)."""

from __future__ import annotations

import pytest

from serve.errors import APIError, ErrorKind
from serve.routes.classify import parse_classify
from serve.settings import Settings

SECRET = "private ad text 5521"


@pytest.fixture()
def settings():
    return Settings(model="unused", max_batch_items=3, max_text_chars=20)


@pytest.mark.parametrize(
    "payload, texts",
    [
        ({"input": "one"}, ["one"]),
        ({"input": ""}, [""]),  # every string is scored, the empty one too
        ({"input": ["a", "", "c"]}, ["a", "", "c"]),
    ],
)
def test_valid_inputs_keep_order(payload, texts, settings):
    assert parse_classify(payload, settings) == texts


@pytest.mark.parametrize(
    "payload, kind, words",
    [
        ([SECRET], ErrorKind.validation_error, "JSON object"),
        ({"inputs": SECRET}, ErrorKind.validation_error, "'input'"),
        ({"input": []}, ErrorKind.validation_error, "empty list"),
        ({"input": ["ok", 42]}, ErrorKind.validation_error, "input[1]: expected a string, got number"),
        ({"input": ["ok", None]}, ErrorKind.validation_error, "input[1]: expected a string, got null"),
        ({"input": {"text": SECRET}}, ErrorKind.validation_error, "got object"),
        ({"input": ["a", "b", "c", "d"]}, ErrorKind.payload_too_large, "4 items, over the limit of 3"),
        (
            {"input": ["ok", SECRET * 2]},
            ErrorKind.validation_error,
            "input[1]: 40 characters, over the limit of 20",
        ),
        ({"input": SECRET * 2}, ErrorKind.validation_error, "input: 40 characters"),
    ],
)
def test_invalid_inputs_name_the_item_never_the_text(payload, kind, words, settings):
    with pytest.raises(APIError) as e:
        parse_classify(payload, settings)
    assert e.value.kind is kind
    assert words in str(e.value.message) and SECRET not in str(e.value.message)
