"""The one place where torch and Paddle differ for the tools: one adapter per framework, same methods.

    fw = frameworks.of(model)            # or frameworks.TORCH / frameworks.PADDLE / frameworks.get("paddle")
    fw.to_numpy(t); fw.tensor(array, dtype, requires_grad); fw.cast(model, "float64"); fw.grads(model)

Every other module of align/ goes through these (no `if framework == "torch"` elsewhere). Parameter and
gradient names are the Paddle twin's (weights_convert.rules), so both sides' dicts share their keys; torch's
Linear weight gradients are transposed to Paddle's [in, out] layout.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np


class Framework:
    """The interface; TorchFramework and PaddleFramework implement it."""

    name: str = ""
    numpy_copies: bool = False   # whether detached_numpy already hands back a copy of the tensor's memory

    # tensors ---------------------------------------------------------------------------------------------
    def is_tensor(self, value: Any) -> bool: ...
    def no_grad(self) -> contextlib.AbstractContextManager: ...

    def tensor(self, array: np.ndarray, dtype: str | None = None, requires_grad: bool = False) -> Any:
        """A CPU tensor of `array`: floating arrays in `dtype` (default: their own) and with requires_grad,
        integer arrays as int64, anything else (bool) as it is."""
        array = np.asarray(array, order="C")
        if np.issubdtype(array.dtype, np.floating):
            return self._tensor(array.astype(dtype or array.dtype), requires_grad)
        return self._tensor(array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else array, False)

    def _tensor(self, array: np.ndarray, requires_grad: bool) -> Any: ...

    def detached_numpy(self, tensor: Any) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    def to_numpy(self, value: Any) -> np.ndarray | None:
        """A NumPy copy of a tensor (safe against later in-place ops); arrays pass through; else None."""
        array = self.numpy_view(value)
        if array is None or not self.is_tensor(value) or self.numpy_copies:
            return array
        return array.copy()

    def numpy_view(self, value: Any) -> np.ndarray | None:
        """A tensor's values as NumPy, possibly sharing its memory (read it before the tensor can change);
        arrays pass through; else None."""
        if self.is_tensor(value):
            return self.detached_numpy(value)
        return value if isinstance(value, np.ndarray) else None

    def sum64(self, tensor: Any) -> Any:
        """The sum of a tensor's elements with a float64 accumulator (a float64 scalar tensor)."""
        ...

    def item(self, tensor: Any) -> float:
        return float(self.detached_numpy(tensor).reshape(-1)[0])

    def grad_of(self, tensor: Any, shape: tuple) -> np.ndarray:
        """The gradient accumulated on an input tensor, zeros where it has none."""
        g = tensor.grad if self.is_tensor(tensor) and self.requires_grad(tensor) else None
        return np.zeros(shape) if g is None else self.to_numpy(g)

    def dtype_name(self, tensor: Any) -> str:
        """'float32', 'float64', 'int64', ... of a tensor."""
        return str(tensor.dtype).rsplit(".", 1)[-1]

    def like(self, array: np.ndarray, tensor: Any) -> Any:
        """A constant tensor of `array`'s values with `tensor`'s dtype."""
        return self.tensor(np.asarray(array).astype(self.dtype_name(tensor)))

    def requires_grad(self, tensor: Any) -> bool: ...
    def register_grad_hook(self, tensor: Any, hook: Callable) -> Any:
        return tensor.register_hook(hook)

    # modules -----------------------------------------------------------------------------------------------
    def is_module(self, obj: Any) -> bool: ...
    def cast(self, model: Any, dtype: str) -> Any: ...
    def set_mode(self, model: Any, train: bool) -> Any: ...
    def named_submodules(self, model: Any) -> list[tuple[str, Any]]: ...
    def register_post_hook(self, module: Any, hook: Callable) -> Any: ...
    def register_pre_hook(self, module: Any, hook: Callable) -> Any:
        return module.register_forward_pre_hook(hook)

    relu_type: type
    def named_trainable(self, model: Any) -> list[tuple[str, Any]]: ...
    def state_dict(self, module: Any) -> dict:
        return module.state_dict()

    def load_state_dict(self, module: Any, state: dict) -> None: ...

    def numpy_state(self, module: Any) -> dict[str, np.ndarray]:
        return {k: self.to_numpy(v) for k, v in self.state_dict(module).items()}

    # gradients and optimisation ----------------------------------------------------------------------------
    def backward(self, total: Any) -> None:
        total.backward()

    def zero_grad(self, model: Any) -> None: ...
    def grads(self, model: Any) -> dict[str, np.ndarray]: ...
    def param_arrays(self, named: list[tuple[str, Any]]) -> dict[str, np.ndarray]: ...
    def sgd(self, groups: list[dict], lr: float, momentum: float) -> Any: ...
    def set_lr(self, opt: Any, lr: float) -> None: ...
    def clip_grad_norm(self, params: list, max_norm: float) -> float: ...
    def opt_state(self, opt: Any, model: Any) -> dict: ...
    def load_opt_state(self, opt: Any, model: Any, state: dict) -> None: ...


class TorchFramework(Framework):
    name = "torch"

    def __init__(self) -> None:
        import torch
        self.torch = torch

    def is_tensor(self, value):
        return isinstance(value, self.torch.Tensor)

    def _tensor(self, array, requires_grad):
        return self.torch.tensor(array).requires_grad_(requires_grad)

    def no_grad(self):
        return self.torch.no_grad()

    def sum64(self, tensor):
        return tensor.sum(dtype=self.torch.float64)

    def requires_grad(self, tensor):
        return bool(tensor.requires_grad)

    def is_module(self, obj):
        return isinstance(obj, self.torch.nn.Module)

    @property
    def relu_type(self):
        return self.torch.nn.ReLU

    def cast(self, model, dtype):
        return model.to(getattr(self.torch, dtype))

    def set_mode(self, model, train):
        return model.train(train)

    def named_submodules(self, model):
        return [(n, m) for n, m in model.named_modules() if n]

    def register_post_hook(self, module, hook):
        return module.register_forward_hook(hook)

    def named_trainable(self, model):
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def load_state_dict(self, module, state):
        module.load_state_dict(state)

    def zero_grad(self, model):
        model.zero_grad(set_to_none=True)

    def grads(self, model):
        from weights_convert.rules import linear_weight_keys, torch_key_to_paddle
        transposed = linear_weight_keys(model)
        return {torch_key_to_paddle(n): self.to_numpy(p.grad.t() if n in transposed else p.grad)
                for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    def param_arrays(self, named):
        return {n: p.detach().numpy() for n, p in named}

    def sgd(self, groups, lr, momentum):
        return self.torch.optim.SGD(groups, lr=lr, momentum=momentum)

    def set_lr(self, opt, lr):
        for g in opt.param_groups:
            g["lr"] = lr

    def clip_grad_norm(self, params, max_norm):
        return float(self.torch.nn.utils.clip_grad_norm_(params, max_norm))

    def opt_state(self, opt, model):
        return opt.state_dict()

    def load_opt_state(self, opt, model, state):
        opt.load_state_dict(state)


class PaddleFramework(Framework):
    name = "paddle"
    numpy_copies = True        # Tensor.numpy() copies on CPU (tests/test_architecture.py checks it still does)

    def __init__(self) -> None:
        import paddle
        self.paddle = paddle

    def is_tensor(self, value):
        return isinstance(value, self.paddle.Tensor)

    def _tensor(self, array, requires_grad):
        t = self.paddle.to_tensor(array, place=self.paddle.CPUPlace())
        t.stop_gradient = not requires_grad
        return t

    def no_grad(self):
        return self.paddle.no_grad()

    def sum64(self, tensor):
        return tensor.sum(dtype="float64")

    def requires_grad(self, tensor):
        return not tensor.stop_gradient

    def is_module(self, obj):
        return isinstance(obj, self.paddle.nn.Layer)

    @property
    def relu_type(self):
        return self.paddle.nn.ReLU

    def cast(self, model, dtype):
        model.to(dtype=dtype)
        return model

    def set_mode(self, model, train):
        model.train() if train else model.eval()
        return model

    def named_submodules(self, model):
        return list(model.named_sublayers())

    def register_post_hook(self, module, hook):
        return module.register_forward_post_hook(hook)

    def named_trainable(self, model):
        return [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]

    def load_state_dict(self, module, state):
        module.set_state_dict(state)

    def zero_grad(self, model):
        model.clear_gradients()

    def grads(self, model):
        return {n: self.to_numpy(p.grad) for n, p in model.named_parameters()
                if not p.stop_gradient and p.grad is not None}

    def param_arrays(self, named):
        return {n: p.numpy() for n, p in named}

    def sgd(self, groups, lr, momentum):
        return self.paddle.optimizer.Momentum(learning_rate=lr, momentum=momentum, parameters=groups,
                                              use_nesterov=False)

    def set_lr(self, opt, lr):
        opt.set_lr(lr)

    def clip_grad_norm(self, params, max_norm):
        """torch.nn.utils.clip_grad_norm_'s formula, coef = min(1, max_norm / (norm + 1e-6)). Paddle's
        ClipGradByGlobalNorm uses max_norm / max(norm, max_norm), ~1e-6 / norm apart whenever it clips
        (align/training.py); returns the global norm before clipping."""
        paddle = self.paddle
        grads = [p.grad for p in params if p.grad is not None]
        norm = paddle.sqrt(paddle.add_n([(g * g).sum() for g in grads]))
        coef = paddle.clip(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.set_value(g * coef)
        return float(norm)

    def opt_state(self, opt, model):
        """Paddle keys its optimizer state by generated parameter names (conv2d_154.w_0_velocity_0), which
        depend on how many layers the process built before: stored under the structured names instead."""
        return _rename_prefixes(opt.state_dict(), {p.name: n for n, p in model.named_parameters()})

    def load_opt_state(self, opt, model, state):
        opt.set_state_dict(_rename_prefixes(state, {n: p.name for n, p in model.named_parameters()}))


def _rename_prefixes(state: dict, names: dict[str, str]) -> dict:
    """Keys of an optimizer state that start with a parameter's name + '_' get the mapped name instead."""
    out = {}
    for key, value in state.items():
        old = max((n for n in names if key.startswith(n + "_")), key=len, default=None)
        out[key if old is None else names[old] + key[len(old):]] = value
    return out


_INSTANCES: dict[str, Framework] = {}
_CLASSES = {"torch": TorchFramework, "paddle": PaddleFramework}
NAMES = tuple(_CLASSES)


def get(name: str) -> Framework:
    """The adapter of 'torch' or 'paddle' (built once; importing the framework on first use)."""
    if name not in _CLASSES:
        raise ValueError(f"framework must be one of {NAMES}, got {name!r}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _CLASSES[name]()
    return _INSTANCES[name]


def of(obj: Any) -> Framework:
    """The adapter of a model, layer or tensor."""
    torch_fw = get("torch")
    if torch_fw.is_module(obj) or torch_fw.is_tensor(obj):
        return torch_fw
    return get("paddle")


def to_numpy(value: Any) -> np.ndarray | None:
    """A NumPy copy of a tensor of either framework; arrays pass through; anything else -> None."""
    if isinstance(value, np.ndarray):
        return value
    for name in NAMES:
        fw = get(name)
        if fw.is_tensor(value):
            return fw.to_numpy(value)
    return None


def pair() -> Iterator[Framework]:
    """torch's adapter, then Paddle's."""
    return iter((get("torch"), get("paddle")))


def __getattr__(attr: str) -> Framework:
    # frameworks.TORCH / frameworks.PADDLE, built lazily so importing this module imports neither framework
    if attr in ("TORCH", "PADDLE"):
        return get(attr.lower())
    raise AttributeError(attr)
