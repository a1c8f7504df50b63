"""Typed schemas for the run config, registered with Hydra so mistakes fail at composition.

This module imports no torch or mlflow: `python -m train --help` and `--cfg job` stay fast.
"""

import difflib
import math
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, ListConfig, OmegaConf, open_dict

# conf/ sits at the repository root, next to src/ (the project is installed editable).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


class DeviceType(str, Enum):
    """Where to train: `auto` picks cuda, then mps, then cpu."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Amp(str, Enum):
    """Mixed precision for the forward pass: none (fp32) or bfloat16 autocast."""

    none = "none"
    bf16 = "bf16"


class Compile(str, Enum):
    """torch.compile mode; reduce_overhead also captures CUDA graphs on a GPU."""

    off = "off"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


class Loader(str, Enum):
    """How batches are made: sliced from device-resident tensors, or by torch's DataLoader."""

    tensor = "tensor"
    torch = "torch"


class OnNan(str, Enum):
    """What to do when the training loss becomes NaN or inf."""

    stop = "stop"
    ignore = "ignore"


@dataclass
class MLPConfig:
    _target_: str = "mnistlab.models.MLP"
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 512])
    dropout: float = 0.0


@dataclass
class CNNConfig:
    _target_: str = "mnistlab.models.CNN"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    hidden_size: int = 256
    dropout: float = 0.5


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = II("lr")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused: bool | None = None


@dataclass
class AdamWConfig:
    _target_: str = "torch.optim.AdamW"
    lr: float = II("lr")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    fused: bool | None = None


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    lr: float = II("lr")
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class TorchvisionDataConfig:
    _target_: str = "mnistlab.data.load_torchvision"
    dataset: str = "torchvision.datasets.MNIST"
    root: str = "./data"
    download: bool = True
    val_size: int = 5000
    mean: float = 0.1307
    std: float = 0.3081
    loader: Loader = Loader.tensor
    num_workers: int = 0
    cache_dir: str | None = None


@dataclass
class SyntheticDataConfig:
    _target_: str = "mnistlab.data.make_synthetic"
    train_size: int = 3000
    test_size: int = 1000
    val_size: int = 500
    noise: float = 60.0
    mean: float = 0.1
    std: float = 0.2


@dataclass
class DeviceConfig:
    type: DeviceType = DeviceType.auto
    threads: int | None = None
    amp: Amp = Amp.none
    compile: Compile = Compile.off


@dataclass
class TrainConfig:
    log_every: int = 100
    eval_batch_size: int = 1000
    on_nan: OnNan = OnNan.stop
    plots: bool = True


@dataclass
class CheckpointConfig:
    log_to_mlflow: bool = False


@dataclass
class MlflowConfig:
    tracking_uri: str | None = None
    experiment: str = "mnistlab"
    run_name: str | None = None
    log_model: bool = True
    offline_wait_s: float = 300.0


@dataclass
class Config:
    model: Any = MISSING
    optimizer: Any = MISSING
    data: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    sweep_name: str | None = None
    resume: str | None = None
    force: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def register() -> None:
    """Register the schemas that conf/*.yaml extend through their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="mlp_schema", node=MLPConfig)
    cs.store(group="model", name="cnn_schema", node=CNNConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
    cs.store(group="optimizer", name="adamw_schema", node=AdamWConfig)
    cs.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    cs.store(group="data", name="torchvision_schema", node=TorchvisionDataConfig)
    cs.store(group="data", name="synthetic_schema", node=SyntheticDataConfig)


class ConfigError(ValueError):
    """A config value that composes but cannot work; the message names the key and the fix."""


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Errors for keys that no schema declares (Hydra lets `+key=value` add them)."""
    errors = []
    schema = OmegaConf.get_type(node)
    if is_dataclass(schema):
        allowed = [f.name for f in fields(schema)]
        for key in node:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {prefix}{near[0]}?" if near else f"known keys: {allowed}"
                errors.append(f"{prefix}{key} is not a known key: {hint}")
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing():
            errors += unknown_keys(child, f"{prefix}{key}.")
    return errors


def _all(test: Any) -> Any:
    """A check that holds for a number, or for every number of a list."""
    return lambda v: all(test(x) for x in v) if isinstance(v, list | ListConfig) else test(v)


def _finite(v: Any) -> bool:
    """A real number, not NaN or infinite."""
    return isinstance(v, int | float) and math.isfinite(v)


_ABSENT = object()  # what OmegaConf.select gives for a key this config lacks

# (key, check, what is allowed): keys a config lacks (an option's own fields) are skipped.
RANGES = [
    ("lr", lambda v: _finite(v) and v > 0, "a positive learning rate, e.g. lr=1e-3"),
    ("batch_size", lambda v: v >= 1, "an integer >= 1, e.g. batch_size=64"),
    ("epochs", lambda v: v >= 1, "an integer >= 1, e.g. epochs=10"),
    ("seed", lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295, e.g. seed=0"),
    ("train.log_every", lambda v: v >= 1, "an integer >= 1, e.g. train.log_every=100"),
    ("train.eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("device.threads", lambda v: v is None or v >= 1, "an integer >= 1, or null for torch's"),
    ("mlflow.experiment", lambda v: bool(v and v.strip()), "a non-empty experiment name"),
    ("mlflow.offline_wait_s", lambda v: _finite(v) and v >= 0, "seconds >= 0, e.g. 300"),
    ("model.hidden_sizes", _all(lambda v: v >= 1), "a list of layer widths >= 1, e.g. [512,512]"),
    ("model.channels", _all(lambda v: v >= 1), "a list of channel counts >= 1, e.g. [32,64]"),
    ("model.hidden_size", lambda v: v >= 1, "an integer >= 1, e.g. 256"),
    ("model.dropout", lambda v: 0 <= v < 1, "a probability in [0, 1), e.g. 0.5"),
    ("optimizer.betas", _all(lambda v: 0 <= v < 1), "two numbers in [0, 1), e.g. [0.9,0.999]"),
    ("optimizer.eps", lambda v: _finite(v) and v > 0, "a small positive number, e.g. 1e-8"),
    ("optimizer.weight_decay", lambda v: _finite(v) and v >= 0, "a number >= 0, e.g. 0.01"),
    ("optimizer.momentum", lambda v: _finite(v) and v >= 0, "a number >= 0, e.g. 0.9"),
    ("data.val_size", lambda v: v >= 1, "an integer >= 1, e.g. data.val_size=5000"),
    ("data.train_size", lambda v: v >= 2, "an integer >= 2, e.g. 3000"),
    ("data.test_size", lambda v: v >= 1, "an integer >= 1, e.g. 1000"),
    ("data.noise", lambda v: _finite(v) and v >= 0, "a grey-level std >= 0, e.g. 60"),
    ("data.std", lambda v: _finite(v) and v > 0, "a positive pixel std, e.g. 0.3081"),
    ("data.mean", _finite, "a finite pixel mean, e.g. 0.1307"),
    ("data.num_workers", lambda v: v >= 0, "an integer >= 0 (0 loads in the main process)"),
]


def validate(cfg: DictConfig) -> None:
    """Check what types alone cannot (added keys, value ranges), before anything is loaded."""
    errors = unknown_keys(cfg)
    if errors:
        raise ConfigError(errors[0])
    for key, check, allowed in RANGES:
        node = OmegaConf.select(cfg, key, default=_ABSENT)
        if node is _ABSENT:
            continue
        value = OmegaConf.to_object(node) if isinstance(node, ListConfig) else node
        if not check(value):
            shown_value = value
            if isinstance(value, list):
                shown_value = str(value).replace(" ", "")
            elif isinstance(value, str) and not value.strip():
                shown_value = repr(value)
            raise ConfigError(f"{key}={shown_value} is invalid: use {allowed}")
    if cfg.optimizer.get("betas") is not None and len(cfg.optimizer.betas) != 2:
        raise ConfigError(
            f"optimizer.betas={list(cfg.optimizer.betas)} is invalid: use two numbers in [0, 1)"
        )


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the run config as `python -m train` would, for use from Python and tests.

    Hydra's runtime info (the group choices and overrides) is recorded so that
    `mnistlab.engine.train` logs the same MLflow record as the CLI.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        full = hydra_compose("config", overrides=overrides or [], return_hydra_config=True)
    HydraConfig.instance().set_config(full)
    cfg = full.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


EXTRAS = {"hydra/launcher=ray": "ray"}  # options that an optional extra of mnistlab installs


def explain(err: Exception) -> str:
    """One line for a Hydra or OmegaConf composition error: the key, the bad value, the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.options is not None:
        missing = str(err).split("Could not find '", 1)[-1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        options = [o for o in err.options if not o.endswith("_schema")]
        extra = EXTRAS.get(f"{group}={option}")
        if extra:
            return f"{group}={option} needs an optional extra: pip install -e '.[{extra}]'"
        return f"{group}={option} is not an option: use one of {', '.join(options)}"
    if isinstance(err, OverrideParseException):
        return f"{str(err).splitlines()[0]}: write overrides as key=value (Hydra's grammar)"
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigAttributeError) and cause.full_key:
        schema, key = cause.object_type, cause.full_key
        known = [f.name for f in fields(schema)] if is_dataclass(schema) else []
        near = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
        hint = (
            f"did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{near[0]}?"
            if near
            else f"known keys: {known}"
        )
        return f"{key} is not a known key: {hint}"
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        allowed = {key: allowed for key, _, allowed in RANGES}.get(cause.full_key)
        fix = f"; use {allowed}" if allowed else ""
        return f"{cause.full_key}: {str(cause).splitlines()[0].rstrip('.')}{fix}"
    return " ".join(str(err).split())


def check_writable(key: str, value: Any, folder: str | Path) -> None:
    """Raise ConfigError for `key=value` unless `folder` can be written: its nearest existing
    ancestor must be a folder that takes a real file (root passes every permission check)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"{key}={value}: cannot write {folder} ({existing}: {reason}); "
            f"point {key} at a writable folder"
        ) from None


def check_outputs(cfg: DictConfig, multirun: bool) -> None:
    """Check, before anything runs, that the run's output dir and its MLflow store are reachable
    and writable; raise ConfigError naming the key otherwise."""
    from hydra.core.hydra_config import HydraConfig

    from mnistlab import tracking

    if HydraConfig.initialized():
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        folder = OmegaConf.select(HydraConfig.get(), key.removeprefix("hydra."))
        check_writable(key, folder, folder)
    uri = tracking.tracking_uri(cfg)
    tracking.check_scheme(uri)
    db = tracking.sqlite_path(uri)
    if db is not None:
        check_writable("mlflow.tracking_uri", uri, db.parent)
        tracking.check_sqlite(uri)
    tracking.check_server(uri)


HYDRA_FLAGS = {  # Hydra's own command-line flags, with their short forms
    *("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p"),
    *("--package", "-r", "--run", "-m", "--multirun", "-sc", "--shell-completion", "-cp"),
    *("--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"),
    *("-i", "--info"),
}


def check_command_line(argv: list[str]) -> None:
    """Compose and validate the config of every job the command line asks for, before Hydra
    starts and before any MLflow run exists; raise ConfigError naming the first mistake.

    Command lines with Hydra's own flags (--help, --cfg, -c, ...) are left to Hydra.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    for arg in overrides:
        if arg.startswith("-") and arg.split("=", 1)[0] not in HYDRA_FLAGS:
            raise ConfigError(
                f"{arg} is not a flag of python -m train: give settings as key=value overrides "
                "(python -m train --help lists them)"
            )
    if any(a.startswith("-") for a in overrides):
        return
    try:
        jobs = [overrides]
        if multirun:
            parsed = OverridesParser.create().parse_overrides(overrides)
            jobs = BasicSweeper.split_arguments(parsed, None)[0][:1000]
        stores = {}
        for job in jobs:
            cfg = compose(job)
            validate(cfg)
            stores.setdefault(str(cfg.mlflow.tracking_uri), cfg)
        for cfg in stores.values():  # once every job's config is known good
            check_outputs(cfg, multirun)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain(err)) from err
    except Exception as err:  # anything else Hydra's parser lets through, e.g. `=1`
        raise ConfigError(f"{explain(err)} (in the overrides {' '.join(overrides)})") from err
