"""Part 3: render an image in another art style, conditioned on a trained style embedding.

    python style_transfer.py                      # train the generator (sample data): grids, embeddings
    python style_transfer.py --evaluate val       # score it on validation images (choose settings there)
    python style_transfer.py --evaluate           # score it on test images: evaluation.json, strength_curve.png
    python style_transfer.py -c configs/style_transfer_w16_64_real.json --seeds 3   # --resume continues it
    python style_transfer.py --image photo.jpg photos/ --style Cubism  # your images (--style all: every style)
    python style_transfer.py --image monet.jpg --source Impressionism --style Cubism --strength 0.5
    python style_transfer.py --image photo.jpg --mix Cubism:0.7 Ukiyo_e:0.3 --keep-colour

Writes out_dir/{residual,naive}/ (the generator; with naive_epochs, the naive baseline; --seeds N: seed<k>/)."""
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import metrics
import plots
import runs
import sample_data
import stylise
import transfer_eval
import transfer_models as tm
import wikiart

NOT_TRAINING = ("out_dir", "epochs", "naive_epochs", "judge_width", "judge_epochs", "eval_images", "grid_rows")
W_ADV, W_STATS, TEACHER_WIDTH, NAIVE_LR, BETAS = 1.0, 10.0, 32, 0.01, (0.5, 0.999)  # BETAS: as usual for GANs


class Split:
    """The training folder and its split: validation carved out of it, training indices per style."""

    def __init__(self, data, cfg):
        self.data, self.classes, self.C = data, data.classes, len(data.classes)
        self.train_idx, self.val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
        self.by_style = [self.train_idx[(data.labels[self.train_idx] == s).numpy()] for s in range(self.C)]


def load_encoder(cfg, argv, device):
    """The Part-2 autoencoder whose per-style mean codes initialise the style embeddings."""
    path, size = cfg["style_transfer"]["autoencoder_path"], cfg["image_size"]
    if not os.path.exists(path):
        raise config.UserError(f"no autoencoder checkpoint at {path}: style transfer initialises its style embeddings "
                               "from the Part-2 encoder; train it first: " + runs.config_command(
                                   "autoencoder.py", argv, [f"autoencoder.out_dir={os.path.dirname(path) or '.'}"]))
    ae, ckpt = wikiart.load_autoencoder(path, device)
    if ckpt["config"]["image_size"] != size:
        raise config.UserError(f"{path} was trained at {ckpt['config']['image_size']} px but image_size is {size}: "
                               "train a matching one (autoencoder.py --set image_size=...)")
    return ae.requires_grad_(False)


def initial_values(cfg, mode, split, encoder, device):
    """What a new model starts from: naive, each style's mean training image; residual, each style's mean code
    under the Part-2 encoder and (colour_prior) its average channel means and stds on [-1, 1]."""
    data, S, train = split.data, cfg["image_size"], split.train_idx
    if mode == "naive":
        return torch.stack([wikiart.to_float(data.images[np.sort(idx)], torch.device("cpu")).mean(0)
                            if len(idx) else torch.zeros(3, S, S) for idx in split.by_style]), None
    colour = metrics.style_channel_statistics(data.images[train], data.labels[train].numpy(), split.C)
    colour = torch.from_numpy(colour).float() / 127.5 - torch.tensor([1.0] * 3 + [0.0] * 3)
    return (wikiart.mean_code_per_style(encoder, data.images[train], data.labels[train], split.C, device),
            colour if cfg["style_transfer"]["colour_prior"] else None)


def train_step(G, D, opt_g, opt_d, x, y, g, split, refs, st):
    """One discriminator step and one generator step on a batch; returns the losses."""
    device, C = x.device, split.C
    t = torch.randint(C, y.shape, generator=g).to(device)  # uniform targets: rare styles as often
    same = torch.rand(y.shape, generator=g).to(device) < st["same_style_fraction"]
    t = torch.where(same, y, t)
    # one random training image of each target style (a style without training images: any image)
    idx = [split.by_style[s][int(torch.randint(len(split.by_style[s]), (1,), generator=g))] if len(split.by_style[s])
           else split.train_idx[int(torch.randint(len(split.train_idx), (1,), generator=g))] for s in t.tolist()]
    real = wikiart.to_float(split.data.images[np.asarray(idx)], device)
    known = torch.zeros_like(same)  # told the source, a target equal to it returns the image exactly
    if st["source_known_fraction"] > 0:
        known = torch.rand(y.shape, generator=g).to(device) < st["source_known_fraction"]
        unclipped = G(x, t, F.one_hot(y, C).float() * known[:, None], clip=False)  # a row of zeros: unknown
    else:  # trained without the source: told it later (evaluation, --source), the shared part cancels
        unclipped = G(x, t, clip=False)
    fake = unclipped.clamp(-1, 1)
    # discriminator: real paintings of the target styles are real (and classified), fakes are fake
    rf_both, cls_both, maps_both = D(torch.cat([real, fake.detach()]))
    n = len(real)
    d_adv = F.softplus(-rf_both[:n]).mean() + F.softplus(rf_both[n:]).mean()
    d_cls = F.cross_entropy(cls_both[:n], t)
    runs.optimizer_step(d_adv + st["w_cls"] * d_cls, opt_d)
    # generator: look real, be classified as the target, match its statistics, keep the content
    rf, cls, maps = D(fake)
    if refs.teacher is not None:  # a frozen classifier that knows the styles better than D's head
        cls = refs.teacher(fake)[1]
    styled = ~(same & known)  # the outputs the style terms judge: all, unless told it is their own style
    styled = styled if styled.any() else ~styled
    losses = {"g_adv": F.softplus(-rf).mean(), "g_cls": F.cross_entropy(cls[styled], t[styled]),
              "g_stats": tm.feature_stats_loss([m[styled] for m in maps], [m[:n][styled].detach() for m in maps_both]),
              "g_rec": (fake - x).abs()[same].mean() if same.any() else fake.sum() * 0,
              "g_structure": (tm.coarse_structure(fake) - tm.coarse_structure(x)).abs().mean(),
              "g_range": (unclipped.abs() - 1).clamp(min=0).mean()}
    # L1 from each output's colour histogram to its style's mean (the own style is the reconstruction's business)
    if st["w_colour"] > 0 and (~same).any():
        losses["g_colour"] = (tm.soft_colour_histogram(fake[~same]) - refs.colour[t[~same]]).abs().sum(1).mean()
    if st["w_texture"] > 0:
        grams = metrics.texture_grams(fake[styled], refs.texture_net)
        losses["g_texture"] = tm.texture_moment_loss(grams, refs.texture, t[styled], refs.moments)
    w = st | {"w_adv": W_ADV, "w_stats": W_STATS}
    runs.optimizer_step(sum(w["w_" + k[2:]] * v for k, v in losses.items()), opt_g)
    return {k: v.item() for k, v in losses.items()} | {
        "d_adv": d_adv.item(), "d_cls": d_cls.item(), "d_real_acc": (cls_both[:n].argmax(1) == t).float().mean().item()}


def train_step_naive(model, opt, x, y, g, C):
    t = torch.randint(C, y.shape, generator=g).to(y.device)
    out = model(x, t)
    content, style = F.mse_loss(out, x), F.mse_loss(out, model.style_image(t))
    runs.optimizer_step(content + style, opt)
    return {"mse_content": content.item(), "mse_style": style.item()}


def warm_up_classifier(D, opt_d, split, steps, seed, device, batch_size=64, desc="discriminator warm-up"):
    """D's style head (or the teacher) trained on real training paintings alone, flips as augmentation."""
    g, correct = torch.Generator().manual_seed(seed + 2000), 0
    idx_all = split.train_idx[torch.randint(len(split.train_idx), (steps * batch_size,), generator=g).numpy()]
    for i in tqdm(range(steps), desc=desc, leave=False):
        idx = np.sort(idx_all[i * batch_size:(i + 1) * batch_size])
        x, y = wikiart.to_float(split.data.images[idx], device), split.data.labels[idx].to(device)
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=g).to(device) < 0.5, x.flip(3), x)
        logits = D(x)[1]
        runs.optimizer_step(F.cross_entropy(logits, y), opt_d)
        correct += (logits.argmax(1) == y).sum().item() if i >= steps - 10 else 0
    print(f"{desc}: {steps} steps of {batch_size}; style accuracy over the last 10 batches "
          f"{correct / (min(10, steps) * batch_size):.1%}")


@torch.no_grad()
def validate(G, D, split, seed, device):
    """Validation reconstruction L1 (target = source) and how often D calls a fake its random target style."""
    G.eval()
    g, rec, hit, n = torch.Generator().manual_seed(seed), 0.0, 0, max(len(split.val_idx), 1)
    for x, y in wikiart.iterate_batches(split.data.images, split.data.labels, split.val_idx, 64, device):
        rec += (G(x, y) - x).abs().mean().item() * len(y)
        if D is not None:
            t = torch.randint(split.C, y.shape, generator=g).to(device)
            hit += (D(G(x, t))[1].argmax(1) == t).sum().item()
    G.train()
    return {"val_rec_l1": rec / n} | ({"val_fake_style_acc": hit / n} if D is not None else {})


def references(cfg, split, device):
    """The style terms' targets from training images: colour histograms, texture statistics, the frozen teacher."""
    st, seed, images, labels = cfg["style_transfer"], cfg["seed"], split.data.images, split.data.labels.numpy()
    refs = SimpleNamespace(teacher=None, moments=tm.RunningMoments(split.C))
    if st["w_colour"] > 0:
        refs.colour = tm.mean_colour_histograms(images, labels, split.train_idx, split.C, device, seed=seed)
    if st["w_texture"] > 0:
        refs.texture_net = metrics.random_texture_net(seed + 1000).to(device)  # the evaluation's has seed 0
        refs.texture = tm.style_texture_references(refs.texture_net, images, labels, split.train_idx, split.C, device,
                                                   seed=seed)
    if st["teacher_steps"]:  # trained again on --resume (seeded: the same teacher)
        torch.manual_seed(seed + 3000)
        refs.teacher = tm.StyleDiscriminator(split.C, TEACHER_WIDTH).to(device)
        warm_up_classifier(refs.teacher, torch.optim.Adam(refs.teacher.parameters(), lr=st["lr"] * 2), split,
                           st["teacher_steps"], seed + 3000, device, desc="style teacher")
        refs.teacher.eval().requires_grad_(False)
    return refs


def train(cfg, mode, split, encoder, device, resume, argv):
    """Train one mode (residual or naive), or resume it; writes <mode>/model.pt, returns (G, D or None)."""
    st, seed, mdir = cfg["style_transfer"], cfg["seed"], os.path.join(cfg["style_transfer"]["out_dir"], mode)
    G, D = tm.build(cfg, mode, split.C, *initial_values(cfg, mode, split, encoder, device))
    G, D = G.to(device), D.to(device) if D is not None else None
    objects = {"model": G, "opt_g": torch.optim.Adam(G.parameters(), lr=NAIVE_LR if mode == "naive" else st["lr"],
                                                     betas=BETAS)}
    if D is not None:
        refs = references(cfg, split, device)
        objects |= {"discriminator": D, "opt_d": torch.optim.Adam(D.parameters(), lr=st["lr"], betas=BETAS)}
        objects |= {"moments": refs.moments} if st["w_texture"] > 0 else {}
    progress = runs.Progress(mdir, ["val_rec_l1", "val_fake_style_acc", "g_adv", "g_colour", "g_texture"],
                             f"style transfer ({mode})")
    last, start, epochs = os.path.join(mdir, "last.pt"), 0, st["naive_epochs"] if mode == "naive" else st["epochs"]
    if resume and os.path.exists(last):
        keys = ["train_dir", "image_size", "seed", "val_fraction"] + [
            f"style_transfer.{k}" for k in st if k not in NOT_TRAINING]
        start = runs.resume(last, progress, device, lambda c: runs.mismatch(c.get("config", {}), cfg, keys, last),
                            **objects)
    bs = runs.fit_batch_size(st["batch_size"], len(split.train_idx), "style_transfer.batch_size")
    steps = st["steps_per_epoch"] or len(split.train_idx) // bs
    print(f"training {mode} (seed {seed}): {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M generator "
          f"parameters, {epochs} epochs x {steps} steps of {bs}")
    runs.save_run_config(cfg, mdir, "style_transfer.py", argv)
    if D is not None and start == 0 and st["d_warmup_steps"]:  # resumed: D already has it in its state
        warm_up_classifier(D, objects["opt_d"], split, st["d_warmup_steps"], seed, device)
    draw = lambda g: torch.randint(len(split.train_idx), (steps * bs,), generator=g).numpy()
    with runs.on_interrupt(progress, "style_transfer.py", argv):
        for epoch in range(start, epochs):
            t0, sums = time.time(), {}
            order, g = runs.epoch_order(split.train_idx, seed, epoch, draw=draw)
            for i in (bar := tqdm(range(steps), desc=f"{mode} epoch {epoch + 1}/{epochs}", leave=False)):
                idx = np.sort(order[i * bs:(i + 1) * bs])
                x, y = wikiart.to_float(split.data.images[idx], device), split.data.labels[idx].to(device)
                logs = (train_step_naive(G, objects["opt_g"], x, y, g, split.C) if mode == "naive"
                        else train_step(G, D, objects["opt_g"], objects["opt_d"], x, y, g, split, refs, st))
                sums = {k: sums.get(k, 0.0) + v for k, v in logs.items()}
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(logs.items())[:3]})
            row = {"epoch": epoch + 1} | {k: v / steps for k, v in sums.items()} | validate(G, D, split, seed, device)
            capped = runs.time_is_up(device, epoch + 1, epochs)  # max_minutes: end after this epoch, resumable
            progress.end_epoch(row | {"seconds": time.time() - t0} | ({"time_cap": True} if capped else {}), None,
                               lambda: runs.training_state(epoch, progress, **objects) | {"config": cfg})
            if capped:
                break
    runs.atomic_save({"model": G.state_dict(), "discriminator": D.state_dict() if D is not None else None,
                      "mode": mode, "config": cfg, "class_to_idx": split.data.class_to_idx,
                      "history": progress.history}, os.path.join(mdir, "model.pt"))
    return G.eval(), D.eval() if D is not None else None


@torch.no_grad()
def plot_figures(G, D, mode, split, cfg, out_dir, device):
    """grid.png (validation images x every style, G told D's guess as --image does; residual, also grid_told_source.png,
    told the true style as --source) and embeddings.png (the learned style embeddings, each one rendered)."""
    C, S, val = len(split.classes), cfg["image_size"], split.val_idx
    idx = transfer_eval.pick_images(split.data.labels[val].numpy(), cfg["style_transfer"]["grid_rows"], cfg["seed"])
    src, src_y = split.data.images[val[idx]], split.data.labels[val[idx]].numpy()
    guess = transfer_eval.guess_styles(D, src, device) if D is not None else None
    for name, told, what in (("grid", guess, ", told the discriminator's guess" if D is not None else ""),
                             ("grid_told_source", src_y, ", told the source style"))[:2 if D is not None else 1]:
        columns = [transfer_eval.transfer(G, src, np.full(len(idx), s), told, device) for s in range(C)]
        with runs.atomic_file(os.path.join(out_dir, name + ".png")) as f:
            plots.plot_transfer_grid(src, columns, src_y.tolist(), split.classes, f, f"{mode}{what}: validation image "
                                     "(left, true style at the row start) rendered in each style; red frame = its own")
    styles, naive = torch.arange(C, device=device), mode == "naive"
    weights = (G.style_images if naive else G.embedder.embedding).weight.detach().cpu()
    protos = wikiart.to_uint8(G.style_image(styles) if naive else G(torch.zeros(C, 3, S, S, device=device), styles))
    with runs.atomic_file(os.path.join(out_dir, "embeddings.png")) as f:
        plots.plot_style_embeddings(weights, None if naive else G.embedder.initial.cpu(), protos, split.classes, f,
                                    mode, "its learned style image" if naive
                                    else "generator output for a flat grey input")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--evaluate", nargs="?", const="test", choices=("val", "test"),
                        help="score the trained models on validation or test images (default: test)")
    parser.add_argument("--resume", action="store_true", help="continue training from <out_dir>/<mode>/last.pt")
    parser.add_argument("--seeds", type=int, default=1, help="generator seeds seed..seed+N-1 (evaluated: mean, std)")
    stylise.add_arguments(parser)
    args, cfg = config.parse_config(parser, argv)
    st = cfg["style_transfer"]
    _, _, _, device = runs.start(cfg)
    if args.image:
        return stylise.stylise(cfg, args, argv, device)
    if args.seeds < 1:
        raise config.UserError(f"--seeds must be >= 1, got {args.seeds}")
    modes = ["residual"] + (["naive"] if st["naive_epochs"] else [])
    dirs = [os.path.join(st["out_dir"], f"seed{cfg['seed'] + k}") if k else st["out_dir"] for k in range(args.seeds)]
    paths = lambda name: [os.path.join(d, mode, name) for d in dirs for mode in modes]
    missing = [p for p in paths("model.pt") if not os.path.exists(p)]
    if args.evaluate and missing:
        raise config.UserError(f"no trained model at {missing[0]}: train it first: " + runs.config_command(
            "style_transfer.py", argv) + (f" --seeds {args.seeds}" if args.seeds > 1 else ""))
    lasts = paths("last.pt")
    if args.resume and not any(os.path.exists(p) for p in lasts):
        raise config.UserError(f"--resume: nothing to resume: no {' or '.join(lasts)} (no epoch of a run with "
                               "this style_transfer.out_dir has finished); run without --resume to start")
    encoder = None if args.evaluate else load_encoder(cfg, argv, device)  # missing or unfit: stop before any output
    # ---- data: validation carved out of the training folder; the test folder only for --evaluate test
    sample_data.ensure_sample(cfg, ("train", "test") if args.evaluate == "test" else ("train",))
    split = Split(wikiart.load_split(cfg, "train"), cfg)
    runs.lock_out_dir(st["out_dir"])  # a second run into out_dir stops here (--image above reads only)
    print(f"{len(split.data)} training images of {split.C} styles in {cfg['train_dir']} ({len(split.train_idx)} "
          f"train / {len(split.val_idx)} validation), {cfg['image_size']} px, device {device}")
    if args.evaluate:
        return transfer_eval.evaluate_saved(cfg, args.evaluate, dirs, modes, split, device)

    # ---- train, draw; --seeds N: once per generator seed (the split stays)
    for k, out_dir in enumerate(dirs):
        run_cfg = cfg | {"seed": cfg["seed"] + k, "style_transfer": st | {"out_dir": out_dir}}
        runs.restart_time_cap()
        for mode in modes:
            t_start, mdir = time.time(), os.path.join(out_dir, mode)
            G, D = train(run_cfg, mode, split, encoder, device, args.resume, argv)
            plot_figures(G, D, mode, split, cfg, mdir, device)
            print(f"{mode} (seed {run_cfg['seed']}): {mdir}/grid.png, embeddings.png ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    runs.cli(main)
