"""The run config: typed schemas registered with Hydra, and `validate`, the one check of a config.

Each option's value (its default) is written once, in its YAML file under conf/, with a comment;
its type and range rule sit here, beside the field (`option(Check(...))`). Components built with
`_target_` (a model, a dataset) have no schema here: theirs is their constructor's signature,
range rules included (`Annotated[float, Check(...)]`), so a user's own model is checked the same
way. This module imports no torch: `python -m train --help` and `--cfg job` stay fast.
"""

import difflib
import inspect
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mnistlab.errors import UserError
from mnistlab.files import write_text
from mnistlab.options import Amp, Check, Compile, DeviceType, OnNan, at_least, finite

# conf/ sits at the repository root, next to src/ (the project is installed editable).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# What the recipe passes to a component at the call site, so its YAML does not set it.
RUNTIME_ARGS = {
    "model": ("in_shape", "num_classes"),
    "data": ("seed",),
    "optimizer": ("params",),
    "scheduler": ("optimizer", "epochs", "steps_per_epoch"),
}
OFF_OR_POSITIVE = Check(lambda v: v is None or v > 0, "a positive number, or null (off)")


def option(check: Check | None = None) -> Any:
    """A schema field whose value comes from the YAML, with its range rule beside it."""
    return field(default=MISSING, metadata={"check": check} if check else {})


POSITIVE_LR = Check(lambda v: finite(v) and v > 0, "a positive learning rate, e.g. lr=1e-3")
NON_NEGATIVE = Check(lambda v: finite(v) and v >= 0, "a number >= 0, e.g. 0.01")
BETAS = Check(
    lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9,0.999]"
)


@dataclass
class AdamConfig:  # Adam and AdamW
    _target_: str = option()
    lr: float = option(POSITIVE_LR)
    betas: list[float] = option(BETAS)
    eps: float = option(Check(lambda v: finite(v) and v > 0, "a small positive number, e.g. 1e-8"))
    weight_decay: float = option(NON_NEGATIVE)
    fused: bool | None = option()


@dataclass
class SGDConfig:
    _target_: str = option()
    lr: float = option(POSITIVE_LR)
    momentum: float = option(Check(lambda v: finite(v) and v >= 0, "a number >= 0, e.g. 0.9"))
    nesterov: bool = option()
    weight_decay: float = option(NON_NEGATIVE)


@dataclass
class DeviceConfig:
    type: DeviceType = option()
    threads: int | None = option(
        Check(lambda v: v is None or v >= 1, "an integer >= 1, or null for torch's")
    )
    flush_denormal: bool = option()
    amp: Amp = option()
    compile: Compile = option()


@dataclass
class TrainConfig:
    log_every: int = option(at_least(1, "an integer >= 1, e.g. train.log_every=100"))
    eval_batch_size: int = option(at_least(1, "an integer >= 1"))
    on_nan: OnNan = option()
    plots: bool = option()
    early_stopping_patience: int | None = option(
        Check(lambda v: v is None or v >= 1, "an integer >= 1 (epochs), or null (off)")
    )
    grad_clip_norm: float | None = option(OFF_OR_POSITIVE)
    label_smoothing: float = option(Check(lambda v: 0 <= v < 1, "a number in [0, 1), e.g. 0.1"))
    ema_decay: float | None = option(
        Check(lambda v: v is None or 0 < v < 1, "a decay in (0, 1), e.g. 0.999, or null (off)")
    )
    max_steps: int | None = option(
        Check(lambda v: v is None or v >= 1, "an integer >= 1 (steps), or null (every batch)")
    )
    overfit_batches: int | None = option(
        Check(lambda v: v is None or v >= 1, "an integer >= 1 (batches), or null (off)")
    )
    target_loss: float | None = option(OFF_OR_POSITIVE)
    profile: bool = option()
    detect_anomaly: bool = option()


@dataclass
class CheckpointConfig:
    log_to_mlflow: bool = option()


@dataclass
class MlflowConfig:
    tracking_uri: str | None = option()
    experiment: str = option(Check(lambda v: bool(v.strip()), "a non-empty experiment name"))
    run_name: str | None = option()
    log_model: bool = option()
    system_metrics: bool = option()
    offline_wait_s: float = option(Check(lambda v: finite(v) and v >= 0, "seconds >= 0, e.g. 300"))


@dataclass
class Config:
    model: Any = MISSING
    optimizer: Any = MISSING
    data: Any = MISSING
    scheduler: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    lr: float = option(POSITIVE_LR)
    batch_size: int = option(at_least(1, "an integer >= 1, e.g. batch_size=64"))
    epochs: int = option(at_least(1, "an integer >= 1, e.g. epochs=10"))
    seed: int = option(
        Check(lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295, e.g. seed=0")
    )
    repeats: int = option(at_least(1, "an integer >= 1, e.g. repeats=3"))
    sweep_name: str | None = option()
    resume: str | None = option()
    force: bool = option()
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def register() -> None:
    """Register the schemas that conf/*.yaml extend through their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    # in a group of their own, so `optimizer=glob(*)` and --help list only real options
    cs.store(group="schema/optimizer", name="adam", node=AdamConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the run config as `python -m train` would, for use from Python and tests.

    Hydra's runtime info (the group choices and overrides) is recorded so that a run started
    from Python logs the same MLflow record as the CLI.
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


def launch_dir() -> Path:
    """The folder the user launched from, which relative paths mean (also under Hydra's
    `hydra.job.chdir=true`, which moves the job into its output dir)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and not OmegaConf.is_missing(HydraConfig.get().runtime, "cwd"):
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def not_known(key: str, prefix: str, allowed: list[str]) -> UserError:
    """The error for a key no schema declares, with the nearest known key as the fix."""
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {prefix}{near[0]}?" if near else f"known keys: {allowed}"
    return UserError(f"{prefix}{key} is not a known key: {hint}")


def invalid(key: str, value: Any, allowed: str) -> UserError:
    """The error for a value its range rule rejects."""
    if isinstance(value, list | tuple):
        value = str(list(value)).replace(" ", "")
    elif isinstance(value, str) and not value.strip():
        value = repr(value)
    return UserError(f"{key}={value} is invalid: use {allowed}")


def check_fields(node: DictConfig, prefix: str = "") -> None:
    """Check a node typed by a schema dataclass, and its children: every key is declared and
    every value passes the rule beside its field."""
    schema = OmegaConf.get_type(node)
    if is_dataclass(schema):
        declared = {f.name: f for f in fields(schema)}
        for key in node:
            if key not in declared:
                raise not_known(str(key), prefix, list(declared))
        for name, f in declared.items():
            rule = f.metadata.get("check")
            if name in node and OmegaConf.is_missing(node, name):
                raise UserError(f"{prefix}{name} is not set: give it a value, {prefix}{name}=...")
            value = _plain(node, name) if name in node else None
            if rule and not rule.passes(value):
                raise invalid(f"{prefix}{name}", value, rule.allowed)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing():
            if "_target_" in child and not is_dataclass(OmegaConf.get_type(child)):
                check_component(child, f"{prefix}{key}")
            else:
                check_fields(child, f"{prefix}{key}.")


def _plain(node: DictConfig, key: str) -> Any:
    """The value at `key` of `node`, resolved, as plain Python (lists as lists)."""
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value


def signature_rules(target: Any) -> dict[str, Check]:
    """The range rules a constructor's signature declares: {parameter: Check}."""
    init = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(init, include_extras=True)
    return {
        name: rule
        for name, hint in hints.items()
        for rule in getattr(hint, "__metadata__", ())
        if isinstance(rule, Check)
    }


def check_component(node: DictConfig, key: str) -> None:
    """Check a `_target_` node against its constructor's signature (its schema): types, unknown
    and unset keys, and the signature's range rules."""
    from hydra.utils import get_object
    from hydra_zen import builds

    try:
        target = get_object(node._target_)
    except Exception as err:  # ImportError, AttributeError, or the module's own failure
        raise UserError(
            f"{key}._target_={node._target_}: cannot import it ({type(err).__name__}: {err}); "
            "check the dotted path, and that its folder is on PYTHONPATH"
        ) from None
    runtime = [a for a in RUNTIME_ARGS.get(key, ()) if a in inspect.signature(target).parameters]
    schema = builds(target, populate_full_signature=True, zen_exclude=runtime)
    declared = [f.name for f in fields(schema)]
    rules = signature_rules(target)
    for name in node:
        if name not in declared:
            raise not_known(str(name), f"{key}.", declared)
    try:
        typed = OmegaConf.merge(
            OmegaConf.structured(schema), OmegaConf.to_container(node, resolve=True)
        )
    except OmegaConfBaseException as err:
        sub = str(err.full_key).split("[")[0]
        rule = rules.get(sub)
        fix = f"; use {rule.allowed}" if rule else ""
        what = str(err).splitlines()[0].rstrip(".").replace("AnyNode", type(node[sub]).__name__)
        raise UserError(f"{key}.{sub}: {what}{fix}") from None
    for name in declared:
        if OmegaConf.is_missing(typed, name):
            raise UserError(f"{key}.{name} is not set: give it in the option's YAML or as "
                            f"{key}.{name}=...")  # fmt: skip
        value = _plain(typed, name)
        if name in rules and not rules[name].passes(value):
            raise invalid(f"{key}.{name}", value, rules[name].allowed)


def validate(cfg: DictConfig) -> None:
    """Check what composition alone cannot (added keys, component types, value ranges), before
    anything is loaded; raise UserError naming the first mistake."""
    missing = [
        k for k in ("model", "optimizer", "data", "scheduler") if OmegaConf.is_missing(cfg, k)
    ]
    if missing:
        raise UserError(f"{missing[0]} is not set: choose an option, e.g. {missing[0]}=...")
    check_fields(cfg)


def rule_of(schema: Any, name: str) -> Check | None:
    """The range rule beside field `name` of a schema dataclass, if it has one."""
    declared = {f.name: f for f in fields(schema)} if is_dataclass(schema) else {}
    return declared[name].metadata.get("check") if name in declared else None


PATH_KEYS = ("data.root", "data.cache_dir", "resume")  # relative paths mean the launch folder


def anchor_paths(cfg: DictConfig) -> None:
    """Make cfg's relative paths absolute against the launch folder when the job runs elsewhere
    (`hydra.job.chdir=true`), so they keep meaning what the user typed."""
    here = launch_dir()
    if Path.cwd() == here:
        return
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            OmegaConf.update(cfg, key, str(here / Path(value).expanduser()), merge=False)


def hydra_output_dir() -> Path | None:
    """The current Hydra job's output dir, if there is one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    runtime = HydraConfig.get().runtime
    return None if OmegaConf.is_missing(runtime, "output_dir") else Path(runtime.output_dir)


def save_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """Write Hydra's `.hydra/` files (config, hydra, overrides) where Hydra itself did not, e.g. a
    run started from Python with `compose`: each one missing, atomically."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    files = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
             "overrides.yaml": hydra_cfg.overrides.task}  # fmt: skip
    for name, node in files.items():
        path = output_dir / ".hydra" / name
        if not path.exists():  # Hydra's own, or an earlier run's in this dir, are kept
            write_text(path, OmegaConf.to_yaml(node))


def group_choice(group: str) -> str | None:
    """The option of config group `group` the current Hydra job uses (None if none)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)
