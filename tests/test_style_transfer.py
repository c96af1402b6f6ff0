"""Part 3: style embedder, conditional generator, naive baseline, evaluation metrics, the script."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import config
import metrics
import wikiart
from test_autoencoder import ae_args
from conftest import run_script

AE_CFG = {"mode": "conv", "width": 8, "downsample": 3, "code_channels": 4, "bottleneck": "spatial",
          "code_dim": 32}


def tiny_generator(num_styles=5, size=32, ae_mode="conv"):
    torch.manual_seed(0)
    ae = wikiart.make_autoencoder(dict(AE_CFG, mode=ae_mode), size).eval().requires_grad_(False)
    codes = torch.randn(num_styles, wikiart.latent_vector(ae.encode(torch.rand(1, 3, size, size))).shape[1])
    return wikiart.StyleGenerator(ae, wikiart.StyleEmbedder(codes), size, width=16, res_blocks=1, style_dim=16)


@pytest.mark.parametrize("ae_mode,size", [("conv", 32), ("part2", 32), ("conv", 64)])
def test_generator_shapes_and_conditioning(ae_mode, size):
    G = tiny_generator(size=size, ae_mode=ae_mode).eval()
    x = torch.rand(3, 3, size, size) * 2 - 1
    with torch.no_grad():
        a, b = G(x, torch.tensor([1, 1, 1])), G(x, torch.tensor([2, 2, 2]))
        again = G(x, torch.tensor([1, 1, 1]))
    assert a.shape == x.shape and a.abs().max() <= 1
    assert (a - b).abs().mean() > 1e-3, "two different styles must give different outputs"
    assert torch.equal(a, again), "the same style twice must give the same output"


def test_naive_net_shapes_and_conditioning():
    torch.manual_seed(0)
    net = wikiart.NaiveStyleNet(4, 32, init_images=torch.rand(4, 3, 32, 32) * 2 - 1, width=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = net(x, torch.tensor([0, 0])), net(x, torch.tensor([3, 3]))
    assert a.shape == x.shape and not torch.allclose(a, b)
    assert torch.equal(a, net(x, torch.tensor([0, 0])))


def test_discriminator_heads():
    D = wikiart.StyleDiscriminator(7, width=8)
    rf, cls, maps = D(torch.rand(2, 3, 32, 32))
    assert rf.shape[0] == 2 and cls.shape == (2, 7) and len(maps) == 4


def test_embedding_init_equals_per_style_mean_code(sample_root):
    cfg = config.load_config(overrides=[f"train_dir={sample_root}/train", "image_size=32", "cache_dir="])
    data = wikiart.load_split(cfg, "train")
    torch.manual_seed(0)
    ae = wikiart.make_autoencoder(AE_CFG, 32).eval()
    C = len(data.classes)
    codes = wikiart.mean_code_per_style(ae, data.images, data.labels, C, torch.device("cpu"), pool=2,
                                        batch_size=37)  # batches that cut across styles
    embedder = wikiart.StyleEmbedder(codes)
    for s in (0, 5, C - 1):
        x = wikiart.to_float(data.images[(data.labels == s).numpy()], torch.device("cpu"))
        with torch.no_grad():
            expected = wikiart.latent_vector(ae.encode((x + 1) / 2), 2).mean(0)
        assert torch.allclose(embedder.embedding.weight[s], expected, atol=1e-5)
    assert torch.equal(embedder.initial, embedder.embedding.weight.detach())


def test_random_network_statistics_are_identical_across_runs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    a = metrics.texture_descriptors(images, metrics.random_texture_net(0))
    b = metrics.texture_descriptors(images, metrics.random_texture_net(0))
    c = metrics.texture_descriptors(images, metrics.random_texture_net(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[-1], c[-1])
    # brightness and contrast do not count: the luminance is standardised per image
    brighter = np.clip(images.astype(np.float64) * 0.5 + 60, 0, 255).astype(np.uint8)
    d = metrics.texture_descriptors(brighter, metrics.random_texture_net(0))
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
    assert metrics.gap_closed([3.0, 2.0], [3.0, 2.0], [1.0, 1.0]) == 0.0
    assert metrics.gap_closed([3.0, 2.0], [1.0, 1.0], [1.0, 1.0]) == 1.0
    assert metrics.gap_closed([3.0, 2.0], [2.0, 2.0], [1.0, 0.0]) == 0.25  # summed before dividing
    # style distance: X with the style's mean descriptor is at 0, one spread away is at 1 per layer
    desc = [torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)]
    refs = metrics.style_references(desc, torch.tensor([0, 0]), 1)
    assert abs(metrics.style_distance([desc[0].mean(0, keepdim=True)], refs, 0)) < 1e-12
    assert abs(metrics.style_distance([torch.tensor([[2.0, 0.0]], dtype=torch.float64)], refs, 0) - 1.0) < 1e-9


def test_soft_colour_histogram_matches_hard_bins_and_pulls_colours():
    # near bin centres the soft histogram is the hard one; every histogram sums to 1
    rng = np.random.default_rng(0)
    centres = (rng.integers(0, 8, (3, 16, 16, 3)) * 32 + 16).astype(np.uint8)
    soft = wikiart.soft_colour_histogram(wikiart.to_float(centres, torch.device("cpu")))
    assert ((soft - metrics.colour_histograms(centres)[0].float()).abs().sum(1) < 0.15).all()
    noise = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.allclose(wikiart.soft_colour_histogram(noise).sum(1), torch.ones(3), atol=1e-5)
    # gradient descent on the loss moves the pixels' (hard) histogram to a target style's
    target_u8 = np.full((2, 16, 16, 3), (208, 48, 16), np.uint8)  # bin centres
    refs = wikiart.mean_colour_histograms(np.concatenate([target_u8, centres[:1]]), [0, 0, 2], [0, 1], 3,
                                          torch.device("cpu"))
    assert (refs[0] - metrics.colour_histograms(target_u8)[0][0].float()).abs().sum() < 0.15
    assert torch.allclose(refs[1], refs[0]) and torch.allclose(refs[2], refs[0])  # no images: the mean
    # (the soft bins pass gradients to neighbouring bins only: start within about one bin of the goal)
    x = (wikiart.to_float(target_u8[:1], torch.device("cpu")) + noise[:1] * 0.3).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    before = metrics.colour_histograms(wikiart.to_uint8(x))[0]
    for _ in range(100):
        loss = (wikiart.soft_colour_histogram(x.clamp(-1, 1)) - refs[0]).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = metrics.colour_histograms(wikiart.to_uint8(x))[0]
    goal = metrics.colour_histograms(target_u8[:1])[0]
    assert (after - goal).abs().sum() < 0.5 * (before - goal).abs().sum()


def test_script_trains_evaluates_and_draws(sample_root, tmp_path):
    out = tmp_path / "st"
    p = run_script("style_transfer.py", "--set", f"train_dir={sample_root}/train", f"test_dir={sample_root}/test",
                   "image_size=32", f"style_transfer.autoencoder_path={tmp_path}/ae/best.pt", check=False)
    assert p.returncode == 2 and "python autoencoder.py" in p.stderr and "Traceback" not in p.stderr
    run_script("autoencoder.py", *ae_args(sample_root, tmp_path / "ae", **{"autoencoder.epochs": 1}))
    args = ["--evaluate", "--set", f"train_dir={sample_root}/train", f"test_dir={sample_root}/test",
            "image_size=32", "cache_dir=", "device=cpu", f"style_transfer.out_dir={out}",
            f"style_transfer.autoencoder_path={tmp_path}/ae/best.pt",
            "style_transfer.epochs=3", "style_transfer.steps_per_epoch=25", "style_transfer.width=16",
            "style_transfer.naive_epochs=2", "style_transfer.judge_epochs=2", "style_transfer.judge_width=8",
            "style_transfer.eval_images=12", "style_transfer.grid_rows=3", "style_transfer.lr=0.002",
            "style_transfer.d_lr=0.002"]
    run_script("style_transfer.py", *args)
    # a short run lowers its losses
    log = json.load(open(out / "adain" / "train_log.json"))
    assert log[-1]["g_rec"] < log[0]["g_rec"] and log[-1]["val_rec_l1"] < log[0]["val_rec_l1"]
    assert log[-1]["d_cls"] < log[0]["d_cls"]
    naive = json.load(open(out / "naive" / "train_log.json"))
    assert naive[-1]["mse_content"] < naive[0]["mse_content"]
    # the evaluation runs; identity closes no gap and keeps the content exactly
    ev = json.load(open(out / "evaluation.json"))
    assert ev["n_outputs"] == 12 * (ev["styles"] - 1)
    assert ev["identity"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert ev["identity"]["texture_gap_closed"] == pytest.approx(0.0, abs=1e-9)
    assert ev["identity"]["colour_gap_closed"] == pytest.approx(0.0, abs=1e-9)
    for name in ("adain", "naive", "identity"):
        assert 0 <= ev[name]["robust_hit_rate"] <= 1 and 0 <= ev[name]["raw_hit_rate"] <= 1
        assert -1 <= ev[name]["ssim"] <= 1
    assert ev["adain"]["ssim"] < 1  # the generator changes the image
    assert 0 <= ev["judge_test_accuracy_robust"] <= 1
    # the grid and the embedding figure are real pictures, not blank canvases
    for mode in ("adain", "naive"):
        for name in ("grid.png", "embeddings.png"):
            img = np.asarray(Image.open(out / mode / name).convert("RGB"))
            assert img.shape[0] > 100 and img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 100
    # --evaluate again reuses the trained models instead of retraining
    p = run_script("style_transfer.py", *args)
    assert "adain: reusing" in p.stdout and "judge: reusing" in p.stdout
    assert json.load(open(out / "evaluation.json"))["adain"] == ev["adain"]


def test_bad_mode_is_a_clear_error():
    p = run_script("style_transfer.py", "--set", "style_transfer.mode=fancy", check=False)
    assert p.returncode == 2 and "must be one of adain, naive" in p.stderr
