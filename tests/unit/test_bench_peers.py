"""The benchmark's peer plumbing that needs no peer running: request bodies in the V2
protocol, the MLServer model repository, reading and comparing peers' answers, the goals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.paths import PATHS, by_name, v2_body
from benchmarks.peers import launch
from benchmarks.stats import goals, ratios_for, render_markdown
from tests.unit.test_bench_stats import point, result_with


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_v2_body_holds_the_same_items_as_the_service_body(path) -> None:
    body = path.make_body(np.random.default_rng(3))
    tensor = v2_body(path, body)["inputs"][0]
    items = next(iter(v for v in body.values() if isinstance(v, list)))
    assert tensor["shape"][0] == len(items)
    if tensor["datatype"] == "BYTES":
        assert tensor["data"] == items
    else:
        assert np.allclose(np.asarray(tensor["data"]).reshape(tensor["shape"]), items)


def test_falsetrue_asks_mlserver_for_labels_and_probabilities() -> None:
    body = v2_body(by_name("falsetrue"), {"texts": ["a headline"]})
    assert body["outputs"] == [{"name": "predict"}, {"name": "predict_proba"}]


def test_mlserver_repository_puts_sklearn_on_its_runtime_and_batches_every_model(tmp_path):
    manifest = tmp_path / "manifest.json"
    entries = {
        name: {"file": f"/store/{name}/model", "max_batch_size": 8, "metadata": {}}
        for name in ("heatflow", "flowers")
    }
    manifest.write_text(json.dumps({"models": entries, "tensorflow": {}}))
    folder = launch.write_mlserver_repository(
        tmp_path / "repo", manifest, (8080, 8081, 8082), ["heatflow", "flowers"]
    )
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["http_port"] == 8080 and settings["parallel_workers"] == 0
    heatflow = json.loads((folder / "heatflow" / "model-settings.json").read_text())
    flowers = json.loads((folder / "flowers" / "model-settings.json").read_text())
    assert heatflow["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert heatflow["parameters"]["uri"] == "/store/heatflow/model"
    assert flowers["implementation"].endswith("mlserver_runtime.PathRuntime")
    assert flowers["parameters"]["extra"] == {"path": "flowers", "manifest": str(manifest)}
    assert heatflow["max_batch_size"] == 8 and heatflow["max_batch_time"] > 0


def test_answers_are_read_from_each_peers_response() -> None:
    assert launch.answers_of("service", "heatflow", {"answers": [1.5]}) == [1.5]
    falsetrue = {
        "outputs": [
            {"name": "predict", "shape": [2], "data": [1, 0]},
            {"name": "predict_proba", "shape": [2, 2], "data": [0.2, 0.8, 0.9, 0.1]},
        ]
    }
    assert launch.answers_of("mlserver", "falsetrue", falsetrue) == [[1, 0.8], [0, 0.1]]
    faces = {"outputs": [{"name": "faces", "shape": [1], "data": ["[[1, 2, 3]]"]}]}
    assert launch.answers_of("mlserver", "face", faces) == [[[1, 2, 3]]]
    flowers = {"outputs": [{"name": "answers", "shape": [1, 2], "data": [0.25, 0.75]}]}
    assert launch.answers_of("mlserver", "flowers", flowers) == [[0.25, 0.75]]
    scores = {"outputs": [{"name": "answers", "shape": [2, 1], "data": [0.9, 0.0]}]}
    assert launch.answers_of("mlserver", "super", scores) == [0.9, 0.0]  # as the service's


def test_answers_must_match_in_shape_and_within_tolerance() -> None:
    assert launch.same_answers([[1.0, 2.0005]], [[1, 2.0]])
    assert not launch.same_answers([[1.0, 2.1]], [[1, 2.0]])
    assert not launch.same_answers([[1.0]], [[1.0, 2.0]])
    assert not launch.same_answers([], [[1.0]])


def test_service_is_compared_with_the_best_peer_on_each_measure() -> None:
    result = result_with()
    designs = result["paths"]["heatflow"]["designs"]
    designs["ray"] = [point(32, 100.0, 40.0)]  # slower, but the lowest p99
    designs["mlserver"] = [point(32, 500.0, 80.0)]  # the highest throughput
    ratios = ratios_for(result["paths"]["heatflow"], 32)
    assert ratios["service_vs_best_peer"] == pytest.approx(400 / 500)
    assert ratios["p99_service_vs_best_peer"] == pytest.approx(50 / 40)
    table = render_markdown(result)
    assert "Ray Serve (@serve.batch)" in table and "service / best peer" in table


def test_goals_say_met_or_missed_with_the_bound_of_the_same_run() -> None:
    result = result_with()
    result["paths"]["heatflow"]["designs"]["mlserver"] = [point(32, 500.0, 80.0)]
    by_measure = {goal["measure"]: goal for goal in goals(result)}
    throughput = by_measure["heatflow: service / best peer, req/s, 32 clients"]
    assert throughput["value"] == pytest.approx(0.8) and throughput["met"] is False
    assert throughput["bound"] == pytest.approx(4000 / 2 / 500)  # ceiling in requests/s
    p99 = by_measure["heatflow: service / best peer, p99, 32 clients"]
    assert p99["met"] is True
    assert by_measure["cold start to /readyz, all families (s)"]["met"] is True
    assert "| heatflow: service / plain FastAPI, req/s, 32 client(s) | >= 0.8 | 2 | met |" in (
        render_markdown(result)
    )


def test_peers_order_landmarks_as_the_runner_does() -> None:
    from benchmarks.peers.models import LANDMARKS as PEER_LANDMARKS
    from despliegue.contracts import LANDMARKS

    assert PEER_LANDMARKS == LANDMARKS
