"""deploy/k8s/: every manifest is valid against its schema and wired consistently.

Kubernetes schemas come bundled with the kubernetes-validate package (strict: unknown fields
fail); the ServiceMonitor is checked against the Prometheus Operator's own API models, as
packaged by cloudcoil-models-prometheus-operator (generated from the operator's CRDs). Nothing is
downloaded at test time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest
import yaml

from despliegue.config import load_settings
from despliegue.http.probes import ANSWER_WITHIN_S
from despliegue.serving import REMOTE_ENV, SERVICE_ENV, remote_services
from tests.conftest import ROOT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (requirements-dev.txt)"
)

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
LAYOUTS = ("single", "split")
# Start-up allowance the test suite gives a server to load every model (tests/conftest.py).
COLD_START_ALLOWANCE_S = 240


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


class UnknownFields(ValueError):
    """A custom resource holds fields its CRD does not define (the API server would drop them
    silently; `kubectl apply --validate=strict` refuses them)."""


def operator_models() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> pydantic model, for the Prometheus Operator resources we ship."""
    from cloudcoil.models.prometheus_operator import v1

    return {("monitoring.coreos.com/v1", "ServiceMonitor"): v1.ServiceMonitor}


def validate(doc: dict[str, Any]) -> None:
    model = operator_models().get((doc["apiVersion"], doc["kind"]))
    if model is None:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return
    # Types are checked by the model; unknown fields are dropped by it, so a document that does
    # not survive the round trip unchanged holds a field the operator would not read.
    parsed = model.model_validate(doc).model_dump(by_alias=True, exclude_none=True, mode="json")
    if parsed != doc:
        raise UnknownFields(f"{doc['kind']} {doc['metadata']['name']}: {unknown(doc, parsed)}")


def unknown(doc: Any, parsed: Any, path: str = "") -> list[str]:
    """Paths present in `doc` but not in the model's reading of it."""
    if isinstance(doc, dict) and isinstance(parsed, dict):
        return [
            found
            for key, value in doc.items()
            for found in (
                unknown(value, parsed[key], f"{path}.{key}") if key in parsed else [f"{path}.{key}"]
            )
        ]
    if isinstance(doc, list) and isinstance(parsed, list):
        return [
            found
            for index, (a, b) in enumerate(zip(doc, parsed, strict=False))
            for found in unknown(a, b, f"{path}[{index}]")
        ]
    return []


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_valid_against_its_schema(path: Path) -> None:
    for doc in documents(path):
        validate(doc)


def test_the_operator_models_refuse_what_the_operator_would_not_read() -> None:
    (monitor,) = documents(K8S / "monitoring" / "servicemonitor.yaml")
    misspelled = copy.deepcopy(monitor)
    endpoint = misspelled["spec"]["endpoints"][0]
    endpoint["bearerTokenSecrett"] = endpoint.pop("authorization")
    with pytest.raises(UnknownFields, match="bearerTokenSecrett"):
        validate(misspelled)
    wrong_type = copy.deepcopy(monitor)
    wrong_type["spec"]["endpoints"][0]["authorization"]["credentials"] = "token"
    with pytest.raises(pydantic.ValidationError):
        validate(wrong_type)


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
        # Annotation-driven scraping sends no token: /metrics would answer 401 (see monitoring/).
        assert "prometheus.io/scrape" not in pod["metadata"].get("annotations", {}), where
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


@pytest.mark.parametrize("name", LAYOUTS)
def test_probes_fit_what_the_server_promises(name: str) -> None:
    """/readyz and /livez answer within ANSWER_WITHIN_S (despliegue/http/probes.py); every probe
    waits longer than that, and start-up is allowed as long as the tests allow it."""
    for deployment, container in containers(layout(name)):
        where = f"{name}/{deployment['metadata']['name']}"
        startup, readiness = container["startupProbe"], container["readinessProbe"]
        liveness = container["livenessProbe"]
        assert startup["httpGet"]["path"] == readiness["httpGet"]["path"] == "/readyz", where
        assert liveness["httpGet"]["path"] == "/livez", where
        for probe in (startup, readiness, liveness):
            # Kubernetes' default timeoutSeconds is 1: exactly the promise, no margin.
            assert probe.get("timeoutSeconds", 1) > ANSWER_WITHIN_S, where
            assert probe.get("periodSeconds", 10) >= probe.get("timeoutSeconds", 1), where
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= COLD_START_ALLOWANCE_S, where


@pytest.mark.parametrize("name", LAYOUTS)
def test_telemetry_is_off_in_every_container(name: str) -> None:
    for deployment, container in containers(layout(name)):
        assert env_of(container).get("BENTOML_DO_NOT_TRACK") == "true", deployment["metadata"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_prometheus_scrapes_every_service_with_what_metrics_requires(name: str) -> None:
    objects = layout(name)
    (monitor,) = layout("monitoring")
    (endpoint,) = monitor["spec"]["endpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [o for o in objects if o["kind"] == "Service"]
    for service in services:
        assert selector.items() <= service["metadata"]["labels"].items(), service["metadata"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"

    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    auth = yaml.safe_load(configmap["data"]["configuration.yaml"])["security"]["auth"]
    if auth["enabled"] and auth["metrics_need_token"]:
        assert endpoint["authorization"]["type"] == "Bearer"
        secret_ref = endpoint["authorization"]["credentials"]
        secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
        assert secret_ref["key"] in secrets[secret_ref["name"]]["stringData"], secret_ref


def test_network_policy_lets_prometheus_reach_the_runner_tiers() -> None:
    objects = layout("split")
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert any(
        peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "prometheus"}
        and "namespaceSelector" in peer
        for peer in sources
    ), sources
