"""Drift through the real `bentoml serve`: each family is fed in-distribution inputs, then
shifted ones; the first window says "no drift" and the second flags the shifted feature. The
server restarts between the two halves of a window, and the window survives. /metrics carries
the per-model series with the counts of the calls made; the HTML report opens in Chromium.

One server of its own (small windows, its own home), started once for the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from despliegue.config import config_path
from despliegue.families import antibiotics, falsetrue, flowers
from tests.browser.conftest import browser, output_folder  # noqa: F401  (the fixture)
from tests.conftest import (
    ADMIN_TOKEN,
    ROOT,
    LiveServer,
    private_home,
    serve,
    stop_server,
)
from tests.image_samples import b64, encode

pytestmark = pytest.mark.integration

WINDOW = 100
RNG = np.random.default_rng(2026)


class DriftServer:
    """A server with windows of 100 items that can be restarted on the same home."""

    def __init__(self, home: str, config: Path, folder: Path) -> None:
        self.home, self.config, self.folder, self.starts = home, config, folder, 0
        self.live = self.start()

    def start(self) -> LiveServer:
        self.starts += 1
        log_path = self.folder / f"serve-{self.starts}.log"
        # A server of its own: drift windows and thresholds are configuration read at start,
        # and a test restarts it (the window must survive).
        return serve(self.home, log_path, {"DESPLIEGUE_CONFIG": str(self.config)})

    def restart(self) -> None:
        stop_server(self.live.process)
        self.live = self.start()


@pytest.fixture(scope="module")
def server(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriftServer]:
    folder = tmp_path_factory.mktemp("drift")
    config = folder / "configuration.yaml"
    text = config_path().read_text(encoding="utf-8")
    for key, value in (("window_items", WINDOW), ("min_items", 50), ("persist_interval_s", 600)):
        text = text.replace(f"  {key}: ", f"  {key}: {value} #", 1)
    config.write_text(text, encoding="utf-8")
    drift_server = DriftServer(private_home(reference_store, folder), config, folder)
    try:
        yield drift_server
    finally:
        stop_server(drift_server.live.process)


def drift_of(server: DriftServer, family: str) -> dict:
    answer = server.live.get(f"/drift/{family}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def model_of(report: dict, prefix: str) -> dict:
    return next(m for m in report["models"] if m["model_tag"].startswith(prefix))


def flagged(model: dict) -> set[str]:
    return {
        f["feature"] for f in model["features"] + model["predictions"] if f["verdict"] == "drift"
    }


def post(server: DriftServer, path: str, body: dict) -> dict:
    answer = server.live.post(path, body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_heatflow_thicker_sediments_drift_and_the_window_survives_a_restart(
    server: DriftServer,
) -> None:
    before = drift_of(server, "heatflow")
    assert before["verdict"] == "insufficient data"
    assert model_of(before, "heatflow_svr")["baseline"]["source"] == "reference"

    post(server, "/heatflow", {"sediment_thickness_m": RNG.uniform(0, 12_000, WINDOW).tolist()})
    first = model_of(drift_of(server, "heatflow"), "heatflow_svr")
    assert first["window"] == {**first["window"], "state": "closed", "number": 1, "items": WINDOW}
    assert first["verdict"] == "no drift", first

    thicker = RNG.uniform(9_000, 15_000, WINDOW).tolist()
    post(server, "/heatflow", {"sediment_thickness_m": thicker[: WINDOW // 2]})
    server.restart()
    kept = model_of(drift_of(server, "heatflow"), "heatflow_svr")
    assert kept["open_window_items"] == WINDOW // 2 and len(kept["history"]) == 1

    post(server, "/heatflow", {"sediment_thickness_m": thicker[WINDOW // 2 :]})
    second = model_of(drift_of(server, "heatflow"), "heatflow_svr")
    assert second["window"]["number"] == 2 and second["verdict"] == "drift"
    assert "sediment_thickness_m" in flagged(second)
    assert [w["verdict"] for w in second["history"]] == ["no drift", "drift"]

    served = server.live.get("/models").json()["monitoring"]["heatflow"]
    assert served["drift"]["verdict"] == "drift"
    assert list(served["baseline"].values()) == [{"source": "reference", "count": 900}]


def held_out_headlines() -> list[str]:
    from sklearn.model_selection import train_test_split

    texts, labels = falsetrue.load_corpus()
    _, held_out = train_test_split(
        texts, test_size=0.25, random_state=falsetrue.SEED, stratify=labels
    )
    return held_out


def german_sports_news(count: int) -> list[str]:
    teams = ["Der FC Augsburg", "Die Mannschaft aus Bremen", "Der Tabellenführer", "Unser Verein"]
    verbs = ["gewann gestern überraschend", "verlor am Samstag deutlich", "spielte unentschieden"]
    rest = [
        "gegen den Aufsteiger",
        "im Pokalfinale",
        "vor ausverkauftem Stadion",
        "nach Verlängerung",
    ]
    return [
        f"{teams[i % 4]} {verbs[i % 3]} {rest[(i // 3) % 4]} mit {i % 5}:{(i * 7) % 4} Toren"
        for i in range(count)
    ]


def test_falsetrue_another_language_and_topic_drifts(server: DriftServer) -> None:
    headlines = held_out_headlines()
    same = [headlines[i % len(headlines)] for i in range(WINDOW)]
    post(server, "/falsetrue", {"texts": same})
    first = model_of(drift_of(server, "falsetrue"), "falsetrue_classifier")
    assert first["verdict"] == "no drift", first

    post(server, "/falsetrue", {"texts": german_sports_news(WINDOW)})
    second = model_of(drift_of(server, "falsetrue"), "falsetrue_classifier")
    assert second["verdict"] == "drift" and "oov_rate" in flagged(second)


def flower_images(count: int, darken: float = 1.0) -> list[str]:
    rng = np.random.default_rng(7)
    drawn = [flowers.draw_flower(rng, i % len(flowers.CLASSES)) for i in range(count)]
    return [b64(encode((image * darken).astype(np.uint8))) for image in drawn]


def test_flowers_darker_images_drift(server: DriftServer) -> None:
    for darken in (1.0, 0.35):
        images = flower_images(WINDOW, darken)
        for start in range(0, WINDOW, 16):
            post(server, "/flowers", {"images": images[start : start + 16]})
        model = model_of(drift_of(server, "flowers"), "flower_classifier")
        if darken == 1.0:
            assert model["verdict"] == "no drift", model
    assert model["verdict"] == "drift" and "brightness" in flagged(model)


def test_antibiotics_shifted_markers_drift(server: DriftServer) -> None:
    markers, _ = antibiotics.generate_isolates("AMK")
    rows = markers[RNG.choice(len(markers), WINDOW, replace=False)]
    post(server, "/antibiotics", {"features": rows.tolist(), "codes": ["AMK"]})
    first = drift_of(server, "antibiotics")
    assert model_of(first, "modelo_amk_nm")["verdict"] == "no drift"
    assert first["verdict"] == "no drift"  # the other antibiotics: insufficient data

    shifted = rows.copy()
    shifted[:, :3] = 1.0
    post(server, "/antibiotics", {"features": shifted.tolist(), "codes": ["AMK"]})
    model = model_of(drift_of(server, "antibiotics"), "modelo_amk_nm")
    assert model["verdict"] == "drift"
    assert {"marker_00", "marker_01", "marker_02"} <= flagged(model)


def test_unknown_family_is_404(server: DriftServer) -> None:
    answer = server.live.get("/drift/weather")
    assert answer.status_code == 404 and answer.json()["detail"][0]["loc"] == ["family"]


def metric_samples(server: DriftServer) -> list:
    answer = server.live.get("/metrics")
    assert answer.status_code == 200
    return [
        sample
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name.startswith("despliegue_")
    ]


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_metrics_hold_per_model_series_with_the_counts_of_known_calls(
    server: DriftServer,
) -> None:
    before = metric_samples(server)
    texts = held_out_headlines()[:30]
    answered = post(server, "/falsetrue", {"texts": texts})
    refused = server.live.post("/heatflow", {"sediment_thickness_m": [-5.0]})
    assert refused.status_code in {400, 422}
    tag = answered["model"]
    # Answered calls are counted a fraction of a second after their answers left
    # (despliegue/drift/capture.py): the series are read until the texts are counted.
    score = {"model_tag": tag, "output": "probability_real"}
    deadline = time.monotonic() + 10
    while True:
        after = metric_samples(server)
        counted = value(after, "despliegue_prediction_score_count", **score)
        if counted - value(before, "despliegue_prediction_score_count", **score) >= len(texts):
            break
        assert time.monotonic() < deadline, "the answered texts were never counted"
        time.sleep(0.1)

    for label, count in Counter(str(v) for v in answered["is_falsetrue"]).items():
        name, labels = "despliegue_predictions_total", {"model_tag": tag, "predicted": label}
        assert value(after, name, **labels) - value(before, name, **labels) == count
    assert counted - value(before, "despliegue_prediction_score_count", **score) == len(texts)
    rejections = value(after, "despliegue_input_rejections_total", route="/heatflow")
    assert rejections - value(before, "despliegue_input_rejections_total", route="/heatflow") == 1
    # The heat flow windows closed since the restart: a drifted thickness.
    drifted = {"family": "heatflow", "feature": "inputs.sediment_thickness_m"}
    assert value(after, "despliegue_drift_detected", **drifted) == 1
    assert value(after, "despliegue_drift_psi", **drifted) > 0.2


def test_html_report_opens_in_chromium(server: DriftServer, browser: object) -> None:  # noqa: F811
    page = output_folder("drift") / "heatflow-report.html"
    result = subprocess.run(
        [sys.executable, "-m", "despliegue.drift", "report", "heatflow", "-o", str(page),
         "--url", server.live.url],
        cwd=ROOT,
        env={**os.environ, "DESPLIEGUE_TOKEN": ADMIN_TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(drift)" in result.stdout
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())  # type: ignore[attr-defined]
    heading = browser.find_element(By.TAG_NAME, "h1").text  # type: ignore[attr-defined]
    assert heading == "Drift report: heatflow — drift"
    charts = browser.find_elements(By.CSS_SELECTOR, "figure svg")  # type: ignore[attr-defined]
    assert len(charts) == 3 and all(c.size["width"] > 300 for c in charts)
    bars = browser.find_elements(By.CSS_SELECTOR, "figure svg rect")  # type: ignore[attr-defined]
    assert len(bars) >= 20
    shot = output_folder("drift") / "heatflow-report.png"
    assert browser.save_screenshot(str(shot))  # type: ignore[attr-defined]
