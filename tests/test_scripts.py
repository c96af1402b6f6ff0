"""Parts 1 and 2 end to end on the tiny sample: train.py -> test.py (through the next-step command it
prints), what --resume refuses, a training folder smaller than a batch, autoencoder.py -> cluster.py. The
trained models are the shared session fixtures of conftest.py (tiny_classifier, tiny_autoencoder); the
scripts run in-process, as their command line would run them. (Ctrl-C / SIGTERM and --resume: test_runs.py;
compare_balance.py: test_imbalance.py; --image: test_use.py.)"""
import json
import shlex
import shutil

import numpy as np
import pytest
import torch

import cluster
import config
import metrics
import runs
import sample_data
import train
import wikiart
from conftest import (ae_args, assert_real_picture, assert_user_error, run_main, small_config, small_folder,
                      snapshot)

CLUSTER_PLOTS = ("pca.png", "tsne.png", "contingency.png", "comparison.png")


def next_command(stdout):
    """The argv of the `next: python X.py ...` line a script printed: (script, args)."""
    line = [l for l in stdout.splitlines() if "next: python " in l][-1]
    words = shlex.split(line.split("next: ", 1)[1])
    assert words[0] == "python"
    return words[1], words[2:]


# ---- train.py / test.py

def test_train_then_test_as_train_suggests(tiny_classifier):
    out = tiny_classifier.out
    log = json.loads((out / "train_log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2, 3, 4] and all("val_balanced_accuracy" in row for row in log)
    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["class_to_idx"] == {s: i for i, s in enumerate(sorted(sample_data.COURSE_TRAIN_COUNTS))}
    script, args = next_command(tiny_classifier.stdout)  # the command train.py suggests
    assert script == "test.py"
    run_main(script, *args)
    result = json.loads((out / "test_metrics.json").read_text())
    assert set(result["per_class"]) == set(ckpt["class_to_idx"])
    assert sum(m["support"] for m in result["per_class"].values()) == result["n_images"]
    assert 0 <= result["balanced_accuracy"] <= 1 and result["epoch"] == ckpt["epoch"] + 1
    for png in ("confusion.png", "per_class_recall.png", "curves.png"):
        assert_real_picture(out / png)


def test_resume_refuses_a_checkpoint_trained_otherwise(sample_root, tiny_classifier, tmp_path):
    """--resume continues only the training last.pt holds: another value of any training key, or other
    styles, is one line saying which; nothing changes in out_dir."""
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier.out, run)
    before = snapshot(run)
    args = small_config(sample_root, run, **tiny_classifier.keys)
    last = f"{run}/last.pt"
    for change, says in [("mode=base", 'was trained with mode="resnet"; the config says "base"'),
                         ("lr=0.01", "was trained with lr=0.003; the config says 0.01")]:
        p = run_main("train.py", "--resume", *args, change, check=False)
        assert_user_error(p, "train.py", f"--resume: {last} {says}: change it back, or use another out_dir")
    few = small_folder(sample_root, tmp_path / "few", styles=("Baroque", "Cubism"), n=10)
    p = run_main("train.py", "--resume", *args, f"train_dir={few}/train", check=False)
    assert_user_error(p, "train.py", f"--resume: {last} was trained on the styles Abstract_Expressionism,",
                      "holds Baroque, Cubism: use another out_dir")
    assert snapshot(run) == before
    saved = torch.load(last, weights_only=False)["config"]
    for key in train.TRAINING_KEYS:  # every one of them, said the same way
        now = config.load_config(overrides=[f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                            for k, v in saved.items() if not isinstance(v, dict)])
        assert runs.mismatch(saved, now, train.TRAINING_KEYS, last) is None
        now[key] = [9] if isinstance(now[key], list) else not now[key] if isinstance(now[key], bool) else \
            now[key] + "x" if isinstance(now[key], str) else now[key] + 1
        assert runs.mismatch(saved, now, train.TRAINING_KEYS, last).startswith(f"{last} was trained with {key}=")


def test_a_training_folder_smaller_than_a_batch_trains_with_a_smaller_batch(sample_root, tmp_path):
    """54 training images (48 after validation) and batch_size 64: a warning, and the run trains; the
    autoencoder too; clustering its one test image is one line."""
    data = small_folder(sample_root, tmp_path / "mine", n=18, test_n=0)
    small_folder(sample_root, tmp_path / "mine", styles=["Impressionism"], n=0, test_n=1)  # one test image
    where = [f"train_dir={data}/train", f"test_dir={data}/test", "image_size=32", "cache_dir=", "device=cpu"]
    with pytest.warns(UserWarning, match="batch_size 64 is larger than the 48 training images; using 48"):
        run_main("train.py", "--set", *where, f"out_dir={tmp_path / 'run'}", "batch_size=64", "epochs=1",
                 "resnet_width=8")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 0
    with pytest.warns(UserWarning, match="autoencoder.batch_size 64 is larger than the 48 training images; using 48"):
        run_main("autoencoder.py", "--set", *where, f"autoencoder.out_dir={tmp_path / 'ae'}",
                 "autoencoder.batch_size=64", "autoencoder.epochs=1", "autoencoder.width=8",
                 "autoencoder.train_crop=0")
    assert np.load(tmp_path / "ae" / "codes_test.npz")["codes"].shape[0] == 1
    p = run_main("cluster.py", "--set", *where, f"cluster.codes_dir={tmp_path / 'ae'}",
                 f"cluster.out_dir={tmp_path / 'cl'}", check=False)
    assert_user_error(p, "cluster.py", "codes_test.npz holds 1 image(s): clustering into k=1 groups needs more than 2")
    assert not (tmp_path / "cl").exists()


# ---- autoencoder.py

def test_autoencoder_learns_and_writes_its_outputs(tiny_autoencoder):
    out = tiny_autoencoder.out
    result = json.load(open(out / "metrics.json"))
    model, ckpt = wikiart.load_autoencoder(str(out / "best.pt"), torch.device("cpu"))
    test = wikiart.load_split(ckpt["config"], "test", ckpt["class_to_idx"])
    x = (wikiart.to_float(test.images, torch.device("cpu")) + 1) / 2
    torch.manual_seed(0)
    untrained = wikiart.make_autoencoder(ckpt["config"]["autoencoder"], 32).eval()
    with torch.no_grad():
        mse, mse_untrained = (float(((m(x) - x) ** 2).mean()) for m in (model, untrained))
    assert result["test"]["psnr"] == pytest.approx(metrics.psnr(mse), abs=1e-3)  # the number is this model's
    assert result["test"]["psnr"] > metrics.psnr(mse_untrained) + 0.2  # one epoch learnt something
    assert result["compression"] >= 16 and result["num_test"] == len(test)
    assert "val_psnr" in open(out / "train_log.csv").readline()
    for name in ("curves.png", "reconstructions.png"):
        assert_real_picture(out / name)


def test_autoencoder_codes_file_round_trips(tiny_autoencoder):
    out = tiny_autoencoder.out
    model, ckpt = wikiart.load_autoencoder(str(out / "best.pt"), torch.device("cpu"))
    assert not model.training and ckpt["config"]["autoencoder"]["out_dir"] == str(out)
    train_data = wikiart.load_split(ckpt["config"], "train")
    test = wikiart.load_split(ckpt["config"], "test", ckpt["class_to_idx"])
    for split, ds in (("train", train_data), ("test", test)):
        npz = np.load(out / f"codes_{split}.npz")
        assert npz["codes"].dtype == np.float32 and npz["codes"].shape == (len(ds), ckpt["code_numel"])
        assert npz["stats"].shape[0] == len(ds)
        assert np.array_equal(npz["labels"], ds.labels.numpy())
        assert list(npz["classes"]) == ds.classes and list(npz["paths"]) == ds.paths
    # the stored codes are what the saved model gives for those images
    idx = np.array([0, 3, len(test) - 1])
    with torch.no_grad():
        z = model.encode((wikiart.to_float(test.images[idx], torch.device("cpu")) + 1) / 2).flatten(1)
    np.testing.assert_allclose(np.load(out / "codes_test.npz")["codes"][idx], z.numpy(), rtol=1e-4, atol=1e-4)


def test_autoencoder_resume_refuses_another_model(sample_root, tiny_autoencoder, tmp_path):
    """(Continuing a run is runs.resume, tested on train.py in test_runs.py; what it refuses is this script's.)"""
    out = tiny_autoencoder.out
    before = snapshot(out)
    p = run_main("autoencoder.py", "--resume", *ae_args(sample_root, out, **{"autoencoder.width": 16}), check=False)
    assert_user_error(p, "autoencoder.py", f"--resume: {out}/last.pt was trained with autoencoder.width=8; the "
                      "config says 16: change it back, or use another out_dir")
    assert snapshot(out) == before


# ---- cluster.py

def test_cluster_runs_as_autoencoder_suggests_and_writes_metrics_and_plots(tiny_autoencoder, tmp_path, monkeypatch):
    """The `next:` command autoencoder.py prints (with a non-default out_dir) works as printed."""
    script, args = next_command(tiny_autoencoder.stdout)
    assert script == "cluster.py" and f"autoencoder.out_dir={tiny_autoencoder.out}" in args
    monkeypatch.chdir(tmp_path)  # the command writes to the default cluster.out_dir, out/cluster
    p = run_main(script, *args)
    out, codes = tmp_path / "out" / "cluster", np.load(tiny_autoencoder.out / "codes_test.npz")
    report = json.load(open(out / "metrics.json"))
    assert report["k"] == len(np.unique(codes["labels"])) and report["num_images"] == len(codes["labels"])
    assert report["codes"] == str(tiny_autoencoder.out / "codes_test.npz")
    assert report["results"]["autoencoder"]["dims"] == codes["codes"].shape[1] + codes["stats"].shape[1]
    assert report["results"]["raw_pixels_16px"]["dims"] == 16 * 16 * 3
    for m in report["results"].values():
        assert 0 <= m["nmi"] <= 1 and 0 < m["purity"] <= 1 and -1 <= m["silhouette"] <= 1
    assert "NMI" in p.stdout
    for name in CLUSTER_PLOTS:
        assert_real_picture(out / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written (no cache/: cache_dir="")


def test_every_clustering_method_recovers_styles_from_informative_features():
    """Features that encode the style (one-hot + noise) beside a block of pure noise: each block weighs
    the same after prepare(), and kmeans, gmm and Ward clustering all find the styles."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 20)
    informative = np.eye(6)[labels] * 5 + rng.normal(0, 0.1, (120, 6))
    noise = rng.normal(0, 1, (120, 40))
    x, _ = cluster.prepare([informative, noise], 0, seed=0)
    assert x[:, :6].var(0).sum() == pytest.approx(x[:, 6:].var(0).sum())  # equal total variance per block
    x, pc2 = cluster.prepare([informative], 50, seed=0)
    assert pc2.shape == (120, 2)
    for method in ("kmeans", "gmm", "agglomerative"):
        assert metrics.clustering_metrics(labels, cluster.cluster(x, method, 6, 0))["nmi"] > 0.95, method
