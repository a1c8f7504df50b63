"""The real MLflow UI over a small sweep: its REST API, and its runs page in headless Chromium."""

import os
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, free_port, mlflow_server, run_cli

ARTIFACTS = Path(os.environ.get("MNISTLAB_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 3-job sweep in a fresh store, served by a real `mlflow server` on 127.0.0.1."""
    cwd = tmp_path_factory.mktemp("ui")
    args = ["-m", "data=synthetic", "epochs=2", "device=cpu", "lr=0.001,0.01,0.1",
            "sweep_name=ui-sweep", "mlflow.log_model=false", "train.plots=false"]  # fmt: skip
    port = free_port()  # the sweep's links name the port `mlflow ui` serves on: MLFLOW_PORT
    assert run_cli(args, cwd=cwd, MLFLOW_PORT=str(port)).returncode == 0
    with mlflow_server(cwd, port=port, plain=True) as url:  # `mlflow ui`, no flags
        yield url


def api(url: str, path: str, **body):
    """POST (with a body) or GET one MLflow REST endpoint; the decoded JSON."""
    full = f"{url}/api/2.0/mlflow/{path}"
    response = (
        requests.post(full, json=body, timeout=10) if body else requests.get(full, timeout=10)
    )
    response.raise_for_status()
    return response.json()


def test_the_server_serves_the_sweeps_runs_parent_links_params_and_metrics(server):
    experiment = api(server, "experiments/get-by-name?experiment_name=mnistlab")["experiment"]
    runs = api(server, "runs/search", experiment_ids=[experiment["experiment_id"]])["runs"]
    assert len(runs) == 4
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in tags[r["info"]["run_id"]]]
    assert parent["info"]["run_name"] == "ui-sweep" and parent["info"]["status"] == "FINISHED"
    children = [r for r in runs if r is not parent]
    for child in children:
        run_id = child["info"]["run_id"]
        assert tags[run_id]["mlflow.parentRunId"] == parent["info"]["run_id"]
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert child["info"]["run_name"] == f"lr={params['lr']}"
        points = api(server, f"metrics/get-history?run_id={run_id}&metric_key=val/acc")["metrics"]
        assert sorted(p["step"] for p in points) == [1, 2]
    assert sorted(c["info"]["run_name"] for c in children) == ["lr=0.001", "lr=0.01", "lr=0.1"]
    best = {m["key"]: m["value"] for m in parent["data"]["metrics"]}["best/val_acc"]
    assert 0 < best <= 1


def screenshot(driver, name: str) -> None:
    """Save the page as ARTIFACTS/NAME, a real PNG with something drawn on it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


def chromium():
    """Headless Debian Chromium through its chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)  # fmt: skip
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def test_the_runs_page_in_headless_chromium_lists_the_sweep(server):
    from selenium.webdriver.common.by import By

    experiment = api(server, "experiments/get-by-name?experiment_name=mnistlab")["experiment"]
    driver = chromium()
    try:
        driver.get(
            f"{server}/#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning"
        )

        def page_text() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        deadline = time.monotonic() + 60
        while "ui-sweep" not in page_text():
            assert time.monotonic() < deadline, "the runs page never showed the sweep"
            time.sleep(0.5)
        assert "4 matching runs" in page_text()
        parent_row = driver.find_element(
            By.XPATH, "//div[@role='row'][.//a[contains(., 'ui-sweep')]]"
        )
        parent_row.find_element(By.CSS_SELECTOR, "button").click()  # unfold the sweep's jobs
        names = ["lr=0.001", "lr=0.01", "lr=0.1"]
        while not all(name in page_text() for name in names):
            assert time.monotonic() < deadline, "the sweep's jobs never showed"
            time.sleep(0.5)
        while "synthetic" not in page_text():  # the Dataset column: the runs' logged inputs
            assert time.monotonic() < deadline, "the Dataset column never showed the splits"
            time.sleep(0.5)
        screenshot(driver, "mlflow_ui_sweep.png")
    finally:
        driver.quit()


def test_the_sweeps_compare_link_opens_mlflows_compare_page_for_its_jobs(server):
    from selenium.webdriver.common.by import By

    experiment = api(server, "experiments/get-by-name?experiment_name=mnistlab")["experiment"]
    runs = api(server, "runs/search", experiment_ids=[experiment["experiment_id"]])["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    (link,) = [t["sweep.compare_url"] for t in tags if "sweep.compare_url" in t]
    pairs = zip(runs, tags, strict=True)
    children = sorted(r["info"]["run_id"] for r, t in pairs if "mlflow.parentRunId" in t)
    assert link.startswith(f"{server}/#/compare-runs?runs=")  # this server's port
    assert all(run_id in link for run_id in children) and len(children) == 3
    driver = chromium()
    try:  # the same page on this test's server: the link's part after the host
        driver.get(link)
        deadline = time.monotonic() + 60
        wanted = ["Comparing 3 Runs", "lr=0.001", "lr=0.01", "lr=0.1", "Parallel Coordinates Plot"]
        while not all(w in driver.find_element(By.TAG_NAME, "body").text for w in wanted):
            assert time.monotonic() < deadline, "the compare page never showed the sweep's jobs"
            time.sleep(0.5)
        assert "Parameters:\nlr\n" in driver.find_element(By.TAG_NAME, "body").text  # plotted
        time.sleep(2)  # let the plot draw
        screenshot(driver, "mlflow_ui_compare.png")
    finally:
        driver.quit()


def test_the_experiment_opens_on_its_runs_and_the_sweeps_ranked_view_shows_what_varied(server):
    from selenium.webdriver.common.by import By

    experiment = api(server, "experiments/get-by-name?experiment_name=mnistlab")["experiment"]
    tags = {t["key"]: t["value"] for t in experiment["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the training view
    runs = api(server, "runs/search", experiment_ids=[experiment["experiment_id"]])["runs"]
    (view,) = [t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "sweep.runs_url"]
    assert view.startswith(f"{server}/#/experiments/{experiment['experiment_id']}/runs?")
    jobs = [r for r in runs if r["info"]["run_name"] != "ui-sweep"]
    acc = {r["info"]["run_name"]: {m["key"]: m["value"] for m in r["data"]["metrics"]}["val/acc"]
           for r in jobs}  # fmt: skip
    driver = chromium()
    try:
        driver.get(
            f"{server}/#/experiments/{experiment['experiment_id']}?workflowType=machine_learning"
        )
        deadline = time.monotonic() + 60
        while "ui-sweep" not in (text := driver.find_element(By.TAG_NAME, "body").text):
            assert time.monotonic() < deadline, f"the experiment did not open on its runs: {text}"
            time.sleep(0.5)
        driver.get("about:blank")  # the link opened afresh, as from the terminal
        driver.get(view)
        names = sorted(acc, key=acc.get, reverse=True)  # best val acc first
        while True:  # the shared view applied: its sort in the address, its columns shown
            text = driver.find_element(By.TAG_NAME, "body").text
            applied = "orderByKey=metrics" in driver.current_url and "\nval/acc\n" in text
            if applied and all(n in text for n in names) and "\nlr\n" in text:
                break
            assert time.monotonic() < deadline, f"the ranked view never showed: {text[-2000:]}"
            time.sleep(0.5)
        time.sleep(2)  # let the table settle
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "ui-sweep" not in text.split("Run Name", 1)[-1]  # the jobs only, not their parent
        assert [text.index(n) for n in names] == sorted(text.index(n) for n in names), text
        time.sleep(2)
        screenshot(driver, "mlflow_ui_sweep_ranked.png")
    finally:
        driver.quit()
