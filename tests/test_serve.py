"""The run's MLflow model takes images as users have them: `mlflow models serve` on raw pixels."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import requests
import torch

from conftest import cli_env, free_port, only_run, run_cli
from mnistlab.data import normalize
from mnistlab.inference import load_trained
from mnistlab.parts import build_part


def test_mlflow_models_serve_answers_raw_pixels_as_the_trained_net_does(tmp_path):
    result = run_cli(["data=synthetic", "epochs=1", "device=cpu", "train.plots=false",
                      "mlflow.system_metrics=false"], cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, run = only_run(store)
    port = free_port()
    serve = subprocess.Popen(  # started first: it imports MLflow while this test works
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
         f"runs:/{run.info.run_id}/model", "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port), "-w", "1"],
        cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=store), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"),
    )  # fmt: skip
    try:
        trained = load_trained(run.data.tags["hydra.output_dir"])  # its model.pth: the bare net
        data = build_part(trained.cfg.data, "data", seed=trained.cfg.seed)
        digits = data.test.images[:20]  # uint8, 20 x 28 x 28, as a user has them
        mean, std = trained.data_info["mean"], trained.data_info["std"]
        with torch.no_grad():
            expected = trained.model(normalize(digits, mean, std))
            mlflow.set_tracking_uri(store)
            logged = mlflow.pytorch.load_model(run.data.tags["model_uri"])
            pixels = digits.float() / 255
            assert torch.equal(logged(digits), expected)  # uint8: the run's own inputs, exactly
            for shape in [(20, 1, 28, 28), (20, 28, 28), (20, 784)]:
                assert torch.allclose(logged(pixels.reshape(shape)), expected, atol=1e-4), shape
            assert not torch.allclose(logged(normalize(digits, mean, std)), expected, atol=0.1)
        assert (expected.argmax(1) == data.test.labels[:20]).float().mean() >= 0.8
        info = mlflow.models.get_model_info(run.data.tags["model_uri"])
        assert info.signature.inputs.inputs[0].shape == (-1, 1, 28, 28)
        assert "0-1" in info.metadata["description"] and info.metadata["classes"] == data.classes

        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up in 120 s"
            time.sleep(0.3)
        body = {"inputs": pixels.unsqueeze(1).tolist()}  # N x 1 x 28 x 28, as its signature says
        answer = requests.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text[:2000]
        served = torch.tensor(answer.json()["predictions"])
        assert served.shape == (20, 10)
        assert torch.equal(served.argmax(1), expected.argmax(1))
        assert torch.allclose(served, expected, atol=1e-4)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
