"""The base class of every bnb8 optimizer family.

A family (``bnb8/optim/adam.py``, ...) declares its states, validates its hyper-parameters and maps a
parameter's configuration to a native update rule plus hyper-parameters. This class does the rest,
the same way for every family:

* argument validation in ``__init__`` (and for every added param group);
* lazy state creation on a parameter's first step: 8-bit states (uint8 codes in the parameter's shape,
  one float32 absmax per block of 256, a shared 256-entry qmap) when ``optim_bits == 8`` and the
  parameter has at least ``min_8bit_size`` elements, float32 states otherwise;
* per-parameter overrides from :class:`~bnb8.optim.GlobalOptimManager`;
* ``step()``: all checks first (a failed step changes nothing), then parameters are bucketed by
  (device, dtype, state kind, rule, hyper-parameters) and each bucket is one fused native call;
* ``percentile_clipping`` and ``max_unorm`` scales, computed on the device without host syncs;
* ``state_dict()``/``load_state_dict()`` in bitsandbytes' layout (bit-exact resume; bitsandbytes'
  own state dicts load too).
"""

from __future__ import annotations

import math
import numbers
import types
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from bnb8 import _native, _ops
from bnb8.functional import _check_code, code_search_tables, dynamic_map
from bnb8.optim import _distributed
from bnb8.optim.manager import GlobalOptimManager

BLOCK = 256  # optimizer-state quantization block
GNORM_HISTORY = 100  # gradient norms remembered for percentile clipping
QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"  # bitsandbytes' nested key for quantization tensors
# Per-parameter state tensors that are not in the parameter's dtype (never cast on load).
QUANT_KEYS = (
    "state1",
    "state2",
    "state3",
    "absmax1",
    "absmax2",
    "absmax3",
    "qmap1",
    "qmap2",
    "qmap3",
    "gnorm_vec",
    "unorm_vec",
)

# Settings every family accepts (bitsandbytes' names), with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "optim_bits": 32,
    "min_8bit_size": 4096,
    "percentile_clipping": 100,
    "max_unorm": 0.0,
    "skip_zeros": False,
    "maximize": False,
}


# Constructor arguments every family takes and forwards unchanged to Optimizer8bit.__init__.
COMMON_ARGS = (
    "optim_bits",
    "args",
    "min_8bit_size",
    "percentile_clipping",
    "block_wise",
    "max_unorm",
    "skip_zeros",
    "is_paged",
    "maximize",
)


# Group keys that are some optimizer's setting (bnb8's families, bitsandbytes', torch.optim's): a loaded
# group keeps those this optimizer has, and every other key (scheduler state such as initial_lr, names).
OPTIMIZER_SETTINGS = frozenset(
    {*COMMON_DEFAULTS, *COMMON_ARGS, "lr", "betas", "eps", "weight_decay", "amsgrad", "momentum", "dampening",
     "nesterov", "alpha", "centered", "lr_decay", "initial_accumulator_value", "t_alpha", "t_beta3",
     "trust_coeff", "foreach", "fused", "capturable", "differentiable", "is_sparse", "decoupled_weight_decay"}
)  # fmt: skip

# torch.optim flags a family accepts for signature compatibility but bnb8 does not implement.
UNSUPPORTED_TORCH_FLAGS = ("capturable", "differentiable")


class _BucketSpec(NamedTuple):
    """What the parameters of one fused native call share, besides device, dtype and code tables."""

    quantized: bool  # 8-bit states
    rule: str  # the kernel's update rule
    hyper: tuple[float, ...]  # its hyper-parameters, in _native.HYPER_FIELDS order
    state_keys: tuple[str, ...]  # the states the rule uses, in its order
    qmap_keys: tuple[str, ...]  # their code tables (8-bit only)
    absmax_keys: tuple[str, ...]  # their block scales (8-bit only)
    needs_norms: bool  # a norms pass first (max_unorm, trust ratios)
    percentile_clipping: int
    max_unorm: float
    maximize: bool


class _ParamState(dict):
    """One parameter's optimizer state (a dict, as in torch.optim) that knows whether it is as bnb8
    made or validated it. Adding, replacing or removing a key clears ``checked``; the next step then
    validates the state like a loaded one before anything changes (a state tensor of the wrong size,
    dtype or device would have the kernels read or write out of bounds). That costs one attribute test
    per parameter per step; a full check at every step cost ~10 % over 200 small tensors.
    In-place changes (``state["state1"].zero_()``) keep ``checked``: they cannot change a tensor's
    size or dtype, except ``resize_``, ``set_`` or ``.data =``, which are not detected."""

    checked = False  # also for states rebuilt by copy.deepcopy: they are validated once

    def __init__(self, *args: Any, checked: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checked = checked

    def set_step(self, step: int) -> None:
        """The step counter, written by the optimizer itself: keeps ``checked``."""
        dict.__setitem__(self, "step", step)

    def replace_all(self, content: dict[str, Any]) -> None:
        """The validated state, in place (code holding this dict keeps seeing the state)."""
        dict.clear(self)
        dict.update(self, content)
        self.checked = True

    def __setitem__(self, key: Any, value: Any) -> None:
        self.checked = False
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.checked = False
        super().__delitem__(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:  # GaLore-style subclasses call setdefault("step", 0) at every step
            self.checked = False
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.checked = False
        super().update(*args, **kwargs)

    def __ior__(self, other: Any) -> _ParamState:
        self.checked = False
        return super().__ior__(other)

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self.checked = False
        return super().pop(key, *default)

    def popitem(self) -> tuple[Any, Any]:
        self.checked = False
        return super().popitem()

    def clear(self) -> None:
        self.checked = False
        super().clear()


def common_args(arguments: dict[str, Any]) -> dict[str, Any]:
    """The common settings among a family constructor's arguments: ``**common_args(locals())``.
    Rejects an unsupported torch flag (capturable, differentiable) that is set."""
    for flag in UNSUPPORTED_TORCH_FLAGS:
        if arguments.get(flag):
            raise ValueError(f"{flag}=True is not supported by bnb8 optimizers; leave it False")
    return {key: arguments[key] for key in COMMON_ARGS if key in arguments}


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(name: str, value: Any) -> None:
    """TypeError naming the argument unless ``value`` is a real number (bool excluded)."""
    if not _is_real(value):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")


def as_tuple(betas: Any) -> Any:
    """``betas`` as a tuple when it is a sequence; anything else as given, for check_betas to reject."""
    return tuple(betas) if isinstance(betas, tuple | list) else betas


# Settings that are switches: True or False, nothing else ("no" is truthy).
FLAG_KEYS = frozenset(
    {"maximize", "skip_zeros", "nesterov", "amsgrad", "centered", "bias_correction", "adam_w_mode",
     "decoupled_weight_decay"}
)  # fmt: skip


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")


def _check_common(cfg: dict[str, Any]) -> None:
    bits = cfg["optim_bits"]
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in (8, 32):
        raise ValueError(f"optim_bits: expected 8 or 32, got {bits!r}")
    size = cfg["min_8bit_size"]
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise ValueError(f"min_8bit_size: expected a non-negative integer, got {size!r}")
    pc = cfg["percentile_clipping"]
    if isinstance(pc, bool) or not isinstance(pc, numbers.Integral) or not 1 <= pc <= 100:
        raise ValueError(f"percentile_clipping: expected an integer in 1..100 (100 = off), got {pc!r}")
    check_real("max_unorm", cfg["max_unorm"])
    if not 0.0 <= cfg["max_unorm"] < math.inf:
        raise ValueError(f"max_unorm: expected a finite number >= 0 (0 = off), got {cfg['max_unorm']!r}")
    for key in FLAG_KEYS & cfg.keys():
        check_flag(key, cfg[key])


def check_lr(lr: Any) -> None:
    if isinstance(lr, torch.Tensor):
        raise ValueError("lr: a tensor learning rate is not supported; pass a float")
    check_real("lr", lr)
    if not 0.0 <= lr < math.inf:
        raise ValueError(f"Invalid learning rate: lr={lr!r} (expected a finite number >= 0)")


def check_eps(eps: Any) -> None:
    check_real("eps", eps)
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"Invalid epsilon value: eps={eps!r} (expected a finite number >= 0)")


def check_weight_decay(weight_decay: Any) -> None:
    check_real("weight_decay", weight_decay)
    if not 0.0 <= weight_decay < math.inf:
        raise ValueError(
            f"Invalid weight_decay value: weight_decay={weight_decay!r} (expected a finite number >= 0)"
        )


def check_betas(betas: Any, count: int = 2) -> None:
    if not isinstance(betas, tuple | list) or len(betas) != count:
        raise ValueError(f"betas: expected a tuple of {count} floats in [0, 1), got {betas!r}")
    for i, b in enumerate(betas):
        check_real(f"betas[{i}]", b)
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: betas[{i}]={b!r} (expected in [0, 1))")


class Optimizer8bit(torch.optim.Optimizer):
    """Base class: see the module docstring. Families set the class attributes below and implement
    :meth:`_check_group`, :meth:`_state_kinds` and :meth:`_rule`."""

    # Names of the group keys the family itself validates and uses (besides COMMON_DEFAULTS).
    family_keys: tuple[str, ...] = ()
    # Whether bitsandbytes' fixed-bits variants (X8bit, X32bit) keep optim_bits as a positional
    # argument: Adam's and Adagrad's do, the other families' do not (see adam.fixed_variant).
    bits_positional: bool = False
    # How bitsandbytes' param groups hold this family's settings: key -> (its key, index), e.g. SGD's
    # momentum is betas[0]; and keys its optimizers read that this family has none of (eps = 0). Saved
    # groups carry both, so bitsandbytes loads bnb8's state dicts; loading maps them back.
    bnb_group_aliases: dict[str, tuple[str, int]] = {}
    bnb_group_extras: dict[str, Any] = {}
    # The torch.optim class's state keys and the bnb8 states they are (exp_avg -> state1, ...), so a
    # torch.optim state dict of the same algorithm loads (as 32-bit state).
    torch_state_keys: dict[str, str] = {}
    # bitsandbytes' names for what some user code inspects: the family's name ("adam", "momentum", ...)
    # and the state keys that must not be cast with the parameter's dtype.
    optimizer_name: str = ""
    max_states = 3  # state1..state3 under some setting of the family (a saved state beyond is foreign)
    non_castable_tensor_keys = frozenset(
        {"qmap1", "qmap2", "qmap3", "max1", "max2", "new_max1", "new_max2", "state1", "state2", "state3",
         "gnorm_vec", "unorm_vec", "absmax1", "absmax2", "absmax3"}
    )  # fmt: skip

    def __init__(
        self,
        params: Iterable,
        defaults: dict[str, Any],
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        is_paged: bool = False,
        maximize: bool = False,
    ) -> None:
        common = {
            "optim_bits": optim_bits,
            "min_8bit_size": min_8bit_size,
            "percentile_clipping": percentile_clipping,
            "max_unorm": max_unorm,
            "skip_zeros": skip_zeros,
            "maximize": maximize,
        }
        if args is not None:  # bitsandbytes' argparse-style config object: its attributes win
            for key in ("optim_bits", "min_8bit_size", "percentile_clipping", "max_unorm", "skip_zeros"):
                if hasattr(args, key):
                    common[key] = getattr(args, key)
            block_wise = getattr(args, "block_wise", block_wise)
            is_paged = getattr(args, "is_paged", is_paged)
        check_flag("block_wise", block_wise)
        check_flag("is_paged", is_paged)
        if not block_wise:
            raise ValueError(
                "block_wise=False (one scale per tensor) is not supported: bnb8 always quantizes optimizer "
                "state in blocks of 256, which is more accurate; drop the argument"
            )
        self.is_paged = bool(is_paged)
        # bitsandbytes' optimizers expose their settings as .args (the config object, or one built from
        # the arguments); code written for them reads e.g. optimizer.args.optim_bits.
        self.args = (
            args if args is not None else types.SimpleNamespace(**common, block_wise=True, is_paged=is_paged)
        )
        defaults = {**defaults, **common}
        self._check_settings(defaults)
        self._init_caches()
        super().__init__(params, defaults)
        self.state: defaultdict[torch.Tensor, _ParamState] = defaultdict(_ParamState)

    @property
    def name2qmap(self) -> dict[str, torch.Tensor]:
        """bitsandbytes' table of code maps: ``dynamic`` (signed states) and ``udynamic`` (unsigned)."""
        return {"dynamic": dynamic_map(True), "udynamic": dynamic_map(False)}

    def get_config(self, gindex: int, pindex: int, group: dict[str, Any]) -> dict[str, Any]:
        """The settings parameter ``pindex`` of group ``gindex`` is updated with: the group's, with
        GlobalOptimManager overrides applied (bitsandbytes' ``get_config``)."""
        cfg = self._config(gindex, pindex, group, group["params"][pindex])
        return {k: v for k, v in cfg.items() if k != "params"}

    def _init_caches(self) -> None:
        """What the optimizer keeps besides defaults, state and param groups (not pickled)."""
        self._codebooks: dict[tuple[torch.device, bool], torch.Tensor] = {}
        self._search: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._nonfinite: dict[torch.device, torch.Tensor] = {}
        self.mng = GlobalOptimManager.get_instance()

    def _check_settings(self, cfg: dict[str, Any]) -> None:
        """Raise for an invalid setting, common or of this family."""
        # (torch's own flags are left out: its __setstate__ adds `differentiable` to defaults only)
        needed = set(getattr(self, "defaults", ())) - {"differentiable", "foreach", "fused", "capturable"}
        missing = sorted(k for k in needed if k not in cfg)
        if missing:  # a hand-edited param group, or a group passed to update_step that is not one
            raise ValueError(f"param group: missing setting(s) {missing} of {type(self).__name__}")
        _check_common(cfg)
        self._check_group(cfg)

    # -- what a family provides ---------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for an invalid hyper-parameter of this family."""

    def _state_kinds(self, cfg: dict[str, Any]) -> list[tuple[str, bool | None]]:
        """The states of a parameter: (key, signed) per state; signed=None keeps it float32 always."""
        raise NotImplementedError

    def _rule(
        self, cfg: dict[str, Any], step: int, quantized: bool, new_state: bool = False
    ) -> tuple[str, dict[str, float]]:
        """The native rule name and its hyper-parameters (bnb8._native.HYPER_FIELDS) for one step.
        ``new_state``: the parameter's states were created (zero) for this step."""
        raise NotImplementedError

    def _may_start_late(self, key: str) -> bool:
        """Whether state ``key`` may be missing from a state dict after the first step (a buffer that
        an option enabled later creates at zero, as torch does: SGD's momentum buffer). A moment of
        Adam may not: restarting it at zero under a bias correction for ``step`` steps is wrong."""
        return False

    def _update_scale(
        self, cfg: dict[str, Any], unorm: torch.Tensor, pnorm: torch.Tensor, hyper: dict[str, float]
    ) -> torch.Tensor:
        """Per-tensor update scale from the norms of u and p; max_unorm by default (trust-ratio
        families override this). ``hyper`` holds the bucket's rule hyper-parameters (HYPER_FIELDS).
        Only called when :meth:`_needs_norms` is true.

        max_unorm caps the update per unit of learning rate, step_size / lr * u: for Adam that is u with
        the first moment's bias correction, which is what bitsandbytes measures."""
        per_lr = hyper["step_size"] / hyper["lr"] if hyper["lr"] > 0 else 1.0
        unorm = unorm * per_lr
        limit = cfg["max_unorm"] * pnorm
        return torch.where(unorm > limit, limit / unorm, torch.ones_like(unorm))

    def _needs_norms(self, cfg: dict[str, Any]) -> bool:
        return cfg["max_unorm"] > 0.0

    def _convert_saved_state(self, saved: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        """A loaded parameter state (flat: quantization tensors un-nested) in this family's layout;
        families whose bitsandbytes layout differs convert it here (AdEMAMix's stacked momenta).
        Called before validation; must not modify ``saved``."""
        return saved

    # -- param groups -------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(
                f"param_group: expected a dict with 'params' (and optional settings), got {param_group!r:.80}"
            )
        foreign = sorted(k for k in param_group if k in OPTIMIZER_SETTINGS and k not in self.defaults)
        if foreign:  # another optimizer's setting (momentum on Adam): it would be ignored
            raise ValueError(
                f"param_group: {foreign} not a setting of {type(self).__name__} (its settings: "
                f"{', '.join(sorted(self.defaults))})"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list (param group with no parameters)")
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params: expected tensors, got {type(p).__name__}")
            if not (p.is_floating_point()) or p.is_complex():
                raise ValueError(
                    f"params: bnb8 optimizers update float32, float16 or bfloat16 parameters, got one of {p.dtype}"
                )
            _native.dtype_code(p, "params")
        self._check_settings({**self.defaults, **param_group})  # as torch will fill it in, before it does
        super().add_param_group(param_group)

    # -- configuration -----------------------------------------------------------------------------
    def _config(self, group_index: int, index: int, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        overrides = self.mng.overrides_for(group_index, index, p)
        if not overrides:
            return group
        foreign = sorted(
            k for k in overrides if k not in self.defaults and k not in ("is_sparse", "block_wise")
        )
        if foreign:  # another family's setting (momentum on Adam, ...): it would be ignored
            raise ValueError(
                f"GlobalOptimManager override {foreign} for a parameter of shape {tuple(p.shape)}: not a setting of "
                f"{type(self).__name__} (its settings: {', '.join(sorted(self.defaults))})"
            )
        cfg = {**group, **overrides}
        if cfg.pop("is_sparse", False):
            cfg["skip_zeros"] = True
        if cfg.pop("block_wise", True) is not True:
            raise ValueError(
                f"GlobalOptimManager override block_wise={overrides['block_wise']!r} for a parameter of shape "
                f"{tuple(p.shape)}: bnb8 always quantizes in blocks of 256; drop the override"
            )
        try:
            self._check_settings(cfg)
        except (TypeError, ValueError) as e:  # say where the bad value came from
            raise type(e)(
                f"GlobalOptimManager override {overrides} for a parameter of shape {tuple(p.shape)}: {e}"
            ) from None
        return cfg

    @staticmethod
    def _is_8bit(cfg: dict[str, Any], p: torch.Tensor) -> bool:
        # For a sharded (DTensor) parameter numel() is the full parameter's: never decided per shard.
        return cfg["optim_bits"] == 8 and p.numel() >= cfg["min_8bit_size"]

    def _codebook(self, device: torch.device, signed: bool) -> torch.Tensor:
        key = (device, signed)
        if key not in self._codebooks:
            self._codebooks[key] = dynamic_map(signed, device)
        return self._codebooks[key]

    def _search_tables(self, qmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        entry = self._search.get(id(qmap))
        if entry is None or entry[0] is not qmap:
            entry = (qmap, *code_search_tables(qmap))
            self._search[id(qmap)] = entry
        return entry[1], entry[2]

    def _alloc(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Zeroed state storage; paged (CUDA unified memory) for paged optimizers on CUDA.
        On the CPU paging is a no-op: host memory is what it would spill to anyway."""
        if self.is_paged and device.type == "cuda":
            from bnb8 import paged

            return paged.zeros(shape, dtype, device)
        return torch.zeros(shape, dtype=dtype, device=device)

    def _init_state(self, p: torch.Tensor, cfg: dict[str, Any]) -> None:
        state = self.state[p]
        state.setdefault("step", 0)  # only missing states are created (e.g. SGD's buffer once momentum > 0)
        quantized = self._is_8bit(cfg, p) if "state1" not in state else state["state1"].dtype == torch.uint8
        # States of a DTensor parameter are DTensors over its local shard (layout: _distributed).
        for k, (key, signed) in enumerate(self._state_kinds(cfg), start=1):
            if key in state:
                continue
            if quantized and signed is not None:
                state[key] = _distributed.state_like(p, torch.uint8, self._alloc)
                state[f"absmax{k}"] = _distributed.absmax_like(p)
                state[f"qmap{k}"] = self._codebook(p.device, signed)
            else:
                state[key] = _distributed.state_like(p, torch.float32, self._alloc)
        if cfg["percentile_clipping"] < 100 and "gnorm_vec" not in state:
            # NaN marks a slot without a recorded norm (history enabled or loaded after the first
            # step); clipping reads it as the current norm (see _gradient_scales).
            state["gnorm_vec"] = torch.full((GNORM_HISTORY,), math.nan, device=p.device)
        if self._needs_norms(cfg) and "unorm_vec" not in state:
            state["unorm_vec"] = torch.zeros(1, device=p.device)

    def _check_param(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any] | None) -> torch.device:
        """``p`` (with gradient ``g`` and optimizer state ``state``, or None) can be updated; returns
        its device."""
        if p.is_meta:
            raise RuntimeError(
                "a parameter is on the meta device (a shape without data): materialize the model first, "
                "e.g. model.to_empty(device='cpu') and initialise its weights, then step"
            )
        if g.layout != torch.strided:  # sparse COO/CSR/...
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients; use torch.optim.SparseAdam or "
                "a dense embedding (nn.Embedding(sparse=False))"
            )
        device = p.device
        if g.shape != p.shape or g.dtype != p.dtype or g.device != device:
            raise ValueError(
                f"grad: expected {p.dtype} {tuple(p.shape)} on {p.device} like its parameter, got "
                f"{g.dtype} {tuple(g.shape)} on {g.device}"
            )
        _distributed.check_grad(p, g)
        s1 = state.get("state1") if state else None  # a family may keep no state (SGD without momentum)
        if s1 is not None:
            if s1.numel() != p.numel():
                raise RuntimeError(
                    f"a parameter of shape {tuple(p.shape)} changed size after its optimizer state was created "
                    f"(state has {s1.numel()} elements); rebuild the optimizer"
                )
            if s1.device != device:
                raise RuntimeError(
                    f"optimizer state is on {s1.device} but its parameter is on {p.device}; move the model "
                    "before creating the optimizer, or load_state_dict again after moving it"
                )
        return device

    def _check_assigned_state(
        self,
        gi: int,
        pi: int,
        p: torch.Tensor,
        state: dict[str, Any],
        cfg: dict[str, Any],
        shared: dict[int, torch.Tensor],
    ) -> dict[str, Any]:
        """``p``'s ``state``, edited or assigned since bnb8 last validated it (see _ParamState): by
        hand, or by a wrapper that does not call load_state_dict (torch's ZeroRedundancyOptimizer
        assigns state_dict()'s nested layout). Checked and converted as load_state_dict would, before it
        is used; tensors that already fit are kept, not copied. ``shared`` maps a code table to its one
        validated object for this step. Returns the state ``p`` now has."""
        if not state:  # an empty dict assigned by hand: the step creates the state
            return state
        flat = self._flat_saved_state(state, p)
        own = {k: v for k, v in flat.items() if k in QUANT_KEYS or k == "step"}
        others = {k: v for k, v in flat.items() if k not in own}  # a subclass's own entries (GaLore's)
        checked = self._checked_state(f"{gi}:{pi}", p, own, shared, cfg, source="optimizer.state", reuse=True)
        if type(state) is _ParamState:
            state.replace_all({**others, **checked})
            return state
        # a plain dict assigned by a wrapper: replaced by one that tracks edits
        state = self.state[p] = _ParamState({**others, **checked}, checked=True)
        return state

    def _state_plan(self, cfg: dict[str, Any]) -> tuple[tuple[str, ...], frozenset[str], str | None]:
        """For one configuration: the states the update uses (in the rule's order), every key a
        parameter's state must have, and a state that may only be float32 (amsgrad's running
        maximum), if any."""
        kinds = self._state_kinds(cfg)
        state_keys = tuple(key for key, _ in kinds)
        keys = list(state_keys)
        if cfg["percentile_clipping"] < 100:
            keys.append("gnorm_vec")
        if self._needs_norms(cfg):
            keys.append("unorm_vec")
        float_only = next((key for key, signed in kinds if signed is None), None)
        return state_keys, frozenset(keys), float_only

    def _state_incomplete(
        self, state: dict[str, Any] | None, plan: tuple[tuple[str, ...], frozenset[str], str | None]
    ) -> bool:
        """Whether a parameter's state must be created or completed before this step (a state, or the
        norm history of percentile clipping or max_unorm, enabled after it was created). Raises, before
        anything changes, when the configuration cannot run on the state the parameter already has."""
        if not state:
            return True
        _, keys, float_only = plan
        if float_only is not None and "state1" in state and state["state1"].dtype == torch.uint8:
            # a float32-only state cannot join 8-bit ones in one native call
            raise ValueError(
                f"{type(self).__name__}: this configuration needs {float_only} in float32 (e.g. amsgrad's running "
                "maximum, 32-bit state only), but this parameter's optimizer state is 8-bit; give the parameter "
                "optim_bits=32 before its first step"
            )
        return not keys <= state.keys()

    @property
    def nonfinite_count(self) -> int:
        """Number of gradient elements skipped because they were NaN or Inf (their parameter and
        state elements stayed as they were). Reading it synchronises with the device."""
        return int(sum(int(t.item()) for t in self._nonfinite.values()))

    # -- the step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update(
            [(gi, group, list(enumerate(group["params"]))) for gi, group in enumerate(self.param_groups)]
        )
        return loss

    def _update(self, selection: list[tuple[int, dict[str, Any], list[tuple[int, torch.Tensor]]]]) -> None:
        """One step for the parameters in ``selection``: (group index, group, [(index in group, param)]).
        Parameters without a gradient are skipped; every check runs before any state changes."""
        self.mng._resolve_module_overrides()
        # Parameters of one group (without overrides) share cfg, step and so state kinds, rule and
        # hyper-parameters: derive them once per cfg (and step), not per parameter.
        plan_of: dict[int, tuple] = {}
        work = []
        shared_qmaps: dict[int, torch.Tensor] = {}
        states = self.state
        overridden = self.mng.has_overrides()
        for gi, group, members in selection:  # all checks first: a failed step changes nothing
            self._check_settings(group)  # again: param_groups may have been edited (schedulers, users)
            for pi, p in members:
                g = p.grad
                if g is None:
                    continue
                cfg = self._config(gi, pi, group, p) if overridden else group
                state = states.get(p)
                if state is not None and not getattr(state, "checked", False):  # a plain dict: never
                    state = self._check_assigned_state(gi, pi, p, state, cfg, shared_qmaps)
                device = self._check_param(p, g, state)
                plan = plan_of.get(id(cfg))
                if plan is None:
                    plan = plan_of[id(cfg)] = self._state_plan(cfg)
                work.append((p, device, state, cfg, plan[0], self._state_incomplete(state, plan)))
        # Buckets: one fused native call per (device, dtype, bucket spec, code tables, mesh). A spec is
        # derived once per configuration and step, and equal specs are one object, so that parameter
        # groups with the same settings share a call and the per-parameter key hashes no floats.
        spec_of: dict[tuple, _BucketSpec] = {}
        interned: dict[_BucketSpec, _BucketSpec] = {}
        buckets: dict[tuple, tuple[_BucketSpec, list]] = {}
        for p, device, state, cfg, state_keys, incomplete in work:
            if type(state) is not _ParamState:  # none yet, or `optimizer.state = defaultdict(dict)` (a reset)
                state = states[p] = _ParamState(state or {})
            new_state = bool(state_keys) and state_keys[0] not in state
            if incomplete:
                self._init_state(p, cfg)
                state.checked = True  # validated above (or empty), completed by bnb8 itself
            step = state["step"] + 1
            state.set_step(step)
            quantized = bool(state_keys) and state[state_keys[0]].dtype == torch.uint8
            spec_key = (id(cfg), step, quantized, new_state)
            spec = spec_of.get(spec_key)
            if spec is None:
                rule, hyper = self._rule(cfg, step, quantized, new_state=new_state)
                hyper["skip_zeros"] = int(bool(cfg["skip_zeros"]))
                spec = _BucketSpec(
                    quantized,
                    rule,
                    tuple(_native.hyper_list(**hyper)),
                    state_keys,
                    tuple("qmap" + k[5:] for k in state_keys) if quantized else (),
                    tuple("absmax" + k[5:] for k in state_keys) if quantized else (),
                    self._needs_norms(cfg),
                    cfg["percentile_clipping"],
                    cfg["max_unorm"],
                    cfg["maximize"],
                )
                spec = spec_of[spec_key] = interned.setdefault(spec, spec)
            key = (
                device,
                p.dtype,
                id(spec),
                tuple([id(state[q]) for q in spec.qmap_keys]),
                _distributed.mesh_key(p),  # sharded params: one mesh and placements per bucket
            )
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = (spec, [(p, cfg, state)])
            else:
                bucket[1].append((p, cfg, state))
        for key, (spec, members) in buckets.items():
            self._update_bucket(key[0], spec, members)

    # -- bitsandbytes' per-parameter interface ------------------------------------------------------
    # Subclasses written for bitsandbytes (GaLore's, for one) override step() and drive these
    # themselves: check_overrides/to_gpu once, then per parameter init_state, prefetch_state and
    # update_step. bnb8's own step() updates all parameters in fused buckets instead.
    initialized = False

    def check_overrides(self) -> None:
        """Resolve GlobalOptimManager module overrides now (step() does it every time)."""
        self.mng._resolve_module_overrides()

    def to_gpu(self) -> None:
        """Move every state tensor to its parameter's device (bitsandbytes' name: any device)."""
        for p, state in self.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.device != p.device:
                    state[key] = value.to(p.device)

    def init_state(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Create parameter ``p``'s missing states (8-bit or float32 as its settings decide)."""
        self._check_indices(group, p, gindex, pindex)
        self._init_state(p, self._config(gindex, pindex, group, p))

    def prefetch_state(self, p: torch.Tensor) -> None:
        """Start moving a paged optimizer's states of ``p`` to the GPU; nothing otherwise."""
        self._prefetch_paged([v for v in self.state[p].values() if isinstance(v, torch.Tensor)], p.device)

    def _prefetch_paged(self, tensors: list[torch.Tensor], device: torch.device) -> None:
        """A paged optimizer on CUDA starts moving these states' pages to ``device`` (no-op otherwise)."""
        if self.is_paged and device.type == "cuda":
            from bnb8 import paged

            paged.prefetch(tensors, device)

    @torch.no_grad()
    def update_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """One step for parameter ``p`` alone (index ``pindex`` of group ``gindex``)."""
        self._check_indices(group, p, gindex, pindex)
        self._update([(gindex, group, [(pindex, p)])])

    def _check_indices(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        groups = self.param_groups
        if not (0 <= gindex < len(groups) and groups[gindex] is group and 0 <= pindex < len(group["params"])):
            raise ValueError(
                f"gindex={gindex}, pindex={pindex}: not a parameter group and index of this optimizer"
            )
        if group["params"][pindex] is not p:
            raise ValueError(f"p: not parameter {pindex} of parameter group {gindex}")

    def _gradient_scales(self, members: list, grads: list[torch.Tensor]) -> torch.Tensor | None:
        """Per parameter of a bucket (``members``: (param, cfg, state)), the gradient's scale from
        percentile clipping and maximize, as the kernels' scales argument; None when all are 1."""
        cfg = members[0][1]
        percentile = cfg["percentile_clipping"]
        if percentile >= 100 and not cfg["maximize"]:
            return None
        device = grads[0].device
        scale = torch.ones(len(grads), device=device)
        if percentile < 100:
            sq_norms = torch.stack(torch._foreach_norm(grads)).float() ** 2
            sq_norms = _distributed.all_reduce_sums(sq_norms, members[0][0])  # shards -> whole tensors
            for i, (_, _, state) in enumerate(members):
                step = state["step"]
                history = state["gnorm_vec"]
                # A gradient with NaN/Inf elements (which the kernels skip) has no usable norm: its slot
                # stays unrecorded (NaN), and the rest of that gradient is not clipped on this step.
                finite = torch.isfinite(sq_norms[i])
                history[(step - 1) % GNORM_HISTORY] = torch.where(finite, sq_norms[i], math.nan)
                valid = min(step, GNORM_HISTORY)
                rank = max(math.ceil(percentile / 100 * valid) - 1, 0)
                recorded = history[:valid]
                recorded = torch.where(recorded.isnan(), sq_norms[i], recorded)  # slots not yet recorded
                clip = torch.sort(recorded).values[rank]
                scale[i] = torch.where(finite & (sq_norms[i] > clip), torch.sqrt(clip / sq_norms[i]), 1.0)
        if cfg["maximize"]:
            scale = -scale
        return torch.stack([scale, torch.ones_like(scale)], dim=1)

    def _update_bucket(self, device: torch.device, spec: _BucketSpec, members: list) -> None:
        """One fused native call for ``members`` ((param, cfg, state), all on ``device``, one dtype,
        sharing ``spec``), with a norms pass first when the rule needs one."""
        sharded = members[0][0]  # DTensor params: the kernels see local shards, norms are all-reduced
        cfg = members[0][1]
        n_states = len(spec.state_keys)
        plist = [p for p, _, _ in members]
        pstates = [state for _, _, state in members]
        # Column by column (this runs for every parameter at every step); the kernels see local
        # shards of sharded parameters, whose bucket shares one mesh (see mesh_key).
        if _distributed.is_dtensor(sharded):
            local = _distributed.local
            params = [local(p) for p in plist]
            grads = [local(p.grad).contiguous() for p in plist]
            states = [[local(st[key]) for st in pstates] for key in spec.state_keys]
            absmaxes = [
                [_distributed.local_absmax(st[key], p) for st, p in zip(pstates, plist)]
                for key in spec.absmax_keys
            ]
        else:
            params = plist
            grads = [p.grad.contiguous() for p in plist]
            states = [[st[key] for st in pstates] for key in spec.state_keys]
            absmaxes = [[st[key] for st in pstates] for key in spec.absmax_keys]
        # The kernels read and write raw memory: work on contiguous copies (copied back below).
        work_params = [p if p.is_contiguous() else p.contiguous() for p in params]
        qmaps, thresholds, buckets = [], [], []
        states0 = pstates[0]
        for key in spec.qmap_keys:
            qmap = states0[key]
            thr, table = self._search_tables(qmap)
            qmaps.append(qmap)
            thresholds.append(thr)
            buckets.append(table if table is not None else torch.empty(0, dtype=torch.int32, device=device))
        if self.is_paged:
            self._prefetch_paged([s for per_state in states for s in per_state], device)
        scales = self._gradient_scales(members, grads)
        state_args = [*states, *[[]] * (3 - n_states)]
        absmax_args = [*absmaxes, *[[]] * (3 - len(absmaxes))]
        rule, hyper, needs_norms = spec.rule, spec.hyper, spec.needs_norms
        ops = _ops if n_states else _StatelessOps  # a rule without state has no native kernel
        if ops is _ops and _EagerCpuOps.applies(device, work_params):
            ops = _EagerCpuOps
        if needs_norms:
            norms = ops.optimizer_norms(
                rule, work_params, grads, *state_args, *absmax_args, qmaps, list(hyper), scales
            )
            norms = _distributed.all_reduce_sums(norms, sharded).double().sqrt()
            hyper_dict = dict(zip(_native.HYPER_FIELDS, hyper))
            uscale = self._update_scale(cfg, norms[:, 0], norms[:, 1], hyper_dict).float()
            if scales is None:
                scales = torch.ones(len(params), 2, device=device)
            scales[:, 1] = uscale
            for i, state in enumerate(pstates):
                state["unorm_vec"].copy_(norms[i, 0:1])
        nonfinite = self._nonfinite.get(device)
        if nonfinite is None:
            nonfinite = self._nonfinite[device] = torch.zeros(1, dtype=torch.int64, device=device)
        ops.optimizer_update_(
            rule, work_params, grads, *state_args, *absmax_args, qmaps, thresholds, buckets, list(hyper), scales,
            nonfinite,
        )  # fmt: skip
        for p, w in zip(params, work_params):
            if w is not p:
                p.copy_(w)

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout with bitsandbytes' nesting: quantization tensors of each parameter
        (codes, absmax, qmap, float32 states, norm histories) under ``__bnb_optimizer_quant_state__``,
        so the dict loads in bitsandbytes too and FSDP's gathering skips them. Tensors and plain Python
        values only: ``torch.load(..., weights_only=True)`` reads it. Post-hooks
        (``register_state_dict_post_hook``) see this nested layout, the one that is returned."""
        post_hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = type(post_hooks)()  # run below, after nesting
        try:
            sd = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = post_hooks
        wrapped = {}
        for index, param_state in sd["state"].items():
            plain = {k: v for k, v in param_state.items() if k not in QUANT_KEYS}
            quant = {k: v for k, v in param_state.items() if k in QUANT_KEYS}
            if quant:
                plain[QUANT_STATE_KEY] = quant
            wrapped[index] = plain
        sd["state"] = wrapped
        for group in sd["param_groups"]:
            for key, value in self._bnb_group_keys(group).items():
                group.setdefault(key, value)
        for post_hook in post_hooks.values():
            replaced = post_hook(self, sd)
            if replaced is not None:
                sd = replaced
        return sd

    def bitsandbytes_state_dict(self) -> dict[str, Any]:
        """``state_dict()`` in the layout bitsandbytes' optimizer of the same family keeps, to load into
        it when switching back. The layouts are one for every family but AdEMAMix, whose two momenta
        bitsandbytes stacks in ``state1`` (and their scales in ``absmax1``): that conversion copies
        both momenta. bnb8 loads either layout."""
        sd = self.state_dict()
        sd["state"] = {index: self._bitsandbytes_param_state(state) for index, state in sd["state"].items()}
        return sd

    def _bitsandbytes_param_state(self, param_state: dict[str, Any]) -> dict[str, Any]:
        """One parameter's entry of state_dict() in bitsandbytes' layout (a family whose layout
        differs converts it here; see _convert_saved_state for the way back)."""
        return param_state

    def _bnb_group_keys(self, group: dict[str, Any]) -> dict[str, Any]:
        """The keys bitsandbytes' optimizers of this family read from a group, from its settings."""
        out = dict(self.bnb_group_extras)
        for key, (alias, index) in self.bnb_group_aliases.items():
            values = list(out.get(alias, (0.0, 0.0)))
            values[index] = group[key]
            out[alias] = tuple(values)
        return out

    def load_state_dict(self, state_dict: dict[str, Any], move_to_device: bool = True) -> None:
        """Load a state dict of bnb8 or bitsandbytes (>= 0.44) for the same parameters.

        Everything is checked before anything changes: on error the optimizer is exactly as before.
        A torch.optim state dict of the same algorithm (``exp_avg``, ... see ``torch_state_keys``) loads
        as 32-bit state. Hooks registered with ``register_load_state_dict_pre_hook`` /
        ``register_load_state_dict_post_hook`` run as in torch.

        ``move_to_device`` (bitsandbytes' argument) must be True: the kernels update states on their
        parameter's device, so loaded states always move there.
        """
        if move_to_device is not True:
            raise ValueError(
                "load_state_dict: move_to_device=False is not supported; bnb8 keeps every state on its "
                "parameter's device (the kernels update it there): drop the argument"
            )
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            replaced = pre_hook(self, state_dict)
            if replaced is not None:
                state_dict = replaced
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(
                "state_dict: expected a dict with 'state' and 'param_groups' (from optimizer.state_dict())"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict: has {len(saved_groups)} parameter groups, this optimizer has {len(self.param_groups)}"
            )
        for i, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"state_dict: parameter group {i} has {len(sg['params'])} parameters, this optimizer's has "
                    f"{len(g['params'])}"
                )
        id_map = {}
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            id_map.update(
                (saved_id, (p, gi, pi)) for pi, (saved_id, p) in enumerate(zip(sg["params"], g["params"]))
            )
        new_groups = []
        for g, sg in zip(self.param_groups, saved_groups):
            # The saved hyper-parameters this optimizer knows, and every key that is no optimizer's
            # setting (an LR scheduler's initial_lr, a user's group name); bitsandbytes' groups also
            # carry other families' settings, which are dropped.
            kept = {k: v for k, v in sg.items() if k != "params" and (k in g or k not in OPTIMIZER_SETTINGS)}
            for key, (alias, index) in self.bnb_group_aliases.items():  # a bitsandbytes group
                if key not in sg and isinstance(sg.get(alias), tuple | list) and len(sg[alias]) > index:
                    kept[key] = sg[alias][index]
            merged = {**g, **kept, "params": g["params"]}
            for key, default in COMMON_DEFAULTS.items():
                merged.setdefault(key, default)
            self._check_settings(merged)
            new_groups.append(merged)
        new_state: dict[torch.Tensor, dict[str, Any]] = {}
        shared: dict[int, torch.Tensor] = {}  # keeps one qmap object per saved qmap (shared buckets)
        for index, saved in state_dict["state"].items():
            if index not in id_map:
                raise ValueError(f"state_dict: state for parameter index {index!r}, which no group lists")
            p, gi, pi = id_map[index]
            cfg = self._config(gi, pi, new_groups[gi], p)
            new_state[p] = self._checked_state(index, p, self._flat_saved_state(saved, p), shared, cfg)
        # Nothing failed: commit.
        self.state = defaultdict(_ParamState, {p: _ParamState(s, checked=True) for p, s in new_state.items()})
        self.param_groups = new_groups
        self._search.clear()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # -- pickling (copy.deepcopy, torch.save of the optimizer object) ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "is_paged": self.is_paged, "args": self.args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.is_paged = bool(state.pop("is_paged", False))
        self.args = state.pop("args", None)
        super().__setstate__(state)
        self._init_caches()

    def _flat_saved_state(self, saved: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        """A saved parameter state in bnb8's flat layout: the nested quantization tensors un-nested,
        torch.optim's state names mapped to bnb8's, the family's own conversion applied. Not checked."""
        flat = {k: v for k, v in saved.items() if k != QUANT_STATE_KEY}
        flat.update(saved.get(QUANT_STATE_KEY, {}))
        if self.torch_state_keys.keys() & flat.keys():  # a torch.optim state (SGD's keeps no step)
            flat.setdefault("step", 1)
        flat = {self.torch_state_keys.get(k, k): v for k, v in flat.items()}
        return self._convert_saved_state(flat, p)

    def _checked_state(
        self,
        index: Any,
        p: torch.Tensor,
        saved: dict[str, Any],
        shared: dict[int, torch.Tensor],
        cfg: dict[str, Any],
        source: str = "state_dict",
        reuse: bool = False,
    ) -> dict[str, Any]:
        """``saved`` (flat) checked against ``p`` and ``cfg``, as this optimizer's state of ``p``: every
        tensor on ``p``'s device, in the kernels' dtype, contiguous, in a copy of its own; with ``reuse``
        a tensor that is all that already is used as it is (a live state, checked in place)."""
        where = f"{source}: parameter {index!r} (shape {tuple(p.shape)})"
        if "step" not in saved:
            raise ValueError(f"{where}: missing 'step'")
        unknown = sorted(str(k) for k in saved if k not in QUANT_KEYS and k != "step")
        if unknown:
            raise ValueError(
                f"{where}: unknown state {unknown} for {type(self).__name__} (expected step, "
                f"{', '.join(QUANT_KEYS)}; from torch.optim: {', '.join(self.torch_state_keys) or 'none'})"
            )
        out: dict[str, Any] = {}
        step = saved["step"]
        step = step.item() if isinstance(step, torch.Tensor) else step
        if isinstance(step, bool) or not float(step).is_integer() or not 0 <= step < 2**31 - 1:
            raise ValueError(
                f"{where}: step must be an integer in 0..2**31-2 (the kernels count in int32), got {step!r}"
            )
        out["step"] = int(step)
        nblocks = _distributed.absmax_numel(p)  # sharded (DTensor) params: layout in _distributed
        for k in (1, 2, 3):
            s = saved.get(f"state{k}")
            if s is None:
                continue
            if not isinstance(s, torch.Tensor) or s.numel() != p.numel():
                got = s.numel() if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"{where}: state{k} has {got} elements, expected {p.numel()}")
            if s.dtype == torch.uint8:
                _distributed.check_8bit_layout(s, p, where)  # blocks follow shards: same sharding only
                absmax, qmap = saved.get(f"absmax{k}"), saved.get(f"qmap{k}")
                if not isinstance(absmax, torch.Tensor) or absmax.numel() != nblocks:
                    raise ValueError(
                        f"{where}: 8-bit state{k} needs absmax{k} with {nblocks} values (one per block of {BLOCK})"
                    )
                if not isinstance(qmap, torch.Tensor) or qmap.numel() != 256:
                    raise ValueError(f"{where}: 8-bit state{k} needs qmap{k} with 256 values")
                # NaN fails `>= 0` too; +inf is a state that overflowed in training.
                if not bool((absmax.detach().float() >= 0).all()):
                    raise ValueError(f"{where}: absmax{k} holds negative or NaN values (scales are >= 0)")
                if id(qmap) not in shared:  # checked and copied once per saved table (parameters share it)
                    _check_code(qmap.detach().float().cpu(), torch.device("cpu"), f"{where}: qmap{k}")
                    table = _distributed.owned_copy(qmap, p.device, torch.float32, reuse)
                    # the same object when reused: parameters sharing a table share a fused bucket
                    shared[id(qmap)] = table if table.dim() == 1 else table.view(-1)
                out[f"state{k}"] = _distributed.load_state(s, p, torch.uint8, where, reuse)
                out[f"absmax{k}"] = _distributed.load_absmax(absmax, p, where, reuse)
                out[f"qmap{k}"] = shared[id(qmap)]
            elif s.is_floating_point():
                out[f"state{k}"] = _distributed.load_state(s, p, torch.float32, where, reuse)
            else:
                raise ValueError(f"{where}: state{k} has dtype {s.dtype}, expected uint8 or float32")
        for key, size in (("gnorm_vec", GNORM_HISTORY), ("unorm_vec", 1)):
            if key not in saved:
                continue
            value = saved[key]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() != size:
                got = (
                    f"{value.numel()} values of {value.dtype}"
                    if isinstance(value, torch.Tensor)
                    else repr(value)
                )
                raise ValueError(f"{where}: {key} must be {size} float values, got {got}")
            out[key] = _distributed.owned_copy(value, p.device, torch.float32, reuse).view(-1)
        # The states must be complete after the first step (a missing moment would restart at zero
        # under a bias correction for `step` steps: huge updates) and of one kind (one native call).
        kinds = self._state_kinds(cfg)
        present = [key for key in ("state1", "state2", "state3") if key in out]
        kinds_present = {out[key].dtype for key in present}
        missing = [key for key, _ in kinds if key not in out and not self._may_start_late(key)]
        if out["step"] > 0 and missing:
            raise ValueError(f"{where}: step is {out['step']} but {', '.join(missing)} is missing")
        extra = [key for key in present if int(key[5:]) > self.max_states]
        if extra:  # another family's state dict (Adam's second moment loaded into Lion)
            raise ValueError(
                f"{where}: {', '.join(extra)} is not a state of {type(self).__name__} (it keeps at most "
                f"{self.max_states}); is this the state dict of another optimizer?"
            )
        if len(kinds_present) > 1:
            raise ValueError(f"{where}: states {present} are not all of one kind (all 8-bit or all 32-bit)")
        if torch.uint8 in kinds_present and any(signed is None for _, signed in kinds):
            raise ValueError(
                f"{where}: 8-bit state cannot be loaded where this configuration needs 32-bit state (amsgrad)"
            )
        return out


class _EagerCpuOps:
    """The CPU kernels of bnb8._ops called directly, outside torch.compile: torch.library's dispatch
    (argument defaults, autograd and version-counter layers) costs ~0.1 ms per call, as much as the
    update of 100K parameters. Bumps the version counters of what it mutates, as the op does. Same
    signatures as bnb8._ops."""

    @staticmethod
    def applies(device: torch.device, params: list[torch.Tensor]) -> bool:
        # Plain tensors only: a tensor subclass (FakeTensor, ...) needs the op's dispatch.
        return (
            device.type == "cpu"
            and not torch.compiler.is_compiling()
            and all(type(p) in (torch.Tensor, torch.nn.Parameter) for p in params)
        )

    @staticmethod
    def optimizer_update_(rule, params, grads, s1, s2, s3, a1, a2, a3, qmaps, thresholds, buckets, hyper, scales,
                          nonfinite):  # fmt: skip
        from bnb8.backends import cpu

        cpu.optimizer_update_(rule, params, grads, s1, s2, s3, a1, a2, a3, qmaps, thresholds, buckets, hyper, scales,
                              nonfinite, trusted=True)  # fmt: skip
        torch.autograd.graph.increment_version([*params, *s1, *s2, *s3, *a1, *a2, *a3, nonfinite])

    @staticmethod
    def optimizer_norms(rule, params, grads, s1, s2, s3, a1, a2, a3, qmaps, hyper, scales):
        from bnb8.backends import cpu

        return cpu.optimizer_norms(
            rule, params, grads, s1, s2, s3, a1, a2, a3, qmaps, hyper, scales, trusted=True
        )


class _StatelessOps:
    """The update ops for a rule without state (SGD without momentum), in pure torch: native kernels
    need at least one state. Same signatures as bnb8._ops."""

    @staticmethod
    def optimizer_update_(rule, params, grads, s1, s2, s3, a1, a2, a3, qmaps, thresholds, buckets, hyper, scales,
                          nonfinite):  # fmt: skip
        from bnb8.backends import reference

        reference.optimizer_update_(rule, params, grads, [s1, s2, s3], [a1, a2, a3], qmaps, thresholds, buckets,
                                    hyper, scales, nonfinite)  # fmt: skip

    @staticmethod
    def optimizer_norms(rule, params, grads, s1, s2, s3, a1, a2, a3, qmaps, hyper, scales):
        from bnb8.backends import reference

        return reference.optimizer_norms(
            rule, params, grads, [s1, s2, s3], [a1, a2, a3], qmaps, hyper, scales
        )


def __getattr__(name: str) -> Any:
    # bitsandbytes' generic classes live in bnb8.optim.by_name (they import the families, which import
    # this module); found here, where bitsandbytes has them.
    if name in ("Optimizer1State", "Optimizer2State"):
        from bnb8.optim import by_name

        return getattr(by_name, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
