"""Synthetic COCO generator, the mirrored COCO readers/transforms/loaders, and the batch alignment check."""
import json
import shutil

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF

import paddle_impl.data as pd
import paddle_impl.data.transforms as pt
import torch_ref.data as td
import torch_ref.data.transforms as tt
from align.data_diff import main as data_diff_main
from align.data_diff import run_data_diff
from align.synthetic_coco import ensure_synthetic_coco, generate_synthetic_coco
from twin_common.coco_files import rescale_size, resolve_layout

paddle.set_device("cpu")
SMALL = dict(short_side=96, max_size=160)  # keeps every pipeline test fast


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_coco")
    ensure_synthetic_coco(root, num_images=24, seed=0)
    return root


def bilinear_reference(image, new_h, new_w):
    """Float64 half-pixel bilinear resize of (C, H, W), written from the definition."""
    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    y0, y1, ly = taps(image.shape[1], new_h)
    x0, x1, lx = taps(image.shape[2], new_w)
    top = image[:, y0][:, :, x0] * (1 - lx) + image[:, y0][:, :, x1] * lx
    bottom = image[:, y1][:, :, x0] * (1 - lx) + image[:, y1][:, :, x1] * lx
    return top * (1 - ly)[:, None] + bottom * ly[:, None]


def sample(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
            "boxes": np.array([[1.0, 2.0, 31.5, 20.0], [10.0, 0.0, w, h]]), "labels": np.array([2, 0]),
            "image_id": 7, "orig_size": (h, w)}


def np_of(x):
    return x.numpy()


# --- generator ---------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_exact(tmp_path):
    roots = [generate_synthetic_coco(tmp_path / name, num_images=4, seed=seed)
             for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    ja, jb, jc = (json.load(open(f"{r}/annotations/instances.json")) for r in roots)
    assert ja == jb and ja["annotations"] != jc["annotations"]
    for img in ja["images"]:
        assert (tmp_path / "a" / "images" / img["file_name"]).read_bytes() == \
               (tmp_path / "b" / "images" / img["file_name"]).read_bytes()
    # boxes are the drawn pixels: objects have one flat colour (the background is noisy), and in a
    # one-pixel frame around the box that colour spans exactly the box
    from twin_common.coco_files import decode_image
    for ann in ja["annotations"]:
        img = decode_image(tmp_path / "a" / "images" / f"{ann['image_id']:06d}.png")
        x, y, w, h = (int(v) for v in ann["bbox"])
        x0, y0 = max(x - 1, 0), max(y - 1, 0)
        crop = img[y0:y + h + 1, x0:x + w + 1]
        ys, xs = np.nonzero((crop == img[y + h // 2, x + w // 2]).all(axis=2))
        assert (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1) == (x, y, x + w, y + h)
        assert len(xs) == ann["area"]


def test_synthetic_set_covers_categories_and_sizes(coco_root):
    data = json.load(open(coco_root / "annotations" / "instances.json"))
    assert [c["id"] for c in data["categories"]] == [1, 3, 7, 12]
    assert {a["category_id"] for a in data["annotations"]} == {1, 3, 7, 12}
    areas = np.array([a["area"] for a in data["annotations"]])
    assert (areas < 32 ** 2).sum() >= 3 and ((areas >= 32 ** 2) & (areas < 96 ** 2)).sum() >= 3
    assert (areas >= 96 ** 2).sum() >= 3
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    assert len({round(w / h, 1) for w, h in sizes.values()}) > 5  # varied aspect ratios
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["id"] >= 1 and 0 < a["area"] <= w * h
        assert x >= 0 and y >= 0 and x + w <= sizes[a["image_id"]][0] and y + h <= sizes[a["image_id"]][1]


def test_ensure_generates_only_when_needed(tmp_path):
    ann = tmp_path / "annotations" / "instances.json"
    assert ensure_synthetic_coco(tmp_path, num_images=2, seed=0) == str(tmp_path)
    stamp = ann.stat().st_mtime_ns
    assert ensure_synthetic_coco(tmp_path, num_images=2, seed=0) == str(tmp_path)
    assert ann.stat().st_mtime_ns == stamp
    ensure_synthetic_coco(tmp_path, num_images=3, seed=0)  # other arguments: regenerated
    assert len(json.load(open(ann))["images"]) == 3


# --- dataset -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mod", [td, pd], ids=["torch", "paddle"])
def test_dataset_items(coco_root, mod):
    ds = mod.CocoDetection(coco_root)
    data = json.load(open(coco_root / "annotations" / "instances.json"))
    assert len(ds) == 24 and ds.label_to_cat_id == [1, 3, 7, 12]
    item = ds[5]
    info = next(i for i in data["images"] if i["id"] == item["image_id"])
    anns = [a for a in data["annotations"] if a["image_id"] == item["image_id"]]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (info["height"], info["width"], 3)
    assert item["orig_size"] == (info["height"], info["width"])
    expect = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    np.testing.assert_array_equal(item["boxes"], expect)
    assert item["boxes"].dtype == np.float64 and item["labels"].dtype == np.int64
    np.testing.assert_array_equal(item["labels"], [[1, 3, 7, 12].index(a["category_id"]) for a in anns])


def test_dataset_skips_crowd_and_degenerate_and_reads_official_layout(coco_root, tmp_path):
    data = json.load(open(coco_root / "annotations" / "instances.json"))
    first = data["images"][0]
    extra = [{"id": 9001, "image_id": first["id"], "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400,
              "iscrowd": 1},
             {"id": 9002, "image_id": first["id"], "category_id": 3, "bbox": [5, 5, 0.5, 20], "area": 10,
              "iscrowd": 0},
             {"id": 9003, "image_id": first["id"], "category_id": 3, "bbox": [5000, 5, 9, 9], "area": 81,
              "iscrowd": 0}]
    data["annotations"] += extra
    (tmp_path / "annotations").mkdir()
    json.dump(data, open(tmp_path / "annotations" / "instances_val2017.json", "w"))
    shutil.copytree(coco_root / "images", tmp_path / "val2017")
    official = (tmp_path / "annotations" / "instances_val2017.json", tmp_path / "val2017")
    assert resolve_layout(tmp_path) == official  # the set root
    assert resolve_layout(tmp_path / "val2017") == official  # the image folder
    assert resolve_layout(official[0]) == official  # the json
    for mod in (td, pd):
        plain, extended = mod.CocoDetection(coco_root), mod.CocoDetection(tmp_path)
        np.testing.assert_array_equal(extended[0]["boxes"], plain[0]["boxes"])
    with pytest.raises(ValueError, match="root"):
        td.CocoDetection(tmp_path / "missing")


# --- transforms --------------------------------------------------------------------------------------

def test_rescale_size_by_hand():
    assert rescale_size(200, 300, 800, 1333) == (800, 1200, 4.0, 4.0)  # short side binds
    # long side binds: scale 1333/400 = 3.3325 -> 1333.0 x 333.25 -> rounded half up (333, 1333)
    assert rescale_size(100, 400, 800, 1333) == (333, 1333, 1333 / 400, 333 / 100)


@pytest.mark.parametrize("mods", [(tt, np_of), (pt, np_of)], ids=["torch", "paddle"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resize_against_reference(mods, dtype):
    mod, to_np = mods
    s = mod.Resize(96, 160)(mod.ToTensor(dtype)(sample(40, 60)))
    # 40x60 -> scale min(96/40, 160/60) = 2.4 -> 96 x 144
    assert s["img_size"] == (96, 144) and s["scale_factor"] == (144 / 60, 96 / 40)
    image = to_np(s["image"])
    assert image.shape == (3, 96, 144) and image.dtype == np.dtype(dtype)
    ref = bilinear_reference(sample(40, 60)["image"].transpose(2, 0, 1).astype(np.float64), 96, 144)
    np.testing.assert_allclose(image, ref, rtol=0, atol=1e-10 if dtype == "float64" else 1e-3)
    expect = np.minimum(sample(40, 60)["boxes"] * [2.4, 2.4, 2.4, 2.4], [144, 96, 144, 96])
    np.testing.assert_allclose(to_np(s["boxes"]), expect, rtol=1e-6 if dtype == "float32" else 1e-15)


def test_paddle_interpolate_is_why_resize_is_written_out():
    """paddle.nn.functional.interpolate keeps its weights in float32 even for float64 tensors; the written
    out resize does not. If this starts failing, Paddle fixed it and the native op can be used."""
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 213, 301)).astype(np.float64)
    ref = TF.interpolate(torch.from_numpy(x), size=(800, 1130), mode="bilinear", align_corners=False).numpy()
    native = PF.interpolate(paddle.to_tensor(x), size=[800, 1130], mode="bilinear", align_corners=False).numpy()
    ours = pt.resize_bilinear(paddle.to_tensor(x[0]), 800, 1130).numpy()
    assert np.abs(native - ref).max() > 1e-4
    assert np.abs(ours - ref[0]).max() < 1e-10


@pytest.mark.parametrize("mod", [tt, pt], ids=["torch", "paddle"])
def test_flip_and_normalize(mod):
    s = mod.Resize(40, 60)(mod.ToTensor("float64")(sample(40, 60)))  # identity size
    flipped = mod.RandomHorizontalFlip(0.5)(s, True)
    kept = mod.RandomHorizontalFlip(0.5)(s, False)
    assert flipped["flip"] is True and kept["flip"] is False
    np.testing.assert_array_equal(np_of(flipped["image"]), np_of(s["image"])[:, :, ::-1])
    b = sample(40, 60)["boxes"]
    expect = np.stack([60 - b[:, 2], b[:, 1], 60 - b[:, 0], b[:, 3]], 1)  # x1' = W - x2, x2' = W - x1
    np.testing.assert_array_equal(np_of(flipped["boxes"]), expect)
    np.testing.assert_array_equal(np_of(kept["boxes"]), b)
    normed = np_of(mod.Normalize()(s)["image"])
    mean, std = np.array(tt.IMAGENET_MEAN)[:, None, None], np.array(tt.IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(normed, (sample(40, 60)["image"].transpose(2, 0, 1) - mean) / std, rtol=1e-14)
    empty = dict(s, boxes=s["boxes"][:0])
    assert tuple(mod.RandomHorizontalFlip()(empty, True)["boxes"].shape) == (0, 4)


@pytest.mark.parametrize("mod", [tt, pt], ids=["torch", "paddle"])
def test_collate_pads_to_stride(mod):
    a = mod.Resize(50, 70)(mod.ToTensor("float32")(sample(50, 70, seed=1)))
    b = mod.Resize(64, 64)(mod.ToTensor("float32")(sample(64, 33, seed=2)))
    a, b = mod.RandomHorizontalFlip()(a, False), mod.RandomHorizontalFlip()(b, True)
    batch = mod.collate([a, b], stride=32)
    images = np_of(batch["images"])
    assert images.shape == (2, 3, 64, 96) and images.dtype == np.float32
    np.testing.assert_array_equal(images[0, :, :50, :70], np_of(a["image"]))
    np.testing.assert_array_equal(images[1, :, :64, :33], np_of(b["image"]))
    assert not images[0, :, 50:].any() and not images[0, :, :, 70:].any() and not images[1, :, :, 33:].any()
    assert [m["flip"] for m in batch["metas"]] == [False, True]
    assert batch["metas"][0] == {"image_id": 7, "orig_size": (50, 70), "img_size": (50, 70),
                                 "scale_factor": (1.0, 1.0), "flip": False}
    assert len(batch["boxes"]) == len(batch["labels"]) == 2


@pytest.mark.parametrize("mod", [td, pd], ids=["torch", "paddle"])
def test_bad_arguments_raise(mod, coco_root):
    tr = tt if mod is td else pt
    with pytest.raises(ValueError, match="dtype"):
        tr.ToTensor("float16")
    with pytest.raises(ValueError, match="short_side"):
        tr.Resize(0, 10)
    with pytest.raises(ValueError, match="prob"):
        tr.RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="stride"):
        tr.collate([{}], stride=0)
    with pytest.raises(ValueError, match="batch_size"):
        mod.build_loader(mod.CocoDetection(coco_root), batch_size=0)


# --- loaders and the batch-level check ------------------------------------------------------------------

def epoch_plan(loader):
    return [(m["image_id"], m["flip"]) for batch in loader for m in batch["metas"]]


def test_same_seed_same_order_and_flips(coco_root):
    t_ds, p_ds = td.CocoDetection(coco_root), pd.CocoDetection(coco_root)
    t5 = td.build_loader(t_ds, batch_size=5, seed=5, dtype="float32", **SMALL)
    p5 = pd.build_loader(p_ds, batch_size=5, seed=5, dtype="float32", **SMALL)
    t6 = td.build_loader(t_ds, batch_size=5, seed=6, dtype="float32", **SMALL)
    assert len(t5) == 5
    first, second = epoch_plan(t5), epoch_plan(t5)
    assert first == epoch_plan(p5) and second == epoch_plan(p5)
    assert sorted(i for i, _ in first) == sorted(t_ds.img_ids)  # each image once per epoch
    assert first != second and first != epoch_plan(t6)  # a new order/flips each epoch and seed
    flips = [f for _, f in first + second]
    assert 0.25 < np.mean(flips) < 0.75
    # the stream is the permutation, then one uniform per position
    rng = np.random.default_rng(5)
    order = rng.permutation(24)
    assert [i for i, _ in first] == [t_ds.img_ids[k] for k in order]
    assert [f for _, f in first] == list(rng.random(24) < 0.5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_data_diff_passes(coco_root, tmp_path, dtype):
    summary = run_data_diff(coco_root, batches=3, batch_size=3, dtype=dtype, seed=1, out=tmp_path, **SMALL)
    assert summary["passed"] and summary["batches"] == 3 and summary["first_divergence"] is None
    assert summary["keys"]["batch0.images"]["max_rel"] <= (1e-12 if dtype == "float64" else 1e-5)
    assert {"batch2.flips", "batch2.boxes", "batch2.scale_factors"} <= set(summary["keys"])
    for name in ("torch.npy", "paddle.npy", "diff.txt", "summary.json"):
        assert (tmp_path / "data" / name).is_file()


def test_data_diff_detects_a_difference(coco_root, tmp_path, monkeypatch):
    """A Paddle pipeline that skips the flip of the boxes must fail the check at the boxes."""
    original = pt.RandomHorizontalFlip.__call__

    def flip_image_only(self, s, flip):
        out = original(self, s, flip)
        out["boxes"] = s["boxes"]
        return out
    monkeypatch.setattr(pt.RandomHorizontalFlip, "__call__", flip_image_only)
    summary = run_data_diff(coco_root, batches=2, batch_size=4, dtype="float64", seed=0, out=tmp_path, **SMALL)
    assert not summary["passed"] and summary["first_divergence"].endswith(".boxes")


def test_data_diff_cli(coco_root, tmp_path):
    argv = ["--data", str(coco_root), "--batches", "1", "--out", str(tmp_path), "--short-side", "64",
            "--max-size", "96"]
    assert data_diff_main(argv) == 0
    assert json.load(open(tmp_path / "data" / "summary.json"))["passed"] is True
    with pytest.raises(SystemExit) as stop:          # refused at parse time, before anything is computed
        data_diff_main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert stop.value.code == 2
