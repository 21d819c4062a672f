"""The core's shape: one registry any family plugs into, clean layers, one CLI, pinned state_dict keys."""
import ast
import json
import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch

from align import cli, frameworks, manifest, zoo
from tests.conftest import ROOT

PACKAGES = ("align", "torch_ref", "paddle_impl", "weights_convert", "twin_common")


def _sources(package):
    return sorted(p for p in (ROOT / package).rglob("*.py"))


def _imports(path):
    """The project packages a file imports (anywhere in it: function-level imports count too)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package,allowed", [
    ("torch_ref", {"torch_ref", "twin_common"}),
    ("paddle_impl", {"paddle_impl", "twin_common"}),
    ("weights_convert", {"weights_convert", "twin_common"}),
    ("twin_common", {"twin_common"}),
])
def test_layers_import_only_downwards(package, allowed):
    offending = {str(p.relative_to(ROOT)): sorted(_imports(p) - allowed) for p in _sources(package)}
    assert not {k: v for k, v in offending.items() if v}


def _module_level_imports(path, package_root):
    """Project modules a file imports at module level (what an import circle is made of)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_import_circles():
    modules = {}
    for package in PACKAGES:
        for path in _sources(package):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            modules[name] = path
    graph = {m: {d for d in _module_level_imports(p, ROOT) if d in modules and d != m} for m, p in modules.items()}
    # importing a submodule imports its package first
    for m in list(graph):
        graph[m] |= {d.rsplit(".", 1)[0] for d in graph[m] if "." in d and d.rsplit(".", 1)[0] in modules} - {m}
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open" and not m.startswith(d + "."):   # a package importing its own module is fine
                cycle.append(stack + [m, d])
            elif d not in state:
                visit(d, stack + [m])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycle, cycle[:3]


def _code_strings(path):
    """String constants in a file's code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_model_name_is_spelled_in_align_outside_the_zoo():
    names = zoo.names()
    assert {"resnet50", "retina_r50", "retina_r50_tv", "retina_r50_ghm", "retina_r50_aploss"} <= set(names)
    spelled = {}
    for path in _sources("align"):
        if "zoo" in path.relative_to(ROOT).parts:
            continue
        hits = sorted({n for s in _code_strings(path) for n in names if n in s})
        if hits:
            spelled[str(path.relative_to(ROOT))] = hits
    assert not spelled


def test_list_shows_every_model_and_the_old_scripts_still_run():
    res = subprocess.run([sys.executable, "-m", "align", "list"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.splitlines()[1:] if line and not line.startswith("(")]
    assert listed == zoo.names()
    assert res.stderr == ""                                    # no build chatter, no warnings
    old = subprocess.run([sys.executable, "align/forward_diff.py", "--list"], capture_output=True, text=True, cwd=ROOT)
    assert old.returncode == 0 and [ln.split()[0] for ln in old.stdout.splitlines()] == zoo.names("forward")


def test_bad_arguments_exit_2_naming_the_argument():
    res = subprocess.run([sys.executable, "-m", "align", "forward", "--model", "no_such_model"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "--model" in res.stderr and "no_such_model" in res.stderr
    res = subprocess.run([sys.executable, "-m", "align", "train", "--model", "retina_r50", "--steps", "0"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "--steps" in res.stderr


def test_state_dict_keys_are_unchanged():
    """Released checkpoints load only if every key and shape stays: today's lists are pinned."""
    from align.training import build_training_pair
    pinned = json.loads((ROOT / "tests" / "fixtures" / "state_dict_keys.json").read_text())

    def shapes(sd):
        return {k: list(v.shape) for k, v in sd.items()}
    for name, sides in pinned.items():
        if name.startswith("train:"):
            t, tl, p, pl = build_training_pair(zoo.get_spec(name[len("train:"):]), 3)
            got = {"torch": shapes(t.state_dict()), "paddle": shapes(p.state_dict()),
                   "torch_loss": shapes(tl.state_dict()), "paddle_loss": shapes(pl.state_dict())}
        else:
            t, p = zoo.build_twins(zoo.get_spec(name))
            got = {"torch": shapes(t.state_dict()), "paddle": shapes(p.state_dict())}
        for side, keys in sides.items():
            assert list(got[side].items()) == list(keys.items()), (name, side)


def test_frameworks_adapter_round_trips_and_names_gradients_alike():
    x = np.random.default_rng(0).normal(size=(3, 4))
    for fw in frameworks.pair():
        t = fw.tensor(x, "float32", requires_grad=True)
        assert fw.is_tensor(t) and fw.dtype_name(t) == "float32"
        np.testing.assert_array_equal(fw.to_numpy(t), x.astype(np.float32))
        fw.backward(fw.sum64(t * 2.0))
        np.testing.assert_array_equal(fw.grad_of(t, x.shape), np.full(x.shape, 2.0, np.float32))
    t_lin, p_lin = torch.nn.Linear(4, 2).double(), paddle.nn.Linear(4, 2)
    p_lin.to(dtype="float64")
    for lin in (t_lin, p_lin):
        fw = frameworks.of(lin)
        fw.backward(lin(fw.tensor(x)).sum())
    t_grads, p_grads = frameworks.TORCH.grads(t_lin), frameworks.PADDLE.grads(p_lin)
    assert set(t_grads) == set(p_grads) == {"weight", "bias"}
    assert t_grads["weight"].shape == p_grads["weight"].shape == (4, 2)    # torch's transposed to Paddle's layout
    np.testing.assert_allclose(t_grads["weight"], p_grads["weight"], rtol=1e-15)


def test_recorded_outputs_are_copies_safe_from_in_place_ops():
    """The hooks keep to_numpy's arrays; an in-place op after the hook must not reach them. Paddle's
    Tensor.numpy() copies on CPU, so the adapter skips a second copy there (numpy_copies): if Paddle ever
    returns a view, this fails."""
    for fw in frameworks.pair():
        t = fw.tensor(np.ones((2, 3)))
        kept = fw.to_numpy(t)
        with fw.no_grad():
            t.multiply_(fw.tensor(np.full((2, 3), 5.0))) if fw.name == "paddle" else t.mul_(5.0)
        np.testing.assert_array_equal(kept, np.ones((2, 3)))
        np.testing.assert_array_equal(fw.to_numpy(t), np.full((2, 3), 5.0))


# --- a toy family, registered from here alone: it must appear in list, the manifest and forward alignment --

def _toy_torch(channels=4):
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, 2, 1))


def _toy_paddle(channels=4):
    from paddle import nn
    return nn.Sequential(nn.Conv2D(3, channels, 3, padding=1), nn.BatchNorm2D(channels), nn.ReLU(),
                         nn.Conv2D(channels, 2, 1))


@pytest.fixture
def toy_family():
    spec = zoo.register(zoo.ModelSpec("toy_convnet", "a toy family registered by a test", _toy_torch, _toy_paddle,
                                      (1, 3, 9, 11), family="toy", gate=zoo.GatePlan(backward=())))
    yield spec
    zoo.unregister(spec.name)


def test_a_toy_family_plugs_in_without_other_edits(toy_family, tmp_path, capsys):
    assert "toy_convnet" in zoo.names("forward")
    cli.main(["list"])
    assert any(line.startswith("toy_convnet ") and "toy" in line for line in capsys.readouterr().out.splitlines())
    toy_checks = [c for c in manifest.checks() if c.model == "toy_convnet"]
    assert sorted((c.tool, c.root) for c in toy_checks) == [("forward", "float32"), ("forward", "float32-avx2"),
                                                             ("forward", "float64")]
    from align.forward_diff import run
    for dtype in ("float64", "float32"):
        summary = run("toy_convnet", dtype, str(tmp_path))
        assert summary["passed"], summary["first_divergence"]
        assert {"0", "1", "2", "3", "output"} <= set(summary["keys"])
    # and a planted difference in the Paddle twin is caught at its layer
    t, p = zoo.build_models(toy_family, None, 0)
    with paddle.no_grad():
        p[3].bias.set_value(p[3].bias + 1e-6)
    from align import align_forward
    bad = align_forward(t, p, toy_family.inputs(0), "float64", str(tmp_path / "bad"))
    assert not bad["passed"] and bad["first_divergence"] == "3"


def test_public_api_build_pair_and_align_forward(tmp_path):
    import align
    t, p, inputs = align.build_pair("resnet50", seed=1)
    assert set(inputs) == {"images"} and isinstance(inputs["images"], np.ndarray)
    assert inputs["images"].shape == zoo.get_spec("resnet50").input_shape
    np.testing.assert_array_equal(t.state_dict()["fc.weight"].numpy().T, p.state_dict()["fc.weight"].numpy())
    summary = align.align_forward(t, p, inputs, "float64", str(tmp_path))
    assert summary["passed"] and summary["num_keys"] > 100
