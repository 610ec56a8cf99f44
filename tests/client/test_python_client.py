"""The Python client as a user has it: `bentoml.SyncHTTPClient` from a venv holding only bentoml.

The client venv (`make client-venv`: `pip install bentoml==<pinned>`, nothing of this project)
runs each snippet in its own process, from a folder outside the repository, against the live
server with a token: the README's Python examples exactly as written (only the address and
the token are filled in), one-string `input_data`, images as Base64 and as files, the catalog
methods, and a client mistake.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.client.venvs import client_venv_python, run_in_client_venv
from tests.conftest import ROOT, LiveServer
from tests.image_samples import encode, photo

pytestmark = pytest.mark.integration

README_CLIENT = 'bentoml.SyncHTTPClient("http://localhost:3000")'
SERVER_CLIENT = 'bentoml.SyncHTTPClient(os.environ["DESPLIEGUE_URL"], token=os.environ["TOKEN"])'


@pytest.fixture(scope="module")
def client_python() -> Path:
    return client_venv_python("DESPLIEGUE_CLIENT_VENV", ".venv-client", "client-venv")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the snippets run: outside the repository, with the README's `photo.jpg`."""
    folder = tmp_path_factory.mktemp("client")
    (folder / "photo.jpg").write_bytes(encode(photo("astronaut"), "JPEG", quality=90))
    return folder


def run(client_python: Path, server: LiveServer, workdir: Path, code: str) -> str:
    return run_in_client_venv(client_python, server, workdir, "import os\n" + code)


def readme_python_blocks() -> list[str]:
    """The README's examples of this client (tritonclient's: tests/client/test_v2_clients.py)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [block for block in blocks if "import bentoml" in block]


def test_the_client_venv_holds_only_the_client(client_python: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util as u; "
        "print([m for m in ('despliegue', 'tensorflow', 'sklearn') if u.find_spec(m)])"
    )
    result = subprocess.run(
        [str(client_python), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("block", readme_python_blocks(), ids=lambda b: b.split("\n")[-2][:40])
def test_readme_python_example_runs_as_written(
    client_python: Path, live_server: LiveServer, workdir: Path, block: str
) -> None:
    assert README_CLIENT in block, "README examples make their client with the default address"
    output = run(client_python, live_server, workdir, block.replace(README_CLIENT, SERVER_CLIENT))
    assert output.strip(), "the example printed nothing"


def test_readme_has_python_examples_for_every_family() -> None:
    code = "\n".join(readme_python_blocks())
    for method in ("heatflow_predict", "falsetrue_classify", "flowers_classify", "face_detect"):
        assert f"client.{method}(" in code, method
    assert "client.antibiotics_predict(" in code and "client.served_models(" in code


def test_one_base64_string_is_one_image(
    client_python: Path, live_server: LiveServer, workdir: Path
) -> None:
    output = run(
        client_python,
        live_server,
        workdir,
        f"""
import base64, bentoml
image = base64.b64encode(open("photo.jpg", "rb").read()).decode()
with {SERVER_CLIENT} as client:
    answer = client.face_detect(input_data=image)
    assert len(answer["images"]) == 1, answer
    assert answer["images"][0]["faces"], answer
    both = client.face_validate(input_data=[image, image])
    assert len(both["images"]) == 2 and both["images"][0]["result"] is True, both
print("ok")
""",
    )
    assert output.strip() == "ok"


def test_one_value_where_a_list_is_taken(
    client_python: Path, live_server: LiveServer, workdir: Path
) -> None:
    output = run(
        client_python,
        live_server,
        workdir,
        f"""
import bentoml
with {SERVER_CLIENT} as client:
    one = client.heatflow_predict(sediment_thickness_m=1000)
    assert one["sediment_thickness_m"] == [1000.0] and len(one["heat_flow_mw_m2"]) == 1, one
    many = client.heatflow_predict(sediment_thickness_m=[1000, 2000])
    assert many["heat_flow_mw_m2"][0] == one["heat_flow_mw_m2"][0], (one, many)
    text = client.falsetrue_classify(texts="El banco central publicó su informe anual.")
    assert len(text["is_falsetrue"]) == 1, text
    vector = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    panel = client.antibiotics_predict(features=vector)
    assert all(len(result["predictions"]) == 1 for result in panel["results"]), panel
print("ok")
""",
    )
    assert output.strip() == "ok"


def test_images_as_files(client_python: Path, live_server: LiveServer, workdir: Path) -> None:
    run(
        client_python,
        live_server,
        workdir,
        f"""
from pathlib import Path
import bentoml
with {SERVER_CLIENT} as client:
    faces = client.face_upload(input_data=Path("photo.jpg"))
    assert len(faces["images"]) == 1 and faces["images"][0]["faces"], faces
    flowers = client.flowers_upload(images=[Path("photo.jpg"), Path("photo.jpg")], top_k=2)
    assert len(flowers["predictions"]) == 2, flowers
    assert len(flowers["predictions"][0]["top_k"]) == 2, flowers
""",
    )


def test_catalog_methods(client_python: Path, live_server: LiveServer, workdir: Path) -> None:
    run(
        client_python,
        live_server,
        workdir,
        f"""
import bentoml
with {SERVER_CLIENT} as client:
    families = {{card["family"] for card in client.served_models()["models"]}}
    assert {{"heatflow", "falsetrue", "flowers", "antibiotics"}} <= families, families
    panel = client.antibiotic_panel()
    assert panel["antibiotics"] and panel["antibiotics"][0]["code"], panel
""",
    )


def test_a_client_mistake_raises_naming_the_field(
    client_python: Path, live_server: LiveServer, workdir: Path
) -> None:
    output = run(
        client_python,
        live_server,
        workdir,
        textwrap.dedent(
            f"""
            import bentoml
            with {SERVER_CLIENT} as client:
                try:
                    client.heatflow_predict(sediment_thickness_m=[1000.0, -5.0])
                except bentoml.exceptions.BentoMLException as mistake:
                    print(mistake)
                else:
                    raise SystemExit("no exception")
            """
        ),
    )
    assert "sediment_thickness_m.1" in output and "greater than or equal to 0" in output, output
    assert "IODescriptor" not in output
