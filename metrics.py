"""Measures: classification (accuracy, balanced accuracy, macro-F1 as scikit-learn defines it),
reconstruction (PSNR), clustering (NMI, ARI, purity, Hungarian accuracy), and the style-transfer
measures that need no trained network (texture and colour gap closed, SSIM, periodic/border artefact
ratio, the judge's matched ceiling)."""
import io
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter

def classification_metrics(y_true, y_pred, classes):
    """accuracy, balanced accuracy (mean recall over the styles present in y_true), macro-F1 (mean F1
    over the styles in y_true or y_pred, as scikit-learn's f1_score(average="macro")) and a per-class
    table."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    C = len(classes)
    cm = np.zeros((C, C), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support, predicted, correct = cm.sum(1), cm.sum(0), np.diag(cm)
    per_class, f1s, recalls = {}, [], []
    for c, name in enumerate(classes):
        p = correct[c] / predicted[c] if predicted[c] else 0.0
        r = correct[c] / support[c] if support[c] else float("nan")
        f1 = 2 * p * r / (p + r) if support[c] and (p + r) > 0 else 0.0
        per_class[name] = {"precision": float(p), "recall": float(r), "f1": float(f1),
                           "support": int(support[c])}
        if support[c] or predicted[c]:  # a style only predicted counts with F1 = 0 (scikit-learn)
            f1s.append(f1)
        if support[c]:
            recalls.append(r)
    return {
        "accuracy": float(correct.sum() / max(1, len(y_true))),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "worst_recall": float(np.min(recalls)) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def format_per_class(metrics, label_counts=None):
    rows = [f"{'style':28s} {'train_n':>7s} {'support':>7s} {'prec':>6s} {'recall':>6s} {'f1':>6s}"]
    for name, m in metrics["per_class"].items():
        n = label_counts.get(name, 0) if label_counts else 0
        r = "   -  " if math.isnan(m["recall"]) else f"{m['recall']:6.3f}"
        rows.append(f"{name:28s} {n:7d} {m['support']:7d} {m['precision']:6.3f} {r} {m['f1']:6.3f}")
    return "\n".join(rows)


def gaussian_blur(x, sigma):
    """Separable Gaussian blur (reflection padding, stride 1, same size) of a (B, C, H, W) batch."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.transpose(2, 3), groups=x.shape[1])


def psnr(mse):
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


def contingency(y_true, y_cluster):
    """(clusters x styles) count table over the clusters and styles that occur."""
    _, yt = np.unique(y_true, return_inverse=True)
    _, yc = np.unique(y_cluster, return_inverse=True)
    table = np.zeros((yc.max() + 1, yt.max() + 1), dtype=np.int64)
    np.add.at(table, (yc, yt), 1)
    return table


def clustering_metrics(y_true, y_cluster):
    """NMI, ARI, purity (each cluster votes for its majority style) and Hungarian accuracy (the best
    one-to-one cluster -> style matching) of a clustering against the true styles."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    table = contingency(y_true, y_cluster)
    rows, cols = linear_sum_assignment(-table)
    n = max(1, table.sum())
    return {"nmi": float(normalized_mutual_info_score(y_true, y_cluster)),
            "ari": float(adjusted_rand_score(y_true, y_cluster)),
            "purity": float(table.max(1).sum() / n),
            "hungarian_accuracy": float(table[rows, cols].sum() / n)}


def robust_transform(images_u8, blur=0.6, quality=75):
    """Shrink to half size, Gaussian blur, JPEG (quality 75), scale back: (N, H, W, 3) uint8 -> same.
    Pixel-level patterns that fool a classifier do not survive; colour and texture do."""
    out = np.empty_like(np.asarray(images_u8))
    for i, a in enumerate(images_u8):
        h, w = a.shape[:2]
        img = Image.fromarray(np.asarray(a)).resize((max(1, w // 2), max(1, h // 2)), Image.BOX)
        buf = io.BytesIO()
        img.filter(ImageFilter.GaussianBlur(blur)).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB").resize((w, h), Image.BILINEAR))
    return out


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def to_yiq(x):
    """(N, 3, H, W) RGB -> YIQ: luminance Y and two opponent chroma channels I (orange-blue) and Q
    (purple-green), linear, so it works on [0, 1] images and on their differences alike."""
    return torch.einsum("ij,bjhw->bihw", YIQ.to(x), x)


def from_yiq(x):
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(YIQ).to(x), x)


def random_texture_net(seed=0, widths=(16, 32, 64)):
    """A fixed, untrained conv net with seeded weights (He-normal): texture statistics, no learning."""
    g = torch.Generator().manual_seed(seed)
    convs, c = nn.ModuleList(), 1
    for i, w in enumerate(widths):
        conv = nn.Conv2d(c, w, 3, 1 if i == 0 else 2, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2 / (9 * c)))
        convs.append(conv.requires_grad_(False))
        c = w
    return convs.eval()


def texture_grams(x, net, eps=1e-3):
    """Per layer of `net`, the (N, c*c) Gram matrices of its ReLU maps of the luminance of x (N, 3, H, W),
    standardised per image (brightness and contrast do not count). Differentiable: Part 3 trains with it
    (another seed's net), so the texture gap is the same kind of descriptor as that loss."""
    h = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    h = (h - h.mean((2, 3), keepdim=True)) / (h.std((2, 3), keepdim=True) + eps)
    grams = []
    for conv in net:
        h = F.relu(conv(h))
        f = h.flatten(2)
        grams.append((f @ f.transpose(1, 2) / f.shape[2]).flatten(1))
    return grams


@torch.no_grad()
def texture_descriptors(images_u8, net, batch_size=256):
    """texture_grams of uint8 images (N, H, W, 3), in float64."""
    layers = [[] for _ in net]
    for i in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(np.array(images_u8[i:i + batch_size])).float().permute(0, 3, 1, 2)
        for k, g in enumerate(texture_grams(x, net)):
            layers[k].append(g.double())
    return [torch.cat(layer) for layer in layers]


def colour_histograms(images_u8, bins=8):
    """One layer: the (N, bins**3) joint RGB histogram of each image, normalised to sum 1."""
    a = np.asarray(images_u8)
    q = a.astype(np.int64) * bins // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    idx = idx.reshape(len(a), -1) + np.arange(len(a))[:, None] * bins ** 3
    h = np.bincount(idx.ravel(), minlength=len(a) * bins ** 3).reshape(len(a), bins ** 3)
    return [torch.from_numpy(h / idx.shape[1])]


def channel_statistics(images_u8, chunk=512):
    """(means (N, 3), stds (N, 3)) of each uint8 image's channels, in chunks (a float copy of every
    training image is GBs)."""
    parts = [np.asarray(images_u8[i:i + chunk], np.float32).reshape(-1, images_u8.shape[1] * images_u8.shape[2], 3)
             for i in range(0, len(images_u8), chunk)]
    return np.concatenate([a.mean(1) for a in parts]), np.concatenate([a.std(1) for a in parts])


def style_channel_statistics(images_u8, labels, num_styles, chunk=512):
    """(num_styles, 6): each style's average channel means and stds (uint8 units) over its images; a
    style without images gets the average over all."""
    mean, std = channel_statistics(images_u8, chunk)
    both, labels = np.concatenate([mean, std], 1), np.asarray(labels)
    return np.stack([both[labels == s].mean(0) if (labels == s).any() else both.mean(0) for s in range(num_styles)])


def colour_statistics_transfer(inputs_u8, targets, train_u8, train_y, num_styles, chunk=512):
    """The baseline without training (Reinhard et al. 2001, in RGB): each image's per-channel mean and
    std moved to the average over its target style's training images. Colour only, no texture: the
    evaluation shows what recolouring alone scores."""
    style = style_channel_statistics(train_u8, train_y, num_styles, chunk)[targets][:, None, None]
    in_mean, in_std = channel_statistics(inputs_u8, chunk)
    scale = style[..., 3:] / np.maximum(in_std, 1.0)[:, None, None]  # a flat image is not blown up into noise
    out = (np.asarray(inputs_u8, np.float32) - in_mean[:, None, None]) * scale + style[..., :3]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def style_references(descriptors, labels, num_styles):
    """Per layer: (means (S, D), spreads (S,)) of each style's real images; the spread is the RMS
    distance of the style's images to their mean (a style with one image borrows the average)."""
    labels = torch.as_tensor(labels)
    refs = []
    for layer in descriptors:
        means = torch.zeros(num_styles, layer.shape[1], dtype=layer.dtype)
        spreads = torch.zeros(num_styles, dtype=layer.dtype)
        for s in range(num_styles):
            d = layer[labels == s]
            if len(d):
                means[s] = d.mean(0)
                spreads[s] = ((d - means[s]) ** 2).sum(1).mean().sqrt()
        spreads[spreads <= 0] = spreads[spreads > 0].mean() if (spreads > 0).any() else 1.0
        refs.append((means, spreads))
    return refs


def style_distance(descriptors, refs, s):
    """d_s(X): over layers, the distance of X's mean descriptor to style s's mean, in units of its spread."""
    return sum(float((layer.mean(0) - means[s]).norm() / spreads[s])
               for layer, (means, spreads) in zip(descriptors, refs))


def gap_closed(d_inputs, d_outputs, d_real):
    """sum_s [d_s(inputs) - d_s(outputs)] / sum_s [d_s(inputs) - d_s(real test images of s)]:
    0 for output = input, about 1 for unseen real paintings of the target style; nan when the inputs
    are no farther from the styles than the real paintings are (nothing to close, e.g. one image)."""
    gap = sum(d_inputs) - sum(d_real)
    return (sum(d_inputs) - sum(d_outputs)) / gap if gap > 1e-12 else float("nan")


def ssim(a_u8, b_u8, window=11, sigma=1.5, batch_size=256):
    """Mean SSIM (Wang et al. 2004; Gaussian window, per channel, valid region) of each pair: (N,)."""
    g = torch.exp(-(torch.arange(window) - window // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    gx, gy = g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), g.view(1, 1, -1, 1).repeat(3, 1, 1, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, gx, groups=3), gy, groups=3)  # separable: fast on CPU
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    out = []
    for i in range(0, len(a_u8), batch_size):
        x, y = (torch.from_numpy(np.array(v[i:i + batch_size])).float().permute(0, 3, 1, 2) / 255
                for v in (a_u8, b_u8))
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        out.append(s.mean((1, 2, 3)))
    return torch.cat(out).float()


@torch.no_grad()
def own_style_psnr(reconstruct, images_u8, labels, device, batch_size=128):
    """PSNR (dB, of the mean MSE on [0, 1], as autoencoder.py reports it) of every image rendered by
    reconstruct(x, y) (x in [-1, 1], y its style: the generator in the image's own style) against itself."""
    se = 0.0
    for i in range(0, len(images_u8), batch_size):
        x = (_u8_to_float(images_u8[i:i + batch_size]) * 2 - 1).to(device)
        y = torch.as_tensor(labels[i:i + batch_size], device=device)
        se += (((reconstruct(x, y).clamp(-1, 1) - x) / 2) ** 2).mean((1, 2, 3)).sum().item()
    return psnr(se / max(len(images_u8), 1))


# ---- Part 3 artefacts: periodic patterns (a 2x2 / 4x4 mesh), border strips, blotches, relative to real paintings

def _u8_to_float(images_u8):
    return torch.from_numpy(np.array(images_u8)).float().permute(0, 3, 1, 2) / 255


@torch.no_grad()
def mean_power_spectrum(images_u8, batch_size=256):
    """(H, W) mean power spectrum over images and RGB channels (per-image channel mean removed, Hann
    window so that the image border does not leak a cross into the spectrum)."""
    total, n = 0.0, 0
    for i in range(0, len(images_u8), batch_size):
        x = _u8_to_float(images_u8[i:i + batch_size])
        h, w = x.shape[-2:]
        win = torch.hann_window(h, periodic=True)[:, None] * torch.hann_window(w, periodic=True)[None, :]
        x = (x - x.mean((2, 3), keepdim=True)) * win
        total = total + (torch.fft.fft2(x).abs() ** 2).mean(1).sum(0)
        n += len(x)
    return total / max(n, 1)


def periodic_peaks(spectrum):
    """Power at the frequencies of a 2- and 4-pixel periodic pattern (the 4x4 lattice fy, fx in
    {0, N/4, N/2, 3N/4}, without (0, 0)) over the mean power of a ring 2-3 bins around each (the Hann
    window spreads a peak over +-1 bin only): (15,) peak-to-background ratios, ~1 for a smooth spectrum."""
    h, w = spectrum.shape
    out = []
    for fy in (0, h // 4, h // 2, 3 * h // 4):
        for fx in (0, w // 4, w // 2, 3 * w // 4):
            if fy == 0 and fx == 0:
                continue
            ring = [spectrum[(fy + dy) % h, (fx + dx) % w] for dy in range(-3, 4) for dx in range(-3, 4)
                    if max(abs(dy), abs(dx)) >= 2]
            out.append(spectrum[fy, fx] / torch.stack(ring).mean())
    return torch.stack(out)


def band_power(spectrum, shortest=8, longest=32):
    """Mean power at spatial periods from `shortest` to `longest` pixels (a ring of radial frequencies):
    blotches and bands at the scale of the generator's cells, which the 2/4-px peaks do not see. Not a
    share of the total: contrast exaggerated at that scale counts too."""
    h, w = spectrum.shape
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2).sqrt()
    return spectrum[(f >= 1 / longest) & (f <= 1 / shortest)].mean()


@torch.no_grad()
def border_deviation(images_u8, band=4):
    """How far the outer `band` rows/columns depart from the next 2*band inwards: mean over images,
    edges, channels and positions along the edge of |mean(border band) - mean(adjacent inner band)|."""
    x = _u8_to_float(images_u8)
    devs = []
    for t in (x, x.flip(2), x.transpose(2, 3), x.transpose(2, 3).flip(2)):  # top, bottom, left, right
        devs.append((t[:, :, :band].mean(2) - t[:, :, band:3 * band].mean(2)).abs().mean())
    return float(torch.stack(devs).mean())


def clipped_fraction(images_u8):
    """Fraction of pixels with a channel at 0 or 255: blown-out whites and crushed blacks (real paintings
    at 64 px: about 1%)."""
    x = np.asarray(images_u8)
    return float(((x == 0) | (x == 255)).any(-1).mean()) if x.size else 0.0


def artefact_ratio(outputs_u8, output_styles, real_u8, real_styles):
    """Periodic and border artefacts of generated images relative to real paintings of their target
    styles (1.0 = as in real paintings). For each target style s: the 2/4-pixel-period peak-to-background
    ratios of the outputs' mean power spectrum over those of real paintings of s (averaged over the 15
    lattice frequencies), the outputs' border deviation over that of real paintings of s, and their
    power at 8-32-px periods over that of real paintings of s (blotches; not in "artefact"); each
    averaged over styles weighted by the number of outputs. {"periodic", "border", "artefact" = the max
    of those two, "blotch"}."""
    output_styles, real_styles = np.asarray(output_styles), np.asarray(real_styles)
    per, bor, blo, wts = [], [], [], []
    for s in np.unique(output_styles):
        real, out = np.flatnonzero(real_styles == s), np.flatnonzero(output_styles == s)
        if not len(real):
            continue
        ref_u8 = np.asarray(real_u8)[real]
        spec_out, spec_ref = mean_power_spectrum(np.asarray(outputs_u8)[out]), mean_power_spectrum(ref_u8)
        per.append(float((periodic_peaks(spec_out) / periodic_peaks(spec_ref)).mean()))
        bor.append(border_deviation(np.asarray(outputs_u8)[out]) / max(border_deviation(ref_u8), 1e-6))
        blo.append(float(band_power(spec_out) / band_power(spec_ref).clamp(min=1e-12)))
        wts.append(len(out))
    wts = np.asarray(wts, float) / max(sum(wts), 1)
    periodic, border, blotch = (float(np.dot(v, wts)) for v in (per, bor, blo))
    return {"periodic": periodic, "border": border, "artefact": max(periodic, border), "blotch": blotch}


def matched_ceiling(predictions, labels, target_styles, num_styles):
    """The judge's per-style recall on real images (predictions vs labels), averaged with the weights of
    the target styles of the outputs being judged: the hit rate of a perfect transfer under this judge,
    comparable with the outputs' hit rate (the judge's plain accuracy on an imbalanced test set is not).
    Styles absent from `labels` count as 0."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    recall = np.array([(predictions[labels == s] == s).mean() if (labels == s).any() else 0.0
                       for s in range(num_styles)])
    weights = np.bincount(np.asarray(target_styles), minlength=num_styles) / max(len(target_styles), 1)
    return float(np.dot(recall, weights))


# ----------------------------------------------------------------------------------------------
# Generated images (Bonus B): how close each is to its nearest training image

def resize(images_u8, size):
    """uint8 (N, H, W, 3) images resized (bicubic) to size x size."""
    if images_u8.shape[1] == size:
        return images_u8
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in images_u8])


def nearest_neighbours(queries_u8, refs_u8, side=32, chunk=512):
    """(distances, indices): each query's RMS pixel distance (0..1) to its nearest reference and that
    reference's index, both box-shrunk to side x side."""
    flat = lambda u8: torch.from_numpy(resize(np.asarray(u8), side) if u8.shape[1] != side else np.asarray(u8)).float().flatten(1) / 255
    refs = flat(refs_u8)
    r2 = (refs ** 2).sum(1)
    dist, index = [], []
    for i in range(0, len(queries_u8), chunk):
        q = flat(queries_u8[i:i + chunk])
        d2 = (q ** 2).sum(1, keepdim=True) + r2[None] - 2 * q @ refs.T
        best = d2.min(1)
        dist.append((best.values.clamp(min=0) / refs.shape[1]).sqrt())
        index.append(best.indices)
    return torch.cat(dist).numpy(), torch.cat(index).numpy()


# ----------------------------------------------------------------------------------------------
# Realism (Part 3 and Bonus B): can generated images be told from real paintings of their styles?
# Three measures the generators are not trained on: a two-sample test by a fresh CNN, a Fréchet
# distance in a style judge's features, and the CIELAB colour moments of each image.

class TwoSampleNet(nn.Module):
    """The two-sample test's small CNN: stride-2 convs (the first sees full resolution, so pixel-level
    artefacts count), mean- and max-pooled, one logit for "generated"."""

    def __init__(self, widths=(16, 32, 64, 64)):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.LeakyReLU(0.2)]
            c = w
        self.trunk, self.head = nn.Sequential(*layers), nn.Linear(2 * c, 1)

    def forward(self, x):
        f = self.trunk(x)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)).squeeze(1)


def real_sample(styles, real_u8, real_styles, seed):
    """As many real images of each style as `styles` holds (drawn with replacement only where a style has
    too few), seeded: the real side of the two-sample test and of the Fréchet 100% point. (images, styles)"""
    rng, styles, real_styles = np.random.default_rng(seed), np.asarray(styles), np.asarray(real_styles)
    picked = []
    for s in np.unique(styles):
        pool, n = np.flatnonzero(real_styles == s), int((styles == s).sum())
        if len(pool):
            picked.append(rng.choice(pool, n, replace=n > len(pool)))
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    return np.asarray(real_u8)[idx], real_styles[idx]


def two_sample_accuracy(fake_u8, fake_groups, real_u8, seed=0, epochs=6, batch_size=64, lr=2e-3):
    """Held-out accuracy of a fresh small CNN that tells fake_u8 from real_u8 (0.5: it cannot tell them
    apart; 1.0: every image is called right). Two folds: the fakes split by `fake_groups` (their source
    image: no source on both sides, so memorising an input does not help), the reals at random; trained
    on one fold (flips as augmentation), tested on the other, and back; the mean of the two accuracies."""
    fake_u8, real_u8 = np.asarray(fake_u8), np.asarray(real_u8)
    rng = np.random.default_rng(seed)
    groups = np.unique(fake_groups)
    fold_of_group = dict(zip(groups, rng.permutation(len(groups)) % 2))
    fold = np.concatenate([[fold_of_group[g] for g in np.asarray(fake_groups)], rng.permutation(len(real_u8)) % 2])
    images, is_fake = np.concatenate([fake_u8, real_u8]), np.r_[np.ones(len(fake_u8)), np.zeros(len(real_u8))]
    x_all = _u8_to_float(images) * 2 - 1
    y_all = torch.from_numpy(is_fake).float()
    accs = []
    for k in (0, 1):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        with torch.random.fork_rng():  # seeded, without moving the caller's random state
            torch.manual_seed(seed + k)
            net = TwoSampleNet()
        opt = torch.optim.Adam(net.parameters(), lr)
        g = torch.Generator().manual_seed(seed + 10 + k)
        for _ in range(epochs):
            order = train[torch.randperm(len(train), generator=g).numpy()]
            for i in range(0, len(order), batch_size):
                b = order[i:i + batch_size]
                x = x_all[b]
                x = torch.where(torch.rand(len(b), 1, 1, 1, generator=g) < 0.5, x.flip(3), x)
                loss = F.binary_cross_entropy_with_logits(net(x), y_all[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = torch.cat([net(x_all[test[i:i + 256]]) > 0 for i in range(0, len(test), 256)])
        accs.append(float((pred.float() == y_all[test]).float().mean()))
    return float(np.mean(accs))


def frechet_distance(a, b):
    """Fréchet distance between Gaussians fitted to the rows of a and b (n, d) (as FID computes it)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # trace of sqrt(ca cb) from the eigenvalues of sqrt(ca) cb sqrt(ca), which is symmetric PSD
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    return float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


def mean_distance(a, b):
    """Euclidean distance between the mean rows of a and b (n, d)."""
    return float(np.linalg.norm(np.asarray(a, np.float64).mean(0) - np.asarray(b, np.float64).mean(0)))


def style_gap_closed(inputs, outputs, styles, reference, reference_styles, real, real_styles,
                     distance=frechet_distance):
    """How far outputs (n, d) moved from their inputs towards the reference images of their target
    styles: distance(X of style s, reference of style s) summed over the target styles, as gap_closed:
    0 = the inputs, 1 = `real` (another sample of real paintings of those styles, as many per style as
    outputs). Rows are any descriptors: judge features reduced by PCA, Lab moments..."""
    styles, reference_styles, real_styles = map(np.asarray, (styles, reference_styles, real_styles))
    used = [s for s in np.unique(styles) if (reference_styles == s).sum() > 1 and (styles == s).sum() > 1
            and (real_styles == s).sum() > 1]
    d = lambda x, x_styles: sum(distance(x[x_styles == s], reference[reference_styles == s]) for s in used)
    return gap_closed([d(inputs, styles)], [d(outputs, styles)], [d(real, real_styles)])


def pca_projection(features, dim=16):
    """(mean, (d, dim) components) of the rows of `features`: the top `dim` principal directions."""
    features = np.asarray(features, np.float64)
    mean = features.mean(0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    return mean, vt[:dim].T


def srgb_to_lab(images_u8):
    """CIELAB (D65) of sRGB uint8 images (..., 3) -> float (..., 3): L in [0, 100], a and b about ±100."""
    c = np.asarray(images_u8, np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                          [0.0193339, 0.1191920, 0.9503041]]).T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_moments(images_u8, chunk=256):
    """(N, 6): each image's mean of L, a, b and their standard deviations over its pixels."""
    out = []
    for i in range(0, len(images_u8), chunk):
        lab = srgb_to_lab(images_u8[i:i + chunk]).reshape(min(chunk, len(images_u8) - i), -1, 3)
        out.append(np.concatenate([lab.mean(1), lab.std(1)], 1))
    return np.concatenate(out) if out else np.zeros((0, 6))


def chroma(images_u8):
    """Mean per-pixel chroma of uint8 images (N, H, W, 3): the std over R, G, B of each pixel, on [0, 1]
    (0 for grey), averaged over pixels and images: a sepia or grey rendering has less of it."""
    a = np.asarray(images_u8, np.float32) / 255
    return float(a.std(-1).mean()) if a.size else float("nan")


class RealismReference:
    """The real paintings the realism measures compare generated images with, prepared once:
    `features(u8) -> (n, d)` (a style judge's penultimate features), real test paintings (the reference
    the Fréchet distances are taken to; PCA to pca_dim fitted on them, so that ~60 images per style
    suffice) and real training paintings (the real side of the two-sample test, and the 100% point)."""

    def __init__(self, features, test_u8, test_styles, train_u8, train_styles, seed=0, pca_dim=16):
        self.features, self.seed = features, seed
        self.train_u8, self.train_styles = np.asarray(train_u8), np.asarray(train_styles)
        self.test_styles = np.asarray(test_styles)
        test_features = features(test_u8)
        self.mean, self.components = pca_projection(test_features, pca_dim)
        self.test = {"judge": self.project(test_features), "lab": lab_moments(test_u8)}

    def project(self, features):
        return (np.asarray(features, np.float64) - self.mean) @ self.components

    def describe(self, images_u8):
        return {"judge": self.project(self.features(images_u8)), "lab": lab_moments(images_u8)}

    def measure(self, inputs_u8, outputs_u8, groups, styles, per_style=False):
        """{"two_sample_accuracy": a fresh CNN tells the outputs from as many real training paintings of
        the same styles (0.5 = it cannot), "realism_gap_closed": the Fréchet distance to real test
        paintings of the target style in the judge's features, 0 = the inputs, 1 = other real paintings
        of the style, "lab_gap_closed": the same with the distance between the average Lab mean/std
        moments (the colour of a style; the spread of the images is the Fréchet distance's business)}.
        groups: each output's source image (the two-sample test's folds split by it); styles: their
        target styles. per_style: also "lab_gap_closed_per_style" {style: the Lab gap closed of that
        style's outputs alone}."""
        styles = np.asarray(styles)
        real_u8, real_styles = real_sample(styles, self.train_u8, self.train_styles, self.seed)
        d_in, d_out, d_real = self.describe(inputs_u8), self.describe(outputs_u8), self.describe(real_u8)

        def gap(k, distance, s=None):  # all target styles, or style s alone
            m, mr = (slice(None), slice(None)) if s is None else (styles == s, real_styles == s)
            return style_gap_closed(d_in[k][m], d_out[k][m], styles[m], self.test[k], self.test_styles,
                                    d_real[k][mr], real_styles[mr], distance)
        r = {"two_sample_accuracy": two_sample_accuracy(outputs_u8, groups, real_u8, self.seed),
             "realism_gap_closed": gap("judge", frechet_distance), "lab_gap_closed": gap("lab", mean_distance)}
        return r | ({"lab_gap_closed_per_style": {int(s): gap("lab", mean_distance, s) for s in np.unique(styles)}}
                    if per_style else {})
