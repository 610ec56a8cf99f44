"""API tokens: made here, stored only as salted hashes, checked in constant time.

A token is `dsp.<id>.<secret>` with 256 random bits of secret. The service never holds the
token itself, only its *hash line*, one per token:

    <id> pbkdf2_sha256$<iterations>$<salt>$<hash> <allow,...>

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
ALGORITHM = "pbkdf2_sha256"
# The secret is 256 random bits, so the hash only has to be one-way and salted; iterations
# are kept modest because a wrong token costs one derivation per request.
DEFAULT_ITERATIONS = 20_000
TOKEN_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ITERATIONS = re.compile(r"^[1-9][0-9]{2,6}$")  # 100 to 9,999,999
SCOPE = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,63})$")
TOKENS_ENV = "DESPLIEGUE_TOKENS"
TOKENS_FILE_ENV = "DESPLIEGUE_TOKENS_FILE"


class TokenLineError(ValueError):
    """A hash line that cannot be parsed; the message says which line and why."""


@dataclass(frozen=True)
class TokenRecord:
    """One configured token: who holds it, its salted hash, and what it may call."""

    token_id: str
    iterations: int
    salt: bytes
    digest: bytes
    allow: frozenset[str]

    def permits(self, scope: str) -> bool:
        return "*" in self.allow or scope in self.allow

    def matches(self, secret: str) -> bool:
        candidate = _derive(secret, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)

    def line(self) -> str:
        encoded = f"{ALGORITHM}${self.iterations}${_b64(self.salt)}${_b64(self.digest)}"
        return f"{self.token_id} {encoded} {','.join(sorted(self.allow))}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)


def new_token(
    token_id: str, allow: Iterable[str], iterations: int = DEFAULT_ITERATIONS
) -> tuple[str, TokenRecord]:
    """A fresh token and its record; the token is shown once and never stored."""
    if not TOKEN_ID.match(token_id):
        raise ValueError(f"token id {token_id!r}: use 1-32 of a-z 0-9 _ - (start alnum)")
    scopes = frozenset(a.strip() for a in allow if a.strip())
    bad = sorted(s for s in scopes if not SCOPE.match(s))
    if not scopes or bad:
        raise ValueError(f"allow: give endpoint families or '*' (bad: {bad or 'empty'})")
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = TokenRecord(token_id, iterations, salt, _derive(secret, salt, iterations), scopes)
    return f"{PREFIX}.{token_id}.{secret}", record


def parse_line(line: str, where: str = "token line") -> TokenRecord:
    """Parse one hash line; raise TokenLineError naming `where` (never echoing a secret)."""
    parts = line.split()
    if len(parts) != 3:
        raise TokenLineError(f"{where}: expected '<id> {ALGORITHM}$...$... <allow>'")
    token_id, encoded, allow = parts
    if not TOKEN_ID.match(token_id):
        raise TokenLineError(f"{where}: bad token id {token_id!r}")
    fields = encoded.split("$")
    if len(fields) != 4 or fields[0] != ALGORITHM or not ITERATIONS.match(fields[1]):
        raise TokenLineError(f"{where}: hash must be {ALGORITHM}$<iterations>$<salt>$<hash>")
    try:
        salt, digest = _unb64(fields[2]), _unb64(fields[3])
    except ValueError:
        raise TokenLineError(f"{where}: salt or hash is not base64url") from None
    scopes = frozenset(allow.split(","))
    if not all(SCOPE.match(s) for s in scopes) or len(digest) != 32 or len(salt) < 8:
        raise TokenLineError(f"{where}: bad allow list, salt or hash length")
    return TokenRecord(token_id, int(fields[1]), salt, digest, scopes)


def parse_lines(text: str, where: str) -> list[TokenRecord]:
    records = []
    for number, raw in enumerate(re.split(r"[;\n]", text), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            records.append(parse_line(line, f"{where}, entry {number}"))
    return records


def load_records(tokens_file: str | None) -> list[TokenRecord]:
    """Every configured token: the env list plus the file (env path over configuration)."""
    records = parse_lines(os.environ.get(TOKENS_ENV, ""), f"${TOKENS_ENV}")
    path = os.environ.get(TOKENS_FILE_ENV) or tokens_file
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenLineError(f"cannot read tokens file {path}: {exc.strerror}") from None
        records += parse_lines(text, str(path))
    ids = [r.token_id for r in records]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise TokenLineError(f"token ids configured more than once: {duplicated}")
    return records


class TokenBook:
    """Looks a presented token up by its id and checks the secret in constant time."""

    def __init__(self, records: Iterable[TokenRecord]) -> None:
        self._by_id = {r.token_id: r for r in records}
        # sha256 of tokens already verified -> record, so a good token costs one derivation
        # per process, not per request (a wrong token is never remembered).
        self._verified: dict[bytes, TokenRecord] = {}
        self._decoy = TokenRecord("decoy", DEFAULT_ITERATIONS, b"0" * 16, b"0" * 32, frozenset())

    def __len__(self) -> int:
        return len(self._by_id)

    def identify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, or None. Unknown ids cost the same as wrong secrets."""
        fingerprint = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        known = self._verified.get(fingerprint)
        if known is not None:
            return known
        prefix, _, rest = token.partition(".")
        token_id, _, secret = rest.partition(".")
        record = self._by_id.get(token_id) if prefix == PREFIX else None
        if not (record or self._decoy).matches(secret) or record is None:
            return None
        if len(self._verified) < 10_000:
            self._verified[fingerprint] = record
        return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m despliegue.tokens", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a token; print it and its hash line")
    new.add_argument("--id", required=True, help="who holds it, e.g. alice or newsroom-app")
    new.add_argument("--allow", required=True, help="families it may call, comma-separated, or *")
    new.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
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
            print(f"{record.token_id}: allow {','.join(sorted(record.allow))}")
        return 0
    try:
        token, record = new_token(args.id, args.allow.split(","), args.iterations)
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
