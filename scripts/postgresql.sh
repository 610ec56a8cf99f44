#!/usr/bin/env bash
# Install Debian's PostgreSQL server (root, apt): the MLflow import test runs a live
# `mlflow server` on a PostgreSQL backend store, started by the test in a temporary data folder
# as an unprivileged user. Nothing is started or configured here.
# Exit 0 when the server binaries are present; exit 3 (with the reason) when they cannot be
# installed here: the test then runs on SQLite and reports the PostgreSQL check as skipped.
set -euo pipefail
found() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
found && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "PostgreSQL missing and not installable: needs root and apt-get" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }; then
    echo "PostgreSQL missing: apt-get install postgresql failed" >&2
    exit 3
fi
found || { echo "PostgreSQL installed but no initdb under /usr/lib/postgresql" >&2; exit 3; }
