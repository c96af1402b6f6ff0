"""The built-in sample: synthetic "paintings" in 27 styles drawn by procedural rules, deterministically, so a
fresh clone runs every script end to end with no download. Scripts call `ensure_sample(cfg)` first.

    python sample_data.py                      # -> data/sample/{train,test}/<Style>/*.png (64 px)
    python sample_data.py --out /tmp/s --size 32 --scale 0.03
"""
import colorsys
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

import config  # the shared command-line parser (standard library only)

SAMPLE_ROOT = "data/sample"  # the only data folder that may be generated on the fly

# style: (training images in the course, shape, hue centre, hue spread, saturation, brightness, background,
#         composition, count, size, blur). The counts of the 16 styles of WikiArt-16 are the course's; the other
# 11 are estimated as ~16% of the full WikiArt counts (the ratio of the 16 known). Several styles share a shape
# or a palette, so no single cue gives the style away.
SAMPLE_RULES = {
    "Abstract_Expressionism":     (449, "drips", 0.02, 0.50, 0.8, 0.8, "light", "scatter", 40, 0.25, 0.5),
    "Action_painting":            (16, "drips", 0.10, 0.15, 0.3, 0.3, "light", "scatter", 70, 0.20, 0.0),
    "Analytical_Cubism":          (15, "polys", 0.09, 0.05, 0.3, 0.5, "mid", "centre", 30, 0.30, 0.0),
    "Art_Nouveau_Modern":         (688, "waves", 0.30, 0.20, 0.5, 0.7, "light", "scatter", 12, 0.50, 0.0),
    "Baroque":                    (721, "blobs", 0.07, 0.06, 0.6, 0.5, "dark", "centre", 10, 0.35, 1.0),
    "Color_Field_Painting":       (258, "bands", 0.95, 0.30, 0.7, 0.8, "mid", "scatter", 3, 1.00, 1.5),
    "Contemporary_Realism":       (77, "blobs", 0.55, 0.30, 0.3, 0.7, "light", "horizon", 8, 0.25, 0.8),
    "Cubism":                     (390, "polys", 0.08, 0.25, 0.5, 0.6, "mid", "centre", 25, 0.35, 0.0),
    "Early_Renaissance":          (223, "rects", 0.12, 0.10, 0.5, 0.7, "light", "centre", 8, 0.30, 0.5),
    "Expressionism":              (1127, "strokes", 0.00, 0.45, 0.8, 0.7, "mid", "scatter", 60, 0.30, 0.0),
    "Fauvism":                    (163, "blobs", 0.00, 0.50, 1.0, 0.9, "light", "scatter", 18, 0.25, 0.0),
    "High_Renaissance":           (215, "blobs", 0.10, 0.08, 0.5, 0.6, "mid", "centre", 9, 0.30, 1.0),
    "Impressionism":              (2269, "strokes", 0.45, 0.25, 0.4, 0.85, "light", "horizon", 120, 0.10, 0.3),
    "Mannerism_Late_Renaissance": (205, "waves", 0.06, 0.08, 0.5, 0.5, "dark", "centre", 10, 0.40, 0.8),
    "Minimalism":                 (212, "rects", 0.60, 0.40, 0.2, 0.9, "light", "scatter", 2, 0.45, 0.0),
    "Naive_Art_Primitivism":      (373, "circles", 0.25, 0.40, 0.9, 0.8, "light", "horizon", 10, 0.15, 0.0),
    "New_Realism":                (50, "rects", 0.55, 0.20, 0.3, 0.6, "mid", "horizon", 6, 0.30, 0.5),
    "Northern_Renaissance":       (408, "rects", 0.08, 0.06, 0.5, 0.4, "dark", "centre", 12, 0.20, 0.5),
    "Pointillism":                (80, "dots", 0.40, 0.40, 0.6, 0.85, "light", "horizon", 500, 0.03, 0.0),
    "Pop_Art":                    (244, "circles", 0.90, 0.50, 1.0, 1.0, "light", "grid", 16, 0.20, 0.0),
    "Post_Impressionism":         (946, "strokes", 0.15, 0.30, 0.7, 0.7, "mid", "horizon", 90, 0.15, 0.0),
    "Realism":                    (1717, "blobs", 0.10, 0.12, 0.4, 0.5, "mid", "horizon", 10, 0.30, 1.2),
    "Rococo":                     (369, "waves", 0.95, 0.12, 0.3, 0.9, "light", "centre", 14, 0.35, 1.0),
    "Romanticism":                (1157, "blobs", 0.58, 0.15, 0.4, 0.5, "dark", "horizon", 12, 0.35, 1.5),
    "Symbolism":                  (679, "circles", 0.75, 0.15, 0.5, 0.6, "dark", "centre", 10, 0.25, 0.8),
    "Synthetic_Cubism":           (35, "polys", 0.10, 0.40, 0.7, 0.8, "light", "grid", 12, 0.35, 0.0),
    "Ukiyo_e":                    (197, "waves", 0.58, 0.05, 0.6, 0.7, "light", "horizon", 6, 0.50, 0.0),
}
COURSE_TRAIN_COUNTS = {style: rule[0] for style, rule in SAMPLE_RULES.items()}


def _sample_colour(rng, hue, spread, sat, val):
    h = (hue + rng.uniform(-spread, spread)) % 1.0
    s = np.clip(sat + rng.uniform(-0.25, 0.25), 0, 1)
    v = np.clip(val + rng.uniform(-0.3, 0.2), 0.05, 1)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def render_sample_image(style, seed, size=64):
    """One synthetic painting of `style`, fully determined by (style, seed)."""
    _, shape, hue, spread, sat, val, bg, comp, count, rel, blur = SAMPLE_RULES[style]
    rng = np.random.default_rng(seed)
    hue = (hue + rng.uniform(-0.04, 0.04)) % 1.0  # per-painting palette drift
    bg_val = {"light": 0.85, "mid": 0.55, "dark": 0.18}[bg]
    img = Image.new("RGB", (size, size), _sample_colour(rng, hue, spread, sat * 0.5, bg_val))
    d = ImageDraw.Draw(img)
    if comp == "horizon":  # sky and ground, horizon at a random height
        y = int(size * rng.uniform(0.35, 0.7))
        d.rectangle([0, y, size, size], fill=_sample_colour(rng, hue + 0.3, spread, sat, bg_val * 0.8))
    for _ in range(max(1, int(count * rng.uniform(0.6, 1.4)))):
        c = _sample_colour(rng, hue, spread, sat, val)
        if comp == "centre":
            x, y = np.clip(rng.normal(size / 2, size / 5, 2), 0, size)
        elif comp == "grid":  # 4 x 4 cells
            x, y = (rng.integers(0, 4, 2) + 0.5) * size / 4 + rng.normal(0, 1, 2)
        else:
            x, y = rng.uniform(0, size, 2)
        r = max(1.0, rel * size * rng.uniform(0.5, 1.5) / 2)
        if shape in ("dots", "circles", "blobs"):  # circles are outlined, blobs wider than tall
            rx = r * 1.3 if shape == "blobs" else r
            d.ellipse([x - rx, y - r, x + rx, y + r], fill=c, outline=(0, 0, 0) if shape == "circles" else None)
        elif shape == "strokes":
            a = rng.uniform(0, math.pi)
            d.line([x, y, x + r * 2 * math.cos(a), y + r * 2 * math.sin(a)], fill=c, width=max(1, int(r / 2)))
        elif shape == "drips":  # a random walk of 6 steps
            pts = np.cumsum(np.vstack([(x, y), rng.normal(0, r, (6, 2))]), axis=0)
            d.line(pts.ravel().tolist(), fill=c, width=int(rng.integers(1, 3)))
        elif shape == "polys":
            pts = [(x + rng.uniform(-r, r) * 1.5, y + rng.uniform(-r, r) * 1.5) for _ in range(int(rng.integers(3, 5)))]
            d.polygon(pts, fill=c, outline=(40, 30, 20))
        elif shape == "rects":
            w, h = r * rng.uniform(0.5, 2), r * rng.uniform(0.5, 2)
            d.rectangle([x - w, y - h, x + w, y + h], fill=c)
        elif shape == "bands":
            y0 = rng.uniform(0, size)
            d.rectangle([0, y0, size, y0 + rng.uniform(0.2, 0.5) * size], fill=c)
        elif shape == "waves":
            xs = np.linspace(0, size, 24)
            ph, amp = rng.uniform(0, 2 * math.pi), r * rng.uniform(0.3, 1)
            d.line(list(zip(xs, y + amp * np.sin(xs / size * 4 * math.pi + ph))), fill=c, width=max(1, int(r / 3)))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur * size / 64))
    return np.clip(np.asarray(img, np.float32) + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)  # grain


def sample_counts(scale=0.15, min_train=6, min_test=2):
    """Per-style (train, test) sizes, proportional to the course's training counts."""
    return {s: (max(min_train, round(n * scale)), max(min_test, round(n * scale / 5)))
            for s, n in COURSE_TRAIN_COUNTS.items()}


def make_sample(root=SAMPLE_ROOT, size=64, scale=0.15):
    """Write the deterministic synthetic sample to <root>/{train,test}/<Style>/NNNN.png."""
    counts = sample_counts(scale)
    jobs = []
    for si, style in enumerate(sorted(counts)):
        for split, n in zip(("train", "test"), counts[style]):
            for k in range(n):
                jobs.append((style, split, k, si * 100_000 + (0 if split == "train" else 50_000) + k))
    tmp_root = root.rstrip("/") + ".tmp"

    def work(job):
        style, split, k, seed = job
        folder = os.path.join(tmp_root, split, style)
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(render_sample_image(style, seed, size)).save(os.path.join(folder, f"{k:04d}.png"))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(work, jobs), total=len(jobs), desc=f"generating sample in {root}", unit="img"))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp_root, root)  # appears whole or not at all
    return counts


def ensure_sample(cfg, splits=("train", "test")):
    """Generate the sample if a split the script reads is a default sample folder that does not exist yet."""
    for split in splits:
        root = cfg[f"{split}_dir"]
        if os.path.normpath(root) == os.path.normpath(os.path.join(SAMPLE_ROOT, split)) and not os.path.isdir(root):
            make_sample(SAMPLE_ROOT, size=cfg["image_size"])
            return


def main(argv=None):
    ap = config.ArgumentParser(__doc__)
    ap.add_argument("--out", default=SAMPLE_ROOT, help="folder to write {train,test}/<Style>/ into")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--scale", type=float, default=0.15, help="images per style / the course's training count")
    a = ap.parse_args(argv)
    if a.size < 8:
        ap.error("--size must be at least 8")
    if a.scale <= 0:
        ap.error("--scale must be > 0")
    counts = make_sample(a.out, a.size, a.scale)
    print(f"wrote {sum(t for t, _ in counts.values())} train / {sum(t for _, t in counts.values())} "
          f"test images of {len(counts)} styles to {a.out}")


if __name__ == "__main__":
    main()
