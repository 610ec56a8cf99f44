"""API tokens: made here, stored only as hashes, checked in constant time.

A token is `dsp.<id>.<secret>` with 256 random bits of secret. The service never holds the
token itself, only its *hash line*, one per token:

    <id> sha256$<hash> <allow,...>

where `<hash>` is the SHA-256 of the whole token (base64url). A token is a random secret, not a
password: nobody can try a dictionary against 256 random bits, so a fast hash is as safe as a
slow one here (the usual way API keys are stored), and checking a wrong token costs a
microsecond, not a key derivation an unauthenticated caller could make the server pay for.
Hashing the whole token binds the line to its id.

Lines made by earlier versions, `<id> pbkdf2_sha256$<iterations>$<salt>$<hash> <allow>`, are
still accepted, but each check costs a PBKDF2 derivation: the server runs those off its event
loop under a per-client failure budget (despliegue/http/auth.py) and logs at start-up which ids to
re-issue.

`allow` lists what the token may call: an endpoint family (the first path segment: `heatflow`,
`falsetrue`, `models`, ...) or `*` for everything. Hash lines come at run time from the file in
$DESPLIEGUE_TOKENS_FILE (or `security.auth.tokens_file`) and/or $DESPLIEGUE_TOKENS (lines
separated by newlines or `;`), so no token, hashed or not, has to live in the repo or the image.

    python -m despliegue.tokens new --id alice --allow heatflow,falsetrue

prints the token once on stderr (to give to its holder) and the hash line on stdout (append it
to the tokens file: `... >> tokens.txt`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PREFIX = "dsp"
SCHEME = "sha256"
LEGACY_SCHEME = "pbkdf2_sha256"
TOKEN_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ITERATIONS = re.compile(r"^[1-9][0-9]{2,6}$")  # 100 to 9,999,999
SCOPE = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,63})$")
TOKENS_ENV = "DESPLIEGUE_TOKENS"
TOKENS_FILE_ENV = "DESPLIEGUE_TOKENS_FILE"
# Verified legacy tokens are remembered (by fingerprint) up to this many per book.
MAX_REMEMBERED = 10_000


class TokenLineError(ValueError):
    """A hash line that cannot be parsed; the message says which line and why."""


@dataclass(frozen=True)
class TokenRecord:
    """One configured token: who holds it, its hash, and what it may call.

    `salt` and `iterations` are set only on legacy (PBKDF2) lines."""

    token_id: str
    digest: bytes
    allow: frozenset[str]
    salt: bytes = b""
    iterations: int = 0

    @property
    def legacy(self) -> bool:
        return self.iterations > 0

    def permits(self, scope: str) -> bool:
        return "*" in self.allow or scope in self.allow

    def matches(self, token: str) -> bool:
        if self.legacy:
            secret = token.split(".", 2)[-1]
            candidate = hashlib.pbkdf2_hmac(
                "sha256", secret.encode("utf-8", "replace"), self.salt, self.iterations
            )
        else:
            candidate = _sha256(token)
        return hmac.compare_digest(candidate, self.digest)

    def line(self) -> str:
        if self.legacy:
            encoded = f"{LEGACY_SCHEME}${self.iterations}${_b64(self.salt)}${_b64(self.digest)}"
        else:
            encoded = f"{SCHEME}${_b64(self.digest)}"
        return f"{self.token_id} {encoded} {','.join(sorted(self.allow))}"


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_token(token_id: str, allow: Iterable[str]) -> tuple[str, TokenRecord]:
    """A fresh token and its record; the token is shown once and never stored."""
    if not TOKEN_ID.match(token_id):
        raise ValueError(f"token id {token_id!r}: use 1-32 of a-z 0-9 _ - (start alnum)")
    scopes = frozenset(a.strip() for a in allow if a.strip())
    bad = sorted(s for s in scopes if not SCOPE.match(s))
    if not scopes or bad:
        raise ValueError(f"allow: give endpoint families or '*' (bad: {bad or 'empty'})")
    token = f"{PREFIX}.{token_id}.{secrets.token_urlsafe(32)}"
    return token, TokenRecord(token_id, _sha256(token), scopes)


def parse_line(line: str, where: str = "token line") -> TokenRecord:
    """Parse one hash line; raise TokenLineError naming `where` (never echoing a secret)."""
    parts = line.split()
    if len(parts) != 3:
        raise TokenLineError(f"{where}: expected '<id> {SCHEME}$<hash> <allow>'")
    token_id, encoded, allow = parts
    if not TOKEN_ID.match(token_id):
        raise TokenLineError(f"{where}: bad token id {token_id!r}")
    fields = encoded.split("$")
    legacy = len(fields) == 4 and fields[0] == LEGACY_SCHEME and ITERATIONS.match(fields[1])
    if not legacy and not (len(fields) == 2 and fields[0] == SCHEME):
        raise TokenLineError(
            f"{where}: hash must be {SCHEME}$<hash> "
            f"(or, from earlier versions, {LEGACY_SCHEME}$<iterations>$<salt>$<hash>)"
        )
    try:
        digest = _unb64(fields[-1])
        salt = _unb64(fields[2]) if legacy else b""
    except ValueError:
        raise TokenLineError(f"{where}: salt or hash is not base64url") from None
    scopes = frozenset(allow.split(","))
    if not all(SCOPE.match(s) for s in scopes) or len(digest) != 32 or (legacy and len(salt) < 8):
        raise TokenLineError(f"{where}: bad allow list, salt or hash length")
    iterations = int(fields[1]) if legacy else 0
    return TokenRecord(token_id, digest, scopes, salt, iterations)


def parse_lines(text: str, where: str) -> list[TokenRecord]:
    records = []
    for number, raw in enumerate(re.split(r"[;\n]", text), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            records.append(parse_line(line, f"{where}, entry {number}"))
    return records


def tokens_file_path(configured: str | None) -> Path | None:
    """The tokens file in use: $DESPLIEGUE_TOKENS_FILE over the configuration's."""
    path = os.environ.get(TOKENS_FILE_ENV) or configured
    return Path(path) if path else None


def load_records(tokens_file: str | None) -> list[TokenRecord]:
    """Every configured token: the env list plus the file (env path over configuration)."""
    records = parse_lines(os.environ.get(TOKENS_ENV, ""), f"${TOKENS_ENV}")
    path = tokens_file_path(tokens_file)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenLineError(f"cannot read tokens file {path}: {exc.strerror}") from None
        records += parse_lines(text, str(path))
    ids = [r.token_id for r in records]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise TokenLineError(f"token ids configured more than once: {duplicated}")
    return records


class TokenBook:
    """Looks a presented token up by its id and checks it in constant time."""

    def __init__(self, records: Iterable[TokenRecord]) -> None:
        self._by_id = {r.token_id: r for r in records}
        # An unknown id is checked against this line, so it costs what a real line costs.
        self._decoy = TokenRecord("decoy", bytes(32), frozenset())
        # Fingerprints of legacy tokens already verified: a good legacy token costs one PBKDF2
        # per process, not per request (a wrong token is never remembered).
        self._verified: dict[bytes, TokenRecord] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def legacy_ids(self) -> list[str]:
        """Ids whose line is an earlier version's PBKDF2 hash: to be re-issued."""
        return sorted(i for i, record in self._by_id.items() if record.legacy)

    def _record_for(self, token: str) -> TokenRecord | None:
        prefix, _, rest = token.partition(".")
        token_id = rest.partition(".")[0]
        return self._by_id.get(token_id) if prefix == PREFIX else None

    def is_slow(self, token: str) -> bool:
        """Whether checking this token means a PBKDF2 derivation (a legacy line, not yet
        verified): the caller runs those off the event loop and within a failure budget."""
        record = self._record_for(token)
        return record is not None and record.legacy and _sha256(token) not in self._verified

    def identify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, or None. Unknown ids cost the same as wrong secrets."""
        record = self._record_for(token)
        if record is None:
            self._decoy.matches(token)
            return None
        if not record.legacy:
            return record if record.matches(token) else None
        fingerprint = _sha256(token)
        known = self._verified.get(fingerprint)
        if known is not None:
            return known
        if not record.matches(token):
            return None
        if len(self._verified) < MAX_REMEMBERED:
            self._verified[fingerprint] = record
        return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m despliegue.tokens", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a token; print it and its hash line")
    new.add_argument("--id", required=True, help="who holds it, e.g. alice or newsroom-app")
    new.add_argument("--allow", required=True, help="families it may call, comma-separated, or *")
    check = commands.add_parser("check", help="validate a tokens file")
    check.add_argument("path", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        try:
            records = parse_lines(args.path.read_text(encoding="utf-8"), str(args.path))
        except (OSError, TokenLineError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for record in records:
            note = "  (earlier PBKDF2 line: re-issue this token)" if record.legacy else ""
            print(f"{record.token_id}: allow {','.join(sorted(record.allow))}{note}")
        return 0
    try:
        token, record = new_token(args.id, args.allow.split(","))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The token goes to stderr and the hash line to stdout, so `... >> tokens.txt` stores
    # only the hash while the operator sees the token once.
    print(f"token for {record.token_id} (shown once, give it to its holder):", file=sys.stderr)
    print(token, file=sys.stderr)
    print(record.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
