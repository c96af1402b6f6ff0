"""The models in wikiart.py: the classifiers (course model, bonus A, ResNet), the autoencoders, and the
style embedder: shapes, conditioning, and that each learns. (Part 3's networks: tests/test_style_transfer.py.)"""
import numpy as np
import pytest
import torch

import config
import wikiart


# ---- classifiers

@pytest.mark.parametrize("mode", wikiart.MODES)
@pytest.mark.parametrize("size", [32, 64])
def test_classifier_shapes(mode, size):
    cfg = config.load_config(overrides=[f"mode={mode}", f"image_size={size}", "resnet_width=8"])
    model = wikiart.make_classifier(cfg, 27).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 27)


def test_base_model_matches_the_course_sizes():
    model = wikiart.BaseClassifier(27, 416)
    assert model.batchnorm1d.num_features == 105 * 105 and model.linear1.out_features == 300
    assert isinstance(model.softmax, torch.nn.LogSoftmax)
    bonus = wikiart.BonusAClassifier(27, 416)
    assert bonus.linear1.in_features == 50 * 50 and isinstance(bonus.sigmoid, torch.nn.Sigmoid)


@pytest.mark.parametrize("mode", wikiart.MODES)
def test_each_mode_learns_a_few_steps(mode, sample_root):
    torch.manual_seed(0)
    data = wikiart.WikiArtDataset(f"{sample_root}/train", 32)
    cfg = config.load_config(overrides=[f"mode={mode}", "image_size=32", "resnet_width=8"])
    model = wikiart.make_classifier(cfg, len(data.classes))
    opt = wikiart.make_optimizer(model, 3e-3, 0.0)
    x, y = next(wikiart.iterate_batches(data.images, data.labels, np.arange(0, len(data), 4)[:64], 64,
                                        torch.device("cpu")))
    losses = []
    model.train()
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_predict_keeps_the_order_of_unsorted_indices():
    torch.manual_seed(0)
    model = wikiart.ResNet(5, width=8, blocks=(1, 1, 1, 1))
    images = np.random.default_rng(0).integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    shuffled = np.random.default_rng(1).permutation(23)
    by_shuffled = wikiart.predict(model, images, shuffled, 5, torch.device("cpu"))
    by_sorted = wikiart.predict(model, images, np.arange(23), 5, torch.device("cpu"))
    assert torch.allclose(by_shuffled, by_sorted[shuffled], atol=1e-5)


# ---- autoencoders

def ae_cfg(**kw):
    cfg = config.load_config()["autoencoder"]
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("mode,bottleneck", [("part2", "spatial"), ("conv", "spatial"), ("conv", "vector")])
def test_autoencoder_shapes_and_range(mode, bottleneck, size):
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


def test_autoencoder_bad_sizes_give_clear_errors():
    with pytest.raises(config.ConfigError, match="divisible"):
        wikiart.make_autoencoder(ae_cfg(mode="conv", downsample=3), 36)
    with pytest.raises(config.ConfigError, match="valid modes"):
        wikiart.make_autoencoder(ae_cfg(mode="vae"), 32)


# ---- style transfer

AE_CFG = {"mode": "conv", "width": 8, "downsample": 3, "code_channels": 4, "bottleneck": "spatial",
          "code_dim": 32}


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
