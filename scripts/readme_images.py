"""Make the README's images from a real run and a real sweep: `python scripts/readme_images.py`.

Trains the tutorial MLP for 3 epochs and sweeps lr over 3 values (MNIST from MNISTLAB_DATA or
../shared/data), in a temp dir with its own MLflow store, then copies into docs/images/ the
run's four plots, the sweep's summary and report figures, and two screenshots of the real MLflow
UI (headless Chromium): the runs table with the sweep unfolded, and its chart view. Then a
seeds sweep on synthetic data (`lr=1e-3,1e-2 repeats=3`, 2 epochs): its summary.png (means with
error bars) and MLflow's compare page opened from the link the sweep prints and tags
(`sweep.compare_url`), with val/acc chosen in its parallel coordinates plot.
`--only-compare` makes just these two (sweep_by_config.png, mlflow_ui_compare.png).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
DATA = os.environ.get("MNISTLAB_DATA", str(REPO.parent / "shared" / "data"))


def sh(*args: str, cwd: Path) -> None:
    """Run a command in cwd, failing loudly."""
    env = {**os.environ, "MNISTLAB_DATA": DATA}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True)


def compare_page(driver, url: str, experiment: str, seeds_sweep: str) -> None:
    """Open the compare link of sweep `seeds_sweep` (on this server), plot val/acc, photograph."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    search = requests.post(f"{url}/api/2.0/mlflow/runs/search", timeout=10, json={
        "experiment_ids": [experiment], "filter": f"attributes.run_name = '{seeds_sweep}'",
    }).json()["runs"][0]  # fmt: skip
    link = next(t["value"] for t in search["data"]["tags"] if t["key"] == "sweep.compare_url")
    driver.get(url + "/" + link.split("/", 3)[3])
    for _ in range(120):
        if "Parallel Coordinates Plot" in driver.find_element(By.TAG_NAME, "body").text:
            break
        time.sleep(0.5)
    time.sleep(2)
    try:  # the link cannot choose the plot's metric: pick val/acc as a user would
        boxes = driver.find_elements(By.CSS_SELECTOR, "input[role='combobox']")
        metric = boxes[1]
        metric.send_keys(Keys.BACKSPACE)  # drop the default metric
        metric.send_keys("val/acc")
        time.sleep(1)
        metric.send_keys(Keys.ENTER, Keys.ESCAPE)
        time.sleep(2)
    except Exception as err:  # the screenshot still shows the page
        print(f"could not choose val/acc on the compare page: {err}")
    driver.save_screenshot(str(OUT / "mlflow_ui_compare.png"))


def ranked(driver, url: str, experiment: str, sweep_name: str) -> None:
    """The runs table of a sweep's jobs, best val acc first, from the link its parent is tagged
    with (on this script's port)."""
    runs = requests.post(
        f"{url}/api/2.0/mlflow/runs/search",
        timeout=10,
        json={"experiment_ids": [experiment], "filter": f"attributes.run_name = '{sweep_name}'"},
    ).json()
    tags = {t["key"]: t["value"] for t in runs["runs"][0]["data"]["tags"]}
    driver.get(url + "/" + tags["sweep.runs_url"].split("/", 3)[3])
    time.sleep(8)  # let the table fill
    driver.save_screenshot(str(OUT / "mlflow_ui_sweep_ranked.png"))


def screenshots(cwd: Path, sweep_name: str | None, seeds_sweep: str) -> None:
    """Serve the store with `mlflow server`; photograph the runs page, its chart view, and the
    seeds sweep's compare page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    url, mlflow_bin = "http://127.0.0.1:5123", Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", "5123", "--workers", "1",
         "--backend-store-uri", f"sqlite:///{cwd / 'mlflow.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
        "--window-size=1500,900",
    ):
        options.add_argument(flag)  # fmt: skip
    driver = None
    try:
        for _ in range(180):
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        experiment = requests.get(
            f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=mnistlab", timeout=10
        ).json()["experiment"]["experiment_id"]
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        views = (("TABLE", "mlflow_ui_runs.png"), ("CHART", "mlflow_ui_charts.png"))
        for view, name in views if sweep_name else ():
            driver.get(f"{url}/#/experiments/{experiment}/runs?compareRunsMode={view}"
                       "&workflowType=machine_learning")  # fmt: skip
            for _ in range(120):
                if sweep_name in driver.find_element(By.TAG_NAME, "body").text:
                    break
                time.sleep(0.5)
            if view == "TABLE":
                row = driver.find_element(
                    By.XPATH, f"//div[@role='row'][.//a[contains(., '{sweep_name}')]]"
                )
                row.find_element(By.CSS_SELECTOR, "button").click()
            time.sleep(3)  # let the charts draw
            driver.save_screenshot(str(OUT / name))
        if sweep_name:  # the sweep's ranked runs table, as its sweep.runs_url tag opens it
            ranked(driver, url, experiment, sweep_name)
        compare_page(driver, url, experiment, seeds_sweep)
    finally:
        if driver:
            driver.quit()
        server.terminate()


def seeds_sweep(cwd: Path) -> None:
    """The seeds sweep and its summary.png (error bars)."""
    seeds = ["data=synthetic", "epochs=2", "lr=1e-3,1e-2", "repeats=3", "sweep_name=lr-x-3-seeds"]
    sh("-m", "train", *seeds, "mlflow.log_model=false", "train.plots=false", cwd=cwd)
    latest = max(cwd.glob("multirun/*/*/summary/summary.png"), key=lambda p: p.stat().st_mtime)
    shutil.copy(latest, OUT / "sweep_by_config.png")


def main() -> None:
    """Run, sweep, report, photograph; write everything to docs/images/."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        if "--only-compare" in sys.argv[1:]:
            seeds_sweep(cwd)
            screenshots(cwd, None, "lr-x-3-seeds")
            print(f"images in {OUT}")
            return
        sh("-m", "train", "epochs=3", "mlflow.log_model=false", cwd=cwd)
        (plots,) = cwd.glob("outputs/*/*/plots")
        for png in plots.glob("*.png"):
            shutil.copy(png, OUT / png.name)
        grid = ["epochs=3", "lr=1e-4,1e-3,1e-2", "batch_size=64,256", "sweep_name=lr-x-batch"]
        sh("-m", "train", "-m", *grid, "mlflow.log_model=false", "train.plots=false", cwd=cwd)
        (summary,) = cwd.glob("multirun/*/*/summary/summary.png")
        shutil.copy(summary, OUT / "sweep_summary.png")
        parent = next(cwd.glob("multirun/*/*/mlflow_parent_run_id")).read_text().strip()
        sh("-m", "mnistlab.report", parent, "--figure", str(OUT / "report.png"), cwd=cwd)
        seeds_sweep(cwd)
        screenshots(cwd, "lr-x-batch", "lr-x-3-seeds")
    print(f"images in {OUT}")


if __name__ == "__main__":
    main()
