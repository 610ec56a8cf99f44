"""Write deploy/k8s/common/configmap.yaml from configuration.yaml (`make k8s-config`).

The pods mount it at /etc/despliegue/configuration.yaml and read it through DESPLIEGUE_CONFIG,
so an operator changes limits, batching or model versions with `kubectl edit configmap` and a
rollout restart, without a new image. Regenerate after editing configuration.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "configuration.yaml"
TARGET = ROOT / "deploy" / "k8s" / "common" / "configmap.yaml"
HEADER = """\
# Generated from configuration.yaml by `make k8s-config`: edit that file, then regenerate.
apiVersion: v1
kind: ConfigMap
metadata:
  name: despliegue-config
  labels:
    app.kubernetes.io/name: despliegue
data:
  configuration.yaml: |
"""


def render(source: Path = SOURCE) -> str:
    lines = source.read_text(encoding="utf-8").splitlines()
    return HEADER + "".join(f"    {line}\n" if line.strip() else "\n" for line in lines)


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
