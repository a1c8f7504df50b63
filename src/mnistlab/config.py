"""The run config: typed schemas registered with Hydra, and `validate`, the one check of a config.

Each option's value is written once, in its YAML under conf/; its type and range rule sit here,
beside the field (`option(Check(...))`). A `_target_` component's schema is its constructor's
signature (`Annotated[float, Check(...)]`), so a user's own model is checked the same way. No
torch here: `python -m train --help` and `--cfg job` stay fast.
"""

import difflib
import inspect
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
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
    """Compose the run config as `python -m train` would, for Python and tests; Hydra's runtime
    info (group choices, overrides) is recorded, so such a run logs the same MLflow record."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        full = hydra_compose("config", overrides=overrides or [], return_hydra_config=True)
    HydraConfig.instance().set_config(full)
    cfg = full.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def runtime(key: str) -> Any:
    """`hydra.runtime.<key>` of the current Hydra job (None without a job, or if it is unset)."""
    if not HydraConfig.initialized() or OmegaConf.is_missing(HydraConfig.get().runtime, key):
        return None
    return HydraConfig.get().runtime[key]


def launch_dir() -> Path:
    """The folder the user launched from, which relative paths mean (also under Hydra's
    `hydra.job.chdir=true`, which moves the job into its output dir)."""
    return Path(runtime("cwd") or Path.cwd())


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
    """Check a schema-typed node and its children: every key declared, every value within rule."""
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
    """Check a `_target_` node against its constructor's signature: keys, types, range rules."""
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
    for key in ("model", "optimizer", "data", "scheduler"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{key} is not set: choose an option, e.g. {key}=...")
    check_fields(cfg)
    task = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    check_data_root(cfg.data, any(o.lstrip("+").startswith("data.download=") for o in task))


def check_data_root(data: DictConfig, download_given: bool) -> None:
    """Refuse a data.root that does not exist (mistyped?) before anything is made; a download
    may make it only where asked to: the default ./data, or with data.download=true given."""
    root, download = data.get("root"), bool(data.get("download"))
    if not isinstance(root, str):  # generated data: no folder
        return
    folder = launch_dir() / Path(root).expanduser()
    if folder.exists() or download and (root == "./data" or download_given):
        return
    name = str(data.get("dataset", "")).rsplit(".", 1)[-1]  # none for an image folder
    fix = "at the folder that holds train/<class>/ and test/<class>/"
    if name:
        how = "to download into" if download else "and add data.download=true to download into it"
        fix = f"(or MNISTLAB_DATA) at the folder that holds {name}/raw/, or create it {how}"
    raise UserError(f"data.root={root}: the folder {folder} does not exist; point data.root {fix}")


def rule_of(schema: Any, name: str) -> Check | None:
    """The range rule beside field `name` of a schema dataclass, if it has one."""
    declared = {f.name: f for f in fields(schema)} if is_dataclass(schema) else {}
    return declared[name].metadata.get("check") if name in declared else None


PATH_KEYS = ("data.root", "data.cache_dir", "resume")  # relative paths mean the launch folder


def anchor_paths(cfg: DictConfig) -> None:
    """Make cfg's relative paths absolute against the launch folder (as typed, under any chdir;
    `resume=` only where it names a file or folder, else it is an MLflow run id)."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        path = launch_dir() / Path(str(value)).expanduser()
        if isinstance(value, str) and value and (key != "resume" or path.exists()):
            OmegaConf.update(cfg, key, str(path), merge=False)


def save_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """Write each missing `.hydra/` file (a run started with `compose`: Hydra wrote none)."""
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
    return (runtime("choices") or {}).get(group)
