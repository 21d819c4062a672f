"""align_backward on any pair, the ReLU-decision replay it relies on in float32, and the Paddle defect the
ResNet twin works around."""
import numpy as np
import paddle
import pytest
import torch

from align.backward import align_backward
from align.events import mask_flips, record_relu_masks, replay_relu_masks
from align.zoo import build_models, get_spec, seeded_images

SHAPE = (1, 3, 64, 80)


def test_paddle_adaptive_avg_pool_float64_backward_defect_is_still_there():
    """Paddle 3.3.1: AdaptiveAvgPool2D's float64 backward scales by float32(1/(H*W)); the ResNet twin uses
    a plain mean (paddle_impl/backbones/resnet.py GlobalAvgPool)."""
    x = paddle.ones([1, 1, 4, 5], dtype="float64")
    x.stop_gradient = False
    paddle.nn.AdaptiveAvgPool2D(1)(x).sum().backward()
    assert float(x.grad[0, 0, 0, 0]) == float(np.float32(1 / 20))            # 0.05000000074505806
    y = paddle.ones([1, 1, 4, 5], dtype="float64")
    y.stop_gradient = False
    y.mean(axis=[2, 3], keepdim=True).sum().backward()
    assert float(y.grad[0, 0, 0, 0]) == 1 / 20


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resnet50_backward_aligns(dtype, tmp_path):
    torch_model, paddle_model = build_models(get_spec("resnet50"), None, 0)
    summary = align_backward(torch_model, paddle_model, seeded_images(SHAPE, 0), dtype, str(tmp_path))
    assert summary["passed"], summary["first_divergence"]
    assert summary["num_parameters_compared"] == 161 and not any(summary["unmatched"].values())
    assert summary["num_output_gradients_compared"] == 182                 # every submodule call's output
    assert list(summary["keys"])[:5] == ["objective", "outgrad.fc", "grad.fc.bias", "grad.fc.weight",
                                         "outgrad.avgpool"]               # backward execution order
    if dtype == "float64":
        assert max(v["max_rel"] for v in summary["keys"].values()) <= 1e-9


def test_adaptive_avg_pool_in_the_paddle_twin_is_caught_upstream_of_it(tmp_path, monkeypatch):
    from paddle_impl.backbones import resnet
    monkeypatch.setattr(resnet.GlobalAvgPool, "forward",
                        lambda self, x: paddle.nn.functional.adaptive_avg_pool2d(x, 1))
    torch_model, paddle_model = build_models(get_spec("resnet50"), None, 0)
    summary = align_backward(torch_model, paddle_model, seeded_images(SHAPE, 0), "float64", str(tmp_path))
    assert not summary["passed"]
    assert summary["keys"]["grad.fc.weight"]["passed"]                      # downstream of the pool: exact
    assert summary["first_divergence"] == "outgrad.layer4.2.relu#2"        # the gradient at the pool's input
    assert 1e-9 < summary["keys"]["outgrad.layer4.2.relu#2"]["max_rel"] < 1e-7
    assert not summary["keys"]["grad.layer4.2.bn3.bias"]["passed"]
    d = summary["diagnosis"]["first_divergence"]
    assert d["gradient_from"]["module"] == "avgpool" and d["locality"] == "local"


def test_relu_replay_reproduces_a_run_and_imposes_other_decisions():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2), torch.nn.ReLU())
    x = torch.randn(3, 4)
    with record_relu_masks(model) as masks:
        y = model(x)
    assert sorted(masks) == ["1", "3"] and masks["1"].shape == (3, 6)
    with replay_relu_masks(model, masks):
        assert torch.equal(model(x), y)                                    # own decisions: the same run
    flipped = {k: v.copy() for k, v in masks.items()}
    flipped["1"][0, :] = ~flipped["1"][0, :]
    assert mask_flips(masks, flipped) == {"1": 6}
    with replay_relu_masks(model, flipped):
        replayed = model(x)
    f1, m3 = (torch.from_numpy(flipped[k]).float() for k in ("1", "3"))
    assert torch.allclose(replayed, model[2](model[0](x) * f1) * m3)     # relu(v) became v * recorded mask
