"""Run `bentoml build` with this home's lifecycle state in the build context.

    python -m despliegue.lifecycle.pack bentoml build [OPTIONS]

The state lives beside the model store ($BENTOML_HOME/served.json), outside the project folder
that `bentoml build` packs; every build path (`make build`, scripts/container-image.sh, the
build tests) runs through this command, so the Bento serves what was promoted in the home its
models come from. The copy is removed afterwards, also when the build fails; the command's
exit status is the build's.

The build also records every runner as a service of the Bento (`BUILDING_ENV`), including the
ones placed inside the API worker: one image then starts any family as a tier of its own when
its configuration places it `runner` (BentoML refuses to start a service its Bento does not
record).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from despliegue.lifecycle.state import LifecycleRefused, pack_for_build

BUILDING_ENV = "DESPLIEGUE_BUILDING_BENTO"


def building_a_bento() -> bool:
    """Whether this process is the `bentoml build` that this command runs."""
    return os.environ.get(BUILDING_ENV) == "1"


def main(command: list[str]) -> int:
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    # A stopped build (SIGTERM, as from CI) still removes the copies, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with pack_for_build() as packed:
            names = ", ".join(path.name for path in packed) or "nothing recorded"
            print(f"lifecycle state packed for the build: {names}", file=sys.stderr)
            building = {**os.environ, BUILDING_ENV: "1"}
            return subprocess.run(command, check=False, env=building).returncode
    except LifecycleRefused as exc:
        print(f"build refused: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
