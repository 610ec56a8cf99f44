"""Serve the whole Bento, or one tier of it, as the environment says: the scale-out switch.

`bentoml serve` starts every service of the Bento in one place. To scale the CNN runners apart
from the API (Kubernetes: one Deployment per tier), BentoML's server takes two settings that
its CLI does not expose; this entry point reads them from the environment:

- DESPLIEGUE_SERVICE=<ServiceClass>: serve only that service (e.g. `FlowerClassifier`) on the
  port, for a runner tier. Empty: the entry service, with its dependencies. A runner the
  configuration places inside the API worker (`placement`) is no tier until placed "runner".
- DESPLIEGUE_REMOTE_SERVICES='{"<ServiceClass>": "http://host:port", ...}': dependencies that
  already run elsewhere; `bentoml.depends` reaches them at that URL and they are not started
  here. Every other dependency starts locally, as with `bentoml serve`.

No service code changes between the two layouts. It is how every shipped layout starts (`make
serve`, the image's default command, the Kubernetes manifests), so it also fixes, in one place,
what `bentoml serve` does not:

- BentoML's usage telemetry is off unless BENTOML_DO_NOT_TRACK=false says otherwise.
- The public port refuses connections until the API process can answer them. BentoML's
  supervisor opens the port before it starts any worker, and a connection made then waited,
  unanswered, for the seconds the API worker takes to import and start (despliegue/http/probes.py
  answers every probe once it listens).
- A runner process that dies is started again inside a container too (BentoML leaves that to
  the orchestrator there, which never sees a runner die while the API process lives).

Usage (inside the image, or a checkout):
    python -m despliegue.serving [BENTO] [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

SERVICE_ENV = "DESPLIEGUE_SERVICE"
REMOTE_ENV = "DESPLIEGUE_REMOTE_SERVICES"
TELEMETRY_ENV = "BENTOML_DO_NOT_TRACK"


def remote_services(raw: str) -> dict[str, str]:
    """Parse DESPLIEGUE_REMOTE_SERVICES; a bad value stops start-up with a message naming it."""
    if not raw.strip():
        return {}
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{REMOTE_ENV} is not JSON: {exc}") from exc
    if not isinstance(mapping, dict) or not all(
        isinstance(name, str) and isinstance(url, str) and url.startswith(("http://", "https://"))
        for name, url in mapping.items()
    ):
        raise SystemExit(f'{REMOTE_ENV} must map service names to URLs: {{"Name": "http://..."}}')
    return mapping


def not_a_tier(service: str) -> str:
    """Why a service cannot be served alone: a runner the configuration places inside the API
    worker, or no service of this Bento at all."""
    from despliegue import registry

    for family in registry.FAMILIES:
        if family.service_name == service:
            return (
                f"the {family.name} runner is answered inside the API worker (placement); to "
                f"serve it as a tier of its own, set `placement: {{{family.name}: runner}}` in "
                "the configuration of both tiers"
            )
    return "not a service of this Bento"


def refuse_connections_until_the_api_listens() -> None:
    """Bind the public port in the supervisor but leave it closed for the API worker to open.

    circus binds and listens on every socket before it spawns the workers, so the kernel
    accepted connections no process would read for several seconds. Shutting the listening
    socket's read side returns it to the closed state with its address kept: connections are
    refused, and the API worker's uvicorn listens again on the same socket once its service is
    created (asyncio's create_server calls listen() on a socket it is given).
    """
    from circus.sockets import CircusSocket

    from despliegue.bentoml_compat import api_server_name

    bind_and_listen = CircusSocket.bind_and_listen

    def bind_then_close(sock: CircusSocket) -> None:
        bind_and_listen(sock)
        if sock.name == api_server_name() and not sock.is_unix:
            sock.shutdown(socket.SHUT_RD)

    CircusSocket.bind_and_listen = bind_then_close  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bento", nargs="?", default=os.environ.get("BENTO_PATH", "."))
    parser.add_argument("--host", default=os.environ.get("BENTOML_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENTOML_PORT", "3000")))
    args = parser.parse_args(argv)
    service = os.environ.get(SERVICE_ENV, "").strip()
    remote = remote_services(os.environ.get(REMOTE_ENV, ""))

    os.environ.setdefault(TELEMETRY_ENV, "true")
    # BentoML turns respawning off when this is set (bentoml/serving.py: running_inside_container).
    os.environ.pop("BENTOML_CONTAINERIZED", None)
    refuse_connections_until_the_api_listens()

    # Same steps as `bentoml serve` (bentoml_cli/serve.py) for bentoml>=1.2 services.
    from despliegue import bentoml_compat

    bentoml_compat.configure_server_logging()
    working_dir = args.bento if os.path.isdir(args.bento) else "."
    if sys.path[0] != working_dir:
        sys.path.insert(0, working_dir)
    try:
        svc = bentoml_compat.load_service(args.bento, working_dir)
    except StopIteration:  # BentoML's on_load_bento: a service of the graph not in bento.yaml
        raise SystemExit(
            f"{args.bento}: the Bento does not record every runner this configuration starts "
            "(`placement`); build it with `make build` (python -m despliegue.lifecycle.pack "
            "bentoml build), which records every runner as a tier"
        ) from None
    if service and service not in svc.all_services():
        raise SystemExit(f"{SERVICE_ENV}={service!r}: {not_a_tier(service)}")
    svc.inject_config()
    bentoml_compat.serve_http()(
        args.bento,
        working_dir=working_dir,
        host=args.host,
        port=args.port,
        service_name=service,
        dependency_map=dict(remote),
    )


if __name__ == "__main__":
    main()
