"""`make profile PATH=heatflow`: where the service spends its time under load, per process.

Starts the service (pinned like `make bench`), drives one path with the load generator, and
samples every BentoML worker process (the API and each runner) with py-spy at the same time.
Writes, per process, the folded stacks (for flamegraph.pl or speedscope) and a summary of
the functions holding the most samples, so a missed goal is explained by a profile. py-spy
samples from outside the process (ptrace) and runs on the client CPU, not the server's.

    python -m benchmarks.profile --path heatflow --concurrency 32 --seconds 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from benchmarks import servers
from benchmarks.paths import by_name
from benchmarks.run import RESULTS, prepare_store
from benchmarks.stats import fold_profile, render_profile


def worker_processes(server: servers.Server) -> dict[str, int]:
    """BentoML worker PIDs by service name (`--service-name X` on their command line)."""
    workers = {}
    for child in psutil.Process(server.process.pid).children(recursive=True):
        argv = child.cmdline()
        if "--service-name" in argv:
            name = argv[argv.index("--service-name") + 1]
            worker = argv[argv.index("--worker-id") + 1] if "--worker-id" in argv else "1"
            workers[f"{name}-{worker}"] = child.pid
    return workers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="heatflow")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--home", help="BENTOML_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    path = by_name(args.path)
    py_spy = shutil.which("py-spy", path=f"{servers.BIN}{os.pathsep}{os.environ['PATH']}")
    if py_spy is None:
        parser.error("py-spy not found: install requirements-dev.txt")

    cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    workdir = servers.scratch_folder("profile")
    env = servers.server_env(args.home or str(workdir / "bentoml"))
    prepare_store(env["BENTOML_HOME"], env)
    server = servers.start_bentoml(env, cpus[0], workdir / "serve.log")
    day = dt.datetime.now(dt.UTC).date().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        servers.wait_for(server, ["/readyz", "/models"])
        warmup = 2.0
        load = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen", "--url", server.url,
             "--path", path.name, "--concurrency", str(args.concurrency),
             "--seconds", str(args.seconds + 2), "--warmup", str(warmup)],
            cwd=servers.ROOT, env=env, stdout=subprocess.PIPE, text=True,
            preexec_fn=servers.pinned(cpus[1]),
        )  # fmt: skip
        time.sleep(warmup + 0.5)
        recorders = {
            name: (
                workdir / f"{name}.folded",
                subprocess.Popen(
                    [py_spy, "record", "--pid", str(pid), "--format", "raw",
                     "--rate", str(args.rate), "--duration", str(int(args.seconds)),
                     "--nonblocking", "--full-filenames",
                     "--output", str(workdir / f"{name}.folded")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    preexec_fn=servers.pinned(cpus[1]),
                ),
            )
            for name, pid in worker_processes(server).items()
        }  # fmt: skip
        sections = []
        for name, (folded, recorder) in recorders.items():
            _, errors = recorder.communicate(timeout=args.seconds + 60)
            if recorder.returncode != 0 or not folded.exists():
                raise RuntimeError(f"py-spy failed on {name}: {errors[-2000:]}")
            target = args.out_dir / f"profile-{path.name}-{day}-{name}.folded"
            target.write_text(folded.read_text(encoding="utf-8"), encoding="utf-8")
            profile = fold_profile(folded.read_text(encoding="utf-8").splitlines())
            sections.append(render_profile(name, profile))
        out, _ = load.communicate(timeout=args.seconds + 120)
    finally:
        servers.stop(server)
    report = args.out_dir / f"profile-{path.name}-{day}.md"
    measured = json.loads(out)
    header = (
        f"# Profile of {path.route} at {args.concurrency} clients, {day}\n\n"
        f"py-spy at {args.rate} Hz for {args.seconds:g} s on every worker process, non-idle "
        f"samples only (the process was running or runnable). Meanwhile the service answered "
        f"{measured['throughput_rps']:.1f} req/s, p99 {measured['p99_ms']:.1f} ms, "
        f"{measured['errors']} errors."
    )
    report.write_text(header + "\n\n" + "\n\n".join(sections) + "\n", encoding="utf-8")
    print(f"wrote {report} and the folded stacks next to it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
