"""The project's core, imported by every script: the WikiArt dataset, batches and augmentation, the
classifiers, the class-imbalance helpers, the autoencoders and the style embedder."""
import math
import mmap
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import config
import images
import metrics
import runs


class WikiArtDataset:
    """Paintings in <root>/<Style>/<image>, decoded once to uint8 `images` (N, H, W, 3) with `labels` (N,),
    `paths`, `skipped` and `label_counts` (style -> images). The style map `class_to_idx` is built sorted
    from this folder, or comes from a checkpoint so that a test set is labelled by style name."""

    def __init__(self, root, image_size=128, class_to_idx=None, cache_dir=None, verbose=True):
        files_by_style, problems = images.scan_folder(root)
        if class_to_idx is None:
            class_to_idx = {style: i for i, style in enumerate(sorted(files_by_style))}
        unknown = sorted(set(files_by_style) - set(class_to_idx))
        if unknown:
            raise config.UserError(f"style(s) {', '.join(unknown)} in '{root}' were not in the training set. "
                                   f"The model knows: {', '.join(sorted(class_to_idx))}")
        self.class_to_idx = dict(class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        items = [(s, p) for s in sorted(files_by_style) for p in files_by_style[s]]
        self.images, kept, self.skipped = images.load_images(items, image_size, cache_dir, desc=f"decoding {root}")
        self.paths = [p for _, p in kept]
        self.labels = torch.tensor([self.class_to_idx[s] for s, _ in kept], dtype=torch.long)
        self.label_counts = dict(zip(self.classes, torch.bincount(self.labels, minlength=len(self.classes)).tolist()))
        if verbose and (problems or self.skipped):
            report = problems + [f"{s} (skipped)" for s in self.skipped]
            warnings.warn(f"{root}: {len(self.skipped)} unreadable file(s) skipped, "
                          f"{len(problems)} folder problem(s):\n  " + "\n  ".join(report), stacklevel=2)
        if not self.paths:
            raise config.UserError(f"no readable images in '{root}'")

    def __len__(self):
        return len(self.paths)


def load_split(cfg, split, class_to_idx=None):
    """The train or test folder named in the config (call sample_data.ensure_sample(cfg) first)."""
    if not cfg[f"{split}_dir"]:
        raise config.UserError(f"{split}_dir is empty: set it to a folder of <Style>/<image> folders")
    return WikiArtDataset(cfg[f"{split}_dir"], cfg["image_size"], class_to_idx, cfg["cache_dir"] or None)


def stratified_split(labels, fraction, seed):
    """Indices (train, val): `fraction` of every style goes to validation (none from styles < 3)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(int(round(len(idx) * fraction)), 1 if fraction > 0 else 0) if len(idx) >= 3 else 0
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return np.sort(train_idx), np.sort(val_idx)


# ---- batches and augmentation, on whatever device the model is on (GPU augmentation for free)

def to_float(images_u8, device):
    """uint8 (B, H, W, 3) numpy/tensor -> float (B, 3, H, W) in [-1, 1] on `device`."""
    if isinstance(images_u8, np.ndarray):  # torch wants contiguous, writable memory
        images_u8 = np.require(images_u8, requirements=["C", "W"])
    x = torch.as_tensor(images_u8)
    x = x.pin_memory() if device.type == "cuda" else x
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def to_uint8(x):
    """[-1, 1] batch (B, 3, H, W) -> uint8 numpy (B, H, W, 3)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def release_pages(images):
    """Unmap the pages of a memory-mapped cache this process has read (Linux madvise): they stay in the page
    cache, but no longer count in this process's RSS, which would otherwise grow to the whole cache."""
    m = getattr(images, "_mmap", None)  # only shared file mappings: for copy-on-write ("c") it would drop edits
    if m is not None and not m.closed and images.mode in ("r", "r+") and hasattr(mmap, "MADV_DONTNEED"):
        m.madvise(mmap.MADV_DONTNEED)


RELEASE_BYTES = 256 << 20


def uint8_batches(images, indices, batch_size, drop_last=False):
    """Yield (sorted index array, uint8 batch) of `indices` in the given order: the host-side work."""
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    read = 0
    for i in range(0, stop, batch_size):
        idx = np.sort(np.asarray(indices[i:i + batch_size]))  # sorted reads are faster from a memmap
        batch = images[idx]
        read += batch.nbytes
        if read > RELEASE_BYTES:  # keep at most this much of the cache mapped into this process
            release_pages(images)
            read = 0
        yield idx, batch


def iterate_batches(images, labels, indices, batch_size, device, drop_last=False):
    """Yield (x, y) batches of `indices` from in-memory uint8 images, in the given order."""
    for idx, batch in uint8_batches(images, indices, batch_size, drop_last):
        yield to_float(batch, device), labels[idx].to(device, non_blocking=True)


def augment(x, generator, min_scale=0.35):
    """Random resized crop + horizontal flip for a whole batch, as one affine grid_sample."""
    b = x.shape[0]
    u = lambda lo, hi: torch.empty(b).uniform_(lo, hi, generator=generator)
    area, log_ratio = u(min_scale, 1.0), u(math.log(3 / 4), math.log(4 / 3))
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx, cy = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
    sign = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def mix_batch(x, y, mixup, cutmix, generator):
    """Mixup (alpha=mixup) or CutMix (alpha=cutmix), one of them per batch. Returns x, y2, lam."""
    choices = [(a, kind) for a, kind in ((mixup, "mixup"), (cutmix, "cutmix")) if a > 0]
    if not choices:
        return x, y, 1.0
    alpha, kind = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha else 1.0
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if kind == "mixup":
        return lam * x + (1 - lam) * x[perm], y[perm], lam
    H, W = x.shape[2:]
    ch, cw = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(H, (1,), generator=generator)), int(torch.randint(W, (1,), generator=generator))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, H), max(cx - cw // 2, 0), min(cx + cw // 2, W)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x, y[perm], 1 - (y1 - y0) * (x1 - x0) / (H * W)


# ---- classifiers

class BaseClassifier(nn.Module):
    """The course's in-class model, sizes derived from image_size (416 px -> 105x105 features)."""

    def __init__(self, num_classes, image_size=416):
        super().__init__()
        self.conv2d = nn.Conv2d(3, 1, (4, 4), padding=2)
        self.maxpool2d = nn.MaxPool2d((4, 4), padding=2)
        side = (image_size + 1 + 2 * 2 - 4) // 4 + 1
        self.flatten = nn.Flatten()
        self.batchnorm1d = nn.BatchNorm1d(side * side)
        self.linear1 = nn.Linear(side * side, 300)
        self.dropout = nn.Dropout(0.01)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(300, num_classes)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, image):
        x = self.flatten(self.maxpool2d(self.conv2d(image)))
        x = self.relu(self.dropout(self.linear1(self.batchnorm1d(x))))
        return self.softmax(self.linear2(x))


class BonusAClassifier(nn.Module):
    """The known variant: adaptive average pool to 50x50 and a sigmoid; the hidden layer reads 50*50."""

    def __init__(self, num_classes, image_size=416):
        super().__init__()
        self.conv2d = nn.Conv2d(3, 1, (4, 4), padding=2)
        self.pool = nn.AdaptiveAvgPool2d((50, 50))
        self.flatten = nn.Flatten()
        self.batchnorm1d = nn.BatchNorm1d(50 * 50)
        self.linear1 = nn.Linear(50 * 50, 300)
        self.dropout = nn.Dropout(0.01)
        self.sigmoid = nn.Sigmoid()
        self.linear2 = nn.Linear(300, num_classes)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, image):
        x = self.flatten(self.pool(self.conv2d(image)))
        x = self.sigmoid(self.dropout(self.linear1(self.batchnorm1d(x))))
        return self.softmax(self.linear2(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: trains faster from scratch
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Sequential())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A from-scratch ResNet: stride-2 3x3 stem, stages of BasicBlocks (widths w, 2w, 4w, 8w), global average
    pool, dropout, linear. width=64, blocks=[2,2,2,2] is ResNet-18's body."""

    def __init__(self, num_classes, width=64, blocks=(2, 2, 2, 2), dropout=0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.layers(self.stem(x))))


MODES = ("base", "bonusA", "resnet")


def make_classifier(cfg, num_classes):
    if cfg["mode"] == "resnet":
        return ResNet(num_classes, cfg["resnet_width"], cfg["resnet_blocks"])
    return {"base": BaseClassifier, "bonusA": BonusAClassifier}[cfg["mode"]](num_classes, cfg["image_size"])


@torch.no_grad()
def predict(model, images, indices, batch_size, device, desc="evaluating", precision="auto"):
    """Logits (float32, CPU) of images[indices] in the order of `indices`, model in eval mode."""
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    by_position = np.argsort(indices, kind="stable")  # read in sorted order (fast from a memmap) ...
    outs = []
    for _, batch in tqdm(uint8_batches(images, indices[by_position], batch_size),
                         total=math.ceil(len(indices) / batch_size), desc=desc, leave=False):
        with runs.autocast(device, precision):
            outs.append(model(to_float(batch, device).contiguous(memory_format=torch.channels_last)).float().cpu())
    logits = torch.cat(outs) if outs else torch.zeros(0)
    in_order = torch.empty_like(logits)
    in_order[torch.from_numpy(by_position)] = logits  # ... and put each row back in its place
    return in_order


# ---- optimisation

def make_optimizer(model, lr, weight_decay):
    """AdamW; no weight decay on biases and normalisation parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)


def make_scheduler(optimizer, warmup_steps, total_steps=None):
    """Linear warm-up, then cosine decay to zero at total_steps (None: constant); stepped once per batch."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- class imbalance (Part 1): loss weights, sampler, logit adjustment

BALANCE_OPTIONS = ("none", "weights1", "weights2", "weights3", "effective", "sampler", "logit_adjust", "drw")


def class_weights(counts, kind, beta=0.999):
    """Per-class loss weights from per-class training counts n_c (N images, C classes)."""
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    N, C = n.sum(), len(n)
    if kind in ("effective", "drw"):  # Cui et al. 2019: (1 - beta) / (1 - beta^n), scaled to sum to C
        w = (1 - beta) / (1 - beta ** n)
        return (w * C / w.sum()).float()
    return {"weights1": N / (C * n), "weights2": N / n, "weights3": 1 / n}[kind].float()


def logit_adjustment(counts, tau=1.0):
    """tau * log prior (Menon et al. 2021): added to the logits in the training loss only."""
    prior = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    return (tau * torch.log(prior / prior.sum())).float()


def choose_posthoc_tau(logits, labels, counts, classes, max_drop=0.02, taus=np.arange(-1.5, 2.001, 0.05)):
    """Post-hoc logit adjustment (Menon et al. 2021), argmax(logits - tau * log prior): the tau of best balanced
    accuracy among those within `max_drop` of the best accuracy. Returns (tau, [(tau, accuracy, balanced)])."""
    log_prior = logit_adjustment(counts, 1.0)
    rows = []
    for tau in taus:
        m = metrics.classification_metrics(np.asarray(labels), (logits - tau * log_prior).argmax(1).numpy(), classes)
        rows.append((round(float(tau), 2), m["accuracy"], m["balanced_accuracy"]))
    best_accuracy = max(r[1] for r in rows)
    allowed = [r for r in rows if r[1] >= best_accuracy - max_drop]
    return max(allowed, key=lambda r: (r[2], -abs(r[0])))[0], rows


def balanced_sampler_indices(labels, num_samples, generator):
    """N draws with replacement, each style about equally likely (a WeightedRandomSampler)."""
    labels = torch.as_tensor(labels)
    weights = 1.0 / torch.bincount(labels).double()[labels]
    sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
    return np.fromiter(iter(sampler), dtype=np.int64, count=num_samples)


# ---- autoencoders (Part 2): images in and out are in [0, 1] (from a [-1, 1] batch: (x + 1) / 2)

class Autoencoder(nn.Module):
    """feature_maps(x) -> the encoder's maps, the last one being the code; decode(z) -> image."""

    def encode(self, x):
        return self.feature_maps(x)[-1]

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class Part2Autoencoder(Autoencoder):
    """The course's autoencoder: a 3-channel code map at 1/4 of the side (16x compression)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 9, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(9, 3, 5, padding=2), nn.MaxPool2d(2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(3, 9, 5, padding=2), nn.Upsample(scale_factor=2), nn.ReLU(),
            nn.ConvTranspose2d(9, 3, 5, padding=2), nn.Upsample(scale_factor=2), nn.Sigmoid())

    def feature_maps(self, x):
        h = self.encoder[:3](x)
        return [h, self.encoder[3:](h)]


class AEBlock(nn.Module):
    """Residual 3x3-3x3 block that keeps shape (BatchNorm, ReLU)."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def _up(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ConvAutoencoder(Autoencoder):
    """`downsample` stride-2 stages (widths width * 1, 2, 4, ...) with residual blocks, a 1x1 conv to a
    `code_channels` map (bottleneck="spatial"), flattened through a linear layer to `code_dim` numbers for
    "vector". The decoder mirrors the encoder; Sigmoid output in [0, 1]."""

    def __init__(self, image_size=64, width=32, downsample=3, code_channels=12, bottleneck="spatial",
                 code_dim=256):
        super().__init__()
        if downsample < 1 or image_size % 2 ** downsample:
            raise config.ConfigError(f"image_size {image_size} must be divisible by 2**downsample = {2 ** downsample}")
        chans = [width * 2 ** i for i in range(downsample)]
        self.bottleneck, self.side = bottleneck, image_size // 2 ** downsample
        stages, cin = [], 3
        for c in chans:
            down = nn.Sequential(nn.Conv2d(cin, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            stages.append(nn.Sequential(down, AEBlock(c)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.to_code = nn.Conv2d(chans[-1], code_channels, 1)
        self.from_code = nn.Sequential(nn.Conv2d(code_channels, chans[-1], 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(chans[-1]), nn.ReLU(), AEBlock(chans[-1]))
        if bottleneck == "vector":
            n = code_channels * self.side ** 2
            self.to_vector, self.from_vector = nn.Linear(n, code_dim), nn.Linear(code_dim, n)
        up = []
        for i in reversed(range(1, downsample)):
            up += [_up(chans[i], chans[i - 1]), AEBlock(chans[i - 1])]
        up += [_up(chans[0], chans[0]), nn.Conv2d(chans[0], 3, 3, 1, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*up)
        self.code_channels = code_channels

    def feature_maps(self, x):
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        z = self.to_code(x)
        if self.bottleneck == "vector":
            z = self.to_vector(z.flatten(1))
        return maps + [z]

    def decode(self, z):
        if self.bottleneck == "vector":
            z = self.from_vector(z).view(z.shape[0], self.code_channels, self.side, self.side)
        return self.decoder(self.from_code(z))


def make_autoencoder(ae_cfg, image_size):
    """An autoencoder from the config's "autoencoder" section."""
    mode = ae_cfg["mode"]
    if mode == "part2":
        if image_size % 4:
            raise config.ConfigError(f"part2 needs image_size divisible by 4, got {image_size}")
        return Part2Autoencoder()
    if mode == "conv":
        return ConvAutoencoder(image_size, ae_cfg["width"], ae_cfg["downsample"], ae_cfg["code_channels"],
                               ae_cfg["bottleneck"], ae_cfg["code_dim"])
    raise config.ConfigError(f"unknown autoencoder mode '{mode}'; valid modes: part2, conv")


def load_autoencoder(path, device):
    """(model in eval mode on `device`, checkpoint dict) from autoencoder.py's best.pt."""
    ckpt = runs.load_checkpoint(path, "an autoencoder checkpoint (autoencoder.py's best.pt; train one with: "
                                "python autoencoder.py)", needs=("model", "config"), device=device)
    cfg = ckpt["config"] = config.complete(ckpt["config"])  # keys added since that run: their defaults
    model = make_autoencoder(cfg["autoencoder"], cfg["image_size"]).to(device)
    runs.load_weights(model, ckpt["model"], path)
    return model.eval(), ckpt


def pooled_stats(maps):
    """Per-channel mean and std of every map, concatenated: a size-free (B, D) texture/colour summary."""
    maps = [m.float().flatten(2) for m in maps if m.ndim == 4]
    return torch.cat([s for f in maps for s in (f.mean(2), f.std(2, unbiased=False))], 1)


# ---- style transfer (Part 3): the style embedder, initialised from the autoencoder's per-style mean codes

def latent_vector(z, pool=2):
    """A latent code as one vector per image: a spatial code map is average-pooled to pool x pool."""
    if z.ndim == 4:
        z = F.adaptive_avg_pool2d(z.float(), pool)
    return z.flatten(1).float()


@torch.no_grad()
def mean_code_per_style(autoencoder, images, labels, num_styles, device, pool=2, batch_size=128):
    """(num_styles, d): the mean latent vector of each style's images (zeros for a style with none)."""
    autoencoder.eval()
    sums, counts = None, torch.zeros(num_styles)
    for x, y in iterate_batches(images, labels, np.arange(len(images)), batch_size, device):
        v = latent_vector(autoencoder.encode((x + 1) / 2), pool).cpu()
        sums = torch.zeros(num_styles, v.shape[1]) if sums is None else sums
        sums.index_add_(0, y.cpu(), v)
        counts += torch.bincount(y.cpu(), minlength=num_styles)
    return sums / counts.clamp(min=1)[:, None]


class StyleEmbedder(nn.Module):
    """nn.Embedding(num_styles, d) initialised from each style's mean latent code, then trained; the output is
    standardised by the initial codes' spread over styles (how a style differs, whatever the code's scale).
    `styles`: style indices (B,), or (B, num_styles) weights: that mixture of the embeddings."""

    def __init__(self, mean_codes):
        super().__init__()
        self.embedding = nn.Embedding(*mean_codes.shape)
        self.embedding.weight = nn.Parameter(mean_codes.clone())
        self.register_buffer("initial", mean_codes.clone())  # kept to show how far training moved it
        self.register_buffer("centre", mean_codes.mean(0).clone())
        self.register_buffer("scale", mean_codes.std(0, unbiased=False).clamp(min=1e-3))
        self.dim = mean_codes.shape[1]

    def forward(self, styles):
        w = self.embedding.weight
        e = styles.to(w.dtype) @ w if styles.is_floating_point() else self.embedding(styles)
        return (e - self.centre) / self.scale
