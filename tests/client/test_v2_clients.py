"""The Open Inference Protocol (KServe V2) proven with clients this project did not write.

`tritonclient[http]` and the `kserve` SDK's REST client run from a venv that holds only them
(`make v2-client-venv`), in their own process, against the session's live server with a token;
their answers must equal the seed endpoints' answers for the same items (numbers, text, images
as encoded files and as UINT8 pixels, an antibiotic vector), in JSON and in the binary-data
extension. The refusals, the token scopes, the audit line and the document are checked over
plain HTTP on the same server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.client.venvs import client_venv_python, run_in_client_venv
from tests.conftest import HEATFLOW_TOKEN, ROOT, LiveServer
from tests.image_samples import encode, photo

pytestmark = pytest.mark.integration

THICKNESSES = [250.0, 1500.0, 6000.0]
TEXTS = ["El banco central publicó su informe anual.", "¡Los médicos odian este truco!"]
FEATURES = [[1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0], [0] * 16]


@pytest.fixture(scope="module")
def v2_python() -> Path:
    return client_venv_python("DESPLIEGUE_V2_CLIENT_VENV", ".venv-v2client", "v2-client-venv")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outside the repository: a JPEG photo and the same photo's pixels (a .npy file)."""
    folder = tmp_path_factory.mktemp("v2client")
    pixels = photo("astronaut")
    (folder / "photo.jpg").write_bytes(encode(pixels, "JPEG", quality=90))
    np.save(folder / "photo.npy", pixels)
    return folder


def run_client(python: Path, server: LiveServer, workdir: Path, code: str) -> dict:
    """Run `code` in the client venv; it prints one JSON object, returned here."""
    stdout = run_in_client_venv(python, server, workdir, code)
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_v2_client_venv_holds_only_the_clients(v2_python: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util as u; print([m for m in ('despliegue', 'bentoml', 'tensorflow', "
        "'sklearn', 'tritonclient', 'kserve') if u.find_spec(m)])"
    )
    result = subprocess.run(
        [str(v2_python), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['tritonclient', 'kserve']"


TRITON = """
import json, os
import numpy as np
import tritonclient.http as http

url = os.environ["DESPLIEGUE_URL"].removeprefix("http://")
auth = {"Authorization": "Bearer " + os.environ["TOKEN"]}
client = http.InferenceServerClient(url, network_timeout=120.0)
out = {
    "server_ready": client.is_server_ready(headers=auth),
    "live": client.is_server_live(headers=auth),
    "models_ready": [client.is_model_ready(m, headers=auth) for m in (
        "heatflow_svr", "falsetrue_classifier", "flower_classifier", "face_detector",
        "face_validator", "modelo_AMK_NM")],
    "metadata": client.get_model_metadata("modelo_AMK_NM", headers=auth),
}

def infer(model, inputs, binary_in, binary_out, outputs, **kwargs):
    tensors = []
    for name, datatype, array in inputs:
        tensor = http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary_in)
        tensors.append(tensor)
    wanted = [http.InferRequestedOutput(o, binary_data=binary_out) for o in outputs]
    # A copy each call: tritonclient writes Inference-Header-Content-Length into the dict.
    result = client.infer(model, tensors, outputs=wanted, headers=dict(auth), **kwargs)
    answer = {o: result.as_numpy(o).tolist() for o in outputs}
    answer["version"] = result.get_response()["model_version"]
    return json.loads(json.dumps(answer, default=lambda b: b.decode()))

thickness = np.array(%(thicknesses)s, dtype=np.float64)
for binary in (False, True):
    out[f"heatflow_{binary}"] = infer(
        "heatflow_svr", [("sediment_thickness_m", "FP64", thickness)], binary, binary,
        ["heat_flow_mw_m2"])
texts = np.array([t.encode() for t in %(texts)s], dtype=np.object_)
out["falsetrue"] = infer("falsetrue_classifier", [("texts", "BYTES", texts)], True, True,
                         ["is_falsetrue", "probability_real"])
jpeg = np.array([open("photo.jpg", "rb").read()], dtype=np.object_)
pixels = np.load("photo.npy")[np.newaxis]
flower_outputs = ["class_id", "name", "confidence"]
out["flowers_jpeg"] = infer("flower_classifier", [("images", "BYTES", jpeg)], True, True,
                            flower_outputs, parameters={"top_k": 2})
out["flowers_pixels"] = infer("flower_classifier", [("images", "UINT8", pixels)], True, False,
                              flower_outputs)
out["faces"] = infer("face_detector", [("input_data", "BYTES", jpeg)], True, True,
                     ["face_count", "faces"])
out["super"] = infer("face_validator", [("input_data", "UINT8", pixels)], True, True,
                     ["result", "score", "faces"])
features = np.array(%(features)s, dtype=np.float32)
out["amk"] = infer("modelo_AMK_NM", [("features", "FP32", features)], False, False,
                   ["predicted_class", "probabilities"])
try:
    wrong = http.InferInput("texts", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"1500"], dtype=np.object_))
    client.infer("heatflow_svr", [wrong], headers=dict(auth))
except Exception as exc:
    out["refused"] = str(exc)
print(json.dumps(out))
"""


def test_tritonclient_answers_equal_the_seed_endpoints(
    v2_python: Path, live_server: LiveServer, workdir: Path
) -> None:
    code = TRITON % {"thicknesses": THICKNESSES, "texts": TEXTS, "features": FEATURES}
    got = run_client(v2_python, live_server, workdir, code)
    assert got["server_ready"] and got["live"] and all(got["models_ready"])
    metadata = got["metadata"]
    assert metadata["name"] == "modelo_amk_nm"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]

    heatflow = live_server.post("/heatflow", {"sediment_thickness_m": THICKNESSES}).json()
    for binary in (False, True):
        assert got[f"heatflow_{binary}"]["heat_flow_mw_m2"] == heatflow["heat_flow_mw_m2"]
        assert got[f"heatflow_{binary}"]["version"] == heatflow["model"].partition(":")[2]

    falsetrue = live_server.post("/falsetrue", {"texts": TEXTS}).json()
    assert got["falsetrue"]["is_falsetrue"] == falsetrue["is_falsetrue"]
    assert got["falsetrue"]["probability_real"] == falsetrue["probability_real"]

    image = base64.b64encode((workdir / "photo.jpg").read_bytes()).decode()
    png = base64.b64encode(encode(np.load(workdir / "photo.npy"))).decode()
    for key, sent, top_k in (("flowers_jpeg", image, 2), ("flowers_pixels", png, 3)):
        seed = live_server.post("/flowers", {"images": [sent], "top_k": top_k}).json()
        (answer,) = seed["predictions"]
        assert got[key]["name"] == [answer["name"]]
        assert got[key]["confidence"] == [answer["confidence"]]
        assert got[key]["class_id"] == [-1 if answer["class_id"] is None else answer["class_id"]]

    faces = live_server.post("/face", {"input_data": [image]}).json()["images"][0]["faces"]
    assert got["faces"]["face_count"] == [len(faces)] and len(faces) >= 1
    assert json.loads(got["faces"]["faces"][0]) == faces

    verdict = live_server.post("/super", {"input_data": [png]}).json()["images"][0]
    assert got["super"]["result"] == [verdict["result"]]
    assert got["super"]["score"] == [verdict["score"]]
    assert json.loads(got["super"]["faces"][0]) == verdict["faces"]

    seed = live_server.post("/antibiotics", {"features": FEATURES, "codes": ["AMK"]}).json()
    (result,) = seed["results"]
    assert got["amk"]["predicted_class"] == [p["predicted_class"] for p in result["predictions"]]
    classes = list(result["predictions"][0]["probabilities"])
    assert got["amk"]["probabilities"] == [
        [p["probabilities"][c] for c in classes] for p in result["predictions"]
    ]

    assert "[400] texts: not an input of this model" in got["refused"]


KSERVE = """
import asyncio, json, os
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main():
    auth = {"Authorization": "Bearer " + os.environ["TOKEN"]}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    url = os.environ["DESPLIEGUE_URL"]
    out = {"ready": await client.is_server_ready(url, headers=auth),
           "model_ready": await client.is_model_ready(url, "heatflow_svr", headers=auth)}
    for binary in (False, True):
        tensor = InferInput("sediment_thickness_m", [3], "FP64")
        tensor.set_data_from_numpy(np.array(%(thicknesses)s), binary_data=binary)
        request = InferRequest("heatflow_svr", [tensor])
        response = await client.infer(url, request, model_name="heatflow_svr", headers=auth)
        out[f"heatflow_{binary}"] = response.outputs[0].as_numpy().tolist()
    texts = InferInput("texts", [2], "BYTES")
    texts.set_data_from_numpy(np.array(%(texts)s, dtype=np.object_), binary_data=False)
    response = await client.infer(url, InferRequest("falsetrue_classifier", [texts]),
                                  model_name="falsetrue_classifier", headers=auth)
    out["falsetrue"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
    await client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_kserve_rest_client_answers_equal_the_seed_endpoints(
    v2_python: Path, live_server: LiveServer, workdir: Path
) -> None:
    got = run_client(
        v2_python, live_server, workdir, KSERVE % {"thicknesses": THICKNESSES, "texts": TEXTS}
    )
    assert got["ready"] is True and got["model_ready"] is True
    heatflow = live_server.post("/heatflow", {"sediment_thickness_m": THICKNESSES}).json()
    assert got["heatflow_False"] == got["heatflow_True"] == heatflow["heat_flow_mw_m2"]
    falsetrue = live_server.post("/falsetrue", {"texts": TEXTS}).json()
    assert got["falsetrue"]["is_falsetrue"] == falsetrue["is_falsetrue"]
    assert got["falsetrue"]["probability_real"] == falsetrue["probability_real"]


README_TRITON_CLIENT = 'client = http.InferenceServerClient("localhost:3000")'
# The README's client with the server's address and its token (a tritonclient plugin adds the
# header to every request).
SERVER_TRITON_CLIENT = """from tritonclient._plugin import InferenceServerClientPlugin

class Bearer(InferenceServerClientPlugin):
    def __call__(self, request):
        request.headers["authorization"] = "Bearer " + os.environ["TOKEN"]

client = http.InferenceServerClient(os.environ["DESPLIEGUE_URL"].removeprefix("http://"))
client.register_plugin(Bearer())"""


def test_the_readme_tritonclient_example_runs_as_written(
    v2_python: Path, live_server: LiveServer, workdir: Path
) -> None:
    (block,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
        if "tritonclient" in block
    ]
    assert README_TRITON_CLIENT in block
    code = block.replace(README_TRITON_CLIENT, SERVER_TRITON_CLIENT)
    code = "import json\n" + code + "\nprint(json.dumps('done'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({"DESPLIEGUE_URL": live_server.url, "TOKEN": live_server.token})
    result = subprocess.run(
        [str(v2_python), "-c", "import os\n" + code],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{code}\n--- stderr\n{result.stderr}"
    heatflow = live_server.post("/heatflow", {"sediment_thickness_m": THICKNESSES}).json()
    printed = result.stdout.splitlines()
    assert "'name': 'heatflow_svr'" in printed[0]
    assert printed[1] == str(np.array(heatflow["heat_flow_mw_m2"]))
    assert printed[2] in {"[0]", "[1]"}
    assert printed[3].startswith("[b'") and printed[-1] == '"done"'


def heatflow_tensor(**changes: object) -> dict:
    return {
        "inputs": [
            {
                "name": "sediment_thickness_m",
                "datatype": "FP64",
                "shape": [2],
                "data": [250.0, 1500.0],
                **changes,
            }
        ]
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            "heatflow_svr",
            heatflow_tensor(datatype="BYTES", data=["a", "b"]),
            400,
            "sediment_thickness_m: datatype BYTES not taken",
        ),
        (
            "heatflow_svr",
            heatflow_tensor(shape=[3]),
            400,
            "sediment_thickness_m: shape [3] holds 3 elements, `data` has 2",
        ),
        (
            "heatflow_svr",
            heatflow_tensor(data=[250.0, -5.0]),
            400,
            "sediment_thickness_m.1: Input should be greater than or equal to 0",
        ),
        (
            "falsetrue_classifier",
            heatflow_tensor(),
            400,
            "sediment_thickness_m: not an input of this model",
        ),
        ("nope_model", heatflow_tensor(), 404, "model: 'nope_model' is not a served model"),
        (
            "heatflow_svr/versions/not_loaded",
            heatflow_tensor(),
            404,
            "version: version 'not_loaded' of 'heatflow_svr' is not loaded",
        ),
        (
            "flower_classifier",
            {
                "inputs": [
                    {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["bm9wZQ=="]}
                ]
            },
            422,
            "images.0:",
        ),
    ],
)
def test_refusals_name_the_tensor_and_the_rule(
    live_server: LiveServer, path: str, body: dict, status: int, error: str
) -> None:
    answer = live_server.post(f"/v2/models/{path}/infer", body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].startswith(error), answer.text


def test_a_family_token_may_call_only_its_models(live_server: LiveServer) -> None:
    auth = {"authorization": f"Bearer {HEATFLOW_TOKEN}"}
    infer = live_server.url + "/v2/models/{}/infer"
    allowed = httpx.post(
        infer.format("heatflow_svr"), json=heatflow_tensor(), headers=auth, timeout=60
    )
    assert allowed.status_code == 200, allowed.text
    for model in ("flower_classifier", "modelo_AMK_NM", "falsetrue_classifier"):
        refused = httpx.post(infer.format(model), json=heatflow_tensor(), headers=auth, timeout=60)
        assert refused.status_code == 403, refused.text
        assert "may not call" in refused.json()["error"]
        metadata = httpx.get(f"{live_server.url}/v2/models/{model}", headers=auth, timeout=60)
        assert metadata.status_code == 403
    assert httpx.post(infer.format("heatflow_svr"), json=heatflow_tensor()).status_code == 401
    assert httpx.get(f"{live_server.url}/v2/health/ready", timeout=60).status_code == 200


def test_an_infer_call_is_audited_with_the_model_tag(live_server: LiveServer) -> None:
    request_id = "v2-audit-check-1"
    answer = live_server.post(
        "/v2/models/heatflow_svr/infer", heatflow_tensor(), headers={"x-request-id": request_id}
    )
    assert answer.status_code == 200
    (line,) = live_server.log_lines_with(request_id)
    audited = json.loads(line[line.index("{") :])
    tag = f"heatflow_svr:{answer.json()['model_version']}"
    assert audited["endpoint"] == "/v2/models/heatflow_svr/infer"
    assert audited["models"] == [tag] and audited["token_id"] == "test-admin"


def test_the_document_lists_the_v2_routes_under_their_tag(live_server: LiveServer) -> None:
    paths = live_server.get("/docs.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert infer["tags"] == ["Open Inference Protocol (V2)"]
    assert "/v2/models/{name}/versions/{version}/infer" in paths
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}/ready"} <= set(paths)
