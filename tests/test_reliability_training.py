"""Issue 13 (training and metric reliability): resume checkpoints carry no code, resume refuses other settings,
loops over data end, and a metric over nothing does not pass."""
import builtins
import contextlib
import json
import pickle
import shutil
import signal

import numpy as np
import pytest

from align import metric_diff, train_data, train_diff
from align.metric_align import run_metric
from align.synthetic_coco import generate_synthetic_coco
from align.train_align import read_checkpoint, run_settings, run_train, train
from align.train_data import DataError, first_batches
from weights_convert.checkpoint_io import CheckpointError

MODEL = "retina_r50_ghm"


class Interrupted(Exception):
    pass


class Payload:
    """Unpickling it creates `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@contextlib.contextmanager
def time_limit(seconds):
    """Fail instead of hanging: the endless loop this guards against is plain Python, SIGALRM stops it."""
    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def ckpt_path(out, dtype="float64"):
    return out / MODEL / "train" / f"checkpoint_{dtype}.npz"


def place(src, out):
    """A copy of checkpoint src where a run with --out out looks for it."""
    dst = ckpt_path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def cli_error(capsys, tool, argv):
    """(exit status, stderr) of a tool's command line; the error must be one line without a traceback."""
    rc = tool.main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return rc, err


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The checkpoint a 2-step run leaves when it is interrupted during step 1 (one step completed)."""
    import align.train_align as ta
    out = tmp_path_factory.mktemp("interrupted")
    real = ta.Side.step

    def step(self, i, batch):
        if i == 1:
            raise Interrupted
        return real(self, i, batch)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ta.Side, "step", step)
        with pytest.raises(Interrupted):
            run_train(MODEL, steps=2, out=str(out))
    saved = out / "saved.npz"
    shutil.copyfile(ckpt_path(out), saved)
    return saved


def test_checkpoint_is_plain_arrays_and_json(interrupted):
    with np.load(interrupted, allow_pickle=False) as z:            # would raise on any pickled entry
        assert all(z[k].dtype != object for k in z.files)
        header = json.loads(bytes(z["header.json"]).decode())
        assert any(k.startswith("torch/model/") for k in z.files) and any(k.startswith("paddle/opt/") for k in z.files)
    assert header["step"] == 1 and header["version"] == 1
    assert header["settings"] == run_settings(MODEL, "float64", None, 0, 2)
    assert set(header["seconds"]) == {"torch", "paddle"}


def test_resume_after_an_interruption_gives_the_uninterrupted_logs(interrupted, tmp_path, capsys):
    # nothing to resume: a warning, then the whole run (the reference)
    missing = ckpt_path(tmp_path / "straight")
    t_ref, p_ref, _ = train(MODEL, 2, "float64", None, 0, missing, resume=True)
    assert f"--resume: no checkpoint at {missing}, starting at step 0" in capsys.readouterr().err
    ckpt = place(interrupted, tmp_path / "resumed")
    t, p, sec = train(MODEL, 2, "float64", None, 0, ckpt, resume=True)
    assert "--resume" not in capsys.readouterr().err
    for ref, log in ((t_ref, t), (p_ref, p)):
        assert list(log) == list(ref) and any(k.startswith("step001.") for k in log)
        for k, v in ref.items():
            np.testing.assert_array_equal(log[k], v, err_msg=k)
    assert sec["torch"] > 0 and sec["paddle"] > 0


def test_resume_refuses_another_seed(interrupted, tmp_path, capsys):
    place(interrupted, tmp_path)
    rc, err = cli_error(capsys, train_diff, ["--model", MODEL, "--steps", "2", "--seed", "1", "--out", str(tmp_path),
                                             "--resume"])
    assert rc == 2
    assert "checkpoint_float64.npz was made with seed 0; this run has seed 1" in err


def test_resume_refuses_a_checkpoint_past_the_last_step(interrupted, tmp_path):
    ckpt = place(interrupted, tmp_path)
    with np.load(ckpt, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["header.json"]).decode())
    header["step"] = 3
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match="is at step 3, past this run's 2 steps"):
        read_checkpoint(ckpt, run_settings(MODEL, "float64", None, 0, 2))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_checkpoint_is_a_one_line_error(interrupted, tmp_path, capsys, damage):
    ckpt = place(interrupted, tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage])
    rc, err = cli_error(capsys, train_diff, ["--model", MODEL, "--steps", "2", "--out", str(tmp_path), "--resume"])
    assert rc == 2 and f"cannot read {ckpt}" in err


def test_npz_with_a_pickled_payload_is_not_executed(tmp_path, capsys):
    marker = tmp_path / "marker"
    ckpt = ckpt_path(tmp_path)
    ckpt.parent.mkdir(parents=True)
    header = {"format": "align.train_align checkpoint", "version": 1, "step": 1,
              "settings": run_settings(MODEL, "float64", None, 0, 2)}
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    with open(ckpt, "wb") as f:
        np.savez(f, **{"header.json": np.frombuffer(json.dumps(header).encode(), np.uint8), "torch/model/w": evil})
    rc, err = cli_error(capsys, train_diff, ["--model", MODEL, "--steps", "2", "--out", str(tmp_path), "--resume"])
    assert rc == 2 and f"cannot read {ckpt}" in err
    assert not marker.exists()
    # the same file under a pickle-trusting reader does run the payload: the test's file is really malicious
    np.load(ckpt, allow_pickle=True)["torch/model/w"]
    assert marker.exists()


def test_pickle_renamed_npz_and_legacy_pkl_are_never_unpickled(tmp_path, monkeypatch, capsys):
    import align.train_align as ta
    marker = tmp_path / "marker"
    folder = ckpt_path(tmp_path).parent
    folder.mkdir(parents=True)
    (folder / "checkpoint_float64.pkl").write_bytes(pickle.dumps({"step": 1, "x": Payload(marker)}))

    def stop(*args, **kwargs):          # the checkpoint stage is over: no need to train
        raise Interrupted
    monkeypatch.setattr(ta, "first_batches", stop)
    with pytest.raises(Interrupted):
        run_train(MODEL, steps=1, out=str(tmp_path), resume=True)
    err = capsys.readouterr().err
    assert "--resume: no checkpoint at" in err
    assert "checkpoint_float64.pkl, the old pickle format, is never loaded" in err
    assert not marker.exists()
    ckpt_path(tmp_path).write_bytes(pickle.dumps(Payload(marker)))      # a pickle under the new name
    with pytest.raises(CheckpointError, match="cannot read"):
        run_train(MODEL, steps=1, out=str(tmp_path), resume=True)
    assert not marker.exists()


@pytest.fixture
def empty_coco(tmp_path):
    root = tmp_path / "empty_coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "annotations" / "instances.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "square", "supercategory": "shape"}]}))
    return root


def test_empty_dataset_raises_in_bounded_time(empty_coco, tmp_path, capsys):
    with time_limit(60), pytest.raises(DataError, match="no images"):
        first_batches(empty_coco, 2, "float64", 0)
    with time_limit(60):
        rc, err = cli_error(capsys, train_diff, ["--model", MODEL, "--steps", "1", "--data", str(empty_coco),
                                                 "--out", str(tmp_path), "--no-checkpoint"])
    assert rc == 2 and f"--data {empty_coco}: no images" in err


def test_loader_without_batches_ends(monkeypatch):
    monkeypatch.setattr(train_data, "loader_pair", lambda *args, **kwargs: ([], [], 1))
    with time_limit(60), pytest.raises(DataError, match="no batches"):
        first_batches(None, 3, "float64", 0)


def test_metric_on_zero_images_does_not_pass(empty_coco, tmp_path, capsys):
    rc, err = cli_error(capsys, metric_diff, ["--data", str(empty_coco), "--out", str(tmp_path)])
    assert rc == 2 and "no images" in err
    assert not list(tmp_path.rglob("summary.json"))


def test_metric_without_ground_truth_does_not_pass(tmp_path):
    root = tmp_path / "no_boxes"
    generate_synthetic_coco(root, num_images=1)
    ann = root / "annotations" / "instances.json"
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "annotations": []}))
    with pytest.raises(DataError, match="no ground-truth boxes"):
        run_metric("retina_r50", data=str(root), out=str(tmp_path))
