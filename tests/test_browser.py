"""The on-call engineer's path in a real browser: log in, open the pending approval of a run,
read the evidence it shows, approve, and see the run move on. Screenshots go to test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from rocketmq_harness.airflow_api import AirflowApi

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"


@pytest.fixture
def browser(tmp_path):
    options = Options()
    options.binary_location = "/usr/bin/chromium"  # Debian's Chromium, installed by `make prereqs`
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def until(driver, condition, timeout: float = 30):
    """Wait for ``condition``; React replaces elements while it re-renders, so an element gone
    stale between finding and reading it means "not yet", not a failure."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def click_button(driver, text: str, tags: tuple[str, ...] = ("button",)) -> None:
    """Click the element labelled ``text``, finding it afresh if a re-render replaced it."""

    def clicked(d) -> bool:
        for button in (e for tag in tags for e in d.find_elements(By.TAG_NAME, tag)):
            try:
                if button.text == text and button.is_enabled():
                    button.click()
                    return True
            except StaleElementReferenceException:
                return False
        return False

    until(driver, clicked)


def click_button_or_link(driver, text: str) -> None:
    click_button(driver, text, ("button", "a"))


def test_engineer_approves_a_gate_in_the_ui_after_reading_its_evidence(browser, airflow_api: AirflowApi,
                                                                     online_group, tmp_path):
    dag = "probe_gate_approval"
    airflow_api.wait_for_dag(dag)
    run_id = airflow_api.trigger(dag, {"groups": [online_group], "marker_dir": str(tmp_path)})
    airflow_api.wait_for_gate(dag, run_id, "gate")

    browser.get(f"{airflow_api.url}/")
    until(browser, lambda d: d.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(airflow_api.password)
    shot(browser, "1-login")
    click_button(browser, "Sign in")
    until(browser, lambda d: "/auth/login" not in d.current_url)

    browser.get(f"{airflow_api.url}/required_actions?response_received=false")  # the UI's own "pending" link
    # React re-renders these lists: read texts and links inside the wait, keep no element.
    href = until(browser, lambda d: next(
        (a.get_attribute("href") for a in d.find_elements(By.TAG_NAME, "a")
         if a.text == "Switch the probe fleet?" and run_id in (a.get_attribute("href") or "")), None))
    shot(browser, "2-required-actions")
    browser.get(href)

    row = until(browser, lambda d: next(
        (r.text for r in d.find_elements(By.TAG_NAME, "tr") if r.text.startswith(online_group)), None))
    assert row.split()[1:] == ["0", "1"], "evidence: no consumer on the source, one on the target"
    assert "Online consumers per cluster" in browser.find_element(By.TAG_NAME, "body").text
    shot(browser, "3-evidence")
    click_button(browser, "Approve")

    assert airflow_api.wait_for_run(dag, run_id, timeout=180) == "success"
    assert (tmp_path / "guarded").read_text() == "ran"
    browser.get(f"{airflow_api.url}/dags/{dag}/runs/{run_id}")
    until(browser, lambda d: "guarded" in d.find_element(By.TAG_NAME, "body").text)
    time.sleep(1)
    shot(browser, "4-run-moved-on")
    click_button_or_link(browser, "Migration report")
    frame = until(browser, lambda d: next(iter(d.find_elements(By.TAG_NAME, "iframe")), None))
    browser.switch_to.frame(frame)
    until(browser, lambda d: "Approvals" in d.find_element(By.TAG_NAME, "body").text)
    assert "<td>gate</td><td>Approve</td><td>admin</td>" in browser.page_source
    browser.switch_to.default_content()
    shot(browser, "5-report-tab")
