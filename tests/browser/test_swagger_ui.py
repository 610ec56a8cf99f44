"""The Swagger UI at `/` as a person meets it: rendered by Chromium, used with mouse and keyboard.

Each test opens the page, checks that Swagger UI shows no error box, authorizes with a token
(auth is on, as in production), then tries an operation: "Try it out", "Execute", and reads
the status and the body from the page. Screenshots before and after "Execute" are saved under
test-output/browser/ (see conftest.py) for a person to look at.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from tests.browser.conftest import output_folder
from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

SHOTS = "browser"


def wait_for(driver: Any, css: str, timeout: float = 60, within: Any = None) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    root = within or driver
    WebDriverWait(driver, timeout).until(
        lambda _: (
            root.find_elements(By.CSS_SELECTOR, css)
            and until.visibility_of(root.find_element(By.CSS_SELECTOR, css))(driver)
        )
    )
    return root.find_element(By.CSS_SELECTOR, css)


def screenshot(driver: Any, element: Any, name: str) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    path = output_folder(SHOTS) / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def open_ui(driver: Any, server: LiveServer) -> None:
    """Open `/`, check it rendered without an error, and authorize with the server's token."""
    from selenium.webdriver.common.by import By

    driver.get(f"{server.url}/")
    title = wait_for(driver, ".information-container .title")
    assert "Despliegue" in title.text and title.size["height"] > 0
    assert driver.title == "Despliegue API"
    page = driver.find_element(By.TAG_NAME, "body").text
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".errors-wrapper, .errors")]
    assert not errors, errors
    assert "Unable to render" not in page and "Parser error" not in page, page[:2000]
    screenshot(driver, title, "page")
    driver.find_element(By.CSS_SELECTOR, ".btn.authorize").click()
    dialog = wait_for(driver, ".modal-ux")
    dialog.find_element(By.CSS_SELECTOR, "input").send_keys(server.token)
    dialog.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .authorize").click()
    wait_for(driver, ".auth-btn-wrapper .btn-done", within=dialog).click()


def try_it_out(driver: Any, operation_id: str, tag: str) -> Any:
    """Expand an operation and press "Try it out"; return the operation's block."""
    block = wait_for(driver, f"#operations-{tag}-Despliegue__{operation_id}")
    block.find_element("css selector", "button.opblock-summary-control").click()
    wait_for(driver, ".try-out__btn", within=block).click()
    return block


def execute(driver: Any, block: Any, name: str) -> tuple[str, str]:
    """Press "Execute"; return the status code and the body the page shows."""
    request = block.find_element("css selector", ".opblock-section-request-body")
    screenshot(driver, request, f"{name}-before-execute")
    block.find_element("css selector", "button.execute").click()
    status = wait_for(driver, ".live-responses-table .response .response-col_status", within=block)
    body = block.find_element("css selector", ".live-responses-table .response-col_description pre")
    screenshot(driver, status, f"{name}-after-execute")
    return status.text.strip(), body.text


def test_heatflow_try_it_out_executes_the_documented_example(
    browser: Any, live_server: LiveServer
) -> None:
    open_ui(browser, live_server)
    block = try_it_out(browser, "heatflow_predict", "heatflow")
    prefilled = json.loads(block.find_element("css selector", "textarea.body-param__text").text)
    # The schema's example, not a value made up from the schema (15000, its maximum, is outside
    # what the reference model was trained on).
    training = next(
        card for card in live_server.get("/models").json()["models"] if card["family"] == "heatflow"
    )["metadata"]["feature_ranges"]["sediment_thickness_m"]
    assert prefilled["sediment_thickness_m"], prefilled
    assert all(training[0] <= v <= training[1] for v in prefilled["sediment_thickness_m"])
    status, body = execute(browser, block, "heatflow")
    assert status == "200", body
    answer = json.loads(body)
    assert len(answer["heat_flow_mw_m2"]) == len(prefilled["sediment_thickness_m"])
    assert answer["model"].startswith("heatflow_svr:")


def test_flowers_upload_takes_a_real_photo_from_the_file_picker(
    browser: Any, live_server: LiveServer
) -> None:
    from sklearn.datasets import load_sample_image

    photo = output_folder(SHOTS) / "flower.jpg"
    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).save(buffer, format="JPEG", quality=90)
    photo.write_bytes(buffer.getvalue())

    open_ui(browser, live_server)
    block = try_it_out(browser, "flowers_upload", "flowers")
    add = wait_for(browser, ".file-list .json-schema-form-item-add", within=block)
    label = browser.execute_script("return getComputedStyle(arguments[0], '::after').content", add)
    assert label == '"Add an image file"', label
    # ...in place of Swagger UI's own "Add string item", which must not show beside it.
    assert browser.execute_script("return getComputedStyle(arguments[0]).fontSize", add) == "0px"
    add.click()
    wait_for(browser, "input[type=file]", within=block).send_keys(str(photo))
    status, body = execute(browser, block, "flowers-upload")
    assert status == "200", body
    (prediction,) = json.loads(body)["predictions"]
    assert prediction["name"] and len(prediction["top_k"]) == 3
