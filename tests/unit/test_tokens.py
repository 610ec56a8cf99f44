"""Tokens: made once, stored as salted hashes, parsed strictly, scoped by endpoint family."""

from __future__ import annotations

import subprocess
import sys

import pytest

from despliegue.auth import required_scope
from despliegue.config import AuthSettings
from despliegue.tokens import TokenBook, TokenLineError, new_token, parse_line, parse_lines
from tests.conftest import ROOT


def test_a_token_round_trips_through_its_hash_line_and_the_line_holds_no_secret() -> None:
    token, record = new_token("alice", ["heatflow", "falsetrue"])
    line = record.line()
    assert token.rsplit(".", 1)[1] not in line
    parsed = parse_line(line)
    assert parsed == record
    book = TokenBook([parsed])
    assert book.identify(token) == record
    assert book.identify(token) == record  # the remembered path
    assert book.identify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert book.identify("dsp.bob." + token.rsplit(".", 1)[1]) is None
    assert book.identify("") is None


def test_two_tokens_for_one_id_never_share_a_salt() -> None:
    _, first = new_token("alice", ["*"])
    _, second = new_token("alice", ["*"])
    assert first.salt != second.salt and first.digest != second.digest


def test_scopes() -> None:
    _, record = new_token("alice", ["heatflow"])
    assert record.permits("heatflow") and not record.permits("falsetrue")
    assert new_token("root", ["*"])[1].permits("anything")


@pytest.mark.parametrize(
    "line",
    [
        "alice",
        "alice sha1$1$AAAA$BBBB heatflow",
        "Alice! pbkdf2_sha256$1000$c2FsdHNhbHQ$" + "A" * 43 + " heatflow",
        "alice pbkdf2_sha256$1000$c2FsdHNhbHQ$short heatflow",
        "alice pbkdf2_sha256$1000$c2FsdHNhbHQ$" + "A" * 43 + " Heat Flow",
    ],
)
def test_malformed_lines_are_refused_naming_where(line: str) -> None:
    with pytest.raises(TokenLineError, match=r"tokens\.txt, entry 2"):
        parse_lines("# comment\n" + line, "tokens.txt")


def test_required_scope_is_the_first_path_segment() -> None:
    auth = AuthSettings()
    assert required_scope("/livez", auth) is None
    assert required_scope("/readyz", auth) is None
    assert required_scope("/heatflow", auth) == "heatflow"
    assert required_scope("/images/faces", auth) == "images"
    assert required_scope("/docs.json", auth) is None
    assert required_scope("/metrics", auth) == "any"
    closed = AuthSettings(docs_need_token=True, metrics_need_token=False)
    assert required_scope("/", closed) == "any"
    assert required_scope("/metrics", closed) is None


def test_command_prints_the_token_on_stderr_and_only_the_hash_line_on_stdout() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "despliegue.tokens", "new", "--id", "alice", "--allow", "heatflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    token = result.stderr.strip().splitlines()[-1]
    record = parse_line(result.stdout.strip())
    assert token.startswith("dsp.alice.") and token not in result.stdout
    assert TokenBook([record]).identify(token) == record
