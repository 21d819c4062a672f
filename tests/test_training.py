"""Training alignment: the recipe, the optimiser and clipping twins, train_diff and backward_diff end to end."""
import numpy as np
import paddle
import pytest
import torch

from align import frameworks
from align.compare import judge_after_first_step
from align.gate import check_keys
from align.train_align import run_train
from align.train_step import run_backward
from align.training import Recipe, param_groups, param_stats
from align.zoo.retinanet import no_decay


def test_recipe_schedule_is_linear_warmup_then_step_decay():
    r = Recipe(base_lr=0.02, warmup_steps=4, warmup_ratio=0.2, decay_steps=(6, 8))
    expected = [0.02 * (0.2 + 0.8 * k / 4) for k in range(4)] + [0.02, 0.02, 0.002, 0.002, 0.0002]
    assert [r.lr(i) for i in range(9)] == pytest.approx(expected, rel=1e-15)
    assert Recipe().base_lr == 0.01 * 2 / 16           # mmdetection's 0.01 at 16 images, scaled to 2


def _named_pair(rng):
    """The same float64 parameters in both frameworks, names from both sides of the no-decay rule."""
    shapes = {"backbone.conv1.weight": (4, 3), "backbone.bn1.weight": (4,), "bbox_head.retina_cls.bias": (5,)}
    arrays = {n: rng.standard_normal(s) for n, s in shapes.items()}
    t = [(n, torch.nn.Parameter(torch.tensor(a))) for n, a in arrays.items()]
    p = [(n, paddle.create_parameter(list(a.shape), "float64",
                                     default_initializer=paddle.nn.initializer.Assign(a))) for n, a in arrays.items()]
    return t, p


@pytest.mark.parametrize("clip_norm", [0.5, 1e6])        # clipping active, inactive
def test_paddle_clip_uses_torch_formula(clip_norm):
    rng = np.random.default_rng(0)
    t, p = _named_pair(rng)
    for (_, tp), (_, pp) in zip(t, p):
        g = rng.standard_normal(tuple(tp.shape))
        tp.grad = torch.tensor(g)
        (pp * paddle.to_tensor(g)).sum().backward()
    t_norm = torch.nn.utils.clip_grad_norm_([tp for _, tp in t], clip_norm)
    p_norm = frameworks.PADDLE.clip_grad_norm([pp for _, pp in p], clip_norm)
    assert float(p_norm) == pytest.approx(float(t_norm), rel=1e-15)
    for (_, tp), (_, pp) in zip(t, p):
        np.testing.assert_allclose(pp.grad.numpy(), tp.grad.numpy(), rtol=1e-15, atol=0)


def _run_optimizers(recipe, steps=4):
    rng = np.random.default_rng(1)
    t, p = _named_pair(rng)
    t_opt, p_opt = (fw.sgd(param_groups(named, recipe, no_decay), recipe.lr(0), recipe.momentum)
                    for fw, named in zip(frameworks.pair(), (t, p)))
    for i in range(steps):
        for g in t_opt.param_groups:
            g["lr"] = recipe.lr(i)
        p_opt.set_lr(recipe.lr(i))
        t_opt.zero_grad()
        p_opt.clear_grad()
        for (_, tp), (_, pp) in zip(t, p):
            g = rng.standard_normal(tuple(tp.shape))
            tp.grad = torch.tensor(g)
            (pp * paddle.to_tensor(g)).sum().backward()
        t_opt.step()
        p_opt.step()
    return max(float(np.abs(tp.detach().numpy() - pp.numpy()).max() / np.abs(tp.detach().numpy()).max())
               for (_, tp), (_, pp) in zip(t, p))


def test_optimizers_agree_given_identical_gradients():
    assert [no_decay(n) for n in ("backbone.conv1.weight", "backbone.bn1.weight", "x.bias")] == [False, True, True]
    assert _run_optimizers(Recipe(base_lr=0.1)) <= 1e-15


def test_paddle_momentum_rounds_its_coefficients_to_float32():
    """Why the recipe uses float32(0.9) and float32(1e-4): with the float64 values Paddle's kernel still
    uses float32 ones, and float64 parameters part by far more than 1e-15. If this starts failing, Paddle
    fixed it and the recipe may use the plain values."""
    assert _run_optimizers(Recipe(base_lr=0.1, momentum=0.9, weight_decay=1e-4)) > 1e-10


def test_param_stats_closed_form():
    stats = param_stats({"a": np.array([3.0, -4.0]), "b": np.array([[0.0]])})
    assert stats == {"param_norm": 5.0, "param_mean": pytest.approx(-1 / 3, rel=1e-15), "param_absmax": 4.0}


def _float32_key(ratio, f64, step="step003"):
    return {f"{step}.loss": {"max_abs": ratio * 1e-6, "max_rel": 1e-6, "noise_torch": 1e-6, "noise_paddle": 1e-6,
                             "noise_floor": 1e-6, "ratio_to_floor": ratio, "float64_max_rel": f64, "passed": False}}


def test_float32_training_judges_later_steps_on_the_float64_twins():
    results = {**_float32_key(50.0, 1e-12, "step000"), **_float32_key(50.0, 1e-12),
               **_float32_key(0.1, 1e-6, "step004")}
    judge_after_first_step(results)
    assert [results[k]["passed"] for k in ("step000.loss", "step003.loss", "step004.loss")] == [False, True, False]
    summary = {"check": "train:m", "dtype": "float32", "keys": results}
    assert check_keys(summary) == ["step000.loss", "step004.loss"]
    results["step004.loss"]["passed"] = True           # a tampered verdict is still caught by the gate
    assert check_keys(summary) == ["step000.loss", "step004.loss"]


@pytest.fixture(scope="module")
def ghm_two_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return out, run_train("retina_r50_ghm", steps=2, out=str(out), checkpoint=False)


def test_train_diff_ghm_float64(ghm_two_steps):
    out, summary = ghm_two_steps
    assert summary["passed"] and summary["first_divergence"] is None
    keys = summary["keys"]
    for step in ("step000", "step001"):
        for k in ("loss", "loss_cls", "loss_bbox", "lr", "grad_norm", "param_norm",
                  "state.loss_cls.acc_sum", "state.loss_bbox.acc_sum"):
            assert keys[f"{step}.{k}"]["max_rel"] <= 1e-8, (step, k)
    assert summary["seconds_per_step"]["torch"] > 0 and summary["paddle_over_torch_time"] > 0
    folder = out / "retina_r50_ghm" / "train"
    assert (folder / "curves.png").stat().st_size > 10_000
    assert not list(folder.glob("checkpoint_*"))


def test_train_diff_resumes_where_it_stopped(ghm_two_steps, tmp_path):
    _, straight = ghm_two_steps
    run_train("retina_r50_ghm", steps=1, out=str(tmp_path), keep_checkpoint=True)
    assert (tmp_path / "retina_r50_ghm" / "train" / "checkpoint_float64.npz").is_file()
    resumed = run_train("retina_r50_ghm", steps=2, out=str(tmp_path), resume=True)
    assert resumed["passed"]
    log = lambda folder: np.load(folder / "retina_r50_ghm" / "train" / "torch.npy", allow_pickle=True)  # noqa: E731
    straight_log = log(ghm_two_steps[0]).item()
    resumed_log = log(tmp_path).item()
    assert set(resumed_log) == set(straight_log)
    for k, v in straight_log.items():
        np.testing.assert_array_equal(resumed_log[k], v, err_msg=k)


def test_train_diff_catches_a_broken_ghm_momentum(monkeypatch, tmp_path):
    import paddle_impl.losses.retina_loss as prl
    real = prl.GHMC
    monkeypatch.setattr(prl, "GHMC", lambda **kw: real(**{**kw, "momentum": 0.7}))
    summary = run_train("retina_r50_ghm", steps=1, out=str(tmp_path), checkpoint=False)
    assert not summary["passed"]
    assert summary["first_divergence"] == "step000.loss"
    assert not summary["keys"]["step000.state.loss_cls.acc_sum"]["passed"]


def test_backward_diff_finds_a_gradient_only_bug(monkeypatch, tmp_path):
    """The loss values agree, one gradient path is off by 1%: the first diverging parameter is named."""
    import paddle_impl.losses.ghm as pghm
    for path in (pghm.HarmonizedBCE, pghm.FusedHarmonizedBCE):     # stock ops and the CPU kernel alike
        real = path.backward
        monkeypatch.setattr(path, "backward", staticmethod(lambda ctx, g, real=real: real(ctx, g * 1.01)))
    summary = run_backward("retina_r50_ghm", out=str(tmp_path))
    keys = summary["keys"]
    assert not summary["passed"]
    assert keys["loss.loss_cls"]["passed"] and keys["loss.loss_bbox"]["passed"]
    # backward execution order: the classification head's last layer is the first gradient backward computes
    assert summary["first_divergence"] == "grad.bbox_head.retina_cls.bias"
    assert not keys["grad.bbox_head.retina_cls.weight"]["passed"]
    assert keys["grad.bbox_head.retina_reg.weight"]["passed"]     # the regression path is untouched
    from torch_ref.detectors.retinanet import RetinaNet
    trainable = sum(p.requires_grad for p in RetinaNet(num_classes=3).parameters())   # frozen stem excluded
    assert summary["num_parameters_compared"] == trainable and not any(summary["unmatched"].values())
