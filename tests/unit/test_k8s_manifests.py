"""deploy/k8s/: every manifest is valid against the Kubernetes schemas and wired consistently.

Schemas come bundled with the kubernetes-validate package (strict: unknown fields fail), so
nothing is downloaded at test time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from despliegue.config import load_settings
from despliegue.serving import REMOTE_ENV, SERVICE_ENV, remote_services
from tests.conftest import ROOT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (requirements-dev.txt)"
)

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
LAYOUTS = ("single", "split")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def layout(name: str) -> list[dict[str, Any]]:
    """Every object `kubectl apply -k deploy/k8s/<name>` would create."""
    folder = K8S / name
    objects = []
    for resource in documents(folder / "kustomization.yaml")[0]["resources"]:
        target = (folder / resource).resolve()
        if target.is_dir():
            objects += layout(str(target.relative_to(K8S)))
        else:
            objects += documents(target)
    return objects


def containers(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (obj, container)
        for obj in objects
        if obj["kind"] == "Deployment"
        for container in obj["spec"]["template"]["spec"]["containers"]
    ]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_manifest_belongs_to_a_kustomization() -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in documents(kustomization)[0]["resources"]:
            target = (kustomization.parent / resource).resolve()
            assert target.exists(), f"{kustomization}: {resource} does not exist"
            listed.add(target)
    assert set(manifest_files()) <= listed


def test_configmap_is_generated_from_configuration_yaml(tmp_path: Path) -> None:
    from scripts import k8s_configmap

    assert (K8S / "common" / "configmap.yaml").read_text() == k8s_configmap.render(), (
        "configuration.yaml changed: run `make k8s-config`"
    )
    (configmap,) = documents(K8S / "common" / "configmap.yaml")
    mounted = tmp_path / "configuration.yaml"
    mounted.write_text(configmap["data"]["configuration.yaml"], encoding="utf-8")
    load_settings(mounted)


@pytest.mark.parametrize("name", LAYOUTS)
def test_pods_are_probed_resourced_scraped_and_configured(name: str) -> None:
    objects = layout(name)
    for deployment, container in containers(objects):
        where = f"{name}/{deployment['metadata']['name']}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), where
        assert "memory" in container["resources"]["limits"], where
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true", where
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, where
        env = env_of(container)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        config_dir = str(Path(env["DESPLIEGUE_CONFIG"]).parent)
        (config_volume,) = [n for n, path in mounts.items() if path == config_dir]
        assert volumes[config_volume]["configMap"]["name"] == "despliegue-config", where
        tokens_dir = str(Path(env["DESPLIEGUE_TOKENS_FILE"]).parent)
        (tokens_volume,) = [n for n, path in mounts.items() if path == tokens_dir]
        assert volumes[tokens_volume]["secret"]["secretName"] == "despliegue-tokens", where
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in kinds, obj["metadata"]["name"]
        if obj["kind"] == "Service":
            selected = [
                d
                for d in objects
                if d["kind"] == "Deployment"
                and obj["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert selected, f"Service {obj['metadata']['name']} selects no pods"
    assert ("Secret", "despliegue-tokens") in kinds and ("ConfigMap", "despliegue-config") in kinds


def test_split_layout_reaches_each_remote_runner_through_its_own_service() -> None:
    objects = layout("split")
    services = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Service"}
    served_alone = {
        env_of(container)[SERVICE_ENV]: deployment
        for deployment, container in containers(objects)
        if env_of(container).get(SERVICE_ENV)
    }
    (api,) = [c for _, c in containers(objects) if REMOTE_ENV in env_of(c)]
    remote = remote_services(env_of(api)[REMOTE_ENV])
    assert remote and remote.keys() == served_alone.keys()
    for service_class, url in remote.items():
        parts = urlsplit(url)
        service = services[parts.hostname]
        pod_labels = served_alone[service_class]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), service_class
        assert parts.port in {p["port"] for p in service["spec"]["ports"]}, url
    assert json.loads(env_of(api)[REMOTE_ENV]) == remote
