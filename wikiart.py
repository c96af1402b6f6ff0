"""The project's core: the WikiArt dataset (sorted style map, label counts, uint8 cache, batches,
augmentation), the classifier variants, the autoencoders, the style embedder and the style-transfer
networks, and the losses and imbalance helpers they need.

Every script imports this file; run plumbing is in runs.py, the config schema in config.py, measures
in metrics.py, figures in plots.py and the built-in sample generator in sample_data.py.
"""
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
from config import ConfigError, UserError


class WikiArtDataset(torch.utils.data.Dataset):
    """Paintings in <root>/<Style>/<image>, decoded once to RGB uint8 (never float: 8x less RAM).

    classes       sorted style names the labels refer to
    class_to_idx  style name -> label; built (sorted) from the training folder, or passed in from a
                  checkpoint so that a test set is labelled by name through the training map
    label_counts  style name -> number of images in this folder
    images        uint8 array (N, H, W, 3);  labels  int64 tensor (N,);  paths  list of N file paths
    """

    def __init__(self, root, image_size=128, class_to_idx=None, cache_dir=None, verbose=True):
        files_by_style, problems = images.scan_folder(root)
        if class_to_idx is None:
            class_to_idx = {style: i for i, style in enumerate(sorted(files_by_style))}
        else:
            unknown = sorted(set(files_by_style) - set(class_to_idx))
            if unknown:
                raise UserError(f"style(s) {', '.join(unknown)} in '{root}' were not in the training set. "
                                f"The model knows: {', '.join(sorted(class_to_idx))}")
        self.root, self.image_size = root, image_size
        self.class_to_idx = dict(class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        items = [(s, p) for s in sorted(files_by_style) for p in files_by_style[s]]
        self.images, kept, self.skipped = images.load_images(items, image_size, cache_dir,
                                                      desc=f"decoding {root}")
        self.paths = [p for _, p in kept]
        self.labels = torch.tensor([self.class_to_idx[s] for s, _ in kept], dtype=torch.long)
        self.label_counts = {c: 0 for c in self.classes}
        for s, _ in kept:
            self.label_counts[s] += 1
        self.problems = problems
        if verbose and (problems or self.skipped):
            report = problems + [f"{s} (skipped)" for s in self.skipped]
            warnings.warn(f"{root}: {len(self.skipped)} unreadable file(s) skipped, "
                          f"{len(problems)} folder problem(s):\n  " + "\n  ".join(report), stacklevel=2)
        if len(self.paths) == 0:
            raise UserError(f"no readable images in '{root}'")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        """(3, H, W) float in [0, 1] and its label; training uses the batched path instead."""
        return torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1).float() / 255, self.labels[i]


def load_split(cfg, split, class_to_idx=None):
    """The train or test folder named in the config (call sample_data.ensure_sample(cfg) first)."""
    if not cfg[f"{split}_dir"]:
        raise UserError(f"{split}_dir is empty: set it to a folder of <Style>/<image> folders")
    return WikiArtDataset(cfg[f"{split}_dir"], cfg["image_size"], class_to_idx, cfg["cache_dir"] or None)


def stratified_split(labels, fraction, seed):
    """Indices (train, val): `fraction` of every style goes to validation (none from styles < 3)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * fraction)) if len(idx) >= 3 else 0
        n_val = max(n_val, 1) if len(idx) >= 3 and fraction > 0 else n_val
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return np.sort(train_idx), np.sort(val_idx)


# ----------------------------------------------------------------------------------------------
# Batches and augmentation on whatever device the model is on (GPU augmentation for free)

def to_float(images_u8, device):
    """uint8 (B, H, W, 3) numpy/tensor -> float (B, 3, H, W) in [-1, 1] on `device`."""
    if isinstance(images_u8, np.ndarray):
        images_u8 = np.ascontiguousarray(images_u8)
        images_u8 = images_u8 if images_u8.flags.writeable else images_u8.copy()  # torch wants writable memory
    x = torch.as_tensor(images_u8)
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def to_uint8(x):
    """[-1, 1] batch (B, 3, H, W) -> uint8 numpy (B, H, W, 3)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def release_pages(images):
    """Unmap the pages of a memory-mapped cache that this process has read (Linux madvise). They stay
    in the OS page cache, so reading them again costs a minor fault, but they stop counting in this
    process's RSS, which would otherwise grow to the size of the whole cache in one epoch."""
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


def augment(x, generator, min_scale=0.35, flip=True):
    """Random resized crop + horizontal flip for a whole batch, as one affine grid_sample."""
    b = x.shape[0]
    u = lambda lo, hi: torch.empty(b).uniform_(lo, hi, generator=generator)
    area, log_ratio = u(min_scale, 1.0), u(math.log(3 / 4), math.log(4 / 3))
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx, cy = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
    sign = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
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


# ----------------------------------------------------------------------------------------------
# Classifiers

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
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A from-scratch ResNet: stride-2 3x3 stem, four stages of BasicBlocks (widths w, 2w, 4w, 8w),
    global average pool, dropout, linear. width=64, blocks=[2,2,2,2] is ResNet-18's body."""

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
        self.num_features = cin

    def features(self, x):
        return self.head(self.layers(self.stem(x)))

    def forward(self, x):
        return self.fc(self.features(x))


MODES = ("base", "bonusA", "resnet")


def make_classifier(cfg, num_classes):
    mode = cfg["mode"]
    if mode == "base":
        return BaseClassifier(num_classes, cfg["image_size"])
    if mode == "bonusA":
        return BonusAClassifier(num_classes, cfg["image_size"])
    if mode == "resnet":
        return ResNet(num_classes, cfg["resnet_width"], cfg["resnet_blocks"])
    raise ConfigError(f"unknown mode '{mode}'; valid modes: {', '.join(MODES)}")


@torch.no_grad()
def predict(model, images, indices, batch_size, device, desc="evaluating", precision="auto"):
    """Logits (float32, CPU) for images[indices], in the order of `indices`, model in eval mode
    (precision: see runs.autocast)."""
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    by_position = np.argsort(indices, kind="stable")  # read in sorted order (fast from a memmap) ...
    labels = torch.zeros(len(images), dtype=torch.long)
    outs = []
    for x, _ in tqdm(iterate_batches(images, labels, indices[by_position], batch_size, device),
                     total=math.ceil(len(indices) / batch_size), desc=desc, leave=False):
        with runs.autocast(device, precision):
            outs.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    if not outs:
        return torch.zeros(0)
    logits = torch.empty_like(torch.cat(outs))
    logits[torch.from_numpy(by_position)] = torch.cat(outs)  # ... and put each row back in its place
    return logits


# ----------------------------------------------------------------------------------------------
# Optimisation

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


# ----------------------------------------------------------------------------------------------
# Class imbalance (Part 1): loss weights, sampler, logit adjustment

BALANCE_OPTIONS = ("none", "weights1", "weights2", "weights3", "effective", "sampler",
                   "logit_adjust", "drw")


def class_weights(counts, kind, beta=0.999):
    """Per-class loss weights from per-class training counts n_c (N images, C classes)."""
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    N, C = n.sum(), len(n)
    if kind == "weights1":
        w = N / (C * n)
    elif kind == "weights2":
        w = N / n
    elif kind == "weights3":
        w = 1 / n
    elif kind in ("effective", "drw"):  # Cui et al. 2019: (1 - beta) / (1 - beta^n), scaled to sum to C
        w = (1 - beta) / (1 - beta ** n)
        w = w * C / w.sum()
    else:
        raise ConfigError(f"no class weights for balance '{kind}'")
    return w.float()


def logit_adjustment(counts, tau=1.0):
    """tau * log prior (Menon et al. 2021): added to the logits in the training loss only."""
    prior = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    return (tau * torch.log(prior / prior.sum())).float()


def choose_posthoc_tau(logits, labels, counts, classes, max_drop=0.02, taus=np.arange(-1.5, 2.001, 0.05)):
    """Post-hoc logit adjustment (Menon et al. 2021): predict argmax(logits - tau * log prior).
    tau > 0 favours rare styles; tau < 0 adds the prior back, which a model trained balanced
    (sampler, logit_adjust) needs to regain accuracy. On the validation split, picks the tau with the
    best balanced accuracy whose accuracy is at most `max_drop` below the best accuracy any tau reaches.
    Returns (tau, rows of (tau, accuracy, balanced_accuracy))."""
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
    counts = torch.bincount(labels).double()
    weights = 1.0 / counts[labels]
    sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples, replacement=True,
                                                     generator=generator)
    return np.fromiter(iter(sampler), dtype=np.int64, count=num_samples)


# ----------------------------------------------------------------------------------------------
# Autoencoder (Part 2): images in and out are in [0, 1] (from a [-1, 1] batch: (x + 1) / 2).
# Every autoencoder has encode(x) -> code, decode(z) -> image, and feature_maps(x) -> the encoder's
# intermediate maps, the last one being the code (for pooled style statistics and style transfer).

class Part2Autoencoder(nn.Module):
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

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class AEBlock(nn.Module):
    """Residual 3x3-3x3 block that keeps shape (BatchNorm, ReLU)."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def _down(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _up(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """`downsample` stride-2 stages (widths width * 1, 2, 4, ...), each followed by a residual block,
    then a 1x1 conv to `code_channels`. bottleneck="spatial": the code is that map
    (side / 2**downsample); "vector": it is flattened through a linear layer to `code_dim` numbers
    (needs a fixed image_size). The decoder mirrors the encoder; Sigmoid output in [0, 1]."""

    def __init__(self, image_size=64, width=32, downsample=3, code_channels=12, bottleneck="spatial",
                 code_dim=256):
        super().__init__()
        if bottleneck not in ("spatial", "vector"):
            raise ConfigError(f"unknown bottleneck '{bottleneck}'; valid: spatial, vector")
        if downsample < 1 or image_size % 2 ** downsample:
            raise ConfigError(f"image_size {image_size} must be divisible by 2**downsample = {2 ** downsample}")
        chans = [width * 2 ** i for i in range(downsample)]
        self.bottleneck, self.side = bottleneck, image_size // 2 ** downsample
        stages, cin = [], 3
        for c in chans:
            stages.append(nn.Sequential(_down(cin, c), AEBlock(c)))
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

    def encode(self, x):
        return self.feature_maps(x)[-1]

    def decode(self, z):
        if self.bottleneck == "vector":
            z = self.from_vector(z).view(z.shape[0], self.code_channels, self.side, self.side)
        return self.decoder(self.from_code(z))

    def forward(self, x):
        return self.decode(self.encode(x))


AE_MODES = ("part2", "conv")


def make_autoencoder(ae_cfg, image_size):
    """An autoencoder from the config's "autoencoder" section."""
    mode = ae_cfg["mode"]
    if mode == "part2":
        if image_size % 4:
            raise ConfigError(f"part2 needs image_size divisible by 4, got {image_size}")
        return Part2Autoencoder()
    if mode == "conv":
        return ConvAutoencoder(image_size, ae_cfg["width"], ae_cfg["downsample"], ae_cfg["code_channels"],
                               ae_cfg["bottleneck"], ae_cfg["code_dim"])
    raise ConfigError(f"unknown autoencoder mode '{mode}'; valid modes: {', '.join(AE_MODES)}")


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
    out = []
    for m in maps:
        if m.ndim == 4:
            f = m.float().flatten(2)
            out += [f.mean(2), f.std(2, unbiased=False)]
    return torch.cat(out, 1)


# ----------------------------------------------------------------------------------------------
# Style transfer (Part 3): the style embedder, the residual generator (own style = identity), the
# jointly trained anti-aliased discriminator, the naive baseline, and the losses they train with.
# Generators take and return [-1, 1] batches; the autoencoder sees (x + 1) / 2.

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
    """nn.Embedding(num_styles, d) initialised from the mean latent code of each style, then trained.
    The output is standardised with the initial codes' centre and spread over styles, so the generator
    reads how a style differs from the others, whatever the scale of the autoencoder's code.
    `styles`: style indices (B,), or (B, num_styles) weights: that mixture of the embeddings."""

    def __init__(self, mean_codes):
        super().__init__()
        self.embedding = nn.Embedding(*mean_codes.shape)
        with torch.no_grad():
            self.embedding.weight.copy_(mean_codes)
        self.register_buffer("initial", mean_codes.clone())  # kept to show how far training moved it
        self.register_buffer("centre", mean_codes.mean(0).clone())
        self.register_buffer("scale", mean_codes.std(0, unbiased=False).clamp(min=1e-3))
        self.dim = mean_codes.shape[1]

    def forward(self, styles):
        e = styles.to(self.embedding.weight.dtype) @ self.embedding.weight if styles.is_floating_point() \
            else self.embedding(styles)
        return (e - self.centre) / self.scale


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
        h = F.relu(self.norm1(self.conv1(x), s))
        return x + self.norm2(self.conv2(h), s)


class Blur(nn.Module):
    """Fixed [1,2,1] x [1,2,1] / 16 low-pass per channel, reflection padding, same size. Its response
    is zero at the 2-pixel period and 1/4 at the 4-pixel period (anti-aliasing before a stride)."""

    def __init__(self, channels):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel, groups=x.shape[1])


class ResidualStyleGenerator(nn.Module):
    """Image + style -> the image in that style, built so that "change nothing" is easy:
        out = x + A(x, s) [x; 1] + r(x, s)
    A: a 3x4 affine colour change per pixel, predicted on a grid at 1/8 of the side and upsampled
    bilinearly (smooth by construction: it recolours, it cannot draw a mesh; colour_cells n > 0 averages
    it to n x n cells first, 1 = one transform per image); r: a detail residual (luminance_detail: one
    channel added to R, G and B alike, so every hue change is the smooth transform's) from
    a small U-Net (blur-pooled encoder, bilinear upsampling, skips down to full resolution) whose decoder
    is modulated by the style through AdaIN. Both heads start at zero: an untrained generator returns
    its input exactly. The style vector s is an MLP of the style embedding and the input's per-channel
    mean and std (what is to be recoloured). The coarse maps (`coarse`) can be upsampled to any size:
    render_full() applies them to the full-resolution image.
    Told the input's own style too (`sources`, indices or weights), either
      source_input=False: it applies the change towards the target minus the change towards the
        source: the own style then returns the image exactly, and what every target shares cancels; or
      source_input=True: the source is an input of the style MLP (the target embedding's offset from
        it, and whether it is known: a row of zero weights, or sources=None, is "unknown"), so the
        change towards the target is kept whole; it is scaled by a gate of the offset that is 0 for
        the own style (the image exactly) and ~1 for any other."""

    def __init__(self, embedder, width=32, res_blocks=2, style_dim=64, source_input=False, colour_cells=0,
                 luminance_detail=False, style_colour=None):
        super().__init__()
        self.embedder, w, self.source_input, self.colour_cells = embedder, width, source_input, colour_cells
        # style_colour (num_styles, 6): each style's average channel means and stds on [-1, 1] (colour_prior)
        self.register_buffer("style_colour", style_colour.clone() if style_colour is not None else None)
        told_dim = embedder.dim + 1 if source_input else 0
        self.mapping = nn.Sequential(nn.Linear(embedder.dim + told_dim + 6, style_dim), nn.ReLU(),
                                     nn.Linear(style_dim, style_dim), nn.ReLU())
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, 1, 1, padding_mode="reflect")
        down = lambda cin, cout: nn.Sequential(Blur(cin), nn.Conv2d(cin, cout, 3, 2, 1, padding_mode="reflect"),
                                               nn.LeakyReLU(0.2))
        c = [w // 4, w // 2, w, 2 * w]  # channels at 1, 1/2, 1/4, 1/8 of the side (narrow where it is big)
        self.enc = nn.ModuleList([nn.Sequential(conv(3, c[0]), nn.LeakyReLU(0.2)),
                                  down(c[0], c[1]), down(c[1], c[2]), down(c[2], c[3])])
        self.blocks = nn.ModuleList(AdaINBlock(c[3], style_dim) for _ in range(res_blocks))
        self.to_coeffs = conv(c[3], 12)  # the change of the 3x4 colour transform, on the 1/8 grid
        # decoder 1/8 -> 1/4 -> 1/2 -> 1, each step: upsample, concat the skip, conv, AdaIN
        chans = [(c[3] + c[2], c[2]), (c[2] + c[1], c[1]), (c[1] + c[0], c[0])]
        self.dec = nn.ModuleList(conv(cin, cout) for cin, cout in chans)
        self.dec_norm = nn.ModuleList(AdaIN(cout, style_dim) for _, cout in chans)
        self.to_detail = nn.Conv2d(c[0], 1 if luminance_detail else 3, 1)  # 1: broadcast to R, G, B (no hue)
        for head in (self.to_coeffs, self.to_detail):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def coarse(self, x, styles, sources=None):
        """(colour-change coefficients (B, 12, H/8, W/8), detail residual (B, 3, H, W)). styles, sources:
        indices (B,) or weights (B, num_styles); with sources, the change towards styles minus the
        change towards sources (source_input: sources are an input of the style MLP instead)."""
        prior = self.colour_prior(x, styles, sources) if self.style_colour is not None else 0
        e, gate = self.embedder(styles), None
        if self.source_input:
            offset, known = self.offset_from(e, sources)
            e = torch.cat([e, offset, known], 1)
            # the change fades out as the target nears a known source: 0 for the own style (the image comes
            # back exactly), ~1 for any other (standardised embeddings differ by ~1.4 per dimension)
            d2 = offset.pow(2).mean(1)
            gate = torch.where(known[:, 0] > 0, d2 / (d2 + 0.01), torch.ones_like(d2))[:, None, None, None]
            sources = None  # an input, not subtracted
        elif sources is not None:  # both changes in one pass: the encoder once, the style-driven part on 2B
            e = torch.cat([e, self.embedder(sources)])
        n = len(e) // len(x)
        stats = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).repeat(n, 1)
        s = self.mapping(torch.cat([e, stats], 1))
        skips, h = [], x
        for stage in self.enc:
            h = stage(h)
            skips.append(h.repeat(n, 1, 1, 1) if n > 1 else h)  # with sources: the same maps for both halves
        h = skips[-1]
        for block in self.blocks:
            h = block(h, s)
        coeffs = self.to_coeffs(h)
        if self.colour_cells:  # coarser colour cells: the colour change cannot draw a plaid of blotches
            coeffs = F.adaptive_avg_pool2d(coeffs, self.colour_cells)
        if self.style_colour is not None:  # the prior sets the colour of the whole image (learned, it drifted to
            coeffs = coeffs - coeffs.mean((2, 3), keepdim=True)  # casts); the network only varies it across it
        for conv, norm, skip in zip(self.dec, self.dec_norm, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = F.leaky_relu(norm(conv(torch.cat([h, skip], 1)), s), 0.2)
        detail = self.to_detail(h)
        if sources is not None:  # towards the target minus towards the source: zero when they are the same style
            (c_t, c_s), (d_t, d_s) = coeffs.chunk(2), detail.chunk(2)
            coeffs, detail = c_t - c_s, d_t - d_s
        if gate is not None:
            coeffs, detail = coeffs * gate, detail * gate
        return coeffs + prior, detail

    def colour_prior(self, x, styles, sources):
        """(B, 12, 1, 1): the colour transform that moves each image's channel means and stds by the target
        style's average offset from the source style's (Reinhard et al. 2001, relative to the source): none
        for the own style, and the images of a style keep their own spread of colours; scaled back where it
        would push whites or blacks off the scale. An unknown source (None, or a row of zeros): the average
        over styles."""
        C = len(self.style_colour)
        as_weights = lambda s: s.to(x.dtype) if s.is_floating_point() else F.one_hot(s, C).to(x.dtype)
        w_t = as_weights(styles)
        w_s = torch.zeros_like(w_t) if sources is None else as_weights(sources)
        w_s = torch.where(w_s.sum(1, keepdim=True) > 0, w_s, torch.full_like(w_s, 1 / C))
        mu_t, sd_t = (w_t @ self.style_colour).split(3, 1)
        mu_s, sd_s = (w_s @ self.style_colour).split(3, 1)
        ratio = sd_t / sd_s.clamp(min=1e-3)
        shift = (1 - ratio) * x.mean((2, 3)) + mu_t - mu_s  # out = ratio (x - mean x) + mean x + mu_t - mu_s
        # scaled back by the largest lam <= 1 that keeps each channel's 2-98% range inside [-1, 1] (one lam per
        # image, so the hue of the change is kept): unscaled, it clipped 2-12% of the pixels, real paintings ~1%
        lo, hi = torch.quantile(x.flatten(2), torch.tensor([0.02, 0.98], device=x.device, dtype=x.dtype), dim=2)
        d_lo, d_hi = (ratio - 1) * lo + shift, (ratio - 1) * hi + shift  # the change is linear in x
        lam = torch.cat([torch.where(d_hi > 0, (1 - hi) / d_hi.clamp(min=1e-6), 1.0),
                         torch.where(d_lo < 0, (1 + lo) / (-d_lo).clamp(min=1e-6), 1.0)], 1)
        lam = lam.amin(1, keepdim=True).clamp(0, 1)
        ratio, shift = 1 + lam * (ratio - 1), lam * shift
        return torch.cat([torch.diag_embed(ratio - 1), shift[:, :, None]], 2).flatten(1)[:, :, None, None]

    def offset_from(self, e, sources):
        """(the target embedding minus the source's, 1 where the source is known), both 0 where not."""
        if sources is None:
            return torch.zeros_like(e), e.new_zeros(len(e), 1)
        w = sources.to(e.dtype) if sources.is_floating_point() else \
            F.one_hot(sources, self.embedder.embedding.num_embeddings).to(e.dtype)
        known = w.sum(1, keepdim=True).clamp(max=1)
        return known * (e - self.embedder(w)), known

    @staticmethod
    def apply(x, coeffs, detail, clip=True):
        """x (any size) + the colour change (bilinearly resized) and the detail (resized along x's own edges:
        follow_edges); clip=False: before clipping to [-1, 1] (what the range loss sees)."""
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
    """A detail map made at low resolution, resized to x's size along x's own edges (the fast guided filter,
    He & Sun 2015): in each small window the detail is fitted as a linear function of x's brightness, and
    those fits, not the detail, are upsampled. Upsampled bilinearly, a detail made at 64 px spreads each
    edge's change over 8 px of a 512-px photo: a glow around every roof and tree against the sky."""
    guide = x.mean(1, keepdim=True)
    small = F.interpolate(guide, size=detail.shape[-2:], mode="area")
    box = lambda t: F.avg_pool2d(t, 2 * radius + 1, 1, radius, count_include_pad=False)
    mean_g, mean_d = box(small), box(detail)
    slope = (box(small * detail) - mean_g * mean_d) / (box(small * small) - mean_g ** 2 + eps)
    offset = mean_d - slope * mean_g
    up = lambda t: F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up(slope) * guide + up(offset)


class StyleDiscriminator(nn.Module):
    """StarGAN-style discriminator trained from scratch with the generator: a strided conv trunk, a
    patch real/fake head and a style-classification head. Also returns the trunk's maps, in whose
    space the generator matches feature statistics of real paintings of the target style.
    blur=True (anti-aliased): each stride-2 conv is preceded by the [1,2,1] low-pass and pads by
    reflection. A plain stride-2 conv sends back gradients that depend on pixel parity (a 2x2 pattern
    the generator then draws) and zero padding marks the border; the blur has zero response at the
    2-pixel period, so neither reaches the generator."""

    def __init__(self, num_styles, width=32, depth=4, blur=True):
        super().__init__()
        layers, c = [], 3
        for i in range(depth):
            conv = (nn.Conv2d(c, width * 2 ** i, 3, 2, 1, padding_mode="reflect") if blur
                    else nn.Conv2d(c, width * 2 ** i, 4, 2, 1))
            layers.append(nn.Sequential(*([Blur(c)] if blur else []), conv, nn.LeakyReLU(0.2)))
            c = width * 2 ** i
        self.trunk = nn.ModuleList(layers)
        self.real_fake = nn.Conv2d(c, 1, 3, 1, 1, padding_mode="reflect" if blur else "zeros")
        self.classify = nn.Linear(c, num_styles)

    def forward(self, x):
        maps = []
        for layer in self.trunk:
            x = layer(x)
            maps.append(x)
        return self.real_fake(x).flatten(1), self.classify(x.mean((2, 3))), maps


class NaiveStyleNet(nn.Module):
    """The earlier approach, kept so its failure stays visible: each style is a learned image-sized
    "style image" (an nn.Embedding of 3*H*W numbers) concatenated to the input channels, trained with
    MSE to the content plus MSE to that style image. Both losses are met by pulling every style image
    toward the average content: they collapse to one grey-beige and the output is a sepia filter."""

    def __init__(self, num_styles, image_size, init_images=None, width=32):
        super().__init__()
        self.image_size = image_size
        self.style_images = nn.Embedding(num_styles, 3 * image_size ** 2)
        if init_images is not None:
            with torch.no_grad():
                self.style_images.weight.copy_(init_images.flatten(1))
        self.net = nn.Sequential(nn.Conv2d(6, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1),
                                 nn.ReLU(), nn.Conv2d(width, 3, 3, 1, 1), nn.Tanh())

    def style_image(self, styles):
        w = self.style_images.weight
        v = styles.to(w.dtype) @ w if styles.is_floating_point() else self.style_images(styles)  # weights: a mix
        return v.view(-1, 3, self.image_size, self.image_size)

    def forward(self, x, styles, sources=None):  # sources: unused (the residual generator's signature)
        return self.net(torch.cat([x, self.style_image(styles)], 1))


def feature_stats_loss(maps_fake, maps_real):
    """Mean/std of every channel of every map, fake vs real of the target style (L1, mean over layers)."""
    loss = 0.0
    for f, r in zip(maps_fake, maps_real):
        f, r = f.flatten(2), r.flatten(2)
        loss = loss + (f.mean(2) - r.mean(2)).abs().mean() + (f.std(2) - r.std(2)).abs().mean()
    return loss / len(maps_fake)


def soft_colour_histogram(x, bins=8, sigma=1.0):
    """Differentiable joint RGB histogram (N, bins**3) of a [-1, 1] batch: each channel value is shared
    linearly between its two nearest bin centres, so gradients reach the pixels (a histogram loss, as
    in Risser et al. 2017). Same bins as metrics.colour_histograms, softened. sigma > 0 first blurs with
    a Gaussian (stride 1: no block grid; the 2-pixel period is filtered out, so the generator cannot
    match it by dithering) and keeps every second pixel (after the blur that loses nothing). The earlier
    2x2 block means had a gradient constant on an aligned 2x2 grid, and were blind to a 2x2 mesh."""
    x = metrics.gaussian_blur(x, sigma)[:, :, ::2, ::2] if sigma > 0 else x
    v = ((x.float() + 1) / 2).clamp(0.5 / bins, 1 - 0.5 / bins).flatten(2)  # (N, 3, P); edges go to end bins
    centres = (torch.arange(bins, device=x.device, dtype=v.dtype) + 0.5) / bins
    w = (1 - (v.unsqueeze(-1) - centres).abs() * bins).clamp(min=0)  # (N, 3, P, bins), sums to 1 per value
    return torch.einsum("npi,npj,npk->nijk", w[:, 0], w[:, 1], w[:, 2]).flatten(1) / v.shape[2]


def _per_style_choice(labels, indices, num_styles, per_style, seed):
    """Up to per_style of each style's images among `indices` (seeded), sorted."""
    labels, rng = np.asarray(labels), np.random.default_rng(seed)
    pools = [idx for idx in (np.asarray(indices)[labels[indices] == s] for s in range(num_styles)) if len(idx)]
    return np.sort(np.concatenate([rng.choice(idx, min(per_style, len(idx)), replace=False) for idx in pools]))


@torch.no_grad()
def mean_colour_histograms(images_u8, labels, indices, num_styles, device, per_style=256, seed=0, bins=8,
                           sigma=1.0, batch_size=64):
    """(num_styles, bins**3): each style's mean soft colour histogram over up to per_style of its images
    among `indices` (seeded choice); a style without images gets the mean over all styles."""
    labels = torch.as_tensor(labels)
    refs, counts = torch.zeros(num_styles, bins ** 3, device=device), torch.zeros(num_styles, device=device)
    chosen = _per_style_choice(labels.numpy(), indices, num_styles, per_style, seed)
    for x, y in iterate_batches(images_u8, labels, chosen, batch_size, device):
        refs.index_add_(0, y, soft_colour_histogram(x, bins, sigma))
        counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
    refs[counts > 0] /= counts[counts > 0, None]
    refs[counts == 0] = refs[counts > 0].mean(0)
    return refs


@torch.no_grad()
def style_texture_references(net, images_u8, labels, indices, num_styles, device, per_style=256, seed=0):
    """Per layer of metrics.texture_grams with `net`: (means (S, D), spreads (S,)) over up to per_style
    training images of each style (seeded choice), as metrics.style_references computes them."""
    chosen = _per_style_choice(labels, indices, num_styles, per_style, seed)
    layers = [torch.cat(g) for g in zip(*[[t.double().cpu() for t in metrics.texture_grams(x, net)] for x, _ in iterate_batches(
        images_u8, torch.as_tensor(labels), chosen, 128, device)])]
    return [(m.float().to(device), s.float().to(device))
            for m, s in metrics.style_references(layers, np.asarray(labels)[chosen], num_styles)]


class RunningMoments:
    """Per style, an exponential moving average of statistics of the outputs rendered in that style
    (a list of (B, D) tensors, one per layer); a style's first batch sets its average."""

    def __init__(self, num_styles, rate=0.05):
        self.num_styles, self.rate, self.means, self.seen = num_styles, rate, None, None

    @torch.no_grad()
    def update(self, values, styles):
        """Fold in a batch (values[l][i] belongs to styles[i]); returns the running means, (S, D) per layer."""
        if self.means is None:
            self.means = [torch.zeros(self.num_styles, v.shape[1], device=v.device) for v in values]
            self.seen = torch.zeros(self.num_styles, dtype=torch.bool)
        for s in styles.unique().tolist():
            rows = styles == s
            for m, v in zip(self.means, values):
                batch = v.detach()[rows].float().mean(0)
                m[s] = batch if not self.seen[s] else m[s] + self.rate * (batch - m[s])
            self.seen[s] = True
        return self.means

    def state_dict(self):  # kept in last.pt, so a resumed run continues with the same averages
        return {"means": self.means, "seen": self.seen}

    def load_state_dict(self, state):
        self.means, self.seen = state["means"], state["seen"]


def texture_moment_loss(grams, refs, styles, moments):
    """Texture term: each style's running mean Gram over its recent outputs (moments) is pulled to the
    style's mean: every output of style t gets the same push, along (style mean - running mean), the
    smallest change per image that moves the outputs' average (what the gap metrics measure). Sum over
    layers of ||Gram - goal|| / the style's spread, mean over the batch."""
    goals = [g.detach() + means[styles] - m[styles] for g, (means, _), m in zip(grams, refs, moments.update(grams, styles))]
    return sum(((g - goal).norm(dim=1) / spreads[styles]).mean() for g, goal, (_, spreads) in zip(grams, goals, refs))
