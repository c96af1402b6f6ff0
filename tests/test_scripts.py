"""End to end on the tiny sample: train.py -> test.py, --resume, autoencoder.py -> cluster.py (through
the next-step command it prints); style_transfer.py's: tests/test_style_transfer.py. All slow: they train.
The trained models are the shared session fixtures of conftest.py (tiny_classifier, tiny_autoencoder);
the scripts run in-process, as their command line would run them."""
import json
import shlex
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import metrics
import sample_data
import wikiart
from conftest import ae_args, assert_real_picture, assert_same_training, run_main, small_config

pytestmark = pytest.mark.slow

CLUSTER_PLOTS = ("pca.png", "tsne.png", "contingency.png", "pc1_vs_cluster.png", "comparison.png")


def next_command(stdout):
    """The argv of the `next: python X.py ...` line a script printed: (script, args)."""
    line = [l for l in stdout.splitlines() if "next: python " in l][-1]
    words = shlex.split(line.split("next: ", 1)[1])
    assert words[0] == "python"
    return words[1], words[2:]


# ---- train.py / test.py

def test_train_then_test_is_deterministic(tiny_classifier):
    out = tiny_classifier.out
    log = json.loads((out / "train_log.json").read_text())
    assert len(log) == tiny_classifier.keys["epochs"] and all("val_balanced_accuracy" in row for row in log)
    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["class_to_idx"] == {s: i for i, s in enumerate(sorted(sample_data.COURSE_TRAIN_COUNTS))}
    script, args = next_command(tiny_classifier.stdout)  # the command train.py suggests
    assert script == "test.py"
    run_main(script, *args)
    first = json.loads((out / "test_metrics.json").read_text())
    run_main(script, *args)
    second = json.loads((out / "test_metrics.json").read_text())
    assert first == second
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class"):
        assert key in first
    assert set(first["per_class"]) == set(ckpt["class_to_idx"])
    assert sum(m["support"] for m in first["per_class"].values()) == first["n_images"]
    for png in ("confusion.png", "per_class_recall.png", "curves.png"):
        img = np.asarray(Image.open(out / png).convert("L"))
        assert img.shape[0] > 200 and img.std() > 10  # a real figure, not a blank canvas


def test_resume_continues_with_identical_state(sample_root, tiny_classifier, tmp_path):
    part = tmp_path / "part"
    run_main("train.py", *small_config(sample_root, part, **tiny_classifier.keys, stop_after=1))
    assert json.loads((part / "train_log.json").read_text())[-1]["epoch"] == 1
    p = run_main("train.py", *small_config(sample_root, part, **tiny_classifier.keys), "--resume")
    assert "resumed from" in p.stdout and "after epoch 1" in p.stdout
    assert_same_training(tiny_classifier.out / "last.pt", part / "last.pt", tiny_classifier.keys["epochs"])


# ---- autoencoder.py

@pytest.fixture(scope="module")
def resumed_autoencoder(sample_root, tmp_path_factory):
    """Two epochs, then --resume to a third (one training run shared by the tests below; the other
    tests use conftest's one-epoch tiny_autoencoder)."""
    out = tmp_path_factory.mktemp("ae") / "ae"
    run_main("autoencoder.py", *ae_args(sample_root, out, **{"autoencoder.epochs": 2}))
    first_two = json.loads((out / "train_log.json").read_text())
    p = run_main("autoencoder.py", "--resume", *ae_args(sample_root, out, **{"autoencoder.epochs": 3}))
    return SimpleNamespace(out=out, stdout=p.stdout, first_two=first_two)


def test_autoencoder_training_reduces_loss_and_writes_outputs(resumed_autoencoder):
    out = resumed_autoencoder.out
    history = json.load(open(out / "train_log.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert min(h["val_mse"] for h in history[1:]) < history[0]["val_mse"]
    assert "val_psnr" in open(out / "train_log.csv").readline()
    result = json.load(open(out / "metrics.json"))
    assert result["compression"] >= 16 and 8 < result["test"]["psnr"] < 60
    assert result["test"]["psnr"] == pytest.approx(metrics.psnr(result["test"]["mse"]))
    for name in ("curves.png", "reconstructions.png"):
        assert_real_picture(out / name)
    assert "PSNR" in resumed_autoencoder.stdout


def test_autoencoder_codes_file_round_trips(resumed_autoencoder):
    out = resumed_autoencoder.out
    model, ckpt = wikiart.load_autoencoder(str(out / "best.pt"), torch.device("cpu"))
    assert not model.training and ckpt["config"]["autoencoder"]["out_dir"] == str(out)
    cfg = ckpt["config"]
    train = wikiart.load_split(cfg, "train")
    test = wikiart.load_split(cfg, "test", ckpt["class_to_idx"])
    for split, ds in (("train", train), ("test", test)):
        npz = np.load(out / f"codes_{split}.npz")
        assert npz["codes"].dtype == np.float32 and npz["codes"].shape[0] == len(ds)
        assert npz["codes"].shape[1] == ckpt["code_numel"]
        assert npz["stats"].shape[0] == len(ds)
        assert np.array_equal(npz["labels"], ds.labels.numpy())
        assert list(npz["classes"]) == ds.classes and list(npz["paths"]) == ds.paths
    # the stored codes are what the saved model gives for those images
    idx = np.array([0, 3, len(test) - 1])
    with torch.no_grad():
        z = model.encode((wikiart.to_float(test.images[idx], torch.device("cpu")) + 1) / 2).flatten(1)
    np.testing.assert_allclose(np.load(out / "codes_test.npz")["codes"][idx], z.numpy(), rtol=1e-4, atol=1e-4)


def test_autoencoder_resume_continues(resumed_autoencoder):
    out = resumed_autoencoder.out
    assert "resumed from" in resumed_autoencoder.stdout and "after epoch 2" in resumed_autoencoder.stdout
    history = json.load(open(out / "train_log.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[:2] == resumed_autoencoder.first_two
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 2


def test_autoencoder_part2_mode(sample_root, tmp_path):
    run_main("autoencoder.py", *ae_args(sample_root, tmp_path, **{"autoencoder.mode": "part2",
                                                                  "autoencoder.epochs": 1}))
    assert json.load(open(tmp_path / "metrics.json"))["compression"] == 16


# ---- cluster.py

def cluster_args(sample_root, codes, out, **extra):
    keys = {"train_dir": f"{sample_root}/train", "test_dir": f"{sample_root}/test", "image_size": 32,
            "cache_dir": "", "cluster.codes_dir": str(codes), "cluster.out_dir": str(out),
            "cluster.tsne_points": 60}
    keys.update(extra)
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


def test_cluster_runs_as_autoencoder_suggests_and_writes_metrics_and_plots(tiny_autoencoder, tmp_path, monkeypatch):
    """Issue 13, item 8: the `next:` command autoencoder.py prints (with a non-default out_dir) works
    as printed; its results are cluster.py's metrics and figures."""
    script, args = next_command(tiny_autoencoder.stdout)
    assert script == "cluster.py" and f"autoencoder.out_dir={tiny_autoencoder.out}" in args
    monkeypatch.chdir(tmp_path)  # the command writes to the default cluster.out_dir, out/cluster
    p = run_main(script, *args)
    out, codes_dir = tmp_path / "out" / "cluster", tiny_autoencoder.out
    report = json.load(open(out / "metrics.json"))
    test_labels = np.load(codes_dir / "codes_test.npz")["labels"]
    assert report["k"] == len(np.unique(test_labels)) and report["num_images"] == len(test_labels)
    assert report["codes"] == str(codes_dir / "codes_test.npz")
    assert set(report["results"]) == {"autoencoder", "raw_pixels_16px"}
    for m in report["results"].values():
        assert 0 <= m["nmi"] <= 1 and 0 < m["purity"] <= 1 and -1 <= m["silhouette"] <= 1
    assert report["results"]["raw_pixels_16px"]["dims"] == 16 * 16 * 3
    assert "NMI" in p.stdout
    for name in CLUSTER_PLOTS:
        assert_real_picture(out / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written (no cache/: cache_dir="")


def test_cluster_other_method_and_feature(sample_root, tiny_autoencoder, tmp_path):
    codes_dir = tiny_autoencoder.out
    run_main("cluster.py", *cluster_args(sample_root, codes_dir, tmp_path, **{
        "cluster.method": "gmm", "cluster.feature": "stats", "cluster.k": 5}))
    report = json.load(open(tmp_path / "metrics.json"))
    assert report["method"] == "gmm" and report["feature"] == "stats" and report["k"] == 5
    assert report["results"]["autoencoder"]["dims"] == np.load(codes_dir / "codes_test.npz")["stats"].shape[1]


def test_cluster_pipeline_recovers_styles_from_informative_codes(sample_root, tiny_autoencoder, tmp_path):
    """Codes that encode the style (one-hot + noise) must cluster almost perfectly (here with Ward
    agglomerative clustering); raw pixels need not."""
    npz = dict(np.load(tiny_autoencoder.out / "codes_test.npz"))
    rng = np.random.default_rng(0)
    npz["codes"] = (np.eye(len(npz["classes"]))[npz["labels"]] * 5
                    + rng.normal(0, 0.1, (len(npz["labels"]), len(npz["classes"])))).astype(np.float32)
    fake = tmp_path / "fake"
    fake.mkdir()
    np.savez(fake / "codes_test.npz", **npz)
    run_main("cluster.py", *cluster_args(sample_root, fake, tmp_path / "out", **{"cluster.feature": "code",
                                                                            "cluster.method": "agglomerative"}))
    report = json.load(open(tmp_path / "out" / "metrics.json"))
    assert report["results"]["autoencoder"]["nmi"] > 0.95
    assert report["results"]["autoencoder"]["nmi"] > report["results"]["raw_pixels_16px"]["nmi"]
