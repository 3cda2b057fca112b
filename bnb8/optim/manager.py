"""GlobalOptimManager: per-parameter optimizer overrides, as bitsandbytes documents them.

    mng = bnb8.optim.GlobalOptimManager.get_instance()
    mng.register_parameters(model.parameters())       # while the model is still on the CPU
    model = model.cuda()
    opt = bnb8.optim.Adam(model.parameters(), lr=1e-3, optim_bits=8)
    mng.override_config(model.fc1.weight, "optim_bits", 32)               # 32-bit state for this one
    mng.override_config([model.a.weight, model.b.weight], key_value_dict={"lr": 1e-5, "betas": (0.9, 0.98)})

Overrides may be registered before or after the optimizer is built; they take effect from its next
step (``optim_bits`` and ``min_8bit_size`` decide the state layout when a parameter's state is
created, on its first step). A parameter is found by identity (``nn.Module.to``/``.cuda`` keep the
``Parameter`` object), or, for ``register_module_override``, through the module attribute at step
time — so overrides survive moving the model between devices. As in bitsandbytes, overrides that a
parameter already had when ``register_parameters`` ran are also remembered by its position (group
index, index in group), for a tensor object replaced later; a parameter without overrides of its
own never takes another's by position, nor one of another shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

# Keys an override may set, and what each one means to the optimizer.
OVERRIDABLE_KEYS = frozenset(
    {
        "optim_bits",
        "min_8bit_size",
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "percentile_clipping",
        "max_unorm",
        "skip_zeros",
        # bitsandbytes' docs pass is_sparse=True for embedding layers: bnb8 implements it as
        # skip_zeros (elements whose gradient is exactly zero are left untouched).
        "is_sparse",
        # accepted as bitsandbytes accepts it; False is rejected at the next step like the argument
        "block_wise",
        # family-specific hyper-parameters
        "amsgrad",
        "decoupled_weight_decay",
        "momentum",
        "dampening",
        "nesterov",
        "alpha",
        "lr_decay",
        "t_alpha",
        "t_beta3",
        "trust_coeff",
    }
)


class GlobalOptimManager:
    """Process-wide registry of per-parameter optimizer configuration overrides (a singleton)."""

    _instance: GlobalOptimManager | None = None

    def __init__(self) -> None:
        raise RuntimeError("GlobalOptimManager is a singleton: use GlobalOptimManager.get_instance()")

    @classmethod
    def get_instance(cls) -> GlobalOptimManager:
        if cls._instance is None:
            inst = cls.__new__(cls)
            inst.initialize()
            cls._instance = inst
        return cls._instance

    def initialize(self) -> None:
        """Forget every registration and override."""
        # id(param) -> (weak reference, overrides). Tensors cannot be WeakKeyDictionary keys (their ==
        # is element-wise), so identity is checked through the weak reference.
        self._by_param: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}
        # (group index, index in group) -> (shape, overrides) of a parameter that had overrides when
        # it was registered; only a parameter of the same shape takes them by position.
        self._by_position: dict[tuple[int, int], tuple[tuple[int, ...], dict[str, Any]]] = {}
        self._module_overrides: list[tuple[weakref.ref, str, dict[str, Any]]] = []

    # -- registration -------------------------------------------------------------------------------
    def register_parameters(self, params: Iterable) -> None:
        """Register the model's parameters (or param groups) in the order the optimizer will get
        them: the overrides a parameter already has are also remembered by its position (group index,
        index in group), so they still apply if the tensor object is replaced later."""
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self._by_position = {}
        for gi, group in enumerate(groups):
            group_params = group["params"]
            group_params = [group_params] if isinstance(group_params, torch.Tensor) else group_params
            for pi, p in enumerate(group_params):
                found = self._overrides_of(p)
                if found is not None:  # the same dict: overrides given later apply too
                    self._by_position[(gi, pi)] = (tuple(p.shape), found)

    def override_config(
        self,
        parameters: torch.Tensor | Iterable[torch.Tensor],
        key: str | None = None,
        value: Any = None,
        key_value_dict: dict[str, Any] | None = None,
    ) -> None:
        """Override optimizer settings for one parameter or a list of them.

        Either ``key`` and ``value`` or ``key_value_dict``. Keys: ``optim_bits, min_8bit_size, lr,
        betas, eps, weight_decay, percentile_clipping, max_unorm, skip_zeros, is_sparse`` and the
        family-specific hyper-parameters (``momentum``, ``alpha``, ...).
        """
        if key is not None and key_value_dict is not None:
            raise ValueError("override_config: pass either key and value, or key_value_dict, not both")
        if key is not None:
            key_value_dict = {key: value}
        if not key_value_dict:
            raise ValueError("override_config: nothing to override (pass key and value, or key_value_dict)")
        unknown = set(key_value_dict) - OVERRIDABLE_KEYS
        if unknown:
            raise ValueError(
                f"override_config: unknown key(s) {sorted(unknown)}; expected some of {sorted(OVERRIDABLE_KEYS)}"
            )
        parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        for p in parameters:  # all checked before any is changed
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"override_config: expected parameters (tensors), got {type(p).__name__}")
        for p in parameters:
            self._overrides_of(p, create=True).update(key_value_dict)

    def register_module_override(
        self, module: torch.nn.Module, param_name: str, config: dict[str, Any]
    ) -> None:
        """Override ``config`` for ``getattr(module, param_name)``, resolved when an optimizer steps."""
        unknown = set(config) - OVERRIDABLE_KEYS
        if unknown:
            raise ValueError(f"register_module_override: unknown key(s) {sorted(unknown)}")
        if not isinstance(getattr(module, param_name, None), torch.Tensor):  # a typo would never apply
            names = ", ".join(n for n, _ in module.named_parameters(recurse=False)) or "none"
            raise ValueError(
                f"register_module_override: {type(module).__name__} has no tensor {param_name!r} "
                f"(its parameters: {names})"
            )
        self._module_overrides.append((weakref.ref(module), param_name, dict(config)))

    # -- lookup (used by the optimizers) ------------------------------------------------------------
    def _resolve_module_overrides(self) -> None:
        alive = []
        for module_ref, name, config in self._module_overrides:
            module = module_ref()
            if module is None:
                continue
            alive.append((module_ref, name, config))
            param = getattr(module, name, None)
            if isinstance(param, torch.Tensor):
                explicit = self._overrides_of(param, create=True)
                explicit.update({k: v for k, v in config.items() if k not in explicit})  # explicit wins
        self._module_overrides = alive

    def _overrides_of(self, param: torch.Tensor, create: bool = False) -> dict[str, Any] | None:
        entry = self._by_param.get(id(param))
        if entry is not None and entry[0]() is param:
            return entry[1]
        if not create:
            return None
        key = id(param)
        overrides: dict[str, Any] = {}
        self._by_param[key] = (
            weakref.ref(param, lambda _, key=key: self._by_param.pop(key, None)),
            overrides,
        )
        return overrides

    def has_overrides(self) -> bool:
        """Whether any parameter may have overrides (False lets a step skip asking per parameter)."""
        return bool(self._by_param or self._by_position)

    def overrides_for(self, group_index: int, index: int, param: torch.Tensor) -> dict[str, Any]:
        """The overrides of one parameter of an optimizer (empty dict when none)."""
        found = self._overrides_of(param)
        if found is not None:
            return found
        shape, overrides = self._by_position.get((group_index, index), ((), {}))
        return overrides if shape == tuple(param.shape) else {}
