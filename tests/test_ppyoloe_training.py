"""PP-YOLOE training alignment: the recipe (warm-up from 0, cosine, coupled L2 without BatchNorm, no
clipping), the assigner switch by step, the EMA logged per step, and the assignment replay of float32 backward."""
import math

import numpy as np
import pytest

from align.events import assignment_site, decisions_of
from align.train_align import run_options, run_train
from align.train_diff import main as train_main
from align.train_step import StepRunner
from align.zoo import get_spec
from align.zoo.ppyoloe import RECIPE, no_decay

SPEC = get_spec("ppyoloe_s")


def test_recipe_is_warmup_from_zero_then_cosine():
    base, w, t = 0.01 * 2 / 64, 3, 12
    expected = [base * i / w for i in range(w)] + [base * 0.5 * (math.cos(math.pi * (i - w) / (t - w)) + 1)
                                                   for i in range(w, 11)]
    assert [RECIPE.lr(i) for i in range(11)] == pytest.approx(expected, rel=1e-15, abs=0)
    assert RECIPE.lr(0) == 0.0 and RECIPE.lr(3) == base          # warm-up's end value is the cosine's start
    assert RECIPE.clip_norm is None and RECIPE.weight_decay == float(np.float32(5e-4))


def test_no_decay_is_batchnorm_only():
    from torch_ref.detectors.ppyoloe import PPYOLOE
    names = [n for n, p in PPYOLOE(num_classes=3, depth_mult=0.33, width_mult=0.5).named_parameters()
             if p.requires_grad]
    excluded = [n for n in names if no_decay(n)]
    assert excluded and all(n.endswith((".bn.weight", ".bn.bias")) for n in excluded)
    assert any(n.endswith(".fc.bias") for n in names if not no_decay(n))     # conv biases decay
    assert "yolo_head.proj_conv.weight" not in names                          # never trained


def test_static_assigner_steps_default_half_and_refusals():
    assert run_options(SPEC.train, 10, {}) == {"static_assigner_steps": 5}
    assert run_options(SPEC.train, 10, {"static_assigner_steps": 0}) == {"static_assigner_steps": 0}
    with pytest.raises(ValueError, match="unknown training options"):
        run_options(SPEC.train, 10, {"warmup": 1})
    with pytest.raises(ValueError, match="takes no training options"):
        run_options(get_spec("retina_r50").train, 10, {"static_assigner_steps": 2})


def test_cli_refuses_static_assigner_steps_for_retinanet(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--model", "retina_r50", "--static-assigner-steps", "2"])
    assert e.value.code == 2
    assert "--static-assigner-steps" in capsys.readouterr().err


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return out, run_train("ppyoloe_s", steps=3, out=str(out), checkpoint=False,
                          options={"static_assigner_steps": 2})


def test_train_float64_switches_assigner_and_compares_the_ema(three_steps):
    out, summary = three_steps
    assert summary["passed"], summary["first_divergence"]
    assert summary["options"] == {"static_assigner_steps": 2}
    keys = summary["keys"]
    for step in ("step000", "step001", "step002"):
        for k in ("loss", "loss_cls", "loss_iou", "loss_dfl", "loss_l1", "lr", "grad_norm", "param_norm",
                  "ema_norm", "ema_mean", "ema_absmax", "assigner"):
            assert keys[f"{step}.{k}"]["max_rel"] <= 1e-8, (step, k)
    log = np.load(out / "ppyoloe_s" / "train" / "torch.npy", allow_pickle=True).item()
    assert [float(log[f"step{i:03d}.assigner"][0]) for i in range(3)] == [0.0, 0.0, 1.0]
    assert float(log["step000.lr"][0]) == 0.0 and float(log["step001.lr"][0]) > 0


def test_train_catches_a_paddle_twin_that_never_switches(monkeypatch, tmp_path):
    from paddle_impl.losses.ppyoloe_criterion import PPYOLOECriterion
    real = PPYOLOECriterion.assign

    def always_static(self, *args):
        self.use_static_assigner = True
        return real(self, *args)
    monkeypatch.setattr(PPYOLOECriterion, "assign", always_static)
    summary = run_train("ppyoloe_s", steps=2, out=str(tmp_path), checkpoint=False,
                        options={"static_assigner_steps": 1})
    assert not summary["passed"]
    assert summary["first_divergence"].startswith("step001.loss")
    assert summary["keys"]["step000.loss"]["passed"]


def test_the_criterion_is_the_assignment_site_and_replays_its_own_decisions():
    runner = StepRunner(SPEC, None, 0)
    first, decisions = runner.paddle("float64")
    assert len(decisions["assign"]) == 1                      # one batched call per step
    labels = decisions["assign"][0][0]
    assert labels.shape[0] == 2 and (labels != runner.num_classes).any()     # some positives, batch of 2
    replayed, _ = runner.paddle("float64", replay=decisions)
    for k, v in first.items():
        np.testing.assert_array_equal(replayed[k], v, err_msg=k)
    t_model, _, _, _ = runner._pair("float64")
    from torch_ref.losses.ppyoloe_criterion import PPYOLOECriterion
    crit = PPYOLOECriterion(3)
    assert assignment_site(crit) is crit
    with decisions_of(t_model, crit) as recorded:
        pass
    assert recorded["assign"] == []


def test_train_catches_a_paddle_ema_corrected_by_the_product_of_decays(monkeypatch, tmp_path):
    """PaddleDetection divides by 1 - d_last**step; the 'textbook' product of the decays differs by 1.5% at step 2."""
    from paddle_impl.optim.ema import ModelEMA
    real_update = ModelEMA.update

    def update(self, model):
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        self.product = getattr(self, "product", 1.0) * d
        real_update(self, model)
        self.decay_last = self.product ** (1 / self.step)       # so that apply() divides by 1 - product
    monkeypatch.setattr(ModelEMA, "update", update)
    summary = run_train("ppyoloe_s", steps=2, out=str(tmp_path), checkpoint=False)
    assert not summary["passed"]
    keys = summary["keys"]
    assert keys["step000.ema_norm"]["passed"] and keys["step001.loss"]["passed"]   # one update: the same
    assert not keys["step001.ema_norm"]["passed"]
    assert summary["first_divergence"].startswith("step001.ema_")
