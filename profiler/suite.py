"""Suite files (``suites/*.toml``): load, validate, expand into one :class:`RunSpec` per row.

A suite is data. Every key is checked on load and an error names the file, the key path
(``optimizers[1].kwargs.min_8bit_size``), what was expected and what was given.

Schema::

    description = "what this suite answers"   # required
    steps = 30            # training steps per run (required, >= 2)
    warmup = 5            # first steps excluded from timing (default: steps // 5)
    seeds = 1             # seeds 0 .. seeds-1 (default 1)
    baseline = "adamw-32" # optimizer config the others are compared with (default: the first one)

    [[models]]            # one table per model; any zoo model, any number of times
    name = "gpt"          # a zoo name (python -m profiler list)
    label = "gpt-small"   # optional, must be unique (default: name, or name-wW-dD if repeated)
    width = 1.0           # hidden-size multiplier (default 1.0)
    depth = 1             # layer multiplier (default 1)
    batch_size = 16       # (default 16)
    seq_len = 64          # model-specific options, see `python -m profiler list`

    [[optimizers]]
    name = "adamw-8bit"              # unique label
    class = "bnb8.optim.AdamW8bit"   # dotted path of a torch.optim-compatible class
    kwargs = { lr = 1e-3 }           # constructor arguments
    baseline = "adamw-32"            # optional: overrides the suite's baseline for this config
    sweep = { min_8bit_size = [0, 4096] }  # optional: one run per value (cartesian product if several)

Every kwarg, swept or not, must be an argument of the class's constructor: a sweep of
``min_8bit_size`` over ``torch.optim.AdamW`` is an error, not a silent no-op.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from profiler import zoo

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


class SuiteError(ValueError):
    """A suite file (or a name on the command line) is invalid."""


@dataclass(frozen=True)
class ModelSpec:
    label: str
    name: str
    width: float = 1.0
    depth: int = 1
    batch_size: int = 16
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    label: str  # name, plus [key=value,...] for a sweep point
    config: str  # the name in the suite
    cls: str
    kwargs: dict
    sweep: dict  # the swept kwargs of this point
    baseline: str


@dataclass(frozen=True)
class RunSpec:
    """One row of the results: a model, an optimizer configuration and a seed."""

    model: ModelSpec
    optimizer: OptimizerSpec
    seed: int
    steps: int
    warmup: int
    device: str

    @property
    def key(self) -> str:
        return f"{self.model.label}/{self.optimizer.label}/seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    steps: int
    warmup: int
    seeds: int
    models: list[ModelSpec]
    optimizers: list[OptimizerSpec]

    def runs(self, device: str, filter_pattern: str | None = None) -> list[RunSpec]:
        """Every (model, seed, optimizer) row; baselines first within a (model, seed).

        With ``filter_pattern``, the rows whose key it matches, plus the baseline row each of them is
        compared with (without it the report would have no ratios to show). No match: an empty list.
        """
        baselines = {o.baseline for o in self.optimizers}
        ordered = sorted(self.optimizers, key=lambda o: o.label not in baselines)
        runs = [
            RunSpec(m, o, seed, self.steps, self.warmup, device)
            for m in self.models
            for seed in range(self.seeds)
            for o in ordered
        ]
        if filter_pattern:
            pattern = re.compile(filter_pattern)
            chosen = [r for r in runs if pattern.search(r.key)]
            needed = {(r.model.label, r.seed, r.optimizer.baseline) for r in chosen}
            runs = [r for r in runs if r in chosen or (r.model.label, r.seed, r.optimizer.label) in needed]
        return runs


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A suite name in ``suites/`` or a path to a suite file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SuiteError(f"suite file not found: {path}")
        return path
    candidate = SUITES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise SuiteError(f"unknown suite {name_or_path!r}; available: {', '.join(available_suites())}")
    return candidate


def load(
    name_or_path: str, *, steps: int | None = None, seeds: int | None = None, warmup: int | None = None
) -> Suite:
    """Read and validate a suite; ``steps``/``seeds``/``warmup`` override the file's values (a resumed
    run passes what it recorded)."""
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    checker = _Checker(path)
    suite = checker.suite(data, path.stem if path.parent == SUITES_DIR else path.stem, steps, seeds, warmup)
    checker.raise_if_any()
    return suite


def load_recorded(run_dir: Path) -> tuple[Suite, dict]:
    """The suite and settings a run recorded (``RUN_DIR/suite.toml`` and ``RUN_DIR/run.json``), with the
    steps, seeds and warm-up it ran with: what ``--resume`` continues and what a report checks rows against."""
    run_dir = Path(run_dir)
    settings_path = run_dir / "run.json"
    if not settings_path.is_file() or not (run_dir / "suite.toml").is_file():
        raise SuiteError(f"{run_dir}: not a run directory (expected run.json and suite.toml in it)")
    try:
        settings = json.loads(settings_path.read_text())
        steps, seeds = settings["steps"], settings["seeds"]
    except (ValueError, KeyError, TypeError) as e:
        raise SuiteError(
            f"{settings_path}: unreadable ({type(e).__name__}: {e}); was it edited by hand?"
        ) from None
    suite = load(str(run_dir / "suite.toml"), steps=steps, seeds=seeds, warmup=settings.get("warmup"))
    suite.name = settings.get("suite", suite.name)
    return suite, settings


def import_class(dotted: str) -> type:
    """Import ``package.module.Class``; the error lists the optimizer classes the module has."""
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise SuiteError(f"expected a dotted class path like 'torch.optim.AdamW', got {dotted!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SuiteError(f"cannot import module {module_name!r} for {dotted!r}: {e}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and hasattr(v, "step"))
        raise SuiteError(
            f"{module_name} has no class {class_name!r}; available: {', '.join(names) or '(none)'}"
        )
    return cls


def constructor_parameters(cls: type) -> dict[str, object] | None:
    """Keyword arguments the constructor accepts, with defaults (``inspect.Parameter.empty`` if none).

    An ``__init__`` that takes ``**kwargs`` is assumed to forward them to ``super().__init__`` (as
    bnb8's ``AdamW8bit`` does), so the parameters of the base classes are added until one takes no
    ``**kwargs``; None when no class in the chain says what it accepts.
    """
    accepted: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        for name, p in params.items():
            if name not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                accepted.setdefault(name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return accepted
    return None


def constructor_defaults(cls: type) -> dict[str, object]:
    params = constructor_parameters(cls) or {}
    return {k: v for k, v in params.items() if v is not inspect.Parameter.empty}


def _type_name(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


class _Checker:
    """Collects every problem in a suite file, then raises them together."""

    TOP_KEYS = {"description", "steps", "warmup", "seeds", "baseline", "models", "optimizers"}
    MODEL_KEYS = {"name", "label", "width", "depth", "batch_size"}
    OPTIMIZER_KEYS = {"name", "class", "kwargs", "baseline", "sweep"}

    def __init__(self, path: Path):
        self.path = path
        self.errors: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def raise_if_any(self) -> None:
        if self.errors:
            lines = "\n".join(f"  {e}" for e in self.errors)
            raise SuiteError(f"invalid suite file {self.path}:\n{lines}")

    def try_construct(self, cls: type, kwargs: dict, where: str) -> None:
        """Build the optimizer over one small tensor: a bad value (``lr = "fast"``, betas out of range)
        is reported now, with the rest of the file's problems, not by every worker after the run starts."""
        import torch

        try:
            cls([torch.nn.Parameter(torch.zeros(4))], **kwargs)
        except Exception as e:  # whatever the class rejects; its own message says why
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            self.error(where, f"{cls.__module__}.{cls.__name__}({args}) fails: {type(e).__name__}: {e}")

    def unknown_keys(self, table: dict, allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                self.error(f"{where}{key}", f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def get(self, table: dict, key: str, kind: type | tuple, where: str, default=None, minimum=None):
        if key not in table:
            if default is None:
                self.error(f"{where}{key}", "missing (required)")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            self.error(f"{where}{key}", f"expected {expected}, got {_type_name(value)}")
            return default
        if minimum is not None and value < minimum:
            self.error(f"{where}{key}", f"expected a value >= {minimum}, got {value!r}")
            return default
        return value

    def suite(
        self, data: dict, name: str, steps: int | None, seeds: int | None, warmup_override: int | None = None
    ) -> Suite:
        self.unknown_keys(data, self.TOP_KEYS, "")
        description = self.get(data, "description", str, "")
        file_steps = self.get(data, "steps", int, "", minimum=2)
        seeds = seeds if seeds is not None else self.get(data, "seeds", int, "", default=1, minimum=1)
        warmup = self.get(data, "warmup", int, "", default=max(1, (file_steps or 0) // 5), minimum=0)
        if warmup_override is not None:
            warmup = warmup_override
        if steps is not None:  # --steps: keep the file's warm-up unless it leaves no timed step
            if isinstance(warmup, int) and warmup >= steps:
                warmup = max(1, steps // 5)
        else:
            steps = file_steps
        if isinstance(steps, int) and isinstance(warmup, int) and warmup >= steps:
            self.error(
                "warmup",
                f"expected fewer warm-up steps than steps = {steps} (one timed step at least), got {warmup}",
            )
        models = self.models(data.get("models"))
        optimizers = self.optimizers(data.get("optimizers"), data.get("baseline"))
        return Suite(
            name, self.path, description or "", steps or 0, warmup or 0, seeds or 1, models, optimizers
        )

    def models(self, tables) -> list[ModelSpec]:
        if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
            self.error("models", "expected at least one [[models]] table")
            return []
        specs, labels = [], []
        names = [t.get("name") for t in tables]
        for i, table in enumerate(tables):
            where = f"models[{i}]."
            name = self.get(table, "name", str, where)
            if name is None:
                continue
            if name not in zoo.MODELS:
                self.error(f"{where}name", f"unknown model {name!r}; available: {', '.join(zoo.MODELS)}")
                continue
            options = zoo.model_options(name)
            self.unknown_keys(table, self.MODEL_KEYS | set(options), where)
            width = float(self.get(table, "width", (int, float), where, default=1.0))
            if width <= 0:
                self.error(f"{where}width", f"expected a value > 0, got {width!r}")
            depth = self.get(table, "depth", int, where, default=1, minimum=1)
            batch_size = self.get(table, "batch_size", int, where, default=16, minimum=2)
            chosen = {}
            for key, default in options.items():
                if key in table:
                    chosen[key] = self.get(table, key, type(default), where, default=default, minimum=1)
            default_label = name if names.count(name) == 1 else f"{name}-w{width:g}-d{depth}"
            label = self.get(table, "label", str, where, default=default_label)
            if label in labels:
                self.error(f"{where}label", f"duplicate model label {label!r}; give each a unique `label`")
            labels.append(label)
            specs.append(ModelSpec(label, name, width, depth, batch_size, chosen))
        return specs

    def optimizers(self, tables, suite_baseline) -> list[OptimizerSpec]:
        if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
            self.error("optimizers", "expected at least one [[optimizers]] table")
            return []
        names = [t.get("name") for t in tables]
        if suite_baseline is None:
            suite_baseline = names[0]
        elif suite_baseline not in names:
            self.error(
                "baseline",
                f"expected the name of an optimizer config ({', '.join(map(str, names))}), got {suite_baseline!r}",
            )
        specs = []
        for i, table in enumerate(tables):
            where = f"optimizers[{i}]."
            self.unknown_keys(table, self.OPTIMIZER_KEYS, where)
            name = self.get(table, "name", str, where)
            if name is not None and names.count(name) > 1:
                self.error(f"{where}name", f"duplicate optimizer name {name!r}")
            dotted = self.get(table, "class", str, where)
            kwargs = self.get(table, "kwargs", dict, where, default={})
            sweep = self.get(table, "sweep", dict, where, default={})
            baseline = self.get(table, "baseline", str, where, default=suite_baseline)
            if baseline is not None and baseline not in names:
                self.error(
                    f"{where}baseline",
                    f"expected the name of an optimizer config ({', '.join(map(str, names))}), got {baseline!r}",
                )
            for key, values in sweep.items():
                if not isinstance(values, list) or not values:
                    self.error(
                        f"{where}sweep.{key}",
                        f"expected a non-empty list of values, got {_type_name(values)}",
                    )
                if key in kwargs:
                    self.error(f"{where}sweep.{key}", "also set in kwargs; set it in one place")
            if name is None or dotted is None:
                continue
            try:
                cls = import_class(dotted)
            except SuiteError as e:
                self.error(f"{where}class", str(e))
                continue
            errors_before = len(self.errors)
            accepted = constructor_parameters(cls)
            if accepted is not None:
                for section, keys in (("kwargs", kwargs), ("sweep", sweep)):
                    for key in keys:
                        if key not in accepted:
                            self.error(
                                f"{where}{section}.{key}",
                                f"{dotted} does not accept {key!r}; it accepts: {', '.join(accepted)}",
                            )
            sweep_lists = {k: v for k, v in sweep.items() if isinstance(v, list) and v}
            for point in itertools.product(*sweep_lists.values()):
                swept = dict(zip(sweep_lists, point))
                label = name + (
                    "[" + ",".join(f"{k}={_fmt(v)}" for k, v in swept.items()) + "]" if swept else ""
                )
                specs.append(OptimizerSpec(label, name, dotted, {**kwargs, **swept}, swept, baseline or name))
                if len(self.errors) == errors_before:  # one message per config, not one per sweep point
                    self.try_construct(cls, {**kwargs, **swept}, f"{where}{'sweep' if swept else 'kwargs'}")
        swept_names = {s.config for s in specs if s.sweep}
        for s in specs:
            if s.baseline in swept_names:
                self.error(
                    "baseline",
                    f"the baseline {s.baseline!r} has a sweep; a baseline must be a single configuration",
                )
                break
        return specs


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if not isinstance(value, (int, float, str)) else str(value)
