"""The one manifest of gated checks: what `align gate --regenerate` runs and re-judges, derived from the zoo's
GatePlans plus the model-free checks (losses, assigners, data). The gate and the tests iterate it.

Each Check runs `python -m align <tool> ... --out <out>/<root>` and writes <out>/<folder>; `tolerances`
override align.compare.limits_for(tool) for that check. A check a GatePlan leaves out on purpose is a
Limit with its reason, listed by the gate.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from align import zoo
from align.assign_cases import ASSIGNER_NAMES
from align.compare import DTYPES, limits_for

# float32 forward checks rerun with torch's oneDNN capped at AVX2, as on a CPU without AVX-512: the float32
# verdict must not depend on the CPU (align/compare.py)
ISA_RERUNS = {"float32-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
# the data check runs at a small image size: the pipelines' semantics do not depend on it, CI time does
DATA_ARGS = ("--short-side", "128", "--max-size", "160")


@dataclass(frozen=True)
class Check:
    tool: str                                   # a subcommand of `python -m align`
    model: str | None
    dtype: str
    root: str                                   # report root under out: the dtype, or an ISA label
    folder: str                                 # the report folder under out
    args: tuple = ()
    env: dict = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)

    def argv(self, out: str) -> list[str]:
        return [sys.executable, "-m", "align", self.tool, *self.args, "--dtype", self.dtype,
                "--out", f"{out}/{self.root}"]

    def limits(self) -> dict:
        return {**limits_for(self.tool), **self.tolerances}


@dataclass(frozen=True)
class Limit:
    tool: str
    model: str
    dtype: str
    reason: str


def _model_checks(spec: zoo.ModelSpec) -> list[Check]:
    plan, name, out = spec.gate, spec.name, []

    def add(tool, dtypes, args=(), root=None, env=None):
        for dtype in dtypes:
            r = root or dtype
            out.append(Check(tool, name, dtype, r, f"{r}/{name}/{tool}", ("--model", name, *args), env or {},
                             plan.tolerances.get(f"{tool}:{dtype}", {})))
    add("forward", plan.forward)
    for dtype in plan.deploy:
        out.append(Check("forward", name, dtype, dtype, f"{dtype}/{name}/forward_deploy", ("--model", name, "--deploy"),
                         {}, plan.tolerances.get(f"forward:{dtype}", {})))
    add("backward", plan.backward)
    add("train", plan.train, ("--steps", str(plan.train_steps), "--no-checkpoint"))
    add("metric", plan.metric)
    if plan.isa_reruns and "float32" in plan.forward:
        for label, env in ISA_RERUNS.items():
            add("forward", ("float32",), root=label, env=env)
    return out


def checks() -> list[Check]:
    """Every gated check: the model-free ones, then each zoo model's, by name."""
    out = []
    for dtype in DTYPES:
        out.append(Check("loss", None, dtype, dtype, f"{dtype}/losses", ("--loss", "all")))
        for name in ASSIGNER_NAMES:
            out.append(Check("assign", None, dtype, dtype, f"{dtype}/assigners/{name}", ("--assigner", name)))
        out.append(Check("data", None, dtype, dtype, f"{dtype}/data", DATA_ARGS))
    for name in zoo.names():
        out += _model_checks(zoo.get_spec(name))
    return out


def limits() -> list[Limit]:
    """The checks GatePlans leave out on purpose, with their reasons."""
    out = []
    for name in zoo.names():
        for key, reason in zoo.get_spec(name).gate.limits.items():
            tool, _, dtype = key.partition(":")
            out.append(Limit(tool, name, dtype, reason))
    return out


def check_for(folder: str, manifest: list[Check] | None = None) -> Check | None:
    """The manifest check that writes `folder` (or a folder above it), if any."""
    for c in manifest if manifest is not None else checks():
        if folder == c.folder or folder.startswith(c.folder + "/"):
            return c
    return None
