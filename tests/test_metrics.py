"""metrics.py: classification (as scikit-learn defines it), reconstruction (PSNR), clustering (NMI, ARI,
purity, Hungarian accuracy) and the style-transfer measures (random-network texture statistics and their
per-style references, colour histograms, SSIM, the robust transform). Realism: test_realism.py."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

import metrics


def test_psnr():
    assert metrics.psnr(0.01) == pytest.approx(20.0)
    assert metrics.psnr(0.001) == pytest.approx(30.0)


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


def test_random_network_statistics_are_identical_across_runs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    grams = lambda u8, seed: metrics.texture_grams(metrics.u8_to_float(u8), metrics.random_texture_net(seed))
    a, b, c = grams(images, 0), grams(images, 0), grams(images, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[-1], c[-1])
    # brightness and contrast do not count: the luminance is standardised per image
    brighter = np.clip(images.astype(np.float64) * 0.5 + 60, 0, 255).astype(np.uint8)
    d = grams(brighter, 0)
    assert torch.allclose(a[0], d[0], rtol=0.05, atol=0.05)
    h = metrics.colour_histograms(images)[0]
    assert h.shape == (6, 512) and torch.allclose(h.sum(1), torch.ones(6, dtype=h.dtype))


def test_metric_helpers():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert torch.allclose(metrics.ssim(images, images), torch.ones(4))
    noise = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert (metrics.ssim(images, noise) < 0.2).all()
    robust = metrics.robust_transform(images)
    assert robust.shape == images.shape and robust.dtype == np.uint8
    assert not np.array_equal(robust, images)  # high-frequency noise does not survive
    flat = np.full((1, 32, 32, 3), (200, 40, 90), np.uint8)
    assert np.abs(metrics.robust_transform(flat).astype(int) - flat).max() <= 3  # colour survives
    # a style's reference: the mean of its images' descriptors and their RMS distance to it (its spread);
    # style 1 has no images and borrows the average spread
    desc = [torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)]
    [(means, spreads)] = metrics.style_references(desc, torch.tensor([0, 0]), 2)
    assert means.tolist() == [[1.0, 0.0], [0.0, 0.0]] and spreads.tolist() == [1.0, 1.0]


def test_nearest_neighbours_finds_the_copy_and_its_index():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    queries = np.stack([refs[7], np.full((32, 32, 3), 128, np.uint8)])
    d, i = metrics.nearest_neighbours(queries, refs, chunk=1)
    assert d[0] == pytest.approx(0, abs=1e-6) and i[0] == 7
    brute = np.sqrt(((refs.astype(float) / 255 - 128 / 255) ** 2).reshape(20, -1).mean(1))
    assert i[1] == brute.argmin() and d[1] == pytest.approx(brute.min(), rel=1e-4)


def test_classification_metrics_by_hand():
    m = metrics.classification_metrics([0, 0, 0, 1, 2], [0, 0, 1, 1, 1], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["worst_recall"] == 0.0 and m["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 1, 0]]
    f1_b = 2 * (1 / 3) * 1 / (1 / 3 + 1)
    assert m["macro_f1"] == pytest.approx((0.8 + f1_b + 0) / 3)
    only_predicted = metrics.classification_metrics([0, 0], [0, 1], ["a", "b", "c"])
    assert math.isnan(only_predicted["per_class"]["b"]["recall"])
    assert only_predicted["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)  # b counts with F1 0, c not at all


def test_macro_f1_and_balanced_accuracy_follow_scikit_learn():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 3, 1, 3, 2, 2, 0])  # style 3 is predicted but absent from the truth
    m = metrics.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    truth_only = f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro")  # what it used to compute
    assert m["macro_f1"] < truth_only - 0.1
    with pytest.warns(UserWarning):  # scikit-learn warns about the predicted-only class
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
