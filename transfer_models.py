"""Part 3's networks (residual generator, anti-aliased discriminator, naive baseline) and training losses.
Generators take and return [-1, 1] batches; styles and sources are indices (B,) or weights (B, num_styles)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import metrics
import runs
import wikiart


class AdaIN(nn.Module):
    """Instance norm whose per-channel scale and shift are predicted from the style vector."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.to_scale_shift = nn.Linear(style_dim, 2 * channels)

    def forward(self, x, s):
        scale, shift = self.to_scale_shift(s)[:, :, None, None].chunk(2, 1)
        return self.norm(x) * (1 + scale) + shift


class AdaINBlock(nn.Module):
    """Residual block conv-AdaIN-ReLU-conv-AdaIN: the style decides the statistics of every map."""

    def __init__(self, c, style_dim):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(c, c, 3, 1, 1, padding_mode="reflect"), AdaIN(c, style_dim)
        self.conv2, self.norm2 = nn.Conv2d(c, c, 3, 1, 1, padding_mode="reflect"), AdaIN(c, style_dim)

    def forward(self, x, s):
        return x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x), s))), s)


class Blur(nn.Module):
    """Fixed [1,2,1] x [1,2,1] / 16 low-pass per channel, same size: no response at the 2-pixel period."""

    def __init__(self, channels):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel, groups=x.shape[1])


def down(cin, cout):
    """An anti-aliased stride-2 conv stage (Blur first, reflection padding: no pixel-parity gradient)."""
    return nn.Sequential(Blur(cin), nn.Conv2d(cin, cout, 3, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2))


class ResidualStyleGenerator(nn.Module):
    """Image + style -> the image in that style: out = x + A [x; 1] + r, both heads zero at the start (the
    identity). A: a 3x4 colour transform per pixel on a 1/8-side grid (colour_cells n: n x n cells), plus
    colour_prior() from style_colour (num_styles, 6); r: a detail residual (luminance_detail: one channel) from a
    U-Net modulated by the style through AdaIN. Told the source, it subtracts the change towards it
    (source_input=False), or takes it as an input, the change gated to 0 for the own style (source_input=True)."""

    def __init__(self, embedder, width=32, res_blocks=2, style_dim=64, source_input=False, colour_cells=0,
                 luminance_detail=False, style_colour=None):
        super().__init__()
        self.embedder, w, self.source_input, self.colour_cells = embedder, width, source_input, colour_cells
        self.register_buffer("style_colour", style_colour.clone() if style_colour is not None else None)
        told_dim = embedder.dim + 1 if source_input else 0
        self.mapping = nn.Sequential(nn.Linear(embedder.dim + told_dim + 6, style_dim), nn.ReLU(),
                                     nn.Linear(style_dim, style_dim), nn.ReLU())
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, 1, 1, padding_mode="reflect")
        c = [w // 4, w // 2, w, 2 * w]  # channels at 1, 1/2, 1/4, 1/8 of the side (narrow where it is big)
        self.enc = nn.ModuleList([nn.Sequential(conv(3, c[0]), nn.LeakyReLU(0.2)),
                                  down(c[0], c[1]), down(c[1], c[2]), down(c[2], c[3])])
        self.blocks = nn.ModuleList(AdaINBlock(c[3], style_dim) for _ in range(res_blocks))
        self.to_coeffs = conv(c[3], 12)  # the change of the 3x4 colour transform, on the 1/8 grid
        chans = [(c[3] + c[2], c[2]), (c[2] + c[1], c[1]), (c[1] + c[0], c[0])]  # upsample, concat skip, conv
        self.dec = nn.ModuleList(conv(cin, cout) for cin, cout in chans)
        self.dec_norm = nn.ModuleList(AdaIN(cout, style_dim) for _, cout in chans)
        self.to_detail = nn.Conv2d(c[0], 1 if luminance_detail else 3, 1)  # 1: broadcast to R, G, B (no hue)
        for p in [*self.to_coeffs.parameters(), *self.to_detail.parameters()]:  # both heads start at zero
            nn.init.zeros_(p)

    def coarse(self, x, styles, sources=None):
        """(colour-change coefficients (B, 12, H/8, W/8), detail residual (B, 3 or 1, H, W))."""
        prior = self.colour_prior(x, styles, sources) if self.style_colour is not None else 0
        e, gate = self.embedder(styles), 1
        if self.source_input:  # the source is an input (a row of zero weights: unknown)
            w = e.new_zeros(len(e), len(self.embedder.initial)) if sources is None else self.weights(sources, e.dtype)
            known = w.sum(1, keepdim=True).clamp(max=1)
            offset = known * (e - self.embedder(w))  # the target embedding minus the source's, 0 if unknown
            e = torch.cat([e, offset, known], 1)
            d2 = offset.pow(2).mean(1)  # standardised embeddings of two styles differ by ~1.4 per dimension
            gate = torch.where(known[:, 0] > 0, d2 / (d2 + 0.01), torch.ones_like(d2))[:, None, None, None]
            sources = None  # an input, not subtracted
        elif sources is not None:  # both changes in one pass: the encoder once, the style-driven part on 2B
            e = torch.cat([e, self.embedder(sources)])
        n = len(e) // len(x)
        s = self.mapping(torch.cat([e, torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).repeat(n, 1)], 1))
        skips, h = [], x
        for stage in self.enc:
            h = stage(h)
            skips.append(h.repeat(n, 1, 1, 1) if n > 1 else h)
        h = skips[-1]
        for block in self.blocks:
            h = block(h, s)
        coeffs = self.to_coeffs(h)
        if self.colour_cells:  # coarser colour cells: the colour change cannot draw a plaid of blotches
            coeffs = F.adaptive_avg_pool2d(coeffs, self.colour_cells)
        if self.style_colour is not None:  # the prior sets the whole image's colour (learned, it drifted to casts)
            coeffs = coeffs - coeffs.mean((2, 3), keepdim=True)
        for conv, norm, skip in zip(self.dec, self.dec_norm, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = F.leaky_relu(norm(conv(torch.cat([h, skip], 1)), s), 0.2)
        detail = self.to_detail(h)
        if sources is not None:  # towards the target minus towards the source: zero for the same style
            (c_t, c_s), (d_t, d_s) = coeffs.chunk(2), detail.chunk(2)
            coeffs, detail = c_t - c_s, d_t - d_s
        return coeffs * gate + prior, detail * gate

    def colour_prior(self, x, styles, sources):
        """(B, 12, 1, 1): moves each image's channel means and stds by the target style's average offset from the
        source's (Reinhard et al. 2001; unknown source: the average style), scaled back to keep the 2-98% range."""
        w_t = self.weights(styles, x.dtype)
        w_s = torch.zeros_like(w_t) if sources is None else self.weights(sources, x.dtype)
        w_s = torch.where(w_s.sum(1, keepdim=True) > 0, w_s, torch.full_like(w_s, 1 / len(self.style_colour)))
        (mu_t, sd_t), (mu_s, sd_s) = ((w @ self.style_colour).split(3, 1) for w in (w_t, w_s))
        ratio = sd_t / sd_s.clamp(min=1e-3)
        shift = (1 - ratio) * x.mean((2, 3)) + mu_t - mu_s  # out = ratio (x - mean x) + mean x + mu_t - mu_s
        lo, hi = torch.quantile(x.flatten(2), torch.tensor([0.02, 0.98], device=x.device, dtype=x.dtype), dim=2)
        d_lo, d_hi = (ratio - 1) * lo + shift, (ratio - 1) * hi + shift  # the change is linear in x
        lam = torch.cat([torch.where(d_hi > 0, (1 - hi) / d_hi.clamp(min=1e-6), 1.0),
                         torch.where(d_lo < 0, (1 + lo) / (-d_lo).clamp(min=1e-6), 1.0)], 1)
        lam = lam.amin(1, keepdim=True).clamp(0, 1)  # one per image: the hue of the change is kept
        ratio, shift = 1 + lam * (ratio - 1), lam * shift
        return torch.cat([torch.diag_embed(ratio - 1), shift[:, :, None]], 2).flatten(1)[:, :, None, None]

    def weights(self, s, dtype):
        """Style indices (B,) or weights (B, num_styles) as weights."""
        return s.to(dtype) if s.is_floating_point() else F.one_hot(s, len(self.embedder.initial)).to(dtype)

    @staticmethod
    def apply(x, coeffs, detail, clip=True):
        """x (any size) + the colour change (bilinear) + the detail (along x's edges); clip=False for the range loss."""
        a = F.interpolate(coeffs, size=x.shape[-2:], mode="bilinear", align_corners=False)
        a = a.view(x.shape[0], 3, 4, *x.shape[-2:])
        if detail.shape[-2:] != x.shape[-2:]:
            detail = follow_edges(detail, x)
        out = x + (a[:, :, :3] * x[:, None]).sum(2) + a[:, :, 3] + detail  # (I + dA) x + db + r
        return out.clamp(-1, 1) if clip else out

    def forward(self, x, styles, sources=None, clip=True):
        return self.apply(x, *self.coarse(x, styles, sources), clip=clip)

    def render_full(self, x_small, x_full, styles, sources=None):
        """The style of G(x_small) applied to x_full (the same image at its own size and aspect)."""
        return self.apply(x_full, *self.coarse(x_small, styles, sources))


def follow_edges(detail, x, radius=1, eps=1e-3):
    """A low-resolution detail map resized to x's size along x's own edges (the fast guided filter, He & Sun
    2015: per window, a linear fit to x's brightness, upsampled); bilinearly, it would glow past the edges."""
    guide = x.mean(1, keepdim=True)
    small = F.interpolate(guide, size=detail.shape[-2:], mode="area")
    box = lambda t: F.avg_pool2d(t, 2 * radius + 1, 1, radius, count_include_pad=False)
    mean_g, mean_d = box(small), box(detail)
    slope = (box(small * detail) - mean_g * mean_d) / (box(small * small) - mean_g ** 2 + eps)
    up = lambda t: F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up(slope) * guide + up(mean_d - slope * mean_g)


class StyleDiscriminator(nn.Module):
    """StarGAN-style: an anti-aliased strided trunk, a patch real/fake head, a style head, and the trunk's maps."""

    def __init__(self, num_styles, width=32, depth=4):
        super().__init__()
        c = [3] + [width * 2 ** i for i in range(depth)]
        self.trunk = nn.ModuleList(down(cin, cout) for cin, cout in zip(c, c[1:]))
        self.real_fake = nn.Conv2d(c[-1], 1, 3, 1, 1, padding_mode="reflect")
        self.classify = nn.Linear(c[-1], num_styles)

    def forward(self, x):
        maps = []
        for layer in self.trunk:
            x = layer(x)
            maps.append(x)
        return self.real_fake(x).flatten(1), self.classify(x.mean((2, 3))), maps


class NaiveStyleNet(nn.Module):
    """The course's first attempt, kept to show its failure: a learned style image per style beside the input."""

    def __init__(self, num_styles, image_size, init_images, width=32):
        super().__init__()
        self.image_size = image_size
        self.style_images = nn.Embedding(num_styles, 3 * image_size ** 2)
        with torch.no_grad():
            self.style_images.weight.copy_(init_images.flatten(1))
        self.net = nn.Sequential(nn.Conv2d(6, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1),
                                 nn.ReLU(), nn.Conv2d(width, 3, 3, 1, 1), nn.Tanh())

    def style_image(self, styles):
        return self.style_images(styles).view(-1, 3, self.image_size, self.image_size)

    def forward(self, x, styles, sources=None):  # sources: unused (the residual generator's signature)
        return self.net(torch.cat([x, self.style_image(styles)], 1))


def build(cfg, mode, num_styles, init, colour=None):
    """(generator, discriminator or None) from initial values (style_transfer.initial_values; colour None: no prior)."""
    st = cfg["style_transfer"]
    torch.manual_seed(cfg["seed"])
    if mode == "naive":
        return NaiveStyleNet(num_styles, cfg["image_size"], init, st["width"]), None
    G = ResidualStyleGenerator(wikiart.StyleEmbedder(init), st["width"], 2, st["style_dim"],
                               source_input=st["source_known_fraction"] > 0, colour_cells=st["colour_cells"],
                               luminance_detail=st["luminance_detail"], style_colour=colour)
    return G, StyleDiscriminator(num_styles, st["d_width"])


def load_model(path, device):
    """(generator, discriminator or None, checkpoint) from a model.pt alone (no data, no encoder needed)."""
    ckpt = runs.load_checkpoint(path, "a style_transfer.py model (out_dir/<mode>/model.pt)",
                                needs=("model", "mode", "config", "class_to_idx"), device=device)
    init = ckpt["model"]["style_images.weight" if ckpt["mode"] == "naive" else "embedder.initial"].cpu()
    G, D = build(ckpt["config"], ckpt["mode"], len(ckpt["class_to_idx"]), init, ckpt["model"].get("style_colour"))
    runs.load_weights(G, ckpt["model"], path)
    if D is not None:
        runs.load_weights(D, ckpt["discriminator"], path)
    return G.to(device).eval(), D.to(device).eval() if D is not None else None, ckpt


# The training losses' pieces (style_transfer.train_step composes them)

def coarse_structure(x):
    """Luminance at 1/4 of the side, standardised per image: the layout without what a style may change."""
    lum = F.avg_pool2d(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3], 4)
    return (lum - lum.mean((2, 3), keepdim=True)) / (lum.std((2, 3), keepdim=True) + 0.05)


def feature_stats_loss(maps_fake, maps_real):
    """Mean/std of every channel of every map, fake vs real of the target style (L1, mean over layers)."""
    loss = 0.0
    for f, r in zip(maps_fake, maps_real):
        f, r = f.flatten(2), r.flatten(2)
        loss = loss + (f.mean(2) - r.mean(2)).abs().mean() + (f.std(2) - r.std(2)).abs().mean()
    return loss / len(maps_fake)


def soft_colour_histogram(x, bins=8, sigma=1.0):
    """Differentiable joint RGB histogram (N, bins**3) of a [-1, 1] batch (Risser et al. 2017), each value shared
    between its two nearest bins; sigma > 0 first blurs (no dithering can match it), keeping every second pixel."""
    x = metrics.gaussian_blur(x, sigma)[:, :, ::2, ::2] if sigma > 0 else x
    v = ((x.float() + 1) / 2).clamp(0.5 / bins, 1 - 0.5 / bins).flatten(2)  # (N, 3, P); edges go to end bins
    centres = (torch.arange(bins, device=x.device, dtype=v.dtype) + 0.5) / bins
    w = (1 - (v.unsqueeze(-1) - centres).abs() * bins).clamp(min=0)  # (N, 3, P, bins), sums to 1 per value
    return torch.einsum("npi,npj,npk->nijk", w[:, 0], w[:, 1], w[:, 2]).flatten(1) / v.shape[2]


def per_style_choice(labels, indices, num_styles, per_style, seed):
    """Up to per_style of each style's images among `indices` (seeded), sorted."""
    labels, rng = np.asarray(labels), np.random.default_rng(seed)
    pools = [idx for idx in (np.asarray(indices)[labels[indices] == s] for s in range(num_styles)) if len(idx)]
    return np.sort(np.concatenate([rng.choice(idx, min(per_style, len(idx)), replace=False) for idx in pools]))


@torch.no_grad()
def mean_colour_histograms(images_u8, labels, indices, num_styles, device, per_style=256, seed=0):
    """(num_styles, 512): each style's mean soft colour histogram over up to per_style images (none: the mean)."""
    labels, chosen = torch.as_tensor(labels), per_style_choice(labels, indices, num_styles, per_style, seed)
    refs = torch.zeros(num_styles, 8 ** 3, device=device)
    for x, y in wikiart.iterate_batches(images_u8, labels, chosen, 64, device):
        refs.index_add_(0, y, soft_colour_histogram(x))
    counts = torch.bincount(labels[chosen], minlength=num_styles).to(device, refs.dtype)
    refs[counts > 0] /= counts[counts > 0, None]
    refs[counts == 0] = refs[counts > 0].mean(0)
    return refs


@torch.no_grad()
def style_texture_references(net, images_u8, labels, indices, num_styles, device, per_style=256, seed=0):
    """Per layer of metrics.texture_grams: (means (S, D), spreads (S,)) over up to per_style images per style."""
    chosen = per_style_choice(labels, indices, num_styles, per_style, seed)
    grams = [[g.double().cpu() for g in metrics.texture_grams(x, net)]
             for x, _ in wikiart.iterate_batches(images_u8, torch.as_tensor(labels), chosen, 128, device)]
    return [(m.float().to(device), s.float().to(device)) for m, s in
            metrics.style_references([torch.cat(g) for g in zip(*grams)], np.asarray(labels)[chosen], num_styles)]


class RunningMoments:
    """Per style, an exponential moving average of per-layer statistics of the outputs rendered in it."""

    def __init__(self, num_styles, rate=0.05):
        self.num_styles, self.rate, self.means, self.seen = num_styles, rate, None, None

    @torch.no_grad()
    def update(self, values, styles):
        """Fold in a batch (values[l][i] belongs to styles[i]); returns the running means, (S, D) per layer."""
        if self.means is None:
            self.means = [torch.zeros(self.num_styles, v.shape[1], device=v.device) for v in values]
            self.seen = torch.zeros(self.num_styles, dtype=torch.bool)
        for s in styles.unique().tolist():
            for m, v in zip(self.means, values):
                batch = v.detach()[styles == s].float().mean(0)
                m[s] = batch if not self.seen[s] else m[s] + self.rate * (batch - m[s])
            self.seen[s] = True
        return self.means

    def state_dict(self):  # kept in last.pt: a resumed run continues with the same averages
        return {"means": self.means, "seen": self.seen}

    def load_state_dict(self, state):
        self.means, self.seen = state["means"], state["seen"]


def texture_moment_loss(grams, refs, styles, moments):
    """Each output of style t pushed along (style mean - running mean of its recent Grams): the smallest change
    that moves the outputs' average. Sum over layers of ||Gram - goal|| / the style's spread, batch mean."""
    goals = [g.detach() + means[styles] - m[styles]
             for g, (means, _), m in zip(grams, refs, moments.update(grams, styles))]
    return sum(((g - goal).norm(dim=1) / spreads[styles]).mean() for g, goal, (_, spreads) in zip(grams, goals, refs))
