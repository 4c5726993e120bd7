"""ListRuns page tokens: a token the service issued decodes to its cursor; anything
else, however it is built, raises ValueError and nothing else."""

from __future__ import annotations

import base64
import gc
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner_service import convert
from runner_service.store import Cursor


def token_of(value: object) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def assert_refused(token: str) -> None:
    with pytest.raises(ValueError) as caught:
        convert.decode_page_token(token)
    assert type(caught.value) is ValueError
    assert str(caught.value) == "page_token is not a token returned by ListRuns"


def test_an_issued_token_round_trips():
    for cursor in (Cursor(0, "a"), Cursor(1_767_225_600_000_000, "0f" * 16), Cursor(2**63 - 1, "x" * 64)):
        assert convert.decode_page_token(convert.encode_page_token(cursor)) == cursor


CRAFTED = {
    "2^70": [2**70, "abc"],
    "2^63": [2**63, "abc"],
    "negative": [-1, "abc"],
    "float": [1.5, "abc"],
    "float with an integer value": [1e6, "abc"],
    "huge float": [1e308, "abc"],
    "bool": [True, "abc"],
    "null": [None, "abc"],
    "string time": ["1", "abc"],
    "run id a number": [1, 2],
    "run id a list": [1, ["abc"]],
    "run id empty": [1, ""],
    "run id too long": [1, "a" * 65],
    "run id with a NUL": [1, "a\x00b"],
    "run id with a lone surrogate": [1, "\ud800"],
    "run id with spaces": [1, "a b"],
    "three items": [1, "abc", 3],
    "one item": [1],
    "empty list": [],
    "object": {"create_us": 1, "run_id": "abc"},
    "object with two keys": {"a": 1, "b": 2},
    "nested lists": [[[[1]]], "abc"],
    "a string": "abc",
    "a number": 12,
    "null alone": None,
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_json_is_refused(case):
    assert_refused(token_of(CRAFTED[case]))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "=",
        "!!!!",
        "é",
        "\x00",
        "bm90LWEtdG9rZW4",  # "not-a-token"
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),  # deeper than the JSON parser goes
        base64.urlsafe_b64encode(b"[" + b"9" * 5000 + b', "a"]').decode(),  # more digits than int() takes
        base64.urlsafe_b64encode(b'[1, "a"] trailing').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe[1]").decode(),
        base64.urlsafe_b64encode(b'[NaN, "a"]').decode(),
        base64.urlsafe_b64encode(b'[Infinity, "a"]').decode(),
    ],
    ids=lambda token: repr(token[:20]),
)
def test_malformed_tokens_are_refused(token):
    # Finalizers of earlier tests' garbage must not run (and warn) inside the deep
    # parse below, where the warning itself could not be formatted.
    gc.collect()
    assert_refused(token)


def test_random_bytes_only_ever_raise_value_error():
    rng = random.Random(7)
    for _ in range(3000):
        raw = rng.randbytes(rng.randrange(0, 64))
        for token in (raw.decode("latin-1"), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            try:
                cursor = convert.decode_page_token(token)
            except ValueError:
                continue
            assert 0 <= cursor.create_us < 2**63 and isinstance(cursor.run_id, str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_decodes_to_a_valid_cursor_or_raises_value_error(value):
    try:
        cursor = convert.decode_page_token(token_of(value))
    except ValueError:
        return
    assert type(cursor.create_us) is int and 0 <= cursor.create_us < 2**63
    assert type(cursor.run_id) is str and 1 <= len(cursor.run_id) <= 64
