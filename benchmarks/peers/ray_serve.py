"""The Ray Serve peer: one deployment per benchmark path, one replica each, `@serve.batch`
with the service's batch bound per family; it takes the service's own request bodies on the
service's routes, so the load generator sends both the very same bytes.

Run in .venv-ray by benchmarks/run.py, pinned to the server CPUs (Ray's processes inherit it):

    .venv-ray/bin/python -m benchmarks.peers.ray_serve --manifest M.json --port 8000

Batch wait: the service waits for no timer (a merged call leaves when the previous call to
that runner returns); `batch_wait_timeout_s` is the closest Ray knob, set to BATCH_WAIT_S.
`max_ongoing_requests` is raised from Ray's default (5) so that batches can fill at all.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from benchmarks.peers.models import REQUEST_FIELD, load, read_manifest

BATCH_WAIT_S = 0.002  # as MLServer's max_batch_time in benchmarks/peers/launch.py
MAX_ONGOING_REQUESTS = 1024


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    ray_actor_options={"num_cpus": 0},  # pinning, not Ray's CPU accounting, bounds the cores
)
class PathModel:
    def __init__(self, path: str, manifest: dict[str, Any]) -> None:
        self.field = REQUEST_FIELD[path]
        self.model = load(path, manifest)
        self.answer.set_max_batch_size(manifest["models"][path]["max_batch_size"])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=BATCH_WAIT_S)
    async def answer(self, requests: list[list[Any]]) -> list[list[Any]]:
        """One model call for every item of the batched requests, split back per request."""
        items = [item for request in requests for item in request]
        results = self.model(items)
        answers, start = [], 0
        for request in requests:
            answers.append(results[start : start + len(request)])
            start += len(request)
        return answers

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"answers": await self.answer(body[self.field])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paths", nargs="+", help="default: every path in the manifest")
    args = parser.parse_args(argv)
    manifest = read_manifest(args.manifest)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    for path in args.paths or list(manifest["models"]):
        serve.run(PathModel.bind(path, manifest), name=path, route_prefix=f"/{path}")
    print("ray serve peer ready", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    stopping.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
