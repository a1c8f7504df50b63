"""Load a trained model for evaluate and predict: from a checkpoint, a model.pth or an MLflow run.

The model is rebuilt from the run's own config, so no overrides need repeating.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnistlab import checkpoint, tracking
from mnistlab.errors import UserError
from mnistlab.parts import build_part

SOURCE_HELP = "run output dir, .pth file, runs:/<id>/model.pth, run id, or models:/<name>@<alias>"


@dataclass
class Trained:
    """A trained model with its run's config, data facts and MLflow run id (if known)."""

    model: nn.Module
    cfg: DictConfig
    data_info: dict[str, Any]
    run_id: str | None


def load_trained(source: str, tracking_uri: str | None = None) -> Trained:
    """The model `source` names: a .pth file, a run output dir (its model.pth, else last.pth),
    `runs:/<run_id>/model.pth`, a run id, or `models:/<name>@<alias>` (or `/<version>`)."""
    registered = None  # a registered version's own weights (promote --weights best)
    if source.startswith("models:/"):
        source, registered = tracking.resolve_model_uri(source, tracking_uri)
    path, run_id = Path(source).expanduser(), None
    if path.is_dir():  # the final weights of a finished run, else the last checkpoint
        found = [path / n for n in ("model.pth", "last.pth") if (path / n).is_file()]
        if not found:
            raise UserError(
                f"{source}: no model.pth or last.pth in that folder; use a {SOURCE_HELP}"
            )
        path = found[0]
    if not path.is_file():
        path, run_id = tracking.download_model_files(source, tracking_uri)
    state = checkpoint.read_torch_file(path, "checkpoint")
    if checkpoint.is_training_checkpoint(state):  # last.pth / best.pth carry everything
        weights, cfg = checkpoint.evaluated_weights(state), OmegaConf.create(state["config"])
        info = state["data"]
        run_id = run_id or state["run_id"]
    else:  # a bare state_dict: its config.yaml and data.json lie beside it
        try:
            cfg = OmegaConf.load(path.parent / "config.yaml")
            info = json.loads((path.parent / "data.json").read_text())
        except OSError as err:
            raise UserError(
                f"checkpoint={path}: no config.yaml and data.json beside it to rebuild the model; "
                "use the run's output dir, last.pth, or its MLflow run id"
            ) from err
        weights = state
    weights = registered or weights
    shape, classes = tuple(info["in_shape"]), len(info["classes"])
    model = build_part(cfg.model, "model", in_shape=shape, num_classes=classes)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise UserError(
            f"checkpoint={path}: these weights do not fit the {cfg.model._target_} its config "
            f"describes ({reason}); use the checkpoint of the run that config belongs to"
        ) from err
    return Trained(model.eval(), cfg, info, run_id)
