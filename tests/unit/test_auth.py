"""Token reload from the tokens file, and the failure budget of earlier-version tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from despliegue.config import AuthSettings
from despliegue.http.auth import FailureBudget, ReloadingTokenBook
from despliegue.tokens import TOKENS_ENV, TOKENS_FILE_ENV, TokenBook, load_records, new_token


@pytest.fixture
def tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tokens.txt"
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    monkeypatch.delenv(TOKENS_FILE_ENV, raising=False)
    return path


def reloading(path: Path) -> ReloadingTokenBook:
    auth = AuthSettings(tokens_file=str(path), reload_interval_s=0.01)
    return ReloadingTokenBook(auth, TokenBook(load_records(auth.tokens_file)))


def after_interval(tokens: ReloadingTokenBook) -> TokenBook:
    time.sleep(0.02)
    return tokens.current()


def test_a_changed_tokens_file_is_reread(tokens_file: Path) -> None:
    alice, alice_line = new_token("alice", ["heatflow"])
    bob, bob_line = new_token("bob", ["*"])
    tokens_file.write_text(alice_line.line() + "\n")
    tokens = reloading(tokens_file)
    assert tokens.current().identify(alice) is not None
    tokens_file.write_text(bob_line.line() + "\n")
    book = after_interval(tokens)
    assert book.identify(alice) is None and book.identify(bob) is not None


def test_a_broken_tokens_file_keeps_the_tokens_in_force(
    tokens_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice, record = new_token("alice", ["heatflow"])
    tokens_file.write_text(record.line() + "\n")
    tokens = reloading(tokens_file)
    tokens_file.write_text(record.line() + "\nnot a hash line\n")
    assert after_interval(tokens).identify(alice) is not None
    assert "not loaded" in caplog.text and "entry 2" in caplog.text
    tokens_file.unlink()  # a missing file is a changed file too: still kept
    assert after_interval(tokens).identify(alice) is not None


def test_no_reload_when_the_interval_is_zero(tokens_file: Path) -> None:
    alice, record = new_token("alice", ["heatflow"])
    tokens_file.write_text(record.line() + "\n")
    auth = AuthSettings(tokens_file=str(tokens_file), reload_interval_s=0)
    tokens = ReloadingTokenBook(auth, TokenBook(load_records(auth.tokens_file)))
    tokens_file.write_text("")
    assert after_interval(tokens).identify(alice) is not None


def test_the_failure_budget_is_per_client_and_per_window() -> None:
    budget = FailureBudget(failures=2, window_s=0.05)
    assert budget.retry_after("10.0.0.1") is None
    budget.charge("10.0.0.1")
    budget.charge("10.0.0.1")
    assert budget.retry_after("10.0.0.1") == 1
    assert budget.retry_after("10.0.0.2") is None
    time.sleep(0.06)
    assert budget.retry_after("10.0.0.1") is None


def test_the_failure_budget_forgets_clients_past_its_size() -> None:
    budget = FailureBudget(failures=1, window_s=60, max_clients=3)
    for number in range(10):
        budget.charge(f"10.0.0.{number}")
    assert len(budget.spent) <= 3
