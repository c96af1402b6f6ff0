"""Part 3: render an image in another art style, conditioned on a trained style embedding.

    python style_transfer.py                              # train the working mode (adain), grid + embeddings
    python style_transfer.py --evaluate                   # + naive mode, style judge, metrics table
    python style_transfer.py --set style_transfer.mode=naive   # the earlier approach, which collapses
    python style_transfer.py --resume                     # continue the mode's training from last.pt
    python style_transfer.py --evaluate -c configs/style_transfer_w16_64.json   # WikiArt-16 (RESULTS.md)

Modes (config "style_transfer.mode"):
  adain  StarGAN-style: generator = the Part-2 autoencoder's encoder (frozen) + a decoder whose AdaIN
         layers are driven by the style embedding (initialised from each style's mean latent code);
         trained jointly with a discriminator that has a real/fake head and a style-classification
         head; losses: adversarial, style classification of the fakes, reconstruction when the target
         is the source style, feature statistics of real paintings of the target style, the colour
         histogram of the target style (w_colour), optional cycle.
  naive  the earlier attempt: a learned image-sized style image concatenated to the input channels,
         MSE to the content + MSE to the style image (its style images collapse to one grey-beige).

The encoder comes from style_transfer.autoencoder_path (autoencoder.py's best.pt: run autoencoder.py
first). --evaluate trains (or reloads, if its config is unchanged) both modes and a separate style
judge (a ResNet, trained on the training images with the robust transform as augmentation), then
scores N test images x every other style: robust/raw hit rate, style gap closed (texture, colour),
SSIM; also for the identity.
Writes to out_dir: <mode>/{model.pt,last.pt,train_log.*,curves.png,grid.png,embeddings.png},
judge.pt, evaluation.json.
"""
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import metrics
import plots
import runs
import sample_data
import wikiart

# what a trained model depends on: a saved model is reused by --evaluate only if these are unchanged
NOT_TRAINING_KEYS = ("mode", "out_dir", "eval_images", "grid_rows", "judge_width", "judge_epochs", "judge_lr")


class Split:
    """The training folder and its split: validation carved out of it, training indices per style."""

    def __init__(self, data, cfg):
        self.data, self.classes, self.C = data, data.classes, len(data.classes)
        self.train_idx, self.val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
        self.by_style = [self.train_idx[(data.labels[self.train_idx] == s).numpy()] for s in range(self.C)]


def train_signature(cfg, mode):
    st = cfg["style_transfer"]
    keys = [k for k in st if k not in NOT_TRAINING_KEYS and (k.startswith("naive_") == (mode == "naive"))]
    path = st["autoencoder_path"]
    # "generator": the StyleGenerator layout; bumped when its layers change, so an older model.pt is retrained
    return {"data": [cfg["train_dir"], cfg["image_size"], cfg["seed"], cfg["val_fraction"]], "mode": mode,
            "generator": 2, "style_transfer": {k: st[k] for k in keys},
            "autoencoder": [path, os.path.exists(path) and os.path.getmtime(path)] if mode == "adain" else None}


def load_encoder(cfg, device):
    """The Part-2 autoencoder whose encoder gives the content (and the embeddings' initial values)."""
    path = cfg["style_transfer"]["autoencoder_path"]
    ae, ckpt = wikiart.load_autoencoder(path, device)
    if ckpt["config"]["image_size"] != cfg["image_size"]:
        raise config.UserError(f"{path} was trained at {ckpt['config']['image_size']} px but image_size is "
                               f"{cfg['image_size']}: train a matching one (autoencoder.py --set image_size=...)")
    return ae.requires_grad_(False).eval()


def build(cfg, mode, split, device):
    """(generator, discriminator or None) for a mode, before training."""
    st, S, C, data = cfg["style_transfer"], cfg["image_size"], split.C, split.data
    torch.manual_seed(cfg["seed"])
    if mode == "naive":  # the style images start as each style's mean training image
        mean_images = torch.stack([wikiart.to_float(data.images[np.sort(idx)], torch.device("cpu")).mean(0)
                                   if len(idx) else torch.zeros(3, S, S) for idx in split.by_style])
        return wikiart.NaiveStyleNet(C, S, mean_images, st["naive_width"]).to(device), None
    ae = load_encoder(cfg, device)  # frozen content encoder
    codes = wikiart.mean_code_per_style(ae, data.images[split.train_idx], data.labels[split.train_idx], C, device,
                                        st["embed_pool"])
    G = wikiart.StyleGenerator(ae, wikiart.StyleEmbedder(codes), S, st["width"], st["res_blocks"], st["style_dim"])
    return G.to(device), wikiart.StyleDiscriminator(C, st["d_width"]).to(device)


def coarse_structure(x):
    """Luminance at 1/4 of the side, standardised per image: the layout, without colour, contrast
    or fine texture (which the style may change). A one-pass stand-in for the cycle loss."""
    lum = F.avg_pool2d(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3], 4)
    return (lum - lum.mean((2, 3), keepdim=True)) / (lum.std((2, 3), keepdim=True) + 0.05)


def train_step_adain(G, D, opt_g, opt_d, x, content, y, g, split, colour_refs, st):
    """One discriminator step and one generator step on a batch; returns the losses."""
    device = x.device
    t = torch.randint(split.C, y.shape, generator=g).to(device)  # uniform targets: rare styles as often
    same = torch.rand(y.shape, generator=g).to(device) < st["same_style_fraction"]
    t = torch.where(same, y, t)
    # one random training image of each target style (a style without training images: any image)
    idx = [split.by_style[s][int(torch.randint(len(split.by_style[s]), (1,), generator=g))] if len(split.by_style[s])
           else split.train_idx[int(torch.randint(len(split.train_idx), (1,), generator=g))] for s in t.tolist()]
    real = wikiart.to_float(split.data.images[np.asarray(idx)], device)
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
    loss = sum(st["w_" + k[2:]] * v for k, v in losses.items())
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return {k: v.item() for k, v in losses.items()} | {
        "d_adv": d_adv.item(), "d_cls": d_cls.item(), "d_real_acc": (cls_real.argmax(1) == t).float().mean().item()}


def train_step_naive(model, opt, x, y, g, C):
    t = torch.randint(C, y.shape, generator=g).to(y.device)
    out = model(x, t)
    content, style = F.mse_loss(out, x), F.mse_loss(out, model.style_image(t))
    opt.zero_grad(set_to_none=True)
    (content + style).backward()
    opt.step()
    return {"mse_content": content.item(), "mse_style": style.item()}


@torch.no_grad()
def validate(G, D, split, seed, device):
    """Reconstruction L1 (target = source) on the validation split and, for adain, how often the
    discriminator's style head calls a fake its (uniform random) target style."""
    G.eval()
    g = torch.Generator().manual_seed(seed)
    rec, hit, n = 0.0, 0, 0
    for x, y in wikiart.iterate_batches(split.data.images, split.data.labels, split.val_idx, 64, device):
        rec += (G(x, y) - x).abs().mean().item() * len(y)
        if D is not None:
            t = torch.randint(split.C, y.shape, generator=g).to(device)
            hit += (D(G(x, t))[1].argmax(1) == t).sum().item()
        n += len(y)
    G.train()
    return {"val_rec_l1": rec / max(n, 1)} | ({"val_fake_style_acc": hit / max(n, 1)} if D is not None else {})


@torch.no_grad()
def encode_all(G, data, device):
    """The frozen encoder's content map of every training-folder image, computed once (float16)."""
    maps = [G.content(x).half() for x, _ in tqdm(
        wikiart.iterate_batches(data.images, data.labels, np.arange(len(data)), 128, device),
        total=math.ceil(len(data) / 128), desc="encoding content", leave=False)]
    return torch.cat(maps)


def train(cfg, mode, split, device, resume, argv):
    """Train one mode (or resume it); returns the trained model in eval mode."""
    st = cfg["style_transfer"]
    mdir = os.path.join(st["out_dir"], mode)
    G, D = build(cfg, mode, split, device)
    epochs = st["epochs"] if mode == "adain" else st["naive_epochs"]
    betas = (0.5, 0.999)  # the usual GAN setting: less momentum, steadier two-player updates
    opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad],
                             lr=st["lr"] if mode == "adain" else st["naive_lr"], betas=betas)
    objects = {"model": G, "opt_g": opt_g}
    if D is not None:
        objects |= {"discriminator": D, "opt_d": torch.optim.Adam(D.parameters(), lr=st["d_lr"], betas=betas)}
    progress = runs.Progress(mdir, ["val_rec_l1", "val_fake_style_acc", "g_adv", "g_stats", "g_colour"],
                             f"style transfer ({mode})")
    last, start = os.path.join(mdir, "last.pt"), 0
    if resume and os.path.exists(last):
        start = runs.resume(last, progress, device, lambda c: None if c.get("signature") == train_signature(cfg, mode)
                            else f"{last} was trained with other settings: use another style_transfer.out_dir",
                            **objects)
    bs = runs.fit_batch_size(st["batch_size"], len(split.train_idx), "style_transfer.batch_size")
    steps = st["steps_per_epoch"] or len(split.train_idx) // bs
    contents = encode_all(G, split.data, device) if mode == "adain" else None
    colour_refs = (wikiart.mean_colour_histograms(split.data.images, split.data.labels.numpy(), split.train_idx,
                                                  split.C, device, seed=cfg["seed"], pool=st["colour_pool"])
                   if mode == "adain" and st["w_colour"] > 0 else None)
    print(f"training {mode}: {sum(p.numel() for p in G.parameters() if p.requires_grad) / 1e6:.2f}M trainable "
          f"generator parameters, {epochs} epochs x {steps} steps of {bs}")
    runs.save_run_config(cfg, mdir, "style_transfer.py", argv)
    draw = lambda g: torch.randint(len(split.train_idx), (steps * bs,), generator=g).numpy()
    G.train()
    with runs.on_interrupt(progress, "style_transfer.py", argv):
        for epoch in range(start, epochs):
            t0 = time.time()
            order, g = runs.epoch_order(split.train_idx, cfg["seed"], epoch, draw=draw)
            sums = {}
            bar = tqdm(range(steps), desc=f"{mode} epoch {epoch + 1}/{epochs}", leave=False)
            for i in bar:
                idx = np.sort(order[i * bs:(i + 1) * bs])
                x, y = wikiart.to_float(split.data.images[idx], device), split.data.labels[idx].to(device)
                logs = (train_step_adain(G, D, opt_g, objects["opt_d"], x, contents[idx].float(), y, g, split,
                                         colour_refs, st) if mode == "adain"
                        else train_step_naive(G, opt_g, x, y, g, split.C))
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(logs.items())[:3]})
            row = {"epoch": epoch + 1} | {k: v / steps for k, v in sums.items()} | validate(G, D, split, cfg["seed"], device)
            row["seconds"] = time.time() - t0
            capped = runs.time_is_up(device, epoch + 1, epochs)  # max_minutes: end after this epoch, resumable
            progress.end_epoch(row | ({"time_cap": True} if capped else {}), None, lambda: runs.training_state(
                epoch, progress, **objects) | {"config": cfg, "signature": train_signature(cfg, mode)})
            if capped:
                break
    runs.atomic_save({"model": G.state_dict(), "mode": mode, "config": cfg, "signature": train_signature(cfg, mode),
                      "class_to_idx": split.data.class_to_idx, "history": progress.history},
                     os.path.join(mdir, "model.pt"))
    return G.eval()


def train_or_load(cfg, mode, split, device, reuse, resume, argv):
    """Reuse <mode>/model.pt when it was trained with the same settings (if `reuse`), else train."""
    path = os.path.join(cfg["style_transfer"]["out_dir"], mode, "model.pt")
    if reuse and os.path.exists(path):
        ckpt = runs.load_checkpoint(path, "a style_transfer.py model", needs=("model", "signature"))
        if ckpt["signature"] == train_signature(cfg, mode):
            G, _ = build(cfg, mode, split, device)
            runs.load_weights(G, ckpt["model"], path)
            print(f"{mode}: reusing {path} (same training settings)")
            return G.eval()
    return train(cfg, mode, split, device, resume, argv)


@torch.no_grad()
def transfer(G, images_u8, styles, device, batch_size=128):
    """Outputs (uint8) of the generator for images_u8[i] rendered in styles[i]."""
    outs = []
    for i in range(0, len(styles), batch_size):
        x = wikiart.to_float(images_u8[i:i + batch_size], device)
        outs.append(wikiart.to_uint8(G(x, torch.as_tensor(styles[i:i + batch_size], device=device))))
    S = images_u8.shape[1]
    return np.concatenate(outs) if outs else np.zeros((0, S, S, 3), np.uint8)


def pick_test_images(test, n, seed):
    """n test indices, seeded, taken round-robin over styles so every style appears."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(test.labels.numpy() == s))) for s in range(len(test.classes))]
    picked = []
    while len(picked) < min(n, len(test)):
        for p in pools:
            if p and len(picked) < n:
                picked.append(p.pop())
    return np.array(picked)


def plot_grid(G, mode, test, rows, path, seed, device):
    """Test images (rows) x target styles (columns); the source column first; red frame = own style."""
    plt = plots.plt()
    classes, C, S = test.classes, len(test.classes), test.image_size
    idx = pick_test_images(test, rows, seed)
    src = np.asarray(test.images[idx])
    cols = [src] + [transfer(G, src, np.full(len(idx), s), device) for s in range(C)]
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_embeddings(G, mode, classes, S, path, device):
    """The learned style embeddings: 2D PCA (with arrows from their initial values) and each one
    rendered as a "style prototype" (adain: the generator on a flat grey image; naive: its style image)."""
    plt = plots.plt()
    C, initial = len(classes), None
    if mode == "naive":
        weights = G.style_images.weight.detach().cpu()
        protos = wikiart.to_uint8(G.style_image(torch.arange(C, device=device)))
    else:
        weights, initial = G.embedder.embedding.weight.detach().cpu(), G.embedder.initial.cpu()
        protos = wikiart.to_uint8(G(torch.zeros(C, 3, S, S, device=device), torch.arange(C, device=device)))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_or_load_judge(cfg, split, device):
    """The style judge: a ResNet (an architecture used nowhere in training here), trained on the
    training images only, half of each batch seen through the robust transform."""
    st, data = cfg["style_transfer"], split.data
    path = os.path.join(st["out_dir"], "judge.pt")
    signature = {"data": train_signature(cfg, "naive")["data"], "judge": [st["judge_width"], st["judge_epochs"], st["judge_lr"]]}
    torch.manual_seed(cfg["seed"])
    judge = wikiart.ResNet(split.C, st["judge_width"], (1, 1, 1, 1), 0.1).to(device)
    if os.path.exists(path):
        ckpt = runs.load_checkpoint(path, "a style judge (judge.pt)", needs=("model", "signature"), device=device)
        if ckpt["signature"] == signature:
            runs.load_weights(judge, ckpt["model"], path)
            print(f"judge: reusing {path}")
            return judge.eval()
    robust = metrics.robust_transform(np.asarray(data.images))
    bs, epochs = runs.fit_batch_size(64, len(split.train_idx), "the style judge's batch size"), st["judge_epochs"]
    steps = len(split.train_idx) // bs
    opt = wikiart.make_optimizer(judge, "adamw", st["judge_lr"], 0.05)
    sched = wikiart.make_scheduler(opt, steps, epochs * steps)
    for epoch in range(epochs):
        order, g = runs.epoch_order(split.train_idx, cfg["seed"] + 1, epoch)
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
    labels = data.labels[split.val_idx].numpy()
    acc = (wikiart.predict(judge, robust, split.val_idx, 256, device).argmax(1).numpy() == labels).mean()
    print(f"judge: ResNet width {st['judge_width']}, {epochs} epochs; validation accuracy (robust) {acc:.3f}")
    runs.atomic_save({"model": judge.state_dict(), "signature": signature, "val_robust_accuracy": float(acc)}, path)
    return judge.eval()


def evaluate(cfg, models, split, test, device):
    """N test images x every other style, for each model and the identity: hit rates, gap closed, SSIM."""
    st, data, C = cfg["style_transfer"], split.data, split.C
    idx = pick_test_images(test, st["eval_images"], cfg["seed"])
    src_u8, src_y = np.asarray(test.images[idx]), test.labels[idx].numpy()
    pairs = [(i, t) for i in range(len(idx)) for t in range(C) if t != src_y[i]]
    pi, pt = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    inputs = src_u8[pi]
    judge = train_or_load_judge(cfg, split, device)
    judge_of = lambda u8: wikiart.predict(judge, u8, np.arange(len(u8)), 256, device, desc="judging").argmax(1).numpy()
    test_u8 = np.asarray(test.images)
    ceiling = {"judge_test_accuracy_robust": float((judge_of(metrics.robust_transform(test_u8)) == test.labels.numpy()).mean()),
               "judge_test_accuracy_raw": float((judge_of(test_u8) == test.labels.numpy()).mean())}
    # reference statistics from real training images; "real" = unseen test paintings of each style
    tex_net = metrics.random_texture_net(cfg["seed"])
    train_u8, train_y = np.asarray(data.images[split.train_idx]), data.labels[split.train_idx].numpy()
    describe = {"texture": lambda u8: metrics.texture_descriptors(u8, tex_net), "colour": metrics.colour_histograms}
    refs = {k: metrics.style_references(f(train_u8), train_y, C) for k, f in describe.items()}
    test_desc = {k: f(test_u8) for k, f in describe.items()}
    in_desc = {k: f(inputs) for k, f in describe.items()}
    styles = [s for s in range(C) if (pt == s).any() and (test.labels.numpy() == s).any() and len(split.by_style[s])]
    d_in, d_real = {}, {}
    for k in describe:
        d_in[k] = [metrics.style_distance([l[pt == s] for l in in_desc[k]], refs[k], s) for s in styles]
        d_real[k] = [metrics.style_distance([l[test.labels == s] for l in test_desc[k]], refs[k], s) for s in styles]
    results = {"n_images": int(len(idx)), "n_outputs": int(len(pairs)), "styles": C, "chance": 1 / C,
               "styles_in_gap": len(styles)} | ceiling
    methods = {name: transfer(G, inputs, pt, device) for name, G in models.items()} | {"identity": inputs}
    for name, outputs in methods.items():
        r = {"robust_hit_rate": float((judge_of(metrics.robust_transform(outputs)) == pt).mean()),
             "raw_hit_rate": float((judge_of(outputs) == pt).mean())}
        for k, f in describe.items():
            desc = f(outputs)
            d_out = [metrics.style_distance([l[pt == s] for l in desc], refs[k], s) for s in styles]
            r[f"{k}_gap_closed"] = metrics.gap_closed(d_in[k], d_out, d_real[k])
        r["ssim"] = float(metrics.ssim(outputs, inputs).mean())
        results[name] = r
    runs.atomic_save(results, os.path.join(st["out_dir"], "evaluation.json"))
    print(f"\n{len(idx)} test images x {C - 1} other styles = {len(pairs)} outputs; chance {1 / C:.1%}; judge on "
          f"real test images: {ceiling['judge_test_accuracy_robust']:.1%} robust / {ceiling['judge_test_accuracy_raw']:.1%} raw")
    print(f"{'method':10s} {'robust hit':>10s} {'raw hit':>8s} {'texture gap':>11s} {'colour gap':>10s} {'SSIM':>6s}")
    for name in methods:
        r = results[name]
        print(f"{name:10s} {r['robust_hit_rate']:10.1%} {r['raw_hit_rate']:8.1%} {r['texture_gap_closed']:11.1%} "
              f"{r['colour_gap_closed']:10.1%} {r['ssim']:6.3f}")
    print(f"wrote {os.path.join(st['out_dir'], 'evaluation.json')}")
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--evaluate", action="store_true", help="train/load adain and naive, score them")
    parser.add_argument("--resume", action="store_true", help="continue training from <out_dir>/<mode>/last.pt")
    args, cfg = config.parse_config(parser, argv)
    st = cfg["style_transfer"]
    _, _, _, device = runs.start(cfg)

    modes = ["adain", "naive"] if args.evaluate else [st["mode"]]
    ae_path = st["autoencoder_path"]
    if "adain" in modes and not os.path.exists(ae_path):
        raise config.UserError(
            f"no autoencoder checkpoint at {ae_path}: style transfer builds on the Part-2 encoder; train it first: "
            + runs.config_command("autoencoder.py", argv, [f"autoencoder.out_dir={os.path.dirname(ae_path) or '.'}"]))
    lasts = [os.path.join(st["out_dir"], mode, "last.pt") for mode in modes]
    if args.resume and not any(os.path.exists(p) for p in lasts):
        raise config.UserError(f"--resume: nothing to resume: no {' or '.join(lasts)} (no epoch of a run with this "
                               "style_transfer.out_dir has finished); run without --resume to start")

    # ---- data: validation carved out of the training folder; the test folder only for the final scores
    sample_data.ensure_sample(cfg)
    split = Split(wikiart.load_split(cfg, "train"), cfg)
    test = wikiart.load_split(cfg, "test", split.data.class_to_idx)
    print(f"{len(split.data)} training images of {split.C} styles in {cfg['train_dir']} ({len(split.train_idx)} "
          f"train / {len(split.val_idx)} validation), {cfg['image_size']} px, device {device}")

    # ---- train (or reload), draw, evaluate
    models = {}
    for mode in modes:  # --resume continues each mode that has a last.pt (--evaluate: one interrupted)
        t_start = time.time()
        models[mode] = train_or_load(cfg, mode, split, device, reuse=args.evaluate, resume=args.resume, argv=argv)
        mdir = os.path.join(st["out_dir"], mode)
        plot_grid(models[mode], mode, test, st["grid_rows"], os.path.join(mdir, "grid.png"), cfg["seed"], device)
        plot_embeddings(models[mode], mode, split.classes, cfg["image_size"], os.path.join(mdir, "embeddings.png"), device)
        print(f"{mode}: {mdir}/grid.png, embeddings.png ({time.time() - t_start:.0f} s)")
    if args.evaluate:
        evaluate(cfg, models, split, test, device)


if __name__ == "__main__":
    runs.cli(main)
