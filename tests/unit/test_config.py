"""configuration.yaml: the shipped file is valid; a bad value is refused naming the key."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import yaml

from despliegue.config import DEFAULT_CONFIG_PATH, ConfigurationError, load_settings


def write_config(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    mutate(raw)
    path = tmp_path / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_configuration_is_valid() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH)
    assert settings.family("heatflow").tag == "heatflow_svr:latest"
    assert settings.limits.heatflow.max_values >= 1
    assert settings.family("flowers").tag == "flower_classifier:latest"
    assert settings.family("face_validator").threshold is not None
    assert settings.limits.images.max_images >= 1


def test_tls_settings_offer_only_aead_suites_on_tls12() -> None:
    """BentoML's default, "TLSv1", offers only CBC suites with SHA-1 MACs on TLS 1.2."""
    ciphers = load_settings(DEFAULT_CONFIG_PATH).service_options("Despliegue")["ssl"]["ciphers"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(ciphers)
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12), tls12


def test_service_options_merge_defaults_with_the_service_entry() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH)
    options = settings.service_options("HeatFlowRegressor")
    assert options["runner_connection"]["max_requests"] == 1_000_000
    assert options["workers"] == 1
    assert "workers" not in settings.service_options("UnknownService")


@pytest.mark.parametrize(
    ("mutate", "named_key"),
    [
        (
            lambda raw: raw["families"]["heatflow"]["batching"].update(max_batch_size=0),
            "families.heatflow.batching.max_batch_size",
        ),
        (lambda raw: raw["limits"].update(max_body_bytes="big"), "limits.max_body_bytes"),
        (lambda raw: raw["families"].pop("falsetrue"), "falsetrue"),
        (
            lambda raw: raw["families"]["heatflow"].update(model="bad name!"),
            "families.heatflow.model",
        ),
        (lambda raw: raw.update(unexpected=1), "unexpected"),
        (lambda raw: raw["slo"].update(p99_ms=0), "slo.p99_ms"),
        (lambda raw: raw["slo"].update(max_error_rate=2), "slo.max_error_rate"),
        (lambda raw: raw["families"]["flowers"].pop("threshold"), "need a threshold"),
        (lambda raw: raw["families"]["face_validator"].update(threshold=1.5), "threshold"),
        (lambda raw: raw["limits"]["images"].update(max_pixels=10), "limits.images.max_pixels"),
        (
            lambda raw: raw["limits"]["images"].update(max_pixels=100_000_000),
            "limits.images.max_pixels",  # above Pillow's own guard, which is left alone
        ),
        (
            lambda raw: raw["limits"]["images"].update(max_pixels_in_flight=1_000_000),
            "max_request_pixels <= max_pixels_in_flight",
        ),
        (lambda raw: raw["families"]["face_detector"].update(max_side=10), "max_side"),
        (lambda raw: raw["tensorflow"].pop("intra_op_threads"), "tensorflow.intra_op_threads"),
        (
            lambda raw: raw["security"].update(trusted_proxies=["10.0.0.1/8"]),
            "security.trusted_proxies",
        ),
        (
            lambda raw: raw["limits"].update(request_head_timeout_s=0),
            "limits.request_head_timeout_s",
        ),
        (
            lambda raw: raw["limits"].update(in_flight_share={"images": 1.5}),
            "limits.in_flight_share",
        ),
        (
            lambda raw: raw["limits"].update(in_flight_share={"image": 0.5}),
            "unknown admission classes \\['image'\\]; the families' classes are: light, images",
        ),
    ],
)
def test_bad_value_is_refused_with_the_key_named(tmp_path: Path, mutate, named_key: str) -> None:
    path = write_config(tmp_path, mutate)
    with pytest.raises(ConfigurationError, match=named_key.replace(".", r"\.")):
        load_settings(path)


def test_broken_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "configuration.yaml"
    path.write_text("families: [unclosed")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_settings(path)


def test_slo_section_is_optional(tmp_path: Path) -> None:
    path = write_config(tmp_path, lambda raw: raw.pop("slo"))
    slo = load_settings(path).slo
    assert slo.p99_ms > 0
    assert 0 <= slo.max_error_rate <= 1


def test_batching_can_be_switched_off_per_family(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, lambda raw: raw["families"]["heatflow"]["batching"].update(enabled=False)
    )
    settings = load_settings(path)
    assert settings.family("heatflow").batching.api_options() == {"batchable": False}
    on = settings.family("falsetrue").batching
    assert on.api_options() == {"batchable": True, **on.model_dump()}
    assert "enabled" not in on.model_dump()


def test_image_requests_hold_a_share_of_the_worker_places() -> None:
    limits = load_settings(DEFAULT_CONFIG_PATH).limits
    assert limits.places_by_class() == {"images": limits.max_requests_in_flight // 4}
    small = limits.model_copy(update={"max_requests_in_flight": 2})
    assert small.places_by_class() == {"images": 1}, "at least one place"


@pytest.mark.parametrize(
    ("placement", "named"),
    [({"heat": "runner"}, "unknown family 'heat'"), ({"heatflow": "gpu"}, "placement.heatflow")],
)
def test_a_bad_placement_is_refused_naming_it(tmp_path: Path, placement, named: str) -> None:
    path = write_config(tmp_path, lambda raw: raw.update(placement=placement))
    with pytest.raises(ConfigurationError, match=re.escape(named)):
        load_settings(path)


def test_placement_defaults_to_the_registry_and_configuration_overrides_it(tmp_path) -> None:
    from despliegue import registry

    families = {family.name: family for family in registry.FAMILIES}
    shipped = load_settings(DEFAULT_CONFIG_PATH)
    assert [name for name, f in families.items() if shipped.in_api(f)] == ["heatflow", "falsetrue"]
    apart = load_settings(
        write_config(tmp_path, lambda raw: raw.update(placement={"heatflow": "runner"}))
    )
    assert not apart.in_api(families["heatflow"]) and apart.in_api(families["falsetrue"])
