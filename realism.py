"""Can generated images be told from real paintings? A classifier two-sample test, and its calibration.

    python realism.py ../shared/data/wikiart16/train --size 64 --n 384 960 --seeds 3 --out out/realism_w16

The command tests real paintings against the same paintings made worse in known ways (calibration.json and
.png): what an accuracy of two_sample_test means. RealismReference adds the Fréchet and Lab-colour gaps."""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import metrics
import runs

GROUPS = {"sharpness": slice(0, 9), "spectrum": slice(9, 16), "blocks": slice(16, 22), "colour": slice(22, 39)}


def _laplacian(x):
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).to(x).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=x.shape[1])


@torch.no_grad()
def image_features(images_u8, batch_size=512):
    """(N, 39) float64: the statistics of uint8 images (N, H, W, 3) that the test compares, in GROUPS."""
    if len(images_u8) > batch_size:
        starts = range(0, len(images_u8), batch_size)
        return np.concatenate([image_features(images_u8[i:i + batch_size]) for i in starts])
    u8 = np.asarray(images_u8)
    yiq = metrics.to_yiq(metrics.u8_to_float(u8))
    y, eps, f = yiq[:, :1], 1e-4, []
    spread = y.std((2, 3))[:, 0] + eps
    for s in (1, 2, 4):  # sharpness: Laplacian (mean, median) and gradient energy at three scales, per contrast
        ys = F.avg_pool2d(y, s) if s > 1 else y
        lap = _laplacian(ys).abs().flatten(1)
        grad = ys.diff(dim=3).abs().mean((1, 2, 3)) + ys.diff(dim=2).abs().mean((1, 2, 3))
        f += [lap.mean(1) / spread, lap.median(1).values / spread, grad / spread]
    h, w = y.shape[-2:]  # the luminance power spectrum in 7 radial bands, as shares of the total
    window = torch.hann_window(h, periodic=True)[:, None] * torch.hann_window(w, periodic=True)[None]
    power = torch.fft.fft2((y - y.mean((2, 3), keepdim=True))[:, 0] * window).abs() ** 2
    radius = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None] ** 2).sqrt()
    edges = (0.02, 0.05, 0.1, 0.17, 0.25, 0.35, 0.5, 0.8)
    total = power.flatten(1).sum(1) + 1e-8
    f += [power[:, (radius >= lo) & (radius < hi)].sum(1) / total + 1e-10 for lo, hi in zip(edges, edges[1:])]
    dx = y.diff(dim=3).abs().mean((1, 2))  # (N, W - 1): steps between neighbouring columns
    dy = y.diff(dim=2).abs().mean((1, 3))
    for period in (8, 4, 2):  # block edges (JPEG: 8), and the 2/4-px periods of upsampling and meshes
        for d in (dx, dy):
            on = torch.arange(d.shape[1]) % period == period - 1
            f.append((d[:, on].mean(1) + eps) / (d[:, ~on].mean(1) + eps))
    f = [torch.log(v.clamp(min=1e-10)) for v in f]
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    chroma = (i ** 2 + q ** 2).sqrt()
    f += list(torch.from_numpy(lab_moments(u8)).float().T) + [chroma.mean((1, 2, 3)), chroma.std((1, 2, 3))]
    lap_y = _laplacian(y).abs().mean((1, 2, 3)) + eps
    for c in (i, q):  # colour noise: fine chroma detail, against the luminance's
        lap_c = _laplacian(c).abs()
        f += [torch.log(lap_c.mean((1, 2, 3)) / lap_y + eps), torch.log(lap_c.flatten(1).median(1).values + eps)]
    hue, weight = torch.atan2(q, i), chroma / (chroma.sum((1, 2, 3), keepdim=True) + eps)
    sector = ((hue + np.pi) / (np.pi / 2)).long().clamp(max=3)  # the chroma-weighted share of 4 hue quadrants
    f += [(weight * (sector == k)).sum((1, 2, 3)) for k in range(4)]
    f.append(torch.from_numpy(((u8 == 0) | (u8 == 255)).any(-1).mean((1, 2))).float())  # clipped pixels
    return torch.stack(f, 1).double().numpy()


def two_sample_test(fake_u8, real_u8, fake_groups=None, seed=0, folds=5):
    """{"accuracy", "ci95", "by_group"}: held-out accuracy (`folds` folds) of a logistic regression on image_features
    telling fake_u8 from real_u8 (0.5: it cannot), its 95% half-width, per GROUPS. fake_groups: sources (one fold)."""
    x = np.concatenate([image_features(fake_u8), image_features(real_u8)])
    y = np.r_[np.ones(len(fake_u8)), np.zeros(len(real_u8))]
    groups = np.arange(len(fake_u8)) if fake_groups is None else np.unique(fake_groups, return_inverse=True)[1]
    groups = np.r_[groups, groups.max(initial=-1) + 1 + np.arange(len(real_u8))]
    split = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups))

    def accuracy(columns):
        hit = np.zeros(len(y), bool)
        for train, test in split:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            hit[test] = model.fit(x[train][:, columns], y[train]).predict(x[test][:, columns]) == y[test]
        return float(hit.mean())
    acc = accuracy(slice(None))
    return {"accuracy": acc, "ci95": float(1.96 * np.sqrt(acc * (1 - acc) / len(y))),
            "by_group": {name: accuracy(columns) for name, columns in GROUPS.items()}}


DEGRADATIONS = ("none", "blur0.5", "blur1", "blur1.5", "down2", "jpeg30", "noise", "hue10")


def degrade(images_u8, kind, seed=0):
    """uint8 images made worse: Gaussian blur (sigma 0.5/1/1.5 px), 2x down and up, JPEG 30, 3% noise, 10° hue turn."""
    u8 = np.asarray(images_u8)
    if kind == "none":
        return u8.copy()
    if kind == "jpeg30":
        return np.stack([np.asarray(metrics.jpeg_round_trip(Image.fromarray(a), 30)) for a in u8])
    x = metrics.u8_to_float(u8)
    if kind.startswith("blur"):
        x = metrics.gaussian_blur(x, float(kind[4:]))
    elif kind == "down2":
        x = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    elif kind == "noise":
        x = x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    elif kind == "hue10":
        yiq, a = metrics.to_yiq(x), np.radians(10)
        i, q = yiq[:, 1], yiq[:, 2]
        x = metrics.from_yiq(torch.stack([yiq[:, 0], np.cos(a) * i - np.sin(a) * q, np.sin(a) * i + np.cos(a) * q], 1))
    else:
        raise ValueError(f"unknown degradation '{kind}'; known: {', '.join(DEGRADATIONS)}")
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def frechet_distance(a, b):
    """Fréchet distance between Gaussians fitted to the rows of a and b (n, d) (as FID computes it)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(ca)  # trace of sqrt(ca cb) from the symmetric sqrt(ca) cb sqrt(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


def mean_distance(a, b):
    """Euclidean distance between the mean rows of a and b (n, d)."""
    return float(np.linalg.norm(np.asarray(a, np.float64).mean(0) - np.asarray(b, np.float64).mean(0)))


def srgb_to_lab(images_u8):
    """CIELAB (D65) of sRGB uint8 images (..., 3) -> float (..., 3): L in [0, 100], a and b about +-100."""
    c = np.asarray(images_u8, np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                          [0.0193339, 0.1191920, 0.9503041]]).T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_moments(images_u8, chunk=256):
    """(N, 6): each image's mean of L, a, b and their standard deviations over its pixels."""
    out = [srgb_to_lab(images_u8[i:i + chunk]).reshape(len(images_u8[i:i + chunk]), -1, 3)
           for i in range(0, len(images_u8), chunk)]
    return np.concatenate([np.concatenate([lab.mean(1), lab.std(1)], 1) for lab in out]) if out else np.zeros((0, 6))


def real_sample(styles, real_u8, real_styles, seed):
    """(images, styles): as many real images of each style as `styles` holds, seeded (with replacement if too few)."""
    rng, styles, real_styles = np.random.default_rng(seed), np.asarray(styles), np.asarray(real_styles)
    picked = [rng.choice(pool, int((styles == s).sum()), replace=(styles == s).sum() > len(pool))
              for s in np.unique(styles) if len(pool := np.flatnonzero(real_styles == s))]
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    return np.asarray(real_u8)[idx], real_styles[idx]


def gap_closed(inputs, outputs, styles, reference, reference_styles, real, real_styles, distance):
    """How far outputs (n, d) moved from their inputs towards `reference` rows of their target styles:
    sum over styles of distance(X of s, reference of s); 0 = the inputs, 1 = `real` (other real paintings)."""
    styles, reference_styles, real_styles = map(np.asarray, (styles, reference_styles, real_styles))
    used = [s for s in np.unique(styles) if min((reference_styles == s).sum(), (styles == s).sum(),
                                                (real_styles == s).sum()) > 1]
    d = lambda x, x_styles: sum(distance(x[x_styles == s], reference[reference_styles == s]) for s in used)
    gap = d(inputs, styles) - d(real, real_styles)
    return (d(inputs, styles) - d(outputs, styles)) / gap if gap > 1e-12 else float("nan")


class RealismReference:
    """Real paintings prepared once: the reference the gaps are measured to (in `features(u8) -> (n, d)`, a judge's,
    PCA to pca_dim fitted on it) and training paintings (the test's real side, the gaps' 100% point)."""

    def __init__(self, features, reference_u8, reference_styles, train_u8, train_styles, seed=0, pca_dim=16):
        self.features, self.seed = features, seed
        self.train_u8, self.train_styles = np.asarray(train_u8), np.asarray(train_styles)
        self.reference_styles = np.asarray(reference_styles)
        f = np.asarray(features(reference_u8), np.float64)
        self.mean = f.mean(0)
        self.components = np.linalg.svd(f - self.mean, full_matrices=False)[2][:pca_dim].T
        self.reference = {"judge": (f - self.mean) @ self.components, "lab": lab_moments(reference_u8)}

    def describe(self, images_u8):
        f = np.asarray(self.features(images_u8), np.float64)
        return {"judge": (f - self.mean) @ self.components, "lab": lab_moments(images_u8)}

    def measure(self, inputs_u8, outputs_u8, groups, styles, per_style=False):
        """{"two_sample": two_sample_test against training paintings of `styles`, gap_closed of "realism_gap_closed"
        (Fréchet, judge features), "lab_gap_closed" (mean Lab)[, "lab_gap_closed_per_style"]}. groups: sources."""
        styles = np.asarray(styles)
        real_u8, real_styles = real_sample(styles, self.train_u8, self.train_styles, self.seed)
        d_in, d_out, d_real = self.describe(inputs_u8), self.describe(outputs_u8), self.describe(real_u8)

        def gap(kind, distance, s=None):
            m, mr = (slice(None), slice(None)) if s is None else (styles == s, real_styles == s)
            return gap_closed(d_in[kind][m], d_out[kind][m], styles[m], self.reference[kind], self.reference_styles,
                              d_real[kind][mr], real_styles[mr], distance)
        r = {"two_sample": two_sample_test(outputs_u8, real_u8, groups, self.seed),
             "realism_gap_closed": gap("judge", frechet_distance), "lab_gap_closed": gap("lab", mean_distance)}
        if per_style:
            r["lab_gap_closed_per_style"] = {int(s): gap("lab", mean_distance, s) for s in np.unique(styles)}
        return r


def calibrate(images_u8, labels, sizes, seeds):
    """{n: {degradation: [two_sample_test per seed]}}: n paintings, degraded, against n others of their styles."""
    out = {n: {kind: [] for kind in DEGRADATIONS} for n in sizes}
    for n in sizes:
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(labels))
            fake, rest = np.sort(order[:n]), np.sort(order[n:])
            real_u8, _ = real_sample(labels[fake], images_u8[rest], labels[rest], seed)
            for kind in DEGRADATIONS:
                out[n][kind].append(two_sample_test(degrade(images_u8[fake], kind, seed), real_u8, seed=seed))
    return out


def main(argv=None):
    import images
    import plots
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="real paintings, <folder>/<Style>/<image>")
    ap.add_argument("--size", type=int, default=64, help="side the images are squashed to (default 64)")
    ap.add_argument("--n", type=int, nargs="+", default=[384, 960], help="fakes per test (Bonus B 384, Part 3 960)")
    ap.add_argument("--seeds", type=int, default=3, help="repetitions, each with other paintings (default 3)")
    ap.add_argument("--out", default="out/realism", help="folder of calibration.json and calibration.png")
    ap.add_argument("--cache-dir", default="cache", help="the decoded-image cache (\"\": none)")
    args = ap.parse_args(argv)
    files, _ = images.scan_folder(args.folder)
    items = [(s, p) for s in sorted(files) for p in files[s]]
    if max(args.n) * 2 > len(items):
        raise runs.UserError(f"--n {max(args.n)} needs {2 * max(args.n)} images; {args.folder} has {len(items)}")
    u8, kept, _ = images.load_images(items, args.size, args.cache_dir or None)
    classes = sorted(files)
    labels = np.array([classes.index(s) for s, _ in kept])
    t0 = time.time()
    results = calibrate(np.asarray(u8), labels, args.n, range(args.seeds))
    seconds = (time.time() - t0) / (len(args.n) * args.seeds * len(DEGRADATIONS))
    table = {n: {kind: {"accuracy": float(np.mean([r["accuracy"] for r in rs])),
                        "seed_std": float(np.std([r["accuracy"] for r in rs])),
                        "ci95": float(np.mean([r["ci95"] for r in rs])),
                        "by_group": {g: float(np.mean([r["by_group"][g] for r in rs])) for g in GROUPS}}
                 for kind, rs in per.items()} for n, per in results.items()}
    for n, per in table.items():
        print(f"n = {n} fakes and {n} real paintings, mean of {args.seeds} seeds:")
        for kind, r in per.items():
            print(f"  {kind:8s} {r['accuracy']:6.1%} ± {r['ci95']:.1%}  " +
                  "  ".join(f"{g} {v:.0%}" for g, v in r["by_group"].items()))
    runs.atomic_save({"folder": args.folder, "size": args.size, "seeds": args.seeds, "seconds_per_test": seconds,
                      "tests": {str(n): per for n, per in table.items()}, "env": runs.environment()},
                     os.path.join(args.out, "calibration.json"))
    with runs.atomic_file(os.path.join(args.out, "calibration.png")) as f:
        plots.plot_calibration(table, f)
    print(f"{seconds:.1f} s per test; wrote {args.out}/calibration.json, calibration.png")


if __name__ == "__main__":
    runs.cli(main)
