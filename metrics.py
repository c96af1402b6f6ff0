"""Measures: classification (as scikit-learn defines them), PSNR, clustering (NMI, ARI, purity, Hungarian
accuracy), and the measures of generated images that need no trained network (SSIM, artefacts, copies)."""
import io
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter


def classification_metrics(y_true, y_pred, classes):
    """accuracy, balanced accuracy, macro-F1 (as scikit-learn), worst recall, per-class table, confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support, predicted, correct = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, correct / predicted, 0.0)
        recall = np.where(present, correct / support, np.nan)
        f1 = np.where(present & (precision + recall > 0), 2 * precision * recall / (precision + recall), 0.0)
    f1s = f1[present | (predicted > 0)]  # a style only predicted counts with F1 = 0 (scikit-learn)
    return {"accuracy": float(correct.sum() / max(1, len(y_true))),
            "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1s.mean()) if len(f1s) else 0.0,
            "worst_recall": float(recall[present].min()) if present.any() else 0.0,
            "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                                 "support": int(support[c])} for c, name in enumerate(classes)},
            "confusion_matrix": cm.tolist()}


def format_per_class(metrics, label_counts=None):
    rows = [f"{'style':28s} {'train_n':>7s} {'support':>7s} {'prec':>6s} {'recall':>6s} {'f1':>6s}"]
    for name, m in metrics["per_class"].items():
        n = label_counts.get(name, 0) if label_counts else 0
        r = "   -  " if math.isnan(m["recall"]) else f"{m['recall']:6.3f}"
        rows.append(f"{name:28s} {n:7d} {m['support']:7d} {m['precision']:6.3f} {r} {m['f1']:6.3f}")
    return "\n".join(rows)


def gaussian_blur(x, sigma):  # separable, of a (B, C, H, W) batch; reflection padding keeps the size
    r = max(1, int(math.ceil(2.5 * sigma)))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.transpose(2, 3), groups=x.shape[1])


def psnr(mse):  # in dB, of images in [0, 1]
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


def contingency(y_true, y_cluster):  # (clusters x styles) counts over the clusters and styles that occur
    from sklearn.metrics.cluster import contingency_matrix
    return contingency_matrix(y_cluster, y_true)


def clustering_metrics(y_true, y_cluster):  # NMI, ARI, purity (majority per cluster), Hungarian accuracy (1-to-1)
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    table = contingency(y_true, y_cluster)
    rows, cols = linear_sum_assignment(-table)
    n = max(1, table.sum())
    return {"nmi": float(normalized_mutual_info_score(y_true, y_cluster)),
            "ari": float(adjusted_rand_score(y_true, y_cluster)),
            "purity": float(table.max(1).sum() / n),
            "hungarian_accuracy": float(table[rows, cols].sum() / n)}


def robust_transform(images_u8, blur=0.6, quality=75):  # half size, blur, JPEG, back: fooling patterns go, colour stays
    out = np.empty_like(np.asarray(images_u8))
    for i, a in enumerate(images_u8):
        h, w = a.shape[:2]
        img = Image.fromarray(np.asarray(a)).resize((max(1, w // 2), max(1, h // 2)), Image.BOX)
        img = jpeg_round_trip(img.filter(ImageFilter.GaussianBlur(blur)), quality)
        out[i] = np.asarray(img.resize((w, h), Image.BILINEAR))
    return out


def jpeg_round_trip(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(buf).convert("RGB")


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def to_yiq(x):  # (N, 3, H, W) RGB -> luminance, orange-blue and purple-green chroma; linear (fine on differences)
    return torch.einsum("ij,bjhw->bihw", YIQ.to(x), x)


def from_yiq(x):
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(YIQ).to(x), x)


def u8_to_float(images_u8):  # (N, H, W, 3) uint8 -> (N, 3, H, W) in [0, 1]
    return torch.from_numpy(np.array(images_u8)).float().permute(0, 3, 1, 2) / 255


def random_texture_net(seed=0, widths=(16, 32, 64)):  # untrained, seeded He-normal weights: texture statistics
    g = torch.Generator().manual_seed(seed)
    convs, c = nn.ModuleList(), 1
    for i, w in enumerate(widths):
        convs.append(nn.Conv2d(c, w, 3, 1 if i == 0 else 2, 1, bias=False).requires_grad_(False))
        convs[-1].weight.copy_(torch.randn(convs[-1].weight.shape, generator=g) * math.sqrt(2 / (9 * c)))
        c = w
    return convs.eval()


def texture_grams(x, net, eps=1e-3):  # per layer: (N, c*c) Grams of its ReLU maps of the standardised luminance
    h = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    h = (h - h.mean((2, 3), keepdim=True)) / (h.std((2, 3), keepdim=True) + eps)
    grams = []
    for conv in net:
        h = F.relu(conv(h))
        f = h.flatten(2)
        grams.append((f @ f.transpose(1, 2) / f.shape[2]).flatten(1))
    return grams


def style_references(descriptors, labels, num_styles):
    """Per layer: each style's (means (S, D), spreads (S,): RMS distance to the mean; one image: the average)."""
    labels = torch.as_tensor(labels)
    refs = []
    for layer in descriptors:
        means, spreads = layer.new_zeros(num_styles, layer.shape[1]), layer.new_zeros(num_styles)
        for s in labels.unique().tolist():
            means[s] = layer[labels == s].mean(0)
            spreads[s] = ((layer[labels == s] - means[s]) ** 2).sum(1).mean().sqrt()
        spreads[spreads <= 0] = spreads[spreads > 0].mean() if (spreads > 0).any() else 1.0
        refs.append((means, spreads))
    return refs


def colour_histograms(images_u8, bins=8):  # one layer: (N, bins**3) joint RGB histograms, each summing to 1
    q = np.asarray(images_u8).astype(np.int64) * bins // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    idx = idx.reshape(len(q), -1) + np.arange(len(q))[:, None] * bins ** 3
    h = np.bincount(idx.ravel(), minlength=len(q) * bins ** 3).reshape(len(q), bins ** 3)
    return [torch.from_numpy(h / idx.shape[1])]


def channel_statistics(images_u8, chunk=512):  # (N, 6) channel means and stds, chunked (a float copy is GBs)
    parts = [np.asarray(images_u8[i:i + chunk], np.float32).reshape(-1, images_u8.shape[1] * images_u8.shape[2], 3)
             for i in range(0, len(images_u8), chunk)]
    return np.concatenate([np.concatenate([a.mean(1), a.std(1)], 1) for a in parts])


def style_channel_statistics(images_u8, labels, num_styles, chunk=512):
    """(num_styles, 6): each style's mean channel means and stds (a style without images: all images')."""
    both, labels = channel_statistics(images_u8, chunk), np.asarray(labels)
    return np.stack([both[labels == s].mean(0) if (labels == s).any() else both.mean(0) for s in range(num_styles)])


def colour_statistics_transfer(inputs_u8, targets, train_u8, train_y, num_styles, chunk=512):
    """The baseline without training (Reinhard et al. 2001, in RGB): channel means and stds set to the style's."""
    style = style_channel_statistics(train_u8, train_y, num_styles, chunk)[targets][:, None, None]
    own = channel_statistics(inputs_u8, chunk)[:, None, None]
    scale = style[..., 3:] / np.maximum(own[..., 3:], 1.0)  # a flat image is not blown up into noise
    out = (np.asarray(inputs_u8, np.float32) - own[..., :3]) * scale + style[..., :3]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def ssim(a_u8, b_u8, window=11, sigma=1.5, batch_size=256):
    """Mean SSIM (Wang et al. 2004; Gaussian window, per channel, valid region) of each pair: (N,)."""
    g = torch.exp(-(torch.arange(window) - window // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    gx, gy = g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), g.view(1, 1, -1, 1).repeat(3, 1, 1, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, gx, groups=3), gy, groups=3)  # separable: fast on CPU
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    out = []
    for i in range(0, len(a_u8), batch_size):
        x, y = u8_to_float(a_u8[i:i + batch_size]), u8_to_float(b_u8[i:i + batch_size])
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        out.append(s.mean((1, 2, 3)))
    return torch.cat(out).float()


@torch.no_grad()
def own_style_psnr(reconstruct, images_u8, labels, device, batch_size=128):
    """PSNR (dB, of the mean MSE on [0, 1]) of the images against reconstruct(x in [-1, 1], their own style)."""
    se = 0.0
    for i in range(0, len(images_u8), batch_size):
        x = (u8_to_float(images_u8[i:i + batch_size]) * 2 - 1).to(device)
        y = torch.as_tensor(labels[i:i + batch_size], device=device)
        se += (((reconstruct(x, y).clamp(-1, 1) - x) / 2) ** 2).mean((1, 2, 3)).sum().item()
    return psnr(se / max(len(images_u8), 1))


@torch.no_grad()
def mean_power_spectrum(images_u8, batch_size=256):
    """(H, W) mean power spectrum over images and channels (means removed; a Hann window: no border cross)."""
    total = 0.0
    for i in range(0, len(images_u8), batch_size):
        x = u8_to_float(images_u8[i:i + batch_size])
        win = torch.hann_window(x.shape[2], periodic=True)[:, None] * torch.hann_window(x.shape[3], periodic=True)
        x = (x - x.mean((2, 3), keepdim=True)) * win
        total = total + (torch.fft.fft2(x).abs() ** 2).mean(1).sum(0)
    return total / max(len(images_u8), 1)


def periodic_peaks(spectrum):
    """(15,) power at 2- and 4-pixel periods over the mean 2-3 bins around (the Hann window spreads +-1 bin)."""
    h, w = spectrum.shape
    dy, dx = np.array([(a, b) for a in range(-3, 4) for b in range(-3, 4) if max(abs(a), abs(b)) >= 2]).T
    peaks = [(fy, fx) for fy in (0, h // 4, h // 2, 3 * h // 4) for fx in (0, w // 4, w // 2, 3 * w // 4) if fy or fx]
    return torch.stack([spectrum[fy, fx] / spectrum[(fy + dy) % h, (fx + dx) % w].mean() for fy, fx in peaks])


def band_power(spectrum, shortest=8, longest=32):  # mean power at these periods: blotches the size of a cell
    h, w = spectrum.shape
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2).sqrt()
    return spectrum[(f >= 1 / longest) & (f <= 1 / shortest)].mean()


@torch.no_grad()
def border_deviation(images_u8, band=4):  # mean |mean(outer `band` rows) - mean(next 2*band)| over edges, images
    x = u8_to_float(images_u8)
    edges = (x, x.flip(2), x.transpose(2, 3), x.transpose(2, 3).flip(2))  # top, bottom, left, right
    devs = [(t[:, :, :band].mean(2) - t[:, :, band:3 * band].mean(2)).abs().mean() for t in edges]
    return float(torch.stack(devs).mean())


def clipped_fraction(images_u8):  # pixels with a channel at 0 or 255 (blown-out whites, crushed blacks)
    x = np.asarray(images_u8)
    return float(((x == 0) | (x == 255)).any(-1).mean()) if x.size else 0.0


def artefact_ratio(outputs_u8, output_styles, real_u8, real_styles):
    """Outputs' periodic_peaks, border_deviation, band_power over their target style's real ones (1.0: as real)."""
    output_styles, real_styles = np.asarray(output_styles), np.asarray(real_styles)
    ratios, weights = [], []
    for s in np.unique(output_styles):
        out, ref = np.asarray(outputs_u8)[output_styles == s], np.asarray(real_u8)[real_styles == s]
        if len(ref):
            spec_out, spec_ref = mean_power_spectrum(out), mean_power_spectrum(ref)
            ratios.append((float((periodic_peaks(spec_out) / periodic_peaks(spec_ref)).mean()),
                           border_deviation(out) / max(border_deviation(ref), 1e-6),
                           float(band_power(spec_out) / band_power(spec_ref).clamp(min=1e-12))))
            weights.append(len(out))
    weights = np.asarray(weights, float) / max(sum(weights), 1)
    periodic, border, blotch = (float(np.dot(v, weights)) for v in zip(*ratios)) if ratios else (0.0, 0.0, 0.0)
    return {"periodic": periodic, "border": border, "artefact": max(periodic, border), "blotch": blotch}


def matched_ceiling(predictions, labels, target_styles, num_styles):
    """A perfect transfer's hit rate: the judge's recall per style on real images (none: 0), by target count."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    recall = np.array([(predictions[labels == s] == s).mean() if (labels == s).any() else 0.0
                       for s in range(num_styles)])
    weights = np.bincount(np.asarray(target_styles), minlength=num_styles) / max(len(target_styles), 1)
    return float(np.dot(recall, weights))


def resize(images_u8, size):  # uint8 (N, H, W, 3), bicubic
    if images_u8.shape[1] == size:
        return images_u8
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in images_u8])


def nearest_neighbours(queries_u8, refs_u8, side=32, chunk=512):
    """(distances, indices) of each query's nearest reference: RMS pixel distance (0..1) at side x side."""
    flat = lambda u8: torch.from_numpy(resize(np.asarray(u8), side)).float().flatten(1) / 255
    refs, dist, index = flat(refs_u8), [], []
    for i in range(0, len(queries_u8), chunk):
        q = flat(queries_u8[i:i + chunk])
        best = ((q ** 2).sum(1, keepdim=True) + (refs ** 2).sum(1)[None] - 2 * q @ refs.T).min(1)
        dist.append((best.values.clamp(min=0) / refs.shape[1]).sqrt())
        index.append(best.indices)
    return torch.cat(dist).numpy(), torch.cat(index).numpy()


def chroma(images_u8):  # mean over pixels of their std over R, G, B on [0, 1] (0 for grey)
    a = np.asarray(images_u8, np.float32) / 255
    return float(a.std(-1).mean()) if a.size else float("nan")
