"""The Open Inference Protocol's infer route in the Swagger UI: a person fills the model's name,
keeps the documented V2 body, presses "Execute" and reads named output tensors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.test_swagger_ui import execute, open_ui, screenshot, wait_for
from tests.conftest import LiveServer

pytestmark = pytest.mark.integration


def test_v2_infer_executes_from_the_ui(browser: Any, live_server: LiveServer) -> None:
    open_ui(browser, live_server)
    block = wait_for(browser, "[id$='-v2_model_infer']")
    screenshot(browser, block, "v2-infer-collapsed")
    block.find_element("css selector", "button.opblock-summary-control").click()
    wait_for(browser, ".try-out__btn", within=block).click()
    name = wait_for(browser, "input[placeholder='name']", within=block)
    assert name.get_attribute("value") == "heatflow_svr"  # the documented example, prefilled
    prefilled = json.loads(block.find_element("css selector", "textarea.body-param__text").text)
    assert prefilled["inputs"][0]["name"] == "sediment_thickness_m"
    status, body = execute(browser, block, "v2-infer")
    assert status == "200", body
    answer = json.loads(body)
    (output,) = answer["outputs"]
    assert answer["model_name"] == "heatflow_svr"
    assert output["name"] == "heat_flow_mw_m2" and output["datatype"] == "FP64"
    seed = live_server.post("/heatflow", {"sediment_thickness_m": prefilled["inputs"][0]["data"]})
    assert output["data"] == seed.json()["heat_flow_mw_m2"]
