"""What the GHM-C and GHM-R specs share: two configurations per object, state, bin diagnostics, the NumPy
reference (optionally on a given binning) and the float32 explanation of elements that changed bins.

Float32 rule (see align/loss_runner.py): an element may land in different bins in the two twins only when
a rounding difference moved it across an edge. Every such element must sit in adjacent bins in the two twins
and its float64 g must lie within EDGE_TOLERANCE of the edge between them; the case's outputs are then
compared after removing the part the moves explain (the float64 definition on each twin's own binning).
"""
import numpy as np

from align.loss_specs import LossSpec
from align.loss_specs.common import MultiLoss, paddle_losses, torch_losses

EDGE_TOLERANCE = 4 * float(np.finfo(np.float32).eps)   # g is in [0, 1]: a few float32 ulps of 1


def _state(obj, to_numpy):
    return {f"{name}.{key}": to_numpy(value) for name, module in obj.parts.items()
            for key, value in module.state_dict().items()}


def reference_steps(ref_factory, configs, steps, grad_wrt, diag_steps=None):
    """NumPy reference of every step; diag_steps forces each configuration's bin assignment per step."""
    refs = {name: ref_factory(**cfg) for name, cfg in configs.items()}
    records = []
    for k, step in enumerate(steps):
        rec = {"outputs": {}, "grads": {g: np.zeros(np.shape(step[g])) for g in grad_wrt}, "state": {}, "diag": {}}
        for name, ref in refs.items():
            bins = None if diag_steps is None else diag_steps[k][name]
            value, grads, state, bin_of = ref(**step, bins=bins)
            rec["outputs"][name] = np.asarray(value)
            for g in grad_wrt:
                rec["grads"][g] = rec["grads"][g] + grads[g]
            rec["state"].update({f"{name}.{key}": v for key, v in state.items()})
            rec["diag"][name] = bin_of
        records.append(rec)
    return records


def explain_moves(ref_factory, configs, steps, torch_diag, paddle_diag):
    """Per step and configuration: moved elements, those not explained by a near-edge g, worst distance."""
    out = []
    for step, t_step, p_step in zip(steps, torch_diag, paddle_diag):
        per_name = {}
        for name, cfg in configs.items():
            ref = ref_factory(**cfg)
            t, p = np.asarray(t_step[name]), np.asarray(p_step[name])
            moved = t != p
            g, _ = ref.gradient_length(**step)
            upper = np.maximum(t, p)[moved]
            ok = (np.abs(t - p)[moved] == 1) & (upper < ref.num_bins)
            dist = np.abs(g[moved] - ref.edges[np.minimum(upper, ref.num_bins)])
            explained = ok & (dist <= EDGE_TOLERANCE)
            per_name[name] = {"moved": int(moved.sum()), "unexplained": int((~explained).sum()),
                              "max_edge_distance": float(dist.max()) if dist.size else 0.0}
        out.append(per_name)
    return out


def ghm_spec(name, class_name, ref_factory, configs, make_cases, description):
    """A LossSpec running `class_name` of each twin in every configuration at once (MultiLoss)."""
    def build(lib_fn):
        return lambda dtype: MultiLoss({n: getattr(lib_fn(), class_name)(**cfg) for n, cfg in configs.items()})

    return LossSpec(
        name=name,
        build_torch=build(torch_losses),
        build_paddle=build(paddle_losses),
        make_cases=make_cases,
        numpy_reference=lambda steps, grad_wrt: reference_steps(ref_factory, configs, steps, grad_wrt),
        torch_state=lambda obj: _state(obj, lambda v: v.detach().cpu().numpy()),
        paddle_state=lambda obj: _state(obj, lambda v: v.numpy()),
        diagnostics=lambda framework, obj, tensors: {n: m.bin_index(**tensors) for n, m in obj.parts.items()},
        description=description,
        extra={
            "reference_with_diag": lambda steps, grad_wrt, diag: reference_steps(ref_factory, configs, steps,
                                                                                grad_wrt, diag),
            "explain_diag": lambda steps, t_diag, p_diag: explain_moves(ref_factory, configs, steps, t_diag, p_diag),
            "configs": configs,
            "float32_rule": __doc__.split("Float32 rule (see align/loss_runner.py): ")[1].strip(),
        },
    )
