"""`make stress`: locust (headless) against the real service, one endpoint at a time, users
doubling every step until the SLO of configuration.yaml (`slo:`) breaks.

Reports per endpoint the highest sustainable rate (best step within the SLO) and what failed
first (p99 or error rate, at how many users, with the errors seen). The service is pinned to
the server CPUs and locust (one gevent process) to the client CPUs, as in benchmarks/run.py.
Writes benchmarks/results/stress-<date>.json and benchmarks/results/stress-latest.md.

    python -m benchmarks.stress                 # 10 s steps up to 256 users: <= 90 s per path
    python -m benchmarks.stress --quick         # 3 s steps up to 64 users
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import servers
from benchmarks.paths import PATHS, by_name
from benchmarks.run import RESULTS, prepare_store, write_results
from benchmarks.stats import render_stress_markdown
from despliegue.config import load_settings

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--step-seconds", type=float)
    parser.add_argument("--max-users", type=int)
    parser.add_argument("--paths", nargs="+", help="path names (default: all in paths.py)")
    parser.add_argument("--home", help="BENTOML_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    step_seconds = args.step_seconds or (3.0 if args.quick else 10.0)
    max_users = args.max_users or (64 if args.quick else 256)
    paths = [by_name(name) for name in args.paths] if args.paths else list(PATHS)

    cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    workdir = servers.scratch_folder("stress")
    config = Path(os.environ.get("DESPLIEGUE_CONFIG", servers.ROOT / "configuration.yaml"))
    slo = load_settings(config).slo
    env = servers.server_env(
        args.home or str(workdir / "bentoml"),
        DESPLIEGUE_CONFIG=str(config),
        PYTHONPATH=str(servers.ROOT),
    )
    prepare_store(env["BENTOML_HOME"], env)
    steps = len([u for u in (2**i for i in range(16)) if u <= max_users])
    endpoints = []
    server = servers.start_bentoml(env, cpus[0], workdir / "serve.log")
    try:
        servers.wait_for(server, ["/readyz", "/models"])
        for path in paths:
            result_file = workdir / f"{path.name}.json"
            locust_env = {
                **env,
                "BENCH_PATH": path.name,
                "BENCH_STEP_SECONDS": str(step_seconds),
                "BENCH_MAX_USERS": str(max_users),
                "BENCH_SLO_P99_MS": str(slo.p99_ms),
                "BENCH_SLO_MAX_ERROR_RATE": str(slo.max_error_rate),
                "BENCH_RESULT": str(result_file),
            }
            argv = [
                str(servers.BIN / "locust"),
                "-f", str(LOCUSTFILE),
                "--headless", "--only-summary", "--loglevel", "WARNING",
                "--host", server.url,
                "--stop-timeout", "5",
            ]  # fmt: skip
            print(f"stress {path.route}: steps of {step_seconds:g} s up to {max_users} users")
            ran = subprocess.run(
                argv,
                cwd=servers.ROOT,
                env=locust_env,
                preexec_fn=servers.pinned(cpus[1]),
                capture_output=True,
                text=True,
                timeout=steps * step_seconds + 120,
                check=False,
            )
            if not result_file.exists():
                raise RuntimeError(f"locust wrote no result:\n{ran.stderr[-3000:]}")
            endpoint = json.loads(result_file.read_text(encoding="utf-8"))
            failed = endpoint["failed_first"]
            print(
                f"  max sustainable {endpoint['max_sustainable_rps'] or 0:.1f} req/s; "
                + (f"failed first at {failed['users']} users: {failed['broken']}" if failed
                   else "SLO held at every step")
            )  # fmt: skip
            endpoints.append(endpoint)
    finally:
        servers.stop(server)

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": servers.machine(*cpus),
        "slo": slo.model_dump(),
        "step_seconds": step_seconds,
        "max_users": max_users,
        "endpoints": endpoints,
    }
    markdown = render_stress_markdown(result)
    json_path, md_path = write_results(args.out_dir, "stress-", args.quick, result, markdown)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
