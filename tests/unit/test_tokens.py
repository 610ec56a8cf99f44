"""Tokens: made once, stored as hashes, parsed strictly, scoped by endpoint family."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

import pytest

from despliegue.config import AuthSettings
from despliegue.http.auth import required_scope
from despliegue.tokens import (
    TokenBook,
    TokenLineError,
    TokenRecord,
    new_token,
    parse_line,
    parse_lines,
)
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


def test_two_tokens_for_one_id_never_share_a_hash() -> None:
    _, first = new_token("alice", ["*"])
    _, second = new_token("alice", ["*"])
    assert first.digest != second.digest


def test_hash_lines_are_sha256_of_the_whole_token() -> None:
    token, record = new_token("alice", ["heatflow"])
    scheme, encoded = record.line().split()[1].split("$")
    assert scheme == "sha256"
    digest = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    assert digest == hashlib.sha256(token.encode()).digest()
    # bound to its id: the same secret under another id is not this token
    forged = token.replace("dsp.alice.", "dsp.bob.")
    assert (
        TokenBook([parse_line(record.line().replace("alice", "bob", 1))]).identify(forged) is None
    )


def test_wrong_tokens_cost_no_key_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wrong token cost a 20,000-round PBKDF2 on the event loop: an unauthenticated
    caller could spend the server's CPU at will."""
    derivations = []
    real = hashlib.pbkdf2_hmac
    monkeypatch.setattr(
        hashlib, "pbkdf2_hmac", lambda *args: derivations.append(args) or real(*args)
    )
    token, record = new_token("alice", ["heatflow"])
    book = TokenBook([record])
    wrong = [token[:-2] + "xx", "dsp.nobody.secret", "dsp.alice.", "garbage", ""]
    assert [book.identify(candidate) for candidate in wrong] == [None] * len(wrong)
    assert book.identify(token) == record
    assert derivations == []
    assert not any(book.is_slow(candidate) for candidate in (*wrong, token))


def test_an_unknown_id_costs_one_check_like_a_known_one(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = []
    real = TokenRecord.matches
    monkeypatch.setattr(
        TokenRecord, "matches", lambda self, token: checks.append(self) or real(self, token)
    )
    token, record = new_token("alice", ["heatflow"])
    book = TokenBook([record])
    for candidate in (token[:-2] + "xx", "dsp.nobody." + token.rsplit(".", 1)[1]):
        checks.clear()
        assert book.identify(candidate) is None
        assert len(checks) == 1 and not checks[0].legacy


def pbkdf2_line(token_id: str, secret: str, allow: str, iterations: int = 20_000) -> str:
    """A hash line as earlier versions wrote it, made here with hashlib."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    salt_text, digest_text = (
        base64.urlsafe_b64encode(raw).decode().rstrip("=") for raw in (salt, digest)
    )
    return f"{token_id} pbkdf2_sha256${iterations}${salt_text}${digest_text} {allow}"


def test_earlier_pbkdf2_lines_are_still_accepted_and_flagged_slow() -> None:
    line = pbkdf2_line("carol", "an-old-secret", "falsetrue,heatflow")
    record = parse_line(line)
    assert record.legacy and record.line() == line
    book = TokenBook([record])
    assert book.legacy_ids() == ["carol"]
    assert book.is_slow("dsp.carol.wrong") and book.identify("dsp.carol.wrong") is None
    assert book.is_slow("dsp.carol.wrong")  # a wrong token is never remembered
    assert book.is_slow("dsp.carol.an-old-secret")
    assert book.identify("dsp.carol.an-old-secret") == record
    assert not book.is_slow("dsp.carol.an-old-secret")  # verified once per process
    assert not book.is_slow("dsp.nobody.x")  # unknown ids cost a fast check


def test_scopes() -> None:
    _, record = new_token("alice", ["heatflow"])
    assert record.permits("heatflow") and not record.permits("falsetrue")
    assert new_token("root", ["*"])[1].permits("anything")


@pytest.mark.parametrize(
    "line",
    [
        "alice",
        "alice sha1$1$AAAA$BBBB heatflow",
        "alice sha256$" + "A" * 42 + " heatflow",
        "alice sha256$" + "A" * 43 + "$x heatflow",
        "alice sha256$" + "A" * 43 + " Heat Flow",
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


@pytest.mark.processes
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
