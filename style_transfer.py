"""Part 3: render an image in another art style, conditioned on a trained style embedding.

    python style_transfer.py                              # train the working mode (adain), grid + embeddings
    python style_transfer.py --evaluate                   # + naive mode, style judge, metrics table (README)
    python style_transfer.py --set style_transfer.mode=naive   # the earlier approach, which collapses
    python style_transfer.py --resume                     # continue the mode's training from last.pt
    python style_transfer.py --evaluate --set train_dir=../shared/data/wikiart16/train \\
        test_dir=../shared/data/wikiart16/test style_transfer.out_dir=out/style_transfer_w16

Modes (config "style_transfer.mode"):
  adain  StarGAN-style: generator = the Part-2 autoencoder's encoder (frozen) + a decoder whose AdaIN
         layers are driven by the style embedding (initialised from each style's mean latent code);
         trained jointly with a discriminator that has a real/fake head and a style-classification
         head; losses: adversarial, style classification of the fakes, reconstruction when the target
         is the source style, feature statistics of real paintings of the target style, the colour
         histogram of the target style (w_colour), optional cycle.
  naive  the earlier attempt: a learned image-sized style image concatenated to the input channels,
         MSE to the content + MSE to the style image (its style images collapse to one grey-beige).

The encoder comes from style_transfer.autoencoder_path (autoencoder.py's best.pt); without it a
fallback autoencoder is trained here for ae_fallback_epochs and the run says so. --evaluate trains
(or reloads, if its config is unchanged) both modes and a separate style judge (a ResNet, trained on
the training images with the robust transform as augmentation), then scores N test images x every
other style: robust/raw hit rate, style gap closed (texture, colour), SSIM; also for the identity.
Writes to out_dir: <mode>/{model.pt,last.pt,train_log.*,curves.png,grid.png,embeddings.png},
judge.pt, evaluation.json.
"""
import copy
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import wikiart

parser = wikiart.config_parser(__doc__)
parser.add_argument("--evaluate", action="store_true", help="train/load adain and naive, score them")
parser.add_argument("--resume", action="store_true", help="continue training from <out_dir>/<mode>/last.pt")
args, cfg = wikiart.parse_config(parser)
st = cfg["style_transfer"]
if st["mode"] not in ("adain", "naive"):
    parser.error(f"unknown style_transfer.mode '{st['mode']}'; valid modes: adain, naive")
device = wikiart.get_device(cfg["device"])
wikiart.seed_everything(cfg["seed"])
out_dir = st["out_dir"]
os.makedirs(out_dir, exist_ok=True)
S = cfg["image_size"]

# ---- data: validation carved out of the training folder; the test folder only for the final scores
data = wikiart.load_split(cfg, "train")
classes, C = data.classes, len(data.classes)
train_idx, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
by_style = [train_idx[(data.labels[train_idx] == s).numpy()] for s in range(C)]
print(f"{len(data)} training images of {C} styles in {cfg['train_dir']} ({len(train_idx)} train / "
      f"{len(val_idx)} validation), {S} px, device {device}")
# what a trained model depends on: a saved model is reused by --evaluate only if these are unchanged
NOT_TRAINING_KEYS = ("mode", "out_dir", "eval_images", "grid_rows", "judge_width", "judge_epochs", "judge_lr")


def train_signature(mode):
    keys = [k for k in st if k not in NOT_TRAINING_KEYS and (k.startswith("naive_") == (mode == "naive"))]
    # "generator": the StyleGenerator layout; bumped when its layers change, so an older model.pt is retrained
    return {"data": [cfg["train_dir"], S, cfg["seed"], cfg["val_fraction"]], "mode": mode, "generator": 2,
            "autoencoder": [cfg["autoencoder"], os.path.exists(st["autoencoder_path"] or "/nonexistent") and
                            os.path.getmtime(st["autoencoder_path"])] if mode == "adain" else None,
            "style_transfer": {k: st[k] for k in keys}}



def get_autoencoder(train_fallback=True):
    """The Part-2 autoencoder from its checkpoint, or a fallback trained here (reported)."""
    path = st["autoencoder_path"]
    if path and os.path.exists(path):
        ae, ckpt = wikiart.load_autoencoder(path, device)
        if ckpt["config"]["image_size"] != S:
            raise SystemExit(f"{path} was trained at {ckpt['config']['image_size']} px but image_size is {S}; "
                             "train a matching one (python autoencoder.py --set image_size=...) or "
                             "set style_transfer.autoencoder_path=\"\" for a fallback")
        print(f"encoder: Part-2 autoencoder from {path} ({ckpt['config']['autoencoder']['mode']})")
        return ae, path
    n = st["ae_fallback_epochs"] if train_fallback else 0
    if not train_fallback:  # its weights are about to be replaced by a saved model's
        return wikiart.make_autoencoder(cfg["autoencoder"], S).to(device).eval(), "fallback"
    why = f"no autoencoder checkpoint at '{path}'" if path else "style_transfer.autoencoder_path is empty"
    print(f"encoder: {why}; training a fallback '{cfg['autoencoder']['mode']}' autoencoder here for {n} "
          "epoch(s) (run autoencoder.py first for the real one)")
    torch.manual_seed(cfg["seed"])
    ae = wikiart.make_autoencoder(cfg["autoencoder"], S).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg["autoencoder"]["lr"])
    for epoch in range(n):
        order = train_idx[torch.randperm(len(train_idx), generator=wikiart.epoch_generator(cfg["seed"], epoch)).numpy()]
        for x, _ in tqdm(wikiart.iterate_batches(data.images, data.labels, order, 32, device, drop_last=True),
                         total=len(order) // 32, desc=f"fallback autoencoder {epoch + 1}/{n}", leave=False):
            loss = F.mse_loss(ae((x + 1) / 2), (x + 1) / 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"fallback autoencoder epoch {epoch + 1}: train MSE {loss.item():.4f}")
    return ae.eval(), f"fallback ({n} epochs)"


def build(mode, ae=None):
    """(model, discriminator or None, autoencoder source) for a mode, before training."""
    torch.manual_seed(cfg["seed"])
    if mode == "naive":  # the style images start as each style's mean training image
        mean_images = torch.stack([wikiart.to_float(data.images[np.sort(by_style[s])], torch.device("cpu")).mean(0)
                                   if len(by_style[s]) else torch.zeros(3, S, S) for s in range(C)])
        return wikiart.NaiveStyleNet(C, S, mean_images, st["naive_width"]).to(device), None, "none"
    ae, source = ae if ae is not None else get_autoencoder()
    ae = copy.deepcopy(ae).to(device).eval().requires_grad_(False)  # frozen content encoder
    codes = wikiart.mean_code_per_style(ae, data.images[train_idx], data.labels[train_idx], C, device,
                                        st["embed_pool"])
    embedder = wikiart.StyleEmbedder(codes)
    G = wikiart.StyleGenerator(ae, embedder, S, st["width"], st["res_blocks"], st["style_dim"]).to(device)
    D = wikiart.StyleDiscriminator(C, st["d_width"]).to(device)
    return G, D, source


def sample_targets(y, g):
    """Uniform target styles (rare styles trained as often as common ones); a fraction equal the source."""
    t = torch.randint(C, y.shape, generator=g).to(y.device)
    same = torch.rand(y.shape, generator=g).to(y.device) < st["same_style_fraction"]
    return torch.where(same, y, t), same


def real_of_styles(t, g):
    """One random training image of each target style (styles without training images: any image)."""
    idx = [by_style[s][int(torch.randint(len(by_style[s]), (1,), generator=g))] if len(by_style[s])
           else train_idx[int(torch.randint(len(train_idx), (1,), generator=g))] for s in t.tolist()]
    return wikiart.to_float(data.images[np.asarray(idx)], device)


def coarse_structure(x):
    """Luminance at 1/4 of the side, standardised per image: the layout, without colour, contrast
    or fine texture (which the style may change). A one-pass stand-in for the cycle loss."""
    lum = F.avg_pool2d(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3], 4)
    return (lum - lum.mean((2, 3), keepdim=True)) / (lum.std((2, 3), keepdim=True) + 0.05)


def train_step_adain(G, D, opt_g, opt_d, x, content, y, g, colour_refs):
    t, same = sample_targets(y, g)
    real = real_of_styles(t, g)
    fake = G.render(content, t)
    # discriminator: real paintings of the target styles are real (and classified), fakes are fake
    rf_real, cls_real, maps_real = D(real)
    maps_real = [m.detach() for m in maps_real]
    rf_fake, _, _ = D(fake.detach())
    d_adv = F.softplus(-rf_real).mean() + F.softplus(rf_fake).mean()
    d_cls = F.cross_entropy(cls_real, t)
    opt_d.zero_grad(set_to_none=True)
    (d_adv + st["w_cls"] * d_cls).backward()
    opt_d.step()
    # generator: look real, be classified as the target, match its feature statistics, keep content
    rf, cls, maps = D(fake)
    losses = {"g_adv": F.softplus(-rf).mean(), "g_cls": F.cross_entropy(cls, t),
              "g_stats": wikiart.feature_stats_loss(maps, maps_real),
              "g_rec": (fake - x).abs()[same].mean() if same.any() else fake.sum() * 0,
              "g_structure": (coarse_structure(fake) - coarse_structure(x)).abs().mean()}
    if st["w_cycle"] > 0:
        losses["g_cycle"] = (G(fake, y) - x).abs().mean()
    if st["w_colour"] > 0:  # L1 between each output's colour histogram and its target style's mean one
        losses["g_colour"] = (wikiart.soft_colour_histogram(fake, pool=st["colour_pool"])
                              - colour_refs[t]).abs().sum(1).mean()
    loss = (st["w_adv"] * losses["g_adv"] + st["w_cls"] * losses["g_cls"] + st["w_stats"] * losses["g_stats"]
            + st["w_rec"] * losses["g_rec"] + st["w_structure"] * losses["g_structure"]
            + st["w_cycle"] * losses.get("g_cycle", 0.0) + st["w_colour"] * losses.get("g_colour", 0.0))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return dict({k: v.item() for k, v in losses.items()}, d_adv=d_adv.item(), d_cls=d_cls.item(),
                d_real_acc=(cls_real.argmax(1) == t).float().mean().item())


def train_step_naive(model, opt, x, content, y, g):
    t = torch.randint(C, y.shape, generator=g).to(y.device)
    out = model(x, t)
    content, style = F.mse_loss(out, x), F.mse_loss(out, model.style_image(t))
    opt.zero_grad(set_to_none=True)
    (content + style).backward()
    opt.step()
    return {"mse_content": content.item(), "mse_style": style.item()}


@torch.no_grad()
def validate(G, D, mode):
    """Reconstruction L1 (target = source) on the validation split and, for adain, how often the
    discriminator's style head calls a fake its (uniform random) target style."""
    G.eval()
    g = torch.Generator().manual_seed(cfg["seed"])
    rec, hit, n = 0.0, 0, 0
    for x, y in wikiart.iterate_batches(data.images, data.labels, val_idx, 64, device):
        rec += (G(x, y) - x).abs().mean().item() * len(y)
        if D is not None:
            t = torch.randint(C, y.shape, generator=g).to(device)
            hit += (D(G(x, t))[1].argmax(1) == t).sum().item()
        n += len(y)
    G.train()
    return {"val_rec_l1": rec / max(n, 1)} | ({"val_fake_style_acc": hit / max(n, 1)} if D is not None else {})


@torch.no_grad()
def encode_all(G):
    """The frozen encoder's content map of every training-folder image, computed once (float16)."""
    maps = [G.content(x).half() for x, _ in tqdm(
        wikiart.iterate_batches(data.images, data.labels, np.arange(len(data)), 128, device),
        total=math.ceil(len(data) / 128), desc="encoding content", leave=False)]
    return torch.cat(maps)


def train(mode):
    """Train one mode (or resume it); returns the trained model in eval mode."""
    mdir = os.path.join(out_dir, mode)
    os.makedirs(mdir, exist_ok=True)
    G, D, source = build(mode)
    epochs = st["epochs"] if mode == "adain" else st["naive_epochs"]
    betas = (0.5, 0.999)  # the usual GAN setting: less momentum, steadier two-player updates
    opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad],
                             lr=st["lr"] if mode == "adain" else st["naive_lr"], betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=st["d_lr"], betas=betas) if D is not None else None
    start, history = 0, []
    last = os.path.join(mdir, "last.pt")
    if args.resume and mode == st["mode"] and os.path.exists(last):
        ckpt = torch.load(last, map_location=device, weights_only=False)
        G.load_state_dict(ckpt["model"])
        opt_g.load_state_dict(ckpt["opt_g"])
        if D is not None:
            D.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["opt_d"])
        start, history = ckpt["epoch"] + 1, ckpt["history"]
        print(f"resumed {mode} from {last} after epoch {start}")
    steps = st["steps_per_epoch"] or len(train_idx) // st["batch_size"]
    contents = encode_all(G) if mode == "adain" else None
    colour_refs = (wikiart.mean_colour_histograms(data.images, data.labels.numpy(), train_idx, C, device,
                                                  seed=cfg["seed"], pool=st["colour_pool"])
                   if mode == "adain" and st["w_colour"] > 0 else None)
    print(f"training {mode}: {sum(p.numel() for p in G.parameters() if p.requires_grad) / 1e6:.2f}M trainable "
          f"generator parameters, {epochs} epochs x {steps} steps of {st['batch_size']}")
    G.train()
    for epoch in range(start, epochs):
        t0 = time.time()
        g = wikiart.epoch_generator(cfg["seed"], epoch)
        order = train_idx[torch.randint(len(train_idx), (steps * st["batch_size"],), generator=g).numpy()]
        sums = {}
        bar = tqdm(range(steps), desc=f"{mode} epoch {epoch + 1}/{epochs}", leave=False)
        for i in bar:
            idx = np.sort(order[i * st["batch_size"]:(i + 1) * st["batch_size"]])
            x, y = wikiart.to_float(data.images[idx], device), data.labels[idx].to(device)
            content = contents[idx].float() if contents is not None else None
            logs = (train_step_adain(G, D, opt_g, opt_d, x, content, y, g, colour_refs) if mode == "adain"
                    else train_step_naive(G, opt_g, x, content, y, g))
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.3f}" for k, v in list(logs.items())[:3]})
        row = {"epoch": epoch + 1} | {k: v / steps for k, v in sums.items()} | validate(G, D, mode)
        row["seconds"] = time.time() - t0
        history.append(row)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        wikiart.atomic_save({"model": G.state_dict(), "opt_g": opt_g.state_dict(), "epoch": epoch,
                             "history": history, "config": cfg, "signature": train_signature(mode)}
                            | ({"discriminator": D.state_dict(), "opt_d": opt_d.state_dict()} if D is not None else {}),
                            last)
        wikiart.write_history(history, mdir)
        wikiart.plot_curves(history, [k for k in history[-1] if k not in ("epoch", "seconds")],
                            os.path.join(mdir, "curves.png"), f"style transfer ({mode})")
    wikiart.atomic_save({"model": G.state_dict(), "mode": mode, "config": cfg, "signature": train_signature(mode),
                         "class_to_idx": data.class_to_idx, "autoencoder": source, "history": history},
                        os.path.join(mdir, "model.pt"))
    return G.eval()


def train_or_load(mode):
    """--evaluate reuses <mode>/model.pt when it was trained with the same settings."""
    path = os.path.join(out_dir, mode, "model.pt")
    if args.evaluate and not (args.resume and mode == st["mode"]) and os.path.exists(path):
        ckpt = torch.load(path, map_location=device, weights_only=False)
        if ckpt.get("signature") == train_signature(mode):
            G, _, _ = build(mode, ae=None if mode == "naive" else get_autoencoder(train_fallback=False))
            G.load_state_dict(ckpt["model"])
            print(f"{mode}: reusing {path} (same training settings)")
            return G.eval()
    return train(mode)


@torch.no_grad()
def transfer(G, images_u8, styles, batch_size=128):
    """Outputs (uint8) of the generator for images_u8[i] rendered in styles[i]."""
    outs = []
    for i in range(0, len(styles), batch_size):
        x = wikiart.to_float(images_u8[i:i + batch_size], device)
        outs.append(wikiart.to_uint8(G(x, torch.as_tensor(styles[i:i + batch_size], device=device))))
    return np.concatenate(outs) if outs else np.zeros((0, S, S, 3), np.uint8)


def pick_test_images(test, n):
    """n test indices, seeded, taken round-robin over styles so every style appears."""
    rng = np.random.default_rng(cfg["seed"])
    pools = [list(rng.permutation(np.flatnonzero(test.labels.numpy() == s))) for s in range(C)]
    picked = []
    while len(picked) < min(n, len(test)):
        for p in pools:
            if p and len(picked) < n:
                picked.append(p.pop())
    return np.array(picked)


def plot_grid(G, mode, test, rows):
    """Test images (rows) x target styles (columns); the source column first; red frame = own style."""
    plt = wikiart.plt()
    idx = pick_test_images(test, rows)
    src = np.asarray(test.images[idx])
    cols = [src] + [transfer(G, src, np.full(len(idx), s)) for s in range(C)]
    pad = 2
    canvas = np.full((len(idx) * (S + pad), (C + 1) * (S + pad) + pad * 2, 3), 255, np.uint8)
    for r in range(len(idx)):
        for c, col in enumerate(cols):
            x0 = c * (S + pad) + (3 * pad if c > 0 else 0)  # a gap after the source column
            canvas[r * (S + pad):r * (S + pad) + S, x0:x0 + S] = col[r]
    fig_w = max(8, canvas.shape[1] / 45)
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * canvas.shape[0] / canvas.shape[1] + 2.2))
    ax.imshow(canvas, interpolation="nearest")
    for r, i in enumerate(idx):
        y_true = int(test.labels[i])
        ax.text(-4, r * (S + pad) + S / 2, classes[y_true], ha="right", va="center", fontsize=7)
        x0 = (y_true + 1) * (S + pad) + 3 * pad
        ax.add_patch(plt.Rectangle((x0 - 1.5, r * (S + pad) - 1.5), S + 2, S + 2, fill=False, ec="red", lw=1.5))
    ax.set_xticks([S / 2] + [c * (S + pad) + 3 * pad + S / 2 for c in range(1, C + 1)],
                  ["SOURCE"] + classes, rotation=90, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_title(f"{mode}: test image (left, true style at the row start) rendered in each style; "
                 "red frame = its own style", fontsize=9, pad=10)
    fig.tight_layout()
    path = os.path.join(out_dir, mode, "grid.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_embeddings(G, mode):
    """The learned style embeddings: 2D PCA (with arrows from their initial values) and each one
    rendered as a "style prototype" (adain: the generator on a flat grey image; naive: its style image)."""
    plt = wikiart.plt()
    initial = None
    if mode == "naive":
        weights = G.style_images.weight.detach().cpu()
        protos = wikiart.to_uint8(G.style_image(torch.arange(C, device=device)))
    else:
        weights, initial = G.embedder.embedding.weight.detach().cpu(), G.embedder.initial.cpu()
        grey = torch.zeros(C, 3, S, S, device=device)
        protos = wikiart.to_uint8(G(grey, torch.arange(C, device=device)))
    both = torch.cat([weights, initial]) if initial is not None else weights
    centred = both - both.mean(0)
    _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
    xy = (centred.double() @ v[:2].T).numpy()
    fig = plt.figure(figsize=(14, 6.5))
    ax = fig.add_subplot(1, 2, 1)
    colours = plt.cm.tab20(np.linspace(0, 1, C))
    for s in range(C):
        ax.scatter(*xy[s], color=colours[s], s=40, zorder=3)
        ax.annotate(classes[s], xy[s], fontsize=6)
        if initial is not None:
            ax.annotate("", xy[s], xy[C + s], arrowprops=dict(arrowstyle="->", color=colours[s], lw=0.8))
    ax.set_title(f"{mode}: style embeddings, 2D PCA" + (" (arrows: from the initial mean codes)" if initial is not None else ""),
                 fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    n_col = math.ceil(math.sqrt(C))
    sheet = np.full((math.ceil(C / n_col) * (S + 12), n_col * (S + 4), 3), 255, np.uint8)
    for s in range(C):
        r, c = divmod(s, n_col)
        sheet[r * (S + 12):r * (S + 12) + S, c * (S + 4):c * (S + 4) + S] = protos[s]
    ax.imshow(sheet)
    for s in range(C):
        r, c = divmod(s, n_col)
        ax.text(c * (S + 4) + S / 2, r * (S + 12) + S + 6, classes[s][:14], ha="center", fontsize=5)
    ax.axis("off")
    ax.set_title("each embedding rendered: " + ("its learned style image" if mode == "naive"
                                                  else "generator output for a flat grey input"), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, mode, "embeddings.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train_or_load_judge():
    """The style judge: a ResNet (an architecture used nowhere in training here), trained on the
    training images only, half of each batch seen through the robust transform."""
    path = os.path.join(out_dir, "judge.pt")
    signature = {"data": train_signature("naive")["data"], "judge": [st["judge_width"], st["judge_epochs"], st["judge_lr"]]}
    torch.manual_seed(cfg["seed"])
    judge = wikiart.ResNet(C, st["judge_width"], (1, 1, 1, 1), 0.1).to(device)
    if os.path.exists(path):
        ckpt = torch.load(path, map_location=device, weights_only=False)
        if ckpt["signature"] == signature:
            judge.load_state_dict(ckpt["model"])
            print(f"judge: reusing {path}")
            return judge.eval()
    robust = wikiart.robust_transform(np.asarray(data.images))
    bs, epochs = 64, st["judge_epochs"]
    steps = len(train_idx) // bs
    opt = wikiart.make_optimizer(judge, "adamw", st["judge_lr"], 0.05)
    sched = wikiart.make_scheduler(opt, steps, epochs * steps)
    for epoch in range(epochs):
        g = wikiart.epoch_generator(cfg["seed"] + 1, epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=g).numpy()]
        judge.train()
        for i in tqdm(range(steps), desc=f"judge epoch {epoch + 1}/{epochs}", leave=False):
            idx = np.sort(order[i * bs:(i + 1) * bs])
            use_robust = (torch.rand(len(idx), generator=g) < 0.5).numpy()[:, None, None, None]
            x = wikiart.to_float(np.where(use_robust, robust[idx], data.images[idx]), device)
            x = wikiart.augment(x, g, 0.5)
            loss = F.cross_entropy(judge(x), data.labels[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    labels = data.labels[val_idx].numpy()
    acc = (wikiart.predict(judge, robust, val_idx, 256, device).argmax(1).numpy() == labels).mean()
    print(f"judge: ResNet width {st['judge_width']}, {epochs} epochs; validation accuracy (robust) {acc:.3f}")
    wikiart.atomic_save({"model": judge.state_dict(), "signature": signature, "val_robust_accuracy": float(acc)}, path)
    return judge.eval()


def evaluate(models, test):
    """N test images x every other style, for each model and the identity: hit rates, gap closed, SSIM."""
    idx = pick_test_images(test, st["eval_images"])
    src_u8, src_y = np.asarray(test.images[idx]), test.labels[idx].numpy()
    pairs = [(i, t) for i in range(len(idx)) for t in range(C) if t != src_y[i]]
    pi, pt = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    inputs = src_u8[pi]
    judge = train_or_load_judge()
    judge_of = lambda u8: wikiart.predict(judge, u8, np.arange(len(u8)), 256, device, desc="judging").argmax(1).numpy()
    test_u8 = np.asarray(test.images)
    ceiling = {"judge_test_accuracy_robust": float((judge_of(wikiart.robust_transform(test_u8)) == test.labels.numpy()).mean()),
               "judge_test_accuracy_raw": float((judge_of(test_u8) == test.labels.numpy()).mean())}
    # reference statistics from real training images; "real" = unseen test paintings of each style
    tex_net = wikiart.random_texture_net(cfg["seed"])
    train_u8, train_y = np.asarray(data.images[train_idx]), data.labels[train_idx].numpy()
    describe = {"texture": lambda u8: wikiart.texture_descriptors(u8, tex_net), "colour": wikiart.colour_histograms}
    refs = {k: wikiart.style_references(f(train_u8), train_y, C) for k, f in describe.items()}
    test_desc = {k: f(test_u8) for k, f in describe.items()}
    in_desc = {k: f(inputs) for k, f in describe.items()}
    styles = [s for s in range(C) if (pt == s).any() and (test.labels.numpy() == s).any() and len(by_style[s])]
    d_in, d_real = {}, {}
    for k in describe:
        d_in[k] = [wikiart.style_distance([l[pt == s] for l in in_desc[k]], refs[k], s) for s in styles]
        d_real[k] = [wikiart.style_distance([l[test.labels == s] for l in test_desc[k]], refs[k], s) for s in styles]
    results = {"n_images": int(len(idx)), "n_outputs": int(len(pairs)), "styles": C, "chance": 1 / C,
               "styles_in_gap": len(styles)} | ceiling
    methods = {name: transfer(G, inputs, pt) for name, G in models.items()} | {"identity": inputs}
    for name, outputs in methods.items():
        r = {"robust_hit_rate": float((judge_of(wikiart.robust_transform(outputs)) == pt).mean()),
             "raw_hit_rate": float((judge_of(outputs) == pt).mean())}
        for k, f in describe.items():
            desc = f(outputs)
            d_out = [wikiart.style_distance([l[pt == s] for l in desc], refs[k], s) for s in styles]
            r[f"{k}_gap_closed"] = wikiart.gap_closed(d_in[k], d_out, d_real[k])
        r["ssim"] = float(wikiart.ssim(outputs, inputs).mean())
        results[name] = r
    wikiart.atomic_save(results, os.path.join(out_dir, "evaluation.json"))
    print(f"\n{len(idx)} test images x {C - 1} other styles = {len(pairs)} outputs; chance {1 / C:.1%}; judge on "
          f"real test images: {ceiling['judge_test_accuracy_robust']:.1%} robust / {ceiling['judge_test_accuracy_raw']:.1%} raw")
    print(f"{'method':10s} {'robust hit':>10s} {'raw hit':>8s} {'texture gap':>11s} {'colour gap':>10s} {'SSIM':>6s}")
    for name in methods:
        r = results[name]
        print(f"{name:10s} {r['robust_hit_rate']:10.1%} {r['raw_hit_rate']:8.1%} {r['texture_gap_closed']:11.1%} "
              f"{r['colour_gap_closed']:10.1%} {r['ssim']:6.3f}")
    print(f"wrote {os.path.join(out_dir, 'evaluation.json')}")
    return results


# ---- train (or reload), draw, evaluate
test = wikiart.load_split(cfg, "test", data.class_to_idx)
modes = ["adain", "naive"] if args.evaluate else [st["mode"]]
models = {}
for mode in modes:
    t_start = time.time()
    models[mode] = train_or_load(mode)
    print(f"{mode}: grid {plot_grid(models[mode], mode, test, st['grid_rows'])}, "
          f"embeddings {plot_embeddings(models[mode], mode)} ({time.time() - t_start:.0f} s)")
if args.evaluate:
    evaluate(models, test)
