"""Changing models on a live server: import, promote under load, roll back, canary, shadow, a new
antibiotic, restart. One server on a model store and lifecycle state file of its own (it is
changed, so it cannot be the session's shared server)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.dummy import DummyRegressor

from tests.conftest import (
    LiveServer,
    private_home,
    run_save_models,
    serve,
    stop_server,
)

pytestmark = pytest.mark.integration

HEATFLOW_BODY = {"sediment_thickness_m": [1500.0]}
# A lifecycle change must reach the runner within its poll interval (1 s) plus a model load.
FOLLOWS_WITHIN_S = 60


@dataclass
class Deployment:
    """The server, its store and state file, and the save_models.py that changes them."""

    home: str
    folder: Path
    server: LiveServer

    @property
    def env(self) -> dict[str, str]:
        return {
            "DESPLIEGUE_LIFECYCLE_STATE": str(self.folder / "served.json"),
            "DESPLIEGUE_OPERATOR": "lifecycle-test",
        }

    def save_models(self, *args: str) -> str:
        result = run_save_models(*args, home=self.home, extra_env=self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self) -> None:
        log_path = self.folder / f"serve-{time.monotonic_ns()}.log"
        # A server of its own: promotions, canaries and shadows change what it serves, and a
        # test restarts it.
        self.server = serve(self.home, log_path, self.env)

    def family(self, name: str) -> dict:
        models = self.server.get("/models")
        assert models.status_code == 200, models.text
        return models.json()["families"][name]

    def wait_loaded(self, name: str, **lanes: object) -> dict:
        """Wait until the runner reports it has loaded these lanes for a family."""
        deadline = time.monotonic() + FOLLOWS_WITHIN_S
        while time.monotonic() < deadline:
            loaded = self.family(name)["loaded"]
            if all(loaded.get(lane) == tag for lane, tag in lanes.items()):
                return loaded
            time.sleep(0.5)
        pytest.fail(f"{name} did not load {lanes} in {FOLLOWS_WITHIN_S} s: {self.family(name)}")

    def heatflow_tag(self) -> str:
        answer = self.server.post("/heatflow", HEATFLOW_BODY)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_tag"] == answer.json()["model"], "deprecated, same value"
        return answer.json()["model"]

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        text = self.server.get("/metrics").text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture(scope="module")
def deployment(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("lifecycle")
    home = private_home(reference_store, folder)
    placeholder = LiveServer(url="", log_path=folder / "none.log", process=None)  # type: ignore[arg-type]
    deployment = Deployment(home=home, folder=folder, server=placeholder)
    deployment.start()
    try:
        yield deployment
    finally:
        stop_server(deployment.server.process)


def import_heatflow(deployment: Deployment, value: float) -> str:
    """Import a heat flow model answering `value` for every thickness; returns its tag."""
    artifact = deployment.folder / f"constant_{value:g}.joblib"
    joblib.dump(DummyRegressor(strategy="constant", constant=value).fit([[0.0]], [value]), artifact)
    printed = deployment.save_models("import", "heatflow_svr", str(artifact))
    return re.search(r"(heatflow_svr:\w+) is a candidate", " ".join(printed.split()))[1]


@dataclass
class Outcome:
    status: int | None
    tag: str | None
    seconds: float


@dataclass
class BoundedLoad:
    """`clients` closed-loop clients calling /heatflow until stopped, on a thread of its own."""

    server: LiveServer
    clients: int = 4
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                answer = await http.post("/heatflow", json=HEATFLOW_BODY)
                tag = answer.json().get("model") if answer.status_code == 200 else None
                outcome = Outcome(answer.status_code, tag, time.perf_counter() - started)
            except httpx.HTTPError:
                outcome = Outcome(None, None, time.perf_counter() - started)
            self.outcomes.append(outcome)

    async def _run(self) -> None:
        async with self.server.async_client() as http:
            await asyncio.gather(*(self._client(http) for _ in range(self.clients)))

    def __enter__(self) -> BoundedLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, done: Callable[[list[Outcome]], bool]) -> None:
        deadline = time.monotonic() + FOLLOWS_WITHIN_S
        while not done(self.outcomes):
            assert time.monotonic() < deadline, f"not done in {FOLLOWS_WITHIN_S} s"
            time.sleep(0.2)


def swap_under_load(deployment: Deployment, change: tuple[str, ...], before: str, after: str):
    """Run `change` while a bounded load runs; every request answered, the tag switches."""
    process = deployment.server.process
    with BoundedLoad(deployment.server) as load:
        load.wait_for(lambda outcomes: len(outcomes) >= 20)
        deployment.save_models(*change)
        load.wait_for(lambda outcomes: any(o.tag == after for o in outcomes))
        settled = len(load.outcomes)
        load.wait_for(lambda outcomes: len(outcomes) >= settled + 40)
    failed = [o for o in load.outcomes if o.status != 200]
    assert not failed, f"{len(failed)} of {len(load.outcomes)} requests failed: {failed[:5]}"
    tags = [o.tag for o in load.outcomes]
    assert tags[0] == before and set(tags) == {before, after}
    assert set(tags[settled + 4 :]) == {after}, "the old model answered after the swap"
    assert process.poll() is None and deployment.server.process is process, "restarted"
    latencies = sorted(o.seconds for o in load.outcomes)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"swap {before} -> {after}: {len(latencies)} requests, 0 failed, p99 {p99 * 1000:.0f} ms")


def test_import_is_a_candidate_promote_and_rollback_swap_without_restart(
    deployment: Deployment,
) -> None:
    v1 = deployment.family("heatflow")["served"]
    v2 = import_heatflow(deployment, 123.0)
    heatflow = deployment.family("heatflow")
    assert heatflow["served"] == v1 and v2 in heatflow["candidates"]
    assert heatflow["source"] == "state file"  # pinned by the import
    assert deployment.heatflow_tag() == v1

    swap_under_load(deployment, ("promote", "heatflow", v2, "--why", "better fit"), v1, v2)
    heatflow = deployment.family("heatflow")
    assert (heatflow["served"], heatflow["previous"]) == (v2, v1)
    answer = deployment.server.post("/heatflow", HEATFLOW_BODY).json()
    assert answer["heat_flow_mw_m2"] == [123.0] and answer["model"] == v2

    swap_under_load(deployment, ("rollback", "heatflow", "--why", "complaints"), v2, v1)
    assert deployment.family("heatflow")["served"] == v1
    history = deployment.save_models("history", "heatflow")
    assert "better fit" in history and "complaints" in history

    requests = deployment.metrics()
    for tag in (v1, v2):
        key = (
            "despliegue_model_requests_total",
            frozenset({("family", "heatflow"), ("model_tag", tag)}),
        )
        assert requests.get(key, 0) > 0, f"no requests counted for {tag}"


def test_canary_answers_its_share_of_requests(deployment: Deployment) -> None:
    v1 = deployment.family("heatflow")["served"]
    v2 = import_heatflow(deployment, 77.0)
    deployment.save_models("canary", "heatflow", v2, "20", "--why", "try 20 %")
    deployment.wait_loaded("heatflow", served=v1, canary=v2)
    assert deployment.family("heatflow")["canary"] == {"tag": v2, "percent": 20.0}
    tags = []
    # One client: each request is a runner batch of its own, the unit the canary routes.
    with httpx.Client(base_url=deployment.server.url, headers=deployment.server.headers) as http:
        for _ in range(1000):
            answer = http.post("/heatflow", json=HEATFLOW_BODY, timeout=60)
            assert answer.status_code == 200, answer.text
            tags.append(answer.json()["model"])
    assert set(tags) == {v1, v2}
    share = tags.count(v2) / len(tags)
    assert 0.15 <= share <= 0.25, f"canary answered {share:.1%} of 1000 requests"
    batches = deployment.metrics()
    canary_key = (
        "despliegue_model_batches_total",
        frozenset(
            {("family", "heatflow"), ("model_tag", v2), ("lane", "canary"), ("outcome", "ok")}
        ),
    )
    assert batches.get(canary_key) == tags.count(v2)

    deployment.save_models("canary", "heatflow", v2, "0", "--why", "enough")
    deployment.wait_loaded("heatflow", served=v1, canary=None)
    assert deployment.heatflow_tag() == v1


def test_shadow_gets_a_copy_and_is_compared(deployment: Deployment) -> None:
    v1 = deployment.family("heatflow")["served"]
    shadow = import_heatflow(deployment, 60.0)
    deployment.save_models("shadow", "heatflow", shadow, "--why", "compare offline")
    deployment.wait_loaded("heatflow", served=v1, shadow=shadow)
    for thickness in range(100, 6100, 200):
        answer = deployment.server.post("/heatflow", {"sediment_thickness_m": [float(thickness)]})
        assert answer.json()["model"] == v1, "a shadow never answers"

    deadline = time.monotonic() + FOLLOWS_WITHIN_S
    while (compare := deployment.server.get("/models/heatflow/compare").json())["compared"] < 30:
        assert time.monotonic() < deadline, compare
        time.sleep(0.5)
    assert (compare["served"], compare["shadow"]) == (v1, shadow)
    assert compare["agreement_rate"] == round(compare["agreed"] / compare["compared"], 4)
    # The reference model falls from ~95 to ~45 mW/m² over these thicknesses; the shadow says
    # 60 everywhere: some answers agree (within 5 %), most do not.
    assert 0 < compare["agreement_rate"] < 1
    assert compare["mean_absolute_difference"] > 1.0
    labels = frozenset({("family", "heatflow"), ("served_tag", v1), ("shadow_tag", shadow)})
    metrics = deployment.metrics()
    assert metrics[("despliegue_shadow_compared_total", labels)] >= compare["compared"]
    assert deployment.server.get("/models/nosuchfamily/compare").status_code == 404

    deployment.save_models("shadow", "heatflow", "--why", "done")
    deployment.wait_loaded("heatflow", served=v1, shadow=None)


def version_of(tag: str) -> str:
    return tag.partition(":")[2]


def v2_heatflow(deployment: Deployment, version: str | None) -> tuple[float, str]:
    """One V2 infer on heatflow_svr, pinned to `version` or not: (answer, tag that answered)."""
    path = "/v2/models/heatflow_svr" + (f"/versions/{version}" if version else "") + "/infer"
    tensor = {"name": "sediment_thickness_m", "datatype": "FP64", "shape": [1], "data": [1500]}
    answer = deployment.server.post(path, {"inputs": [tensor]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["outputs"][0]["data"][0], f"{body['model_name']}:{body['model_version']}"


def test_v2_infer_pinned_to_a_version_answers_with_that_model_whatever_its_lane(
    deployment: Deployment,
) -> None:
    """The Open Inference Protocol's /versions/{version}/infer: the served model, the canary or
    the shadow answers alone (no canary share, no shadow copy); unpinned calls are routed as
    every request is."""
    served = deployment.family("heatflow")["served"]
    served_answer = deployment.server.post("/heatflow", HEATFLOW_BODY).json()["heat_flow_mw_m2"]
    canary, shadow = import_heatflow(deployment, 41.0), import_heatflow(deployment, 42.0)
    deployment.save_models("canary", "heatflow", canary, "50", "--why", "pinning")
    deployment.save_models("shadow", "heatflow", shadow, "--why", "pinning")
    deployment.wait_loaded("heatflow", served=served, canary=canary, shadow=shadow)
    compared = deployment.server.get("/models/heatflow/compare").json()["compared"]

    for tag, expected in ((canary, 41.0), (shadow, 42.0), (served, served_answer[0])):
        answers = [v2_heatflow(deployment, version_of(tag)) for _ in range(20)]
        assert {answered for _, answered in answers} == {tag}, answers
        assert all(value == pytest.approx(expected) for value, _ in answers), answers
    # Pinned calls gave the shadow no copies; unpinned ones are split with the canary (50 %).
    assert deployment.server.get("/models/heatflow/compare").json()["compared"] == compared
    unpinned = {v2_heatflow(deployment, None)[1] for _ in range(40)}
    assert unpinned == {served, canary}

    gone = import_heatflow(deployment, 43.0)  # stored, never loaded
    refused = deployment.server.post(
        f"/v2/models/heatflow_svr/versions/{version_of(gone)}/infer",
        {
            "inputs": [
                {"name": "sediment_thickness_m", "datatype": "FP64", "shape": [1], "data": [1]}
            ]
        },
    )
    assert refused.status_code == 404 and "is not loaded" in refused.json()["error"]
    deployment.save_models("canary", "heatflow", canary, "0", "--why", "done")
    deployment.save_models("shadow", "heatflow", "--why", "done")
    deployment.wait_loaded("heatflow", served=served, canary=None, shadow=None)


def test_v2_infer_pinned_to_a_canary_crosses_the_runner_hop(deployment: Deployment) -> None:
    """The antibiotic panel runs in a runner process of its own: a pinned call reaches the
    runner's unbatched twin method and is answered by the canary, every time, at a 1 % share."""
    served = deployment.family("antibiotics.AMK")["served"]
    amk = Path(deployment.home, "models", "modelo_amk_nm", version_of(served), "model.keras")
    artifact = deployment.folder / "amk-copy.keras"
    shutil.copyfile(amk, artifact)
    printed = deployment.save_models("import", "modelo_AMK_NM", str(artifact))
    canary = re.search(r"(modelo_amk_nm:\w+) is a candidate", " ".join(printed.split()))[1]
    deployment.save_models("canary", "antibiotics.AMK", canary, "1", "--why", "pinning")
    deployment.wait_loaded("antibiotics.AMK", served=served, canary=canary)
    panel = deployment.server.get("/antibiotics").json()["antibiotics"]
    length = next(entry["input_length"] for entry in panel if entry["code"] == "AMK")
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, length], "data": [0.5] * length}
    # The served model's answer: unpinned, 1 % of calls go to the canary, so ask until it is.
    for _ in range(50):
        seed = deployment.server.post(
            "/antibiotics", {"features": [[0.5] * length], "codes": ["AMK"]}
        ).json()["results"][0]
        if seed["model"] == served:
            break
    assert seed["model"] == served, seed
    served_answer = seed["predictions"][0]["probabilities"]
    # The canary called directly: its stored ONNX form (checked against its Keras file at
    # import). An imported copy of the reference file takes the features unscaled (the
    # reference's standardisation is on its card), so its answers differ from the served one's.
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(Path(deployment.home, "models", "modelo_amk_nm", version_of(canary), "model.onnx"))
    )
    features = np.full((1, length), 0.5, dtype=np.float32)
    (direct,) = session.run(None, {session.get_inputs()[0].name: features})[0].tolist()
    assert direct != pytest.approx(list(served_answer.values()), abs=1e-3)
    for _ in range(10):
        answer = deployment.server.post(
            f"/v2/models/modelo_AMK_NM/versions/{version_of(canary)}/infer", {"inputs": [tensor]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version_of(canary)
        assert answer.json()["outputs"][1]["data"] == pytest.approx(direct, abs=2e-4)
    deployment.save_models("canary", "antibiotics.AMK", canary, "0", "--why", "done")
    deployment.wait_loaded("antibiotics.AMK", served=served, canary=None)


def test_a_new_antibiotic_joins_the_running_panel(deployment: Deployment) -> None:
    """modelo_ZZZ_NM (a copy of the reference AMK model's file) is imported: the panel serves it
    without a restart."""
    amk = next(Path(deployment.home, "models", "modelo_amk_nm").glob("*/model.keras"))
    artifact = deployment.folder / "zzz.keras"
    shutil.copyfile(amk, artifact)
    assert "ZZZ" not in deployment.server.get("/antibiotics").text
    printed = deployment.save_models("import", "modelo_ZZZ_NM", str(artifact), "--classes", "S,I,R")
    served = re.search(
        r"antibiotics.ZZZ had no model: it now serves (\S+)\.", " ".join(printed.split())
    )
    assert served, printed
    deployment.wait_loaded("antibiotics.ZZZ", served=served[1])
    panel = deployment.server.get("/antibiotics").json()["antibiotics"]
    zzz = next(entry for entry in panel if entry["code"] == "ZZZ")
    features = [[0.0] * zzz["input_length"]]
    answer = deployment.server.post("/antibiotics", {"features": features, "codes": ["ZZZ"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["model"] == zzz["model"]


def test_a_restart_serves_the_promoted_tag(deployment: Deployment) -> None:
    promoted = import_heatflow(deployment, 88.0)
    deployment.save_models("promote", "heatflow", promoted, "--why", "before restart")
    deployment.wait_loaded("heatflow", served=promoted)
    stop_server(deployment.server.process)
    deployment.start()
    assert deployment.heatflow_tag() == promoted
    heatflow = deployment.family("heatflow")
    assert heatflow["source"] == "state file" and heatflow["served"] == promoted
    state = json.loads((deployment.folder / "served.json").read_text())
    assert state["families"]["heatflow"]["served"] == promoted
