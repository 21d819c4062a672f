"""Every tool checks its arguments before computing and turns an expected error into one line and exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "align", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "a_file.txt"
    path.write_text("not a folder")
    return path


CASES = [
    (("forward", "--model", "resnet50", "--out", "{file}"), "--out", "is a file"),
    (("forward", "--model", "resnet50", "--out", "{file}/sub"), "--out", "is a file"),
    (("backward", "--model", "resnet50", "--seed", "-1"), "--seed", "must be an integer >= 0"),
    (("forward", "--model", "resnet50", "--input-shape", "2,3,-5,10"), "--input-shape", "must be N,3,H,W"),
    (("forward", "--model", "resnet50", "--input-shape", "0,3,64,64"), "--input-shape", "must be N,3,H,W"),
    (("metric", "--model", "retina_r50", "--data", "/no/such/set"), "--data", "does not exist"),
    (("forward", "--model", "resnet50", "--weights", "/no/such.pt"), "--weights", "does not exist"),
    (("forward", "--model", "resnet50", "--weights", "{dir}"), "--weights", "is not a file"),
    (("train", "--model", "retina_r50", "--steps", "0"), "--steps", "must be a positive integer"),
]


@pytest.mark.parametrize("args, argument, says", CASES, ids=[" ".join(c[0][:1] + c[0][-2:-1]) for c in CASES])
def test_bad_arguments_are_one_line_and_exit_2_before_computing(args, argument, says, a_file):
    args = [a.format(file=a_file, dir=a_file.parent) for a in args]
    res = _run(*args, timeout=60)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]                 # no usage block either
    assert argument in lines[0] and says in lines[0]
    assert "Traceback" not in res.stderr


def test_an_expected_error_after_parsing_is_one_line_and_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "pair.py"
    bad.write_text("def build_pair(dtype):\n    raise ValueError('this pair cannot be built: no weights')\n")
    res = _run("forward", "--pair", str(bad), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.strip()][-1].endswith(
        "this pair cannot be built: no weights (--debug shows the traceback)")
    res = _run("forward", "--pair", str(bad), "--out", str(tmp_path / "out"), "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_weights_with_nan_are_refused_naming_the_key(tmp_path):
    import torch

    from align import zoo
    t, _ = zoo.build_twins(zoo.get_spec("resnet50"))
    state = t.state_dict()
    state["fc.bias"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    res = _run("forward", "--model", "resnet50", "--weights", str(tmp_path / "nan.pt"), "--out", str(tmp_path))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "fc.bias" in lines[0] and "--allow-nonfinite" in lines[0], \
        res.stderr[-2000:]
    assert not (tmp_path / "resnet50").exists()


@pytest.mark.parametrize("content, says", [("[1, 2]", "expected a COCO JSON object, found a list"),
                                           ('{"images": [], "annotations": []}', "'categories' must be a list"),
                                           ('{"images": {}, "annotations": [], "categories": []}',
                                            "'images' must be a list, it is a dict"),
                                           ("garbage{", "not a readable JSON file")])
def test_bad_annotation_files_are_one_line_errors(tmp_path, content, says):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    ann = tmp_path / "annotations" / "instances.json"
    ann.write_text(content)
    res = _run("metric", "--model", "retina_r50", "--data", str(ann), "--out", str(tmp_path / "out"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and says in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()
