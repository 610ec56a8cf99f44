"""Fixtures of the integration tier that more than one module uses.

The live MLflow tracking server (on PostgreSQL, as seed 003 runs MLflow) is started once per
session (per xdist worker); each module that uses it gets a model store of its own and starts on
an empty model registry, so sharing the server changes nothing a module asserts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, free_port, stop_server, wait_until_answers
from tests.postgres import binaries, postgres_server


@dataclass
class Registry:
    url: str
    home: str
    backend_store: str
    postgres_missing: str  # why PostgreSQL could not be used ("" when it is)


def store_without_panel(reference_store: str, home: Path) -> str:
    """A model store holding the non-antibiotic reference models (copied, not rebuilt)."""
    shutil.copytree(
        Path(reference_store) / "models",
        home / "models",
        ignore=shutil.ignore_patterns("modelo_*"),
    )
    return str(home)


@dataclass(frozen=True)
class TrackingServer:
    url: str
    backend_store: str
    postgres_missing: str  # why PostgreSQL could not be used ("" when it is)


@pytest.fixture(scope="session")
def mlflow_tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """A live `mlflow server` on PostgreSQL (SQLite where PostgreSQL cannot be installed)."""
    pytest.importorskip("mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)")
    folder = tmp_path_factory.mktemp("mlflow")
    with contextlib.ExitStack() as stack:
        bindir, missing = binaries()
        if bindir is not None:
            backend_store = stack.enter_context(postgres_server(free_port()))
        else:
            print(f"\nMLflow registry on SQLite, not PostgreSQL: {missing}")
            backend_store = f"sqlite:///{folder / 'mlflow.db'}"
        port = free_port()
        log = stack.enter_context((folder / "mlflow.log").open("wb"))
        process = subprocess.Popen(
            [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1",
                "--backend-store-uri", backend_store,
                "--artifacts-destination", str(folder / "artifacts"),
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack.callback(stop_server, process)
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{url}/health", process, folder / "mlflow.log", within_s=120)
        yield TrackingServer(url=url, backend_store=backend_store, postgres_missing=missing)


@pytest.fixture(scope="module")
def registry(
    mlflow_tracking_server: TrackingServer,
    reference_store: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Registry]:
    """The session's MLflow server as the tracking URI while one module runs (the variable is
    put back afterwards, so no other test's subprocess reaches it), with a model store of the
    module's own. The module starts on an empty model registry, as it would on a server of its
    own."""
    import mlflow

    url = mlflow_tracking_server.url
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    empty_registry()
    try:
        home = store_without_panel(reference_store, tmp_path_factory.mktemp("store") / "bentoml")
        yield Registry(
            url=url,
            home=home,
            backend_store=mlflow_tracking_server.backend_store,
            postgres_missing=mlflow_tracking_server.postgres_missing,
        )
    finally:
        _restore_tracking_uri(previous)


def empty_registry() -> None:
    """Delete every registered model of the current tracking server: `save_models.py sync`
    follows every `modelo_<CODE>_NM` registered, so models other tests left change its answer."""
    import mlflow

    client = mlflow.MlflowClient()
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)


def _restore_tracking_uri(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
