"""autoencoder.py and the autoencoder models in wikiart.py (Part 2)."""
import json
import os

import numpy as np
import pytest
import torch

import config
import metrics
import wikiart
from conftest import assert_real_picture, run_script


def ae_cfg(**kw):
    cfg = config.load_config()["autoencoder"]
    cfg.update(kw)
    return cfg


def ae_args(sample_root, out_dir, **extra):
    """--set arguments for a fast autoencoder run on the tiny 32 px sample."""
    keys = {"train_dir": f"{sample_root}/train", "test_dir": f"{sample_root}/test", "image_size": 32,
            "cache_dir": "", "device": "cpu", "autoencoder.out_dir": str(out_dir), "autoencoder.epochs": 3,
            "autoencoder.batch_size": 16, "autoencoder.width": 8, "autoencoder.train_crop": 0,
            "autoencoder.num_show": 4}
    keys.update(extra)
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("mode,bottleneck", [("part2", "spatial"), ("conv", "spatial"), ("conv", "vector")])
def test_shapes_and_range(mode, bottleneck, size):
    model = wikiart.make_autoencoder(ae_cfg(mode=mode, bottleneck=bottleneck, width=8, code_dim=64), size).eval()
    x = torch.rand(2, 3, size, size)
    z = model.encode(x)
    y = model.decode(z)
    assert y.shape == x.shape and torch.allclose(model(x), y)
    assert 0 <= y.min() and y.max() <= 1  # sigmoid output, same range as the [0, 1] input
    if mode == "part2":
        assert z.shape == (2, 3, size // 4, size // 4)  # 16x compression by construction
    elif bottleneck == "spatial":
        side = size // 2 ** ae_cfg()["downsample"]
        assert z.shape == (2, ae_cfg()["code_channels"], side, side)
        assert 3 * size * size / z[0].numel() >= 16  # the default config compresses at least 16x
    else:
        assert z.shape == (2, 64)
    maps = model.feature_maps(x)
    assert torch.equal(maps[-1], z)
    stats = wikiart.pooled_stats(maps)
    assert stats.shape == (2, sum(2 * m.shape[1] for m in maps if m.ndim == 4))


def test_bad_sizes_give_clear_errors():
    with pytest.raises(config.ConfigError, match="divisible"):
        wikiart.make_autoencoder(ae_cfg(mode="conv", downsample=3), 36)
    with pytest.raises(config.ConfigError, match="valid modes"):
        wikiart.make_autoencoder(ae_cfg(mode="vae"), 32)


def test_psnr():
    assert metrics.psnr(0.01) == pytest.approx(20.0)
    assert metrics.psnr(0.001) == pytest.approx(30.0)


@pytest.fixture(scope="module")
def trained(sample_root, tmp_path_factory):
    """Two epochs, then --resume to a third (one training run shared by the tests below)."""
    out = tmp_path_factory.mktemp("ae")
    run_script("autoencoder.py", *ae_args(sample_root, out, **{"autoencoder.epochs": 2}))
    first_two = json.load(open(out / "train_log.json"))
    p = run_script("autoencoder.py", "--resume", *ae_args(sample_root, out, **{"autoencoder.epochs": 3}))
    return out, p, first_two


def test_training_reduces_loss_and_writes_outputs(trained):
    out, p, _ = trained
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
    assert "PSNR" in p.stdout


def test_codes_file_round_trips(trained, sample_root):
    out, _, _ = trained
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


def test_resume_continues(trained):
    out, p, first_two = trained
    assert "resumed" in p.stdout
    history = json.load(open(out / "train_log.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[:2] == first_two
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 2


def test_part2_mode_and_bad_crop(sample_root, tmp_path):
    run_script("autoencoder.py", *ae_args(sample_root, tmp_path, **{"autoencoder.mode": "part2",
                                                                     "autoencoder.epochs": 1}))
    assert json.load(open(tmp_path / "metrics.json"))["compression"] == 16
    p = run_script("autoencoder.py", *ae_args(sample_root, tmp_path / "v", **{
        "autoencoder.bottleneck": "vector", "autoencoder.train_crop": 16}), check=False)
    assert p.returncode != 0 and "spatial bottleneck" in p.stderr
