"""Property tests (hypothesis): hostile input to the request decoding and the token parsing
either decodes to values inside the limits or is refused with a ValidationError naming a field;
nothing else ever escapes (an escape would be a 500).

The test command draws the same examples on every run, so a red run can be replayed;
HYPOTHESIS_PROFILE=explore draws new ones (hypothesis then prints how to reproduce a failure).
"""

from __future__ import annotations

import contextlib
import json
import math
import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from despliegue.config import settings as despliegue_settings
from despliegue.http.auth import bearer_token
from despliegue.schemas import FalseTrueRequest, HeatFlowRequest
from despliegue.tokens import TokenBook, TokenLineError, new_token, parse_line

settings.register_profile("replayable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "replayable"))

LIMITS = despliegue_settings().limits
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
thickness_like = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(), max_size=1200),
    json_values,
)


def refused_naming_a_field(error: ValidationError) -> bool:
    return all(isinstance(item["loc"], tuple) for item in error.errors())


@PROPERTY
@given(value=thickness_like, extra=st.none() | st.dictionaries(st.text(max_size=8), json_values))
def test_heatflow_decoding_accepts_only_values_inside_the_limits(value, extra) -> None:
    body = {"sediment_thickness_m": value, **(extra or {})}
    try:
        raw = json.dumps(body, allow_nan=True)
    except (TypeError, ValueError):
        return
    try:
        decoded = HeatFlowRequest.model_validate_json(raw).sediment_thickness_m
    except ValidationError as error:
        assert refused_naming_a_field(error)
        return
    assert 1 <= len(decoded) <= LIMITS.heatflow.max_values
    assert all(math.isfinite(v) and 0 <= v <= LIMITS.heatflow.max_thickness_m for v in decoded)


@PROPERTY
@given(texts=st.lists(st.text(max_size=300), max_size=300) | json_values)
def test_falsetrue_decoding_accepts_only_texts_inside_the_limits(texts) -> None:
    try:
        decoded = FalseTrueRequest.model_validate_json(json.dumps({"texts": texts})).texts
    except ValidationError as error:
        assert refused_naming_a_field(error)
        return
    assert 1 <= len(decoded) <= LIMITS.falsetrue.max_texts
    assert all(1 <= len(text) <= LIMITS.falsetrue.max_text_chars for text in decoded)


@PROPERTY
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_or_decoded_never_crash(raw: bytes) -> None:
    for schema in (HeatFlowRequest, FalseTrueRequest):
        with contextlib.suppress(ValidationError):
            schema.model_validate_json(raw)


BOOK = TokenBook([new_token("alice", ["heatflow"])[1]])


@settings(max_examples=200, deadline=None)
@given(token=st.text(max_size=120))
def test_any_presented_token_is_rejected_without_error(token: str) -> None:
    assert BOOK.identify(token) is None


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=200))
def test_any_authorization_header_parses_without_error(header: bytes) -> None:
    token = bearer_token({"headers": [(b"authorization", header)]})
    assert token is None or (token and token == token.strip())


@settings(max_examples=300, deadline=None)
@given(line=st.text(max_size=200))
@example(line="alice pbkdf2_sha256$²$c2FsdHNhbHQ$" + "A" * 43 + " heatflow")
def test_any_tokens_file_line_is_parsed_or_refused(line: str) -> None:
    with contextlib.suppress(TokenLineError):
        parse_line(line)
