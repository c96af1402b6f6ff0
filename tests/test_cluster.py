"""cluster.py and the clustering metrics in wikiart.py (Part 2)."""
import json

import numpy as np
import pytest

import metrics
import wikiart
from conftest import assert_real_picture, run_script
from test_autoencoder import ae_args

PLOTS = ("pca.png", "tsne.png", "contingency.png", "pc1_vs_cluster.png", "comparison.png")


def test_perfect_clustering_scores_one_even_with_renamed_clusters():
    y = np.repeat(np.arange(5), [40, 30, 20, 7, 3])
    renamed = (y * 3 + 1) % 7  # a different id for every style
    for pred in (y, renamed):
        m = metrics.clustering_metrics(y, pred)
        for key in ("nmi", "ari", "purity", "hungarian_accuracy"):
            assert m[key] == pytest.approx(1.0), key


def test_shuffled_clustering_scores_about_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 3000)
    m = metrics.clustering_metrics(y, rng.permutation(y))
    assert m["nmi"] < 0.02 and abs(m["ari"]) < 0.01
    assert m["hungarian_accuracy"] < 0.15  # chance is ~0.1 for 10 balanced styles


def test_purity_and_hungarian_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    m = metrics.clustering_metrics(y, np.array([0, 0, 0, 0, 1, 1]))
    assert m["purity"] == pytest.approx(4 / 6) and m["hungarian_accuracy"] == pytest.approx(4 / 6)
    # one cluster per image: purity is trivially 1, the one-to-one matching is not
    m = metrics.clustering_metrics(np.zeros(4, int), np.arange(4))
    assert m["purity"] == 1 and m["hungarian_accuracy"] == pytest.approx(0.25)
    assert metrics.contingency(y, np.array([5, 5, 5, 9, 9, 9])).tolist() == [[2, 1, 0], [0, 1, 2]]


@pytest.fixture(scope="module")
def codes_dir(sample_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae_for_cluster")
    run_script("autoencoder.py", *ae_args(sample_root, out, **{"autoencoder.epochs": 1}))
    return out


def cluster_args(sample_root, codes, out, **extra):
    keys = {"train_dir": f"{sample_root}/train", "test_dir": f"{sample_root}/test", "image_size": 32,
            "cache_dir": "", "cluster.codes_dir": str(codes), "cluster.out_dir": str(out),
            "cluster.tsne_points": 60}
    keys.update(extra)
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


def test_cluster_script_writes_metrics_and_plots(sample_root, codes_dir, tmp_path):
    p = run_script("cluster.py", *cluster_args(sample_root, codes_dir, tmp_path))
    report = json.load(open(tmp_path / "metrics.json"))
    test_labels = np.load(codes_dir / "codes_test.npz")["labels"]
    assert report["k"] == len(np.unique(test_labels)) and report["num_images"] == len(test_labels)
    assert set(report["results"]) == {"autoencoder", "raw_pixels_16px"}
    for m in report["results"].values():
        assert 0 <= m["nmi"] <= 1 and 0 < m["purity"] <= 1 and -1 <= m["silhouette"] <= 1
    assert report["results"]["raw_pixels_16px"]["dims"] == 16 * 16 * 3
    assert "NMI" in p.stdout
    for name in PLOTS:
        assert_real_picture(tmp_path / name)


def test_other_method_and_feature(sample_root, codes_dir, tmp_path):
    run_script("cluster.py", *cluster_args(sample_root, codes_dir, tmp_path, **{
        "cluster.method": "gmm", "cluster.feature": "stats", "cluster.k": 5}))
    report = json.load(open(tmp_path / "metrics.json"))
    assert report["method"] == "gmm" and report["feature"] == "stats" and report["k"] == 5
    assert report["results"]["autoencoder"]["dims"] == np.load(codes_dir / "codes_test.npz")["stats"].shape[1]


def test_pipeline_recovers_styles_from_informative_codes(sample_root, codes_dir, tmp_path):
    """Codes that encode the style (one-hot + noise) must cluster almost perfectly (here with Ward
    agglomerative clustering); raw pixels need not."""
    npz = dict(np.load(codes_dir / "codes_test.npz"))
    rng = np.random.default_rng(0)
    npz["codes"] = (np.eye(len(npz["classes"]))[npz["labels"]] * 5
                    + rng.normal(0, 0.1, (len(npz["labels"]), len(npz["classes"])))).astype(np.float32)
    fake = tmp_path / "fake"
    fake.mkdir()
    np.savez(fake / "codes_test.npz", **npz)
    run_script("cluster.py", *cluster_args(sample_root, fake, tmp_path / "out", **{"cluster.feature": "code",
                                                                              "cluster.method": "agglomerative"}))
    report = json.load(open(tmp_path / "out" / "metrics.json"))
    assert report["results"]["autoencoder"]["nmi"] > 0.95
    assert report["results"]["autoencoder"]["nmi"] > report["results"]["raw_pixels_16px"]["nmi"]


def test_bad_options_and_missing_codes(sample_root, codes_dir, tmp_path):
    p = run_script("cluster.py", *cluster_args(sample_root, codes_dir, tmp_path, **{"cluster.method": "dbscan"}),
                   check=False)
    assert p.returncode != 0 and "must be one of kmeans" in p.stderr
    p = run_script("cluster.py", *cluster_args(sample_root, tmp_path / "nowhere", tmp_path), check=False)
    assert p.returncode == 2 and "run autoencoder.py first" in p.stderr and "Traceback" not in p.stderr
