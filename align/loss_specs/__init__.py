"""What loss_diff needs to know about each loss: one module per loss in this package defines `SPEC`.

A LossSpec says how to build the loss in each framework, which cases to run, and how to evaluate the
independent float64 NumPy reference (align/numpy_ref/). The runner (align/loss_runner.py) feeds every case
to torch, paddle and NumPy, compares loss values, gradients w.r.t. the inputs and any state (GHM acc_sum),
and writes the standard report (align/report.py).
"""
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class LossCase:
    """One input set. `steps` lists one input dict per consecutive call on the same loss object (stateful
    losses such as GHM with momentum compare their state after each call); most cases have one step."""
    name: str
    steps: list                     # [ {input name: float64 or int64 ndarray}, ... ]
    grad_wrt: tuple = ()            # names of float inputs whose gradients are compared
    note: str = ""


@dataclass
class LossSpec:
    name: str
    # (dtype) -> loss object; calling it with the step's inputs as framework tensors (keyword arguments)
    # returns a scalar tensor, or a tuple/dict of tensors (each logged; their sum is back-propagated).
    build_torch: Callable
    build_paddle: Callable
    # (rng: np.random.Generator) -> [LossCase]
    make_cases: Callable
    # (steps: [inputs dict], grad_wrt) -> [ {"outputs": {name: array}, "grads": {input: array},
    #                                        "state": {name: array}} per step ], all float64
    numpy_reference: Callable
    # (loss object) -> {name: ndarray}: state compared after every step (e.g. GHM acc_sum); None if stateless
    torch_state: Optional[Callable] = None
    paddle_state: Optional[Callable] = None
    # extra per-step diagnostics, e.g. GHM's count of elements whose bin differs between frameworks:
    # (torch_inputs_np, torch_outputs, paddle_inputs_np, ...) left to the spec; keys go to summary["extra"]
    diagnostics: Optional[Callable] = None
    description: str = ""
    extra: dict = field(default_factory=dict)
