"""Fixes from the correctness review: cache races and staleness, predict order, macro-F1, posthoc
under torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score

import metrics
import wikiart
from conftest import ROOT, small_config


def write_images(folder, n=6, size=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(n):
        path = os.path.join(folder, f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_a_same_size_byte_change_with_restored_mtime_rebuilds_the_cache(tmp_path):
    paths = write_images(tmp_path / "Style")
    items = [("Style", p) for p in paths]
    first, _, _ = wikiart.load_images(items, 16, str(tmp_path / "cache"))
    first = np.array(first)
    st = os.stat(paths[2])
    other = np.full((20, 20, 3), 7, np.uint8)
    Image.fromarray(other).save(paths[2])  # a PNG of the same size? make sure: pad to the old size
    data = open(paths[2], "rb").read()
    size = st.st_size
    assert len(data) <= size
    with open(paths[2], "wb") as f:
        f.write(data + b"\0" * (size - len(data)))  # same size (trailing bytes after IEND are ignored)
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back, as cp -p / rsync -t do
    assert os.stat(paths[2]).st_size == size and os.stat(paths[2]).st_mtime_ns == st.st_mtime_ns
    again, _, _ = wikiart.load_images(items, 16, str(tmp_path / "cache"))
    assert np.array_equal(np.array(again)[[0, 1, 3, 4, 5]], first[[0, 1, 3, 4, 5]])
    assert (np.array(again)[2] == 7).all() and not np.array_equal(np.array(again)[2], first[2])


BUILD = """
import os, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import wikiart
real_replace = os.replace
def slow_replace(a, b):
    time.sleep(0.3)  # widen the window between writing and renaming, where the builders used to collide
    real_replace(a, b)
os.replace = slow_replace
items = [("Style", os.path.join({folder!r}, f)) for f in sorted(os.listdir({folder!r}))]
images, kept, skipped = wikiart.load_images(items, 16, {cache!r})
np.save(sys.argv[1], np.array(images))
"""


def test_two_processes_building_the_same_cache_both_succeed_with_identical_arrays(tmp_path):
    write_images(tmp_path / "Style", n=12)
    script = tmp_path / "build.py"
    script.write_text(BUILD.format(root=ROOT, folder=str(tmp_path / "Style"), cache=str(tmp_path / "cache")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"out{i}.npy")], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a, b = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    assert a.shape == (12, 16, 16, 3) and np.array_equal(a, b)
    cached, _, _ = wikiart.load_images([("Style", str(tmp_path / "Style" / f)) for f in
                                        sorted(os.listdir(tmp_path / "Style"))], 16, str(tmp_path / "cache"))
    assert np.array_equal(np.array(cached), a)
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".tmp") or ".tmp." in f]


def test_predict_keeps_the_order_of_unsorted_indices():
    torch.manual_seed(0)
    model = wikiart.ResNet(5, width=8, blocks=(1, 1, 1, 1))
    images = np.random.default_rng(0).integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    shuffled = np.random.default_rng(1).permutation(23)
    by_shuffled = wikiart.predict(model, images, shuffled, 5, torch.device("cpu"))
    by_sorted = wikiart.predict(model, images, np.arange(23), 5, torch.device("cpu"))
    assert torch.allclose(by_shuffled, by_sorted[shuffled], atol=1e-5)


def test_macro_f1_and_balanced_accuracy_follow_scikit_learn():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 3, 1, 3, 2, 2, 0])  # style 3 is predicted but absent from the truth
    m = metrics.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    truth_only = f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro")  # what it used to compute
    assert m["macro_f1"] < truth_only - 0.1
    with pytest.warns(UserWarning):  # scikit-learn warns about the predicted-only class
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


RECORD_TAU = """
import json, os, sys
sys.path.insert(0, os.environ["REPO"])
import train
original = train.calibrate_posthoc
def recording(*args, **kwargs):
    best = original(*args, **kwargs)
    with open(os.environ["RECORD_TO"] + "_rank" + os.environ.get("RANK", "0") + ".json", "w") as f:
        json.dump(best["posthoc_tau"], f)
    return best
train.calibrate_posthoc = recording
train.main(sys.argv[1:])
train.runs.cleanup_distributed()
"""


@pytest.mark.slow
def test_posthoc_under_torchrun_every_rank_scores_the_saved_model(sample_root, tmp_path):
    wrapper = tmp_path / "record.py"
    wrapper.write_text(RECORD_TAU)
    out = tmp_path / "two"
    env = dict(os.environ, REPO=ROOT, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", RECORD_TO=str(tmp_path / "tau"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper),
           *small_config(sample_root, out, epochs=1, posthoc="true", batch_size=16)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    taus = [json.load(open(tmp_path / f"tau_rank{r}.json")) for r in range(2)]
    assert taus[0] == taus[1]
    # one process calibrating the saved model chooses the same tau
    import train
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert best["posthoc_tau"] == taus[0]
    cfg = best["config"]
    data = wikiart.WikiArtDataset(cfg["train_dir"], cfg["image_size"])
    _, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
    model = wikiart.make_classifier(cfg, len(data.classes))
    again = train.calibrate_posthoc(best, model, data, val_idx, cfg["posthoc_max_drop"])
    assert again["posthoc_tau"] == taus[0]
