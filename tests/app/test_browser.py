"""End to end in a real headless browser (Debian chromium + chromedriver): feature page, steered generation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.app.state import AppState
from tests.app.browser import chromium_paths

pytestmark = pytest.mark.skipif(
    chromium_paths() is None, reason="chromium / chromedriver missing; scripts/test.sh installs them with apt-get"
)


@pytest.fixture(scope="module")
def driver() -> Any:
    from tests.app.browser import chrome

    d = chrome()
    yield d
    d.quit()


def test_feature_page_and_steered_generation(driver: Any, live_server: str, state: AppState) -> None:
    from selenium.webdriver.common.by import By

    from tests.app.browser import set_value, wait_for, wait_text
    from tests.app.test_api import PROMPT, last_token_code

    driver.get(live_server + "/#/features")
    wait_text(driver, "#cache-text", "activation cache ready")
    first = wait_for(driver, "#feature-list tbody tr.feature-row a")
    fid = int(first.text)
    first.click()
    wait_for(driver, "#contexts .ctx span.tok.peak")
    assert driver.find_element(By.ID, "fp-title").text == f"Feature {fid}"
    assert driver.find_elements(By.CSS_SELECTOR, "#hist div")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#lens span")) == 30
    assert len(driver.find_elements(By.CSS_SELECTOR, "#nearest li")) == 10

    driver.find_element(By.ID, "fp-steer").click()
    wait_for(driver, "#pg-features .feat .f-id")
    assert driver.find_element(By.CSS_SELECTOR, "#pg-features .feat .f-id").get_attribute("value") == str(fid)
    code = last_token_code(state, PROMPT)
    gate_f = int(torch.argmax(code))
    set_value(driver, "pg-prompt", PROMPT)
    driver.find_element(By.ID, "gate-enabled").click()
    set_value(driver, "gate-feature", str(gate_f))
    set_value(driver, "gate-threshold", f"{float(code[gate_f]) / 2:.6f}")
    set_value(driver, "pg-max", "6")
    wait_text(driver, "#pg-command", f"feature:{gate_f}>")
    driver.find_element(By.ID, "pg-run").click()
    wait_text(driver, "#pg-timing", "tokens/s")
    outs = {r: driver.find_element(By.ID, f"out-{r}").text for r in ("baseline", "steered", "conditional")}
    assert all(outs.values()), outs
    assert outs["conditional"] == outs["steered"]  # the gate fired, so the conditional output is the steered one
    assert driver.find_element(By.ID, "gate-verdict").text == "fires (steered)"
    assert "score" in driver.find_element(By.ID, "gate-decision").text
    assert driver.find_element(By.ID, "pg-command").text.startswith("saesteer generate")
    assert driver.find_element(By.ID, "pg-error").text == ""

    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(live_server) for r in resources)  # nothing loads from the internet
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_results_view_without_study(driver: Any, live_server: str) -> None:
    from tests.app.browser import wait_text

    driver.get(live_server + "/#/results")
    wait_text(driver, "#res-empty", "No study folder given")


def test_stop_button_cancels_generation(driver: Any, live_server: str, state: AppState) -> None:
    """Stop aborts the request; the server sees the closed stream and ends the generation early."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.app.browser import set_value, wait_for

    def recent() -> list[dict[str, Any]]:
        return httpx.get(live_server + "/api/info", timeout=30).json()["recent"]

    last = recent()[-1]["n"] if recent() else 0
    driver.get(live_server + "/#/playground")
    wait_for(driver, "#pg-features .feat .f-id")
    set_value(driver, "pg-max", "512")
    driver.find_element(By.ID, "pg-run").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "out-baseline").text != "")
    driver.find_element(By.ID, "pg-stop").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "pg-run").is_enabled())
    WebDriverWait(driver, 60, poll_frequency=0.1).until(lambda d: (recent() or [{"n": 0}])[-1]["n"] > last)
    done = recent()[-1]
    assert done["cancelled"] is True and max(done["tokens"]) < 512
    WebDriverWait(driver, 30).until(lambda d: state.queue.active == 0)
