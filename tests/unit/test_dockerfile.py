"""The Dockerfile `bentoml containerize` generates from bentofile.yaml and our template
(deploy/containers/Dockerfile.template), rendered by BentoML's own generator."""

from __future__ import annotations

from pathlib import Path

from bentoml._internal.bento.build_config import BentoBuildConfig
from bentoml._internal.container.generate import generate_containerfile

ROOT = Path(__file__).resolve().parents[2]


def rendered_dockerfile() -> list[str]:
    with (ROOT / "bentofile.yaml").open(encoding="utf-8") as bentofile:
        config = BentoBuildConfig.from_yaml(bentofile).with_defaults()
    text = generate_containerfile(config.docker, str(ROOT), conda=config.conda, bento_fs=ROOT)
    return [line for line in text.splitlines() if line.startswith(("FROM ", "RUN ", "COPY "))]


def test_the_virtualenv_is_trimmed_before_the_bento_is_copied() -> None:
    """The trim's layer then follows the locked install's in the build cache: a build that
    changed only code or models rewrites no part of TensorFlow (~1.5 GB of store a build)."""
    steps = rendered_dockerfile()
    install = next(i for i, step in enumerate(steps) if "install.sh" in step)
    trims = [i for i, step in enumerate(steps) if step.startswith("RUN site=/app/.venv")]
    copy_bento = steps.index("COPY --chown=bentoml:bentoml . ./")
    assert trims == [install + 1], steps
    assert copy_bento == install + 2, steps


def test_the_runtime_stage_holds_only_the_virtualenv_and_the_bento() -> None:
    steps = rendered_dockerfile()
    runtime = next(i for i, step in enumerate(steps) if step.endswith(" AS runtime"))
    copies = [step for step in steps[runtime:] if step.startswith("COPY ")]
    assert [copy.split()[-1] for copy in copies] == ["/app/.venv", "/home/bentoml/bento"], copies
    assert all("--from=base-container" in copy for copy in copies), copies
