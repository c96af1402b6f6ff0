"""Part 3: the generator starts as the identity and, told the source, returns the own style exactly; the colour
prior, the range term, the anti-aliasing and the losses do what they say; the evaluation's measures; the
script trains (resumable), evaluates on validation (never reading the test folder) or test, and renders
your own images (--style, --mix, --strength, --source, --keep-colour, brush marks on photos)."""
import copy
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import config
import images
import metrics
import style_transfer
import stylise
import transfer_models as tm
import wikiart
from conftest import assert_real_picture, run_main


def tiny_generator(num_styles=5, dim=10):
    torch.manual_seed(0)
    return tm.ResidualStyleGenerator(wikiart.StyleEmbedder(torch.randn(num_styles, dim)), width=16,
                                          res_blocks=1, style_dim=16).eval()


def wake(G):
    """Give the zero-initialised heads some weight, as training would."""
    torch.manual_seed(1)
    for head in (G.to_coeffs, G.to_detail):
        torch.nn.init.normal_(head.weight, std=0.05)
    return G


@torch.no_grad()
def test_untrained_generator_returns_its_input_and_trained_heads_follow_the_style():
    G = tiny_generator()
    x = torch.rand(3, 3, 32, 32) * 1.8 - 0.9
    for t in (torch.tensor([0, 1, 2]), torch.tensor([4, 4, 4])):
        assert torch.allclose(G(x, t), x, atol=1e-6), "an untrained generator is the identity, in any style"
    wake(G)
    a, b = G(x, torch.tensor([1, 1, 1])), G(x, torch.tensor([2, 2, 2]))
    assert a.shape == x.shape and a.abs().max() <= 1 and (a - b).abs().mean() > 1e-3
    assert torch.equal(a, G(x, torch.tensor([1, 1, 1])))
    # style weights (a mixture) generalise indices: one-hot weights are the index
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 1, 1]), 5).float()
    assert torch.allclose(G(x, onehot), a, atol=1e-5)
    half = G(x, onehot * 0.5 + torch.nn.functional.one_hot(torch.tensor([2, 2, 2]), 5).float() * 0.5)
    assert not torch.allclose(half, a) and not torch.allclose(half, b)
    # the predicted change applies to the same image at another size and aspect
    assert torch.allclose(G.render_full(x, x, torch.tensor([1, 1, 1])), a, atol=1e-6)
    big = torch.nn.functional.interpolate(x, size=(80, 48), mode="bilinear", align_corners=False)
    assert G.render_full(x, big, torch.tensor([1, 1, 1])).shape == (3, 3, 80, 48)


def test_a_low_resolution_detail_follows_the_full_size_image_s_edges():
    """At full resolution the detail made at the model's size must not glow past the photo's edges: a
    brightening of the light side of a sharp edge, made at 16 px, stays on that side at 128 px (bilinear
    upsampling spreads it 4 px into the dark side), and a smooth detail on a flat image comes through."""
    x = torch.full((1, 3, 128, 128), -0.8)
    x[..., 64:] = 0.8
    detail = torch.zeros(1, 1, 16, 16)
    detail[..., 8:] = 0.3
    guided = tm.follow_edges(detail, x)
    bilinear = torch.nn.functional.interpolate(detail, size=(128, 128), mode="bilinear", align_corners=False)
    assert bilinear[..., :64].max() > 0.1, "the planted glow is there without the guide"
    assert guided[..., :64].abs().max() < 0.01 and (guided[..., 64:] - 0.3).abs().max() < 0.01
    ramp = torch.linspace(-0.2, 0.2, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    flat = tm.follow_edges(ramp, torch.zeros(1, 3, 128, 128))
    assert torch.allclose(flat.mean(), torch.tensor(0.0), atol=1e-3) and flat[..., -1].mean() > 0.15


@torch.no_grad()
def test_luminance_detail_changes_no_hue_only_the_colour_transform_does():
    torch.manual_seed(0)
    G = tm.ResidualStyleGenerator(wikiart.StyleEmbedder(torch.randn(5, 10)), width=16, res_blocks=1,
                                       style_dim=16, luminance_detail=True).eval()
    torch.nn.init.normal_(G.to_detail.weight, std=0.05)  # the detail head woken, the colour head still zero
    x = torch.rand(4, 3, 32, 32) * 0.5 - 0.25  # away from the clamp
    change = G(x, torch.arange(4)) - x
    assert change.abs().max() > 1e-3, "the detail draws something"
    assert torch.allclose(change[:, 0], change[:, 1]) and torch.allclose(change[:, 1], change[:, 2]), \
        "the same change on R, G and B: lighter or darker, never another hue"
    torch.nn.init.normal_(G.to_coeffs.weight, std=0.05)
    change = G(x, torch.arange(4)) - x
    assert not torch.allclose(change[:, 0], change[:, 2]), "hue changes come from the colour transform"


@torch.no_grad()
def test_colour_prior_moves_the_channel_statistics_by_the_styles_offset_and_leaves_the_own_style():
    """Untrained (both heads zero), the colour prior alone: told the source, each image's channel means
    move by the target style's average minus the source style's, its stds scale by their ratio; the own
    style is the image exactly; untold, the offset is from the average over styles."""
    torch.manual_seed(0)
    C = 5
    colour = torch.rand(C, 6) * 0.4 + torch.tensor([-0.2] * 3 + [0.2] * 3)  # means, stds on [-1, 1]
    G = tm.ResidualStyleGenerator(wikiart.StyleEmbedder(torch.randn(C, 10)), width=16, res_blocks=1,
                                       style_dim=16, source_input=True, style_colour=colour).eval()
    x = torch.rand(C, 3, 16, 16) * 0.6 - 0.3  # away from the clamp
    source, target = torch.arange(C), (torch.arange(C) + 1) % C
    assert torch.equal(G(x, source, source), x)
    out = G(x, target, source)
    assert torch.allclose(out.mean((2, 3)) - x.mean((2, 3)), colour[target, :3] - colour[source, :3], atol=1e-5)
    assert torch.allclose(out.std((2, 3)) / x.std((2, 3)), colour[target, 3:] / colour[source, 3:], atol=1e-4)
    untold = G(x, target)
    assert torch.allclose(untold.mean((2, 3)) - x.mean((2, 3)), colour[target, :3] - colour[:, :3].mean(0), atol=1e-5)
    # the learned colour change only varies the colour across the image: with one cell, the prior is all of it
    G.colour_cells = 1
    torch.nn.init.normal_(G.to_coeffs.weight, std=0.05)
    assert torch.allclose(G(x, target, source), out, atol=1e-6)


@torch.no_grad()
def test_the_colour_prior_never_pushes_whites_or_blacks_off_the_scale_and_leaves_a_safe_change_whole():
    """A bright image sent to a style twice as contrasty and brighter: the prior as computed (means and
    stds moved by the styles' offset) would clip a third of it to white; the model's prior is scaled back
    so that at most the 2% beyond its 98th percentile reach the limit, by one factor for all channels (the
    hue of the change is kept); a change that stays inside the range is applied whole."""
    C = 2
    colour = torch.tensor([[0.0, 0.0, 0.0, 0.2, 0.2, 0.2], [0.3, 0.2, 0.1, 0.4, 0.4, 0.4]])
    torch.manual_seed(0)
    G = tm.ResidualStyleGenerator(wikiart.StyleEmbedder(torch.randn(C, 10)), width=16, res_blocks=1,
                                       style_dim=16, source_input=True, style_colour=colour).eval()
    src, tgt = torch.tensor([0]), torch.tensor([1])
    by_hand = lambda x: ((x - x.mean((2, 3), keepdim=True)) * 2 + x.mean((2, 3), keepdim=True)
                         + torch.tensor([0.3, 0.2, 0.1])[:, None, None])
    clipped = lambda out: ((out.abs() >= 1).any(1)).float().mean().item()
    x = torch.rand(1, 3, 32, 32) * 0.8 + 0.1  # bright: [0.1, 0.9]
    assert clipped(by_hand(x).clamp(-1, 1)) > 0.3 and clipped(G(x, tgt, src)) <= 0.05
    lam = (G(x, tgt, src, clip=False) - x).flatten(2).norm(dim=2) / (by_hand(x) - x).flatten(2).norm(dim=2)
    assert 0 < lam.min() < 1 and torch.allclose(lam, lam[0, 0].expand_as(lam), atol=1e-4), lam
    dull = torch.rand(1, 3, 32, 32) * 0.2 - 0.1
    assert torch.allclose(G(dull, tgt, src), by_hand(dull), atol=1e-5)


def test_the_range_term_pulls_outputs_back_inside_where_the_clip_gives_no_gradient():
    """Clipped pixels send no gradient to the other terms; the range term (unclipped output) does."""
    x = torch.rand(2, 3, 16, 16)
    coeffs = torch.zeros(2, 12, 2, 2)
    detail = torch.full((2, 1, 16, 16), 1.5).requires_grad_(True)  # every pixel pushed past white
    apply = tm.ResidualStyleGenerator.apply
    apply(x, coeffs, detail).mean().backward()
    assert detail.grad.abs().max() == 0
    (apply(x, coeffs, detail, clip=False).abs() - 1).clamp(min=0).mean().backward()
    assert (detail.grad > 0).all()


def test_colour_cells_coarsen_the_colour_change_only():
    fine = wake(tiny_generator())
    coarse = tm.ResidualStyleGenerator(fine.embedder, width=16, res_blocks=1, style_dim=16, colour_cells=1)
    coarse.load_state_dict(fine.state_dict())
    x, t = torch.rand(2, 3, 64, 64) * 1.8 - 0.9, torch.tensor([1, 3])
    (c_f, d_f), (c_c, d_c) = fine.coarse(x, t), coarse.coarse(x, t)
    assert c_f.shape[-2:] == (8, 8) and c_c.shape[-2:] == (1, 1) and torch.equal(d_f, d_c)
    assert torch.allclose(c_c, c_f.mean((2, 3), keepdim=True), atol=1e-6), "the cells' mean: one transform"


@torch.no_grad()
def test_told_the_source_style_the_generator_returns_the_image_exactly_in_its_own_style():
    G = wake(tiny_generator())
    torch.nn.init.normal_(G.to_coeffs.bias, std=0.05)  # a bias too: it must cancel, not be zero
    x = torch.rand(4, 3, 32, 32) * 1.8 - 0.9
    own, other = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0, 1])
    assert not torch.equal(G(x, own), x), "not told the source, the own style is only nearly the identity"
    assert torch.equal(G(x, own, own), x), "told it: exactly the input"
    told, plain = G(x, other, own), G(x, other)
    assert (told - x).abs().mean() > 1e-3, "another target changes it"
    assert (told - plain).abs().mean() > 1e-4, "minus the change towards the source"
    # with weights (--strength 0: the mixture is all source), and at another size
    w = torch.nn.functional.one_hot(own, 5).float()
    assert torch.equal(G(x, w, w), x) and torch.equal(G.render_full(x, x * 0.5, w, own), x * 0.5)
    # the change is the change towards the target minus the change towards the source
    (c_t, d_t), (c_s, d_s), (c, d) = G.coarse(x, other), G.coarse(x, own), G.coarse(x, other, own)
    assert torch.allclose(c, c_t - c_s, atol=1e-6) and torch.allclose(d, d_t - d_s, atol=1e-6)


def test_told_the_source_as_an_input_the_change_is_kept_whole_and_the_own_style_is_exact():
    G = tiny_generator()
    G = tm.ResidualStyleGenerator(G.embedder, width=16, res_blocks=1, style_dim=16, source_input=True)
    x = torch.rand(4, 3, 16, 16) * 1.6 - 0.8
    own, other = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0, 1])
    with torch.no_grad():
        wake(G)
        torch.nn.init.normal_(G.to_coeffs.bias, std=0.05)  # a bias too: the gate must stop it
        told, plain = G(x, other, own), G(x, other)
        assert (told - plain).abs().mean() > 1e-4, "the source is an input"
        assert torch.equal(plain, G(x, other, torch.zeros(4, 5))), "a row of zero weights: the source is unknown"
        (c_t, _), (c_s, _), (c, _) = G.coarse(x, other), G.coarse(x, own), G.coarse(x, other, own)
        assert not torch.allclose(c, c_t - c_s, atol=1e-3), "not the subtraction"
        w = torch.nn.functional.one_hot(own, 5).float()
        assert torch.equal(G(x, own, own), x) and torch.equal(G(x, w, w), x), "told it: the own style is exact"
        assert not torch.equal(G(x, own), x), "untold, the own style is only learned"
        half = G(x, 0.5 * w + 0.5 * torch.nn.functional.one_hot(other, 5).float(), own)
        assert (half - x).abs().mean() > 1e-3, "half way to another style changes it"
    # the change towards other styles is learnable through the gate: the target's colour shift told the source
    shift = torch.tensor([[0.3, -0.3, 0.0], [0.0, 0.3, -0.3], [-0.3, 0.0, 0.3], [0.2, 0.2, -0.2], [-0.2, -0.2, 0.2]])
    goal = (x + shift[other][:, :, None, None]).clamp(-1, 1)
    opt = torch.optim.Adam(G.parameters(), lr=3e-3)
    before = (G(x, other, own) - goal).abs().mean().item()
    for step in range(200):
        loss = (G(x, other, own) - goal).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert (G(x, other, own) - goal).abs().mean() < min(0.06, before / 3), "the target's change is learned"
        assert torch.equal(G(x, own, own), x), "and the own style stays exact"


def test_the_discriminator_s_blur_has_no_response_at_the_two_pixel_period():
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(8, 8)[None, None].expand(1, 3, 16, 16)
    assert tm.Blur(3)(checker)[..., 2:-2, 2:-2].abs().max() < 1e-6
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(tm.Blur(3)(flat), flat)
    rf, cls, maps = tm.StyleDiscriminator(7, width=8)(torch.rand(2, 3, 32, 32))
    assert rf.shape[0] == 2 and cls.shape == (2, 7) and len(maps) == 4


def test_discriminator_warm_up_teaches_its_style_head_before_the_generator_starts(sample_root):
    cfg = config.defaults()
    cfg.update(train_dir=f"{sample_root}/train", image_size=32, cache_dir="")
    split = style_transfer.Split(wikiart.load_split(cfg, "train"), cfg)
    idx = np.sort(split.train_idx)
    x, y = wikiart.to_float(split.data.images[idx], torch.device("cpu")), split.data.labels[idx]
    torch.manual_seed(0)
    D = tm.StyleDiscriminator(split.C, 8)
    accuracy = lambda: (D(x)[1].argmax(1) == y).float().mean().item()
    with torch.no_grad():
        before = accuracy()
    opt = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.5, 0.999))
    style_transfer.warm_up_classifier(D, opt, split, 40, 0, torch.device("cpu"))
    with torch.no_grad():
        after = accuracy()
    assert before < 0.15 and after > 0.3  # 27 styles: chance is 3.7%


def test_the_style_term_follows_the_frozen_teacher_not_the_discriminator(sample_root):
    """teacher_steps > 0: the generator's style-classification term is the teacher's cross-entropy (here a
    teacher rigged to call everything style 0: ~100 nats for any other target, where the untrained
    discriminator gives ~log C), and a training step never changes the teacher."""
    cfg = config.defaults()
    cfg.update(train_dir=f"{sample_root}/train", image_size=32, cache_dir="")
    st = cfg["style_transfer"] | {"w_texture": 0.0, "w_colour": 0.0}
    split = style_transfer.Split(wikiart.load_split(cfg, "train"), cfg)
    idx = np.sort(split.train_idx[:8])
    x, y = wikiart.to_float(split.data.images[idx], torch.device("cpu")), split.data.labels[idx]
    G, D = wake(tiny_generator(split.C)), tm.StyleDiscriminator(split.C, 8)
    teacher = tm.StyleDiscriminator(split.C, 8).requires_grad_(False)
    with torch.no_grad():
        teacher.classify.weight.zero_()
        teacher.classify.bias.copy_(torch.tensor([100.0] + [0.0] * (split.C - 1)))
    frozen = copy.deepcopy(teacher.state_dict())
    opt = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)
    step = lambda refs, g: style_transfer.train_step(G.train(), D, opt(G), opt(D), x, y, g, split, refs, st)
    with_d = step(SimpleNamespace(teacher=None), torch.Generator().manual_seed(0))
    with_teacher = step(SimpleNamespace(teacher=teacher), torch.Generator().manual_seed(0))
    assert with_d["g_cls"] < 2 * np.log(split.C) and with_teacher["g_cls"] > 50
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())


def test_running_moments_and_texture_term_vanish_when_outputs_average_the_style():
    moments = tm.RunningMoments(3, rate=0.5)
    v = [torch.tensor([[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]])]
    means = moments.update(v, torch.tensor([0, 0, 2]))
    assert torch.allclose(means[0][0], torch.tensor([2.0, 2.0])) and torch.allclose(means[0][2], torch.tensor([5.0, 5.0]))
    means = moments.update([torch.tensor([[4.0, 4.0]])], torch.tensor([0]))
    assert torch.allclose(means[0][0], torch.tensor([3.0, 3.0]))  # 2 + 0.5 * (4 - 2)
    # outputs whose running mean sits on the style's mean: no push; away from it: a push
    refs = [(torch.tensor([[2.0, 2.0], [0.0, 0.0]]), torch.tensor([1.0, 1.0]))]
    at = tm.RunningMoments(2, rate=1.0)
    grams = torch.tensor([[1.0, 3.0], [3.0, 1.0]], requires_grad=True)
    assert tm.texture_moment_loss([grams], refs, torch.tensor([0, 0]), at).item() == pytest.approx(0, abs=1e-6)
    off = tm.texture_moment_loss([grams + 1], refs, torch.tensor([0, 0]), tm.RunningMoments(2, rate=1.0))
    assert off.item() == pytest.approx(np.sqrt(2))


def test_naive_net_shapes_and_conditioning():
    torch.manual_seed(0)
    net = tm.NaiveStyleNet(4, 32, init_images=torch.rand(4, 3, 32, 32) * 2 - 1, width=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = net(x, torch.tensor([0, 0])), net(x, torch.tensor([3, 3]))
    assert a.shape == x.shape and not torch.allclose(a, b)
    assert torch.equal(a, net(x, torch.tensor([0, 0])))


def test_soft_colour_histogram_matches_hard_bins_and_pulls_colours():
    # near bin centres the soft histogram is the hard one; every histogram sums to 1
    rng = np.random.default_rng(0)
    centres = (rng.integers(0, 8, (3, 16, 16, 3)) * 32 + 16).astype(np.uint8)
    soft = tm.soft_colour_histogram(wikiart.to_float(centres, torch.device("cpu")), sigma=0)  # no blur
    assert ((soft - metrics.colour_histograms(centres)[0].float()).abs().sum(1) < 0.15).all()
    noise = torch.rand(3, 3, 16, 16) * 2 - 1
    for sigma in (0, 1):
        assert torch.allclose(tm.soft_colour_histogram(noise, sigma=sigma).sum(1), torch.ones(3), atol=1e-5)
    # gradient descent on the loss moves the pixels' (hard) histogram to a target style's
    target_u8 = np.full((2, 16, 16, 3), (208, 48, 16), np.uint8)  # bin centres
    refs = tm.mean_colour_histograms(np.concatenate([target_u8, centres[:1]]), [0, 0, 2], [0, 1], 3,
                                          torch.device("cpu"))
    assert (refs[0] - metrics.colour_histograms(target_u8)[0][0].float()).abs().sum() < 0.15
    assert torch.allclose(refs[1], refs[0]) and torch.allclose(refs[2], refs[0])  # no images: the mean
    # (the soft bins pass gradients to neighbouring bins only: start within about one bin of the goal)
    x = (wikiart.to_float(target_u8[:1], torch.device("cpu")) + noise[:1] * 0.3).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    before = metrics.colour_histograms(wikiart.to_uint8(x))[0]
    for _ in range(100):
        loss = (tm.soft_colour_histogram(x.clamp(-1, 1), sigma=0) - refs[0]).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = metrics.colour_histograms(wikiart.to_uint8(x))[0]
    goal = metrics.colour_histograms(target_u8[:1])[0]
    assert (after - goal).abs().sum() < 0.5 * (before - goal).abs().sum()
    # after the blur (sigma 1, the training default) a 2x2 checkerboard is invisible: no dithering pays
    flat = torch.full((1, 3, 16, 16), 0.2)
    checker = torch.tensor([[0.3, -0.3], [-0.3, 0.3]]).repeat(8, 8)
    assert (tm.soft_colour_histogram(flat + checker) - tm.soft_colour_histogram(flat)).abs().sum() < 0.02
    assert (tm.soft_colour_histogram(flat + checker, sigma=0) - tm.soft_colour_histogram(flat, sigma=0)).abs().sum() > 1


# ---- the evaluation's measures

def test_clipped_fraction_counts_pixels_with_a_channel_at_either_limit():
    img = np.full((2, 4, 4, 3), 128, np.uint8)
    img[0, 0, :, 0] = 255  # 4 pixels with red at white
    img[1, :2, :, 2] = 0  # 8 pixels with blue at black
    assert metrics.clipped_fraction(img) == pytest.approx(12 / 32)


def smooth_images(n, size=32, seed=0):
    """Painting-like stand-ins: low-pass noise (no energy at the 2- and 4-pixel periods)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size),
                                        mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 200 + 20).permute(0, 2, 3, 1).round().to(torch.uint8).numpy()


def test_artefact_ratio_is_one_on_real_images_and_large_with_a_planted_mesh_or_frame():
    real, styles = smooth_images(40), np.repeat([0, 1], 20)
    same = metrics.artefact_ratio(real[:20], styles[:20], real[20:], styles[20:] * 0)  # other images, same kind
    assert 0.6 < same["periodic"] < 1.6 and 0.6 < same["border"] < 1.6 and 0.6 < same["blotch"] < 1.6
    mesh = np.tile(np.array([[12, -12], [-12, 12]]), (16, 16))[None, :, :, None]
    meshed = np.clip(real[:20].astype(int) + mesh, 0, 255).astype(np.uint8)
    r = metrics.artefact_ratio(meshed, styles[:20] * 0, real[20:], styles[20:] * 0)
    assert r["periodic"] > 3 and r["blotch"] < 1.6, "a 2-px mesh is not a blotch"
    # a plaid of dark and bright blotches 16 px apart (what an alternating 8-px colour grid draws)
    wave = np.cos(2 * np.pi * np.arange(32) / 16)
    plaid = np.clip(real[:20].astype(int) + (60 * wave[:, None] * wave[None, :])[None, :, :, None], 0, 255)
    r = metrics.artefact_ratio(plaid.astype(np.uint8), styles[:20] * 0, real[20:], styles[20:] * 0)
    assert r["blotch"] > 1.5 and r["periodic"] < 1.6, "blotches, not a mesh"
    framed = real[:20].copy()
    framed[:, :3], framed[:, -3:], framed[:, :, :3], framed[:, :, -3:] = 255, 255, 255, 255  # a white frame
    r = metrics.artefact_ratio(framed, styles[:20] * 0, real[20:], styles[20:] * 0)
    assert r["border"] > 1.5 and r["artefact"] == max(r["periodic"], r["border"])


def test_matched_ceiling_weights_per_style_recall_like_the_targets():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 0, 0])  # recall: style 0 1.0, style 1 0.5, style 2 0.0
    assert metrics.matched_ceiling(predictions, labels, [1, 1, 1, 0], 4) == pytest.approx(0.75 * 0.5 + 0.25)
    assert metrics.matched_ceiling(predictions, labels, [2, 3], 4) == 0  # style 3 has no real image: 0
    # the plain accuracy (0.6) is not the ceiling of a run whose targets are mostly style 1
    assert (predictions == labels).mean() == pytest.approx(0.6)


def test_colour_stats_baseline_moves_each_image_to_its_target_styles_channel_statistics():
    rng = np.random.default_rng(0)
    # two styles: a dark, flat one and a bright, contrasted one (each style's images share their statistics)
    dark = np.clip(rng.normal([40, 50, 60], [5, 6, 7], (6, 16, 16, 3)), 0, 255).astype(np.uint8)
    bright = np.clip(rng.normal([180, 150, 120], [30, 25, 20], (6, 16, 16, 3)), 0, 255).astype(np.uint8)
    train_u8, train_y = np.concatenate([dark, bright]), np.array([0] * 6 + [1] * 6)
    inputs = np.concatenate([bright[:2], dark[:2], np.full((1, 16, 16, 3), 90, np.uint8)])
    targets = np.array([0, 0, 1, 1, 1])
    out = metrics.colour_statistics_transfer(inputs, targets, train_u8, train_y, num_styles=3, chunk=5)
    assert out.shape == inputs.shape and out.dtype == np.uint8
    flat = lambda a: a.reshape(len(a), -1, 3).astype(float)
    for i, t in enumerate(targets[:4]):  # the target style's average channel mean and std, to rounding
        style = flat(train_u8[train_y == t])
        assert np.allclose(flat(out[i:i + 1]).mean(1), style.mean(1).mean(0), atol=1.0)
        assert np.allclose(flat(out[i:i + 1]).std(1), style.std(1).mean(0), rtol=0.05)
    # an image moved to its own statistics is itself; a flat image stays flat (no noise from dividing by 0)
    assert np.abs(metrics.colour_statistics_transfer(bright[:1], np.array([1]), bright[:1], np.array([1]), 2)
                  .astype(int) - bright[:1]).max() <= 1
    assert flat(out[4:]).std(1).max() == 0
    # a style without training images gets the average of all of them
    none = metrics.colour_statistics_transfer(inputs[:1], np.array([2]), train_u8, train_y, 3)
    assert np.allclose(flat(none).mean(1), flat(train_u8).mean(1).mean(0), atol=1.0)


# ---- your own images: colours kept, brush marks

def test_keep_colour_takes_luminance_from_the_output_and_colour_from_the_input():
    torch.manual_seed(0)
    x, out = torch.rand(2, 3, 8, 8) * 1.2 - 0.6, torch.rand(2, 3, 8, 8) * 1.2 - 0.6
    kept = stylise.keep_colour(out, x)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    to = lambda img: torch.einsum("ij,bjhw->bihw", yiq, (img + 1) / 2)
    assert torch.allclose(to(kept)[:, 0], to(out)[:, 0], atol=0.03)
    assert torch.allclose(to(kept)[:, 1:], to(x)[:, 1:], atol=0.03)


@torch.no_grad()
def test_brush_marks_flatten_areas_into_patches_and_keep_edges_sharp_unlike_a_blur():
    torch.manual_seed(0)
    step = torch.full((1, 3, 48, 48), -0.6)
    step[..., 24:] = 0.6  # a vertical edge between two flat areas, with photo-like grain
    grainy = step + 0.08 * torch.randn_like(step)
    painted = stylise.paint_strokes(grainy, 4)
    blurred = F.avg_pool2d(F.pad(grainy, (4,) * 4, mode="reflect"), 9, 1)
    flat = lambda img: img[..., 8:40, 4:18].std().item()
    assert flat(painted) < 0.4 * flat(grainy), "the grain inside a flat area turns into smooth paint"
    edge = lambda img: (img[..., 8:40, 24] - img[..., 8:40, 23]).mean().item()
    assert edge(painted) > 0.8 * 1.2 > 2 * edge(blurred), "the edge stays a step; a blur of that size spreads it"
    assert stylise.paint_strokes(grainy, 0) is grainy
    assert torch.allclose(stylise.paint_strokes(torch.full((1, 3, 16, 16), 0.3), 3), torch.tensor(0.3))


# ---- the script: train (resumable), --evaluate val|test, --seeds

def st_args(sample_root, autoencoder, out, **extra):
    """--set arguments for a tiny run of the recommended recipe (config.json's method settings) on the sample."""
    keys = {"train_dir": f"{sample_root}/train", "test_dir": f"{sample_root}/test", "image_size": 32, "cache_dir": "",
            "device": "cpu", "threads": 1, "style_transfer.out_dir": out,
            "style_transfer.autoencoder_path": f"{autoencoder.out}/best.pt", "style_transfer.width": 8,
            "style_transfer.style_dim": 16, "style_transfer.d_width": 8, "style_transfer.epochs": 2,
            "style_transfer.steps_per_epoch": 8, "style_transfer.batch_size": 8, "style_transfer.lr": 0.002,
            "style_transfer.teacher_steps": 10, "style_transfer.d_warmup_steps": 5, "style_transfer.naive_epochs": 1,
            "style_transfer.judge_width": 8, "style_transfer.judge_epochs": 1, "style_transfer.eval_images": 6,
            "style_transfer.grid_rows": 3} | extra
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


@pytest.fixture(scope="module")
def trained(sample_root, tiny_autoencoder, tmp_path_factory):
    """style_transfer.py --seeds 2 on the tiny sample: two generators and the naive baseline."""
    out = tmp_path_factory.mktemp("style_transfer") / "st"
    args = st_args(sample_root, tiny_autoencoder, out)
    p = run_main("style_transfer.py", *args, "--seeds", "2")
    return SimpleNamespace(out=out, args=args, stdout=p.stdout)


@pytest.fixture(scope="module")
def evaluated_val(trained, tmp_path_factory):
    """--evaluate val --seeds 2 of that run, with test_dir pointing at no folder at all."""
    missing = tmp_path_factory.mktemp("nothing") / "test"
    args = [f"test_dir={missing}" if a.startswith("test_dir=") else a for a in trained.args]
    p = run_main("style_transfer.py", "--evaluate", "val", "--seeds", "2", *args)
    return SimpleNamespace(ev=json.load(open(trained.out / "evaluation_val.json")), stdout=p.stdout)


@pytest.mark.slow  # the module's training run
def test_training_writes_each_seeds_models_grids_and_embeddings(trained):
    for folder in ("residual", "naive", "seed1/residual", "seed1/naive"):
        assert (trained.out / folder / "model.pt").exists() and (trained.out / folder / "last.pt").exists()
    for picture in ("residual/grid.png", "residual/grid_told_source.png", "residual/embeddings.png", "naive/grid.png"):
        img = np.asarray(Image.open(trained.out / picture).convert("RGB"))
        assert img.shape[0] > 100 and img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 100, picture
    assert "style teacher: 10 steps" in trained.stdout and "discriminator warm-up: 5 steps" in trained.stdout
    log = json.load(open(trained.out / "residual" / "train_log.json"))
    assert len(log) == 2 and {"g_range", "g_colour", "val_rec_l1", "val_fake_style_acc"} <= set(log[-1])
    G, D, ckpt = tm.load_model(str(trained.out / "seed1" / "residual" / "model.pt"), torch.device("cpu"))
    assert G.source_input and G.style_colour is not None and ckpt["config"]["seed"] == 1
    first = tm.load_model(str(trained.out / "residual" / "model.pt"), torch.device("cpu"))[0]
    assert not torch.equal(G.mapping[0].weight, first.mapping[0].weight), "two seeds, two generators"


@pytest.mark.slow  # three short trainings
def test_a_training_stopped_after_an_epoch_and_resumed_equals_one_run_straight(sample_root, tiny_autoencoder, tmp_path):
    """--resume continues from last.pt exactly (the texture term's running means included); a longer run
    (epochs raised) may continue a shorter one."""
    keys = {"style_transfer.w_texture": 3, "style_transfer.naive_epochs": 0, "style_transfer.steps_per_epoch": 4}
    straight, stopped = (st_args(sample_root, tiny_autoencoder, tmp_path / name, **keys) for name in ("a", "b"))
    run_main("style_transfer.py", *straight)
    run_main("style_transfer.py", *stopped, "style_transfer.epochs=1")
    p = run_main("style_transfer.py", *stopped, "--resume")
    assert "resumed from" in p.stdout and "after epoch 1" in p.stdout
    a, b = (torch.load(tmp_path / name / "residual" / "model.pt", weights_only=False) for name in ("a", "b"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert drop(a["history"]) == drop(b["history"]) and len(a["history"]) == 2
    p = run_main("style_transfer.py", *stopped, "style_transfer.w_rec=1", "--resume", check=False)
    assert p.returncode == 2 and "was trained with style_transfer.w_rec=50.0" in p.stderr


@pytest.mark.slow  # the module's training run
def test_evaluate_val_never_reads_the_test_folder(trained, evaluated_val):
    assert evaluated_val.ev["split"] == "val" and not (trained.out / "evaluation.json").exists()
    assert evaluated_val.ev["n_images"] == 6 and evaluated_val.ev["n_outputs"] == 6 * (evaluated_val.ev["styles"] - 1)
    assert_real_picture(trained.out / "strength_curve_val.png")


@pytest.mark.slow  # the module's training run
def test_an_evaluation_reports_the_two_sample_test_with_its_interval_and_feature_groups(evaluated_val):
    for row in ("residual", "naive", "residual_told_source", "colour_stats", "identity"):
        test = evaluated_val.ev[row].get("mean", evaluated_val.ev[row])["two_sample"]
        assert 0 <= test["accuracy"] <= 1 and 0 <= test["ci95"] < 0.2, (row, test)
        assert set(test["by_group"]) == {"sharpness", "spectrum", "blocks", "colour"}
    assert "two-sample %" in evaluated_val.stdout


@pytest.mark.slow  # the module's training run
def test_evaluation_rows_the_strength_curve_and_the_mean_over_seeds(evaluated_val):
    ev, told = evaluated_val.ev, "residual_told_source"
    assert ev["seeds"] == [0, 1] and len(ev["runs"]) == 2 and "mean ± std over seeds [0, 1]" in evaluated_val.stdout
    for key in ("robust_hit_rate", "ssim", "blotch_ratio", "realism_gap_closed", "own_style_psnr"):
        values = [r["residual"][key] for r in ev["runs"]]
        assert ev["residual"]["mean"][key] == pytest.approx(np.mean(values))
        assert ev["residual"]["std"][key] == pytest.approx(np.std(values, ddof=1))
    accuracies = [r["residual"]["two_sample"]["accuracy"] for r in ev["runs"]]
    assert ev["residual"]["mean"]["two_sample"]["accuracy"] == pytest.approx(np.mean(accuracies))
    # the baselines need no generator: scored once; identity closes no gap and keeps the content
    assert ev["identity"]["ssim"] == pytest.approx(1.0, abs=1e-6) and ev["identity"]["lab_gap_closed"] == 0
    assert ev["identity"]["realism_gap_closed"] == 0 and 0.3 < ev["colour_stats"]["ssim"] < 1
    # told the source, the own style is the image exactly; each step of strength changes the image more
    mean = {name: ev[name]["mean"] for name in ev if isinstance(ev[name], dict) and "mean" in ev[name]}
    assert mean[told]["own_style_psnr"] >= 100 > mean["residual"]["own_style_psnr"]
    ssims = [mean[f"{told}@{a}"]["ssim"] for a in (0.25, 0.5, 0.75)] + [mean[told]["ssim"]]
    assert ssims == sorted(ssims, reverse=True) and ssims[0] > ssims[-1], ssims
    assert "| `residual_told_source` | " in evaluated_val.stdout and "| exact |" in evaluated_val.stdout


@pytest.mark.slow  # the module's training run
def test_evaluate_defaults_to_the_test_folder_and_needs_five_images(trained, sample_root, tmp_path):
    styles = sorted(os.listdir(f"{sample_root}/test"))[:5]
    for style in styles:  # a test folder of five images, one of each of five styles
        os.makedirs(tmp_path / "five" / style)
        shutil.copy(f"{sample_root}/test/{style}/{sorted(os.listdir(f'{sample_root}/test/{style}'))[0]}",
                    tmp_path / "five" / style)
    out = tmp_path / "st"
    shutil.copytree(trained.out, out, ignore=shutil.ignore_patterns("seed1", "evaluation*"))
    args = [a.replace(str(trained.out), str(out)).replace(f"test_dir={sample_root}/test", f"test_dir={tmp_path}/five")
            for a in trained.args]
    run_main("style_transfer.py", "--evaluate", *args)
    ev = json.load(open(out / "evaluation.json"))
    assert ev["split"] == "test" and ev["n_images"] == 5 and ev["n_outputs"] == 5 * (ev["styles"] - 1)
    assert "mean" not in ev["residual"] and ev["identity"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    shutil.rmtree(tmp_path / "five" / styles[0])
    p = run_main("style_transfer.py", "--evaluate", *args, check=False)
    assert p.returncode == 2 and "--evaluate test renders 4 image(s); the two-sample test needs at least 5" in p.stderr


def test_evaluate_without_a_trained_model_names_the_command_that_trains_it(tmp_path):
    p = run_main("style_transfer.py", "--evaluate", "--seeds", "2", "--set", f"style_transfer.out_dir={tmp_path}/st",
                 check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert (f"no trained model at {tmp_path}/st/residual/model.pt: train it first: python style_transfer.py --set "
            f"style_transfer.out_dir={tmp_path}/st --seeds 2") in p.stderr
    assert not (tmp_path / "st").exists()


def test_training_misuse_is_one_line_and_writes_nothing(sample_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = [f"train_dir={sample_root}/train", f"test_dir={sample_root}/test", "image_size=32", "cache_dir="]
    p = run_main("style_transfer.py", "--set", *data, "style_transfer.autoencoder_path=out/ae_mini/best.pt",
                 check=False)
    assert p.returncode == 2 and "no autoencoder checkpoint at out/ae_mini/best.pt" in p.stderr and \
        (f"train it first: python autoencoder.py --set {' '.join(data)} "
         "style_transfer.autoencoder_path=out/ae_mini/best.pt autoencoder.out_dir=out/ae_mini") in p.stderr
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "config": config.defaults()}, tmp_path / "classifier.pt")
    p = run_main("style_transfer.py", "--set", *data, f"style_transfer.autoencoder_path={tmp_path}/classifier.pt",
                 f"style_transfer.out_dir={tmp_path}/st", check=False)
    assert p.returncode == 2 and f"the weights in {tmp_path}/classifier.pt do not fit a ConvAutoencoder" in p.stderr
    p = run_main("style_transfer.py", "--resume", "--set", f"style_transfer.autoencoder_path={tmp_path}/classifier.pt",
                 f"style_transfer.out_dir={tmp_path}/none", check=False)
    assert p.returncode == 2 and f"--resume: nothing to resume: no {tmp_path}/none/residual/last.pt" in p.stderr
    p = run_main("style_transfer.py", "--seeds", "0", check=False)
    assert p.returncode == 2 and "--seeds must be >= 1, got 0" in p.stderr
    p = run_main("style_transfer.py", check=False)  # config.json's paths: no data/sample, cache or out/ made
    assert p.returncode == 2 and "no autoencoder checkpoint at out/autoencoder/best.pt" in p.stderr
    assert os.listdir(tmp_path) == ["classifier.pt"]


# ---- your own images: style_transfer.py --image with the trained model

def real_photos():
    """scikit-learn's two real photos (china.jpg, flower.jpg, 640 x 427): the untold path's example."""
    import sklearn.datasets
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    return [os.path.join(folder, name) for name in ("china.jpg", "flower.jpg")]


@pytest.mark.slow  # the module's training run
def test_a_real_photo_of_unknown_style_comes_out_in_every_style_and_at_its_own_size(trained, sample_root):
    run_main("style_transfer.py", "--image", *real_photos(), "--style", "all", "--out", "photos", *trained.args)
    report = json.load(open(trained.out / "photos" / "stylised.json"))
    assert [os.path.basename(i["path"]) for i in report["images"]] == ["china.jpg", "flower.jpg"]
    for item in report["images"]:
        assert not item["own_style_given"], "a photo: its style is the discriminator's guess"
        assert_real_picture(trained.out / "photos" / item["outputs"][0])
    style = sorted(os.listdir(os.path.join(sample_root, "train")))[3]
    run_main("style_transfer.py", "--image", real_photos()[0], "--style", style, "--max-side", "256", "--out",
             "photo_one", *trained.args)
    item = json.load(open(trained.out / "photo_one" / "stylised.json"))["images"][0]
    small, full = (np.asarray(Image.open(trained.out / "photo_one" / f)) for f in item["outputs"])
    assert small.shape == (32, 32, 3) and full.shape[1] == 256 and abs(full.shape[0] / 256 - 427 / 640) < 0.01
    photo = np.asarray(Image.open(real_photos()[0]).convert("RGB").resize((256, full.shape[0]), Image.BILINEAR))
    assert np.abs(full.astype(float) - photo).mean() > 1, "the photo is changed, not passed through"
    # a photo of unknown style gets brush marks by default: less pixel-scale grain than without (--paint 0)
    run_main("style_transfer.py", "--image", real_photos()[0], "--style", style, "--max-side", "256", "--paint", "0",
             "--out", "photo_unpainted", *trained.args)
    unpainted = np.asarray(Image.open(trained.out / "photo_unpainted" / item["outputs"][1]))
    grain = lambda img: np.abs(np.diff(img.astype(float), axis=1)).mean()
    assert json.load(open(trained.out / "photo_one" / "stylised.json"))["paint"] == 6
    assert grain(full) < 0.8 * grain(unpainted)


@pytest.mark.slow  # the module's training run
def test_stylise_every_style_one_style_at_the_input_aspect_and_a_mix(trained, sample_root, tmp_path):
    folder = os.path.join(sample_root, "test", sorted(os.listdir(os.path.join(sample_root, "test")))[0])
    photo = tmp_path / "photo.png"
    Image.open(os.path.join(folder, sorted(os.listdir(folder))[0])).convert("RGB").resize((60, 40)).save(photo)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    classes = sorted(os.listdir(os.path.join(sample_root, "train")))
    out = trained.out
    # every style: one labelled strip per image; the unreadable file is named and skipped
    p = run_main("style_transfer.py", "--image", str(photo), str(tmp_path / "broken.jpg"), "--out", "all",
                 *trained.args)
    report = json.load(open(out / "all" / "stylised.json"))
    assert report["n_images"] == 1 and len(report["skipped"]) == 1 and "broken.jpg" in report["skipped"][0]
    assert report["images"][0]["own_style"] in classes and "own style (predicted)" in p.stdout
    strip = np.asarray(Image.open(out / "all" / report["images"][0]["outputs"][0]))
    assert strip.shape[1] > strip.shape[0] * 4 and strip.std() > 10
    # one style: the model's size, and the input's own aspect with the longer side at most --max-side
    run_main("style_transfer.py", "--image", str(photo), "--style", classes[3], "--max-side", "48", "--out", "one",
             *trained.args)
    files = json.load(open(out / "one" / "stylised.json"))["images"][0]["outputs"]
    assert sorted(Image.open(out / "one" / f).size for f in files) == [(32, 32), (48, 32)]
    # a mixture, half strength, colours kept
    run_main("style_transfer.py", "--image", str(photo), "--mix", f"{classes[1]}:0.7", f"{classes[2]}:0.3",
             "--strength", "0.5", "--keep-colour", "--max-side", "0", "--out", "mix", *trained.args)
    report = json.load(open(out / "mix" / "stylised.json"))
    weights = list(report["targets"].values())[0]
    assert weights[1] == pytest.approx(0.7) and weights[2] == pytest.approx(0.3) and report["keep_colour"]
    assert len(report["images"][0]["outputs"]) == 1


@pytest.mark.slow  # the module's training run
def test_strength_zero_returns_the_image_told_its_source_or_the_discriminators_guess(trained, sample_root):
    """Untold (a photo), the generator is told the discriminator's guess exactly as if it were given with
    --source, so the change is measured from a style and --strength 0 gives the image back unchanged, at the
    model's size and at full size (the brush marks fade with the strength)."""
    G, D, ckpt = tm.load_model(str(trained.out / "residual" / "model.pt"), torch.device("cpu"))
    classes = sorted(ckpt["class_to_idx"], key=ckpt["class_to_idx"].get)
    photo = real_photos()[1]
    x = wikiart.to_float(images.load_image_inputs([photo], 32)[0], torch.device("cpu"))
    guess = D(x)[1].argmax(1)
    target, got = (int(guess) + 3) % len(classes), {}
    for strength in (1, 0):
        run_main("style_transfer.py", "--image", photo, "--style", classes[target], "--strength", str(strength),
                 "--max-side", "96", "--out", f"guess_{strength}", *trained.args)
        item = json.load(open(trained.out / f"guess_{strength}" / "stylised.json"))["images"][0]
        assert item["own_style"] == classes[int(guess)] and not item["own_style_given"]
        got[strength] = [np.asarray(Image.open(trained.out / f"guess_{strength}" / f)) for f in item["outputs"]]
        weights = F.one_hot(torch.tensor([target if strength else int(guess)]), len(classes)).float()
        told = wikiart.to_uint8(G(x, weights, F.one_hot(guess, len(classes)).float()))[0]
        assert np.array_equal(got[strength][0], told), "untold = told the guess"
    full = wikiart.to_float(images.decode_image(photo, 96, "keep")[None], torch.device("cpu"))
    assert np.array_equal(got[0][0], wikiart.to_uint8(x)[0]) and np.array_equal(got[0][1], wikiart.to_uint8(full)[0])
    assert not np.array_equal(got[1][0], got[0][0]), "strength 1: changed"
    # told the source (--source, a painting): strength 0 returns each image of a folder exactly
    folder = os.path.join(sample_root, "test", classes[2])
    p = run_main("style_transfer.py", "--image", folder, "--style", classes[5], "--strength", "0", "--max-side", "0",
                 "--source", classes[2].lower(), "--out", "zero_told", *trained.args)
    report = json.load(open(trained.out / "zero_told" / "stylised.json"))
    assert f"own style (given) {classes[2]}" in p.stdout and report["paint"] == 0
    for item in report["images"]:
        assert item["own_style"] == classes[2] and item["own_style_given"]
        assert np.array_equal(np.asarray(Image.open(trained.out / "zero_told" / item["outputs"][0])),
                              images.load_image_inputs([item["path"]], 32)[0][0])


@pytest.mark.slow  # the module's training run
def test_stylise_misuse_is_one_line(trained, sample_root, tmp_path):
    photo = os.path.join(sample_root, "test")
    for extra, says in ((["--style", "Cubsm"], "unknown style 'Cubsm'; did you mean 'Cubism'?"),
                        (["--source", "Impresionism"], "did you mean 'Impressionism'?"),
                        (["--strength", "1.5"], "--strength must be in [0, 1]"),
                        (["--paint", "-1"], "--paint must be >= 0 pixels"), (["--mix", "Cubism"], "NAME:WEIGHT")):
        p = run_main("style_transfer.py", "--image", photo, *extra, *trained.args, check=False)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, (extra, p.stderr)
    p = run_main("style_transfer.py", "--image", photo, "--set", f"style_transfer.out_dir={tmp_path}/none", check=False)
    assert p.returncode == 2 and "no trained style-transfer model" in p.stderr and "style_transfer.py" in p.stderr
