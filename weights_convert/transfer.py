"""In-memory weight transfer between live model twins (what the alignment tools use)."""
from __future__ import annotations

from typing import Any

import numpy as np

from weights_convert.convert import KeyRule, layout_from_models, paddle_to_torch, torch_to_paddle


def torch_state_numpy(torch_model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}


def paddle_state_numpy(paddle_model: Any) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in paddle_model.state_dict().items()}


def copy_torch_to_paddle(torch_model: Any, paddle_model: Any, key_rule: KeyRule | None = None) -> Any:
    """Copy every parameter and buffer of torch_model into its Paddle twin, strictly and bit-exactly
    (key_rule: torch key -> Paddle key, default weights_convert.rules)."""
    import paddle
    layout = layout_from_models(torch_model, paddle_model, key_rule)
    state = torch_to_paddle(torch_state_numpy(torch_model), layout, what="torch model state")
    current = paddle_model.state_dict()
    paddle_model.set_state_dict({k: paddle.to_tensor(v.astype(current[k].numpy().dtype, copy=False))
                                 for k, v in state.items()})
    got = paddle_state_numpy(paddle_model)
    wrong = [k for k, v in state.items() if not np.array_equal(got[k], v.astype(got[k].dtype, copy=False))]
    if wrong:
        raise RuntimeError(f"Paddle model did not take these tensors: {wrong}")
    return paddle_model


def copy_paddle_to_torch(paddle_model: Any, torch_model: Any, key_rule: KeyRule | None = None) -> Any:
    import torch
    layout = layout_from_models(torch_model, paddle_model, key_rule)
    state = paddle_to_torch(paddle_state_numpy(paddle_model), layout, what="Paddle model state")
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return torch_model
