"""Part 3's evaluation (style_transfer.py --evaluate [val|test]), and the style judge Bonus B's evaluation shares.

The judge: a ResNet (an architecture the generators never train against) trained, seeded, inside every evaluation
on the training split, half of each batch through metrics.robust_transform (it reads colour and texture)."""
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import metrics
import plots
import realism
import runs
import tables
import transfer_models as tm
import wikiart


def train_judge(images_u8, labels, train_idx, num_styles, width, epochs, seed, device):
    """A style judge (ResNet of `width`, eval mode) trained `epochs` epochs on images_u8[train_idx]."""
    torch.manual_seed(seed)
    judge = wikiart.ResNet(num_styles, width, (1, 1, 1, 1), 0.1).to(device)
    labels = torch.as_tensor(labels)
    robust = metrics.robust_transform(np.asarray(images_u8))
    bs = runs.fit_batch_size(64, len(train_idx), "the style judge's batch size")
    steps = len(train_idx) // bs
    opt = wikiart.make_optimizer(judge, 0.003, 0.05)  # learning rate, weight decay
    sched = wikiart.make_scheduler(opt, steps, epochs * steps)
    for epoch in range(epochs):
        order, g = runs.epoch_order(train_idx, seed + 1, epoch)
        judge.train()
        for i in tqdm(range(steps), desc=f"judge epoch {epoch + 1}/{epochs}", leave=False):
            idx = np.sort(order[i * bs:(i + 1) * bs])
            use_robust = (torch.rand(len(idx), generator=g) < 0.5).numpy()[:, None, None, None]
            x = wikiart.augment(wikiart.to_float(np.where(use_robust, robust[idx], images_u8[idx]), device), g, 0.5)
            runs.optimizer_step(F.cross_entropy(judge(x), labels[idx].to(device), label_smoothing=0.1), opt, sched)
    return judge.eval()


def judge_styles(judge, images_u8, device):
    """The judge's style (index) for each uint8 image."""
    return wikiart.predict(judge, images_u8, np.arange(len(images_u8)), 256, device, desc="judging").argmax(1).numpy()


def judge_features(judge, device):
    """u8 images -> (n, d) penultimate features of the judge: what RealismReference's Fréchet gap compares."""
    body = torch.nn.Sequential(judge.stem, judge.layers, judge.head)
    return lambda u8: wikiart.predict(body, u8, np.arange(len(u8)), 256, device, desc="judge features").numpy()


# ----------------------------------------------------------------------------------------------
# style_transfer.py --evaluate [val|test]: every other style for N images, scored by the judge and realism

TOLD = "residual_told_source"  # the generator told each image's true style (as --source does)
STRENGTHS = (0.25, 0.5, 0.75)  # told the source, also at these --strength values (strength_curve.png)


def pick_images(labels, n, seed):
    """n positions into labels, seeded, taken round-robin over styles so that every style appears."""
    labels, rng = np.asarray(labels), np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == s))[::-1] for s in range(labels.max(initial=-1) + 1)]
    order = sorted((rank, s, i) for s, pool in enumerate(pools) for rank, i in enumerate(pool))  # round-robin
    return np.array([i for _, _, i in order[:n]], np.int64)


@torch.no_grad()
def transfer(G, images_u8, styles, sources, device, batch_size=128):
    """uint8 outputs of G for images_u8[i] in styles[i] (an index or a row of weights); sources: None, or
    each image's own style (the generator is told it)."""
    outs = []
    for i in range(0, len(styles), batch_size):
        x = wikiart.to_float(images_u8[i:i + batch_size], device)
        s = None if sources is None else torch.as_tensor(sources[i:i + batch_size], device=device)
        outs.append(wikiart.to_uint8(G(x, torch.as_tensor(styles[i:i + batch_size], device=device), s)))
    return np.concatenate(outs) if outs else np.zeros((0, *images_u8.shape[1:]), np.uint8)


@torch.no_grad()
def guess_styles(D, images_u8, device, batch_size=256):
    """The discriminator's guess of each image's own style: what the generator is told when it is not given."""
    return np.concatenate([D(wikiart.to_float(images_u8[i:i + batch_size], device))[1].argmax(1).cpu().numpy()
                           for i in range(0, len(images_u8), batch_size)] or [np.zeros(0, np.int64)])


def evaluate_saved(cfg, split_name, dirs, modes, split, device):
    """Load <dir>/<mode>/model.pt of each seed, evaluate them on the validation split or the test folder, write
    evaluation_val.json / evaluation.json and strength_curve_val.png / strength_curve.png in out_dir."""
    seed_models = []
    for k, d in enumerate(dirs):
        models = {}
        for mode in modes:  # residual first: its discriminator guesses the inputs' styles
            path = os.path.join(d, mode, "model.pt")
            models[mode], D_mode, ckpt = tm.load_model(path, device)
            D = D_mode if mode == "residual" else D
            why = runs.mismatch(ckpt["config"], dict(cfg, seed=cfg["seed"] + k),
                                ["train_dir", "image_size", "val_fraction", "seed"], path)
            if why:
                raise config.UserError(why)
        seed_models.append((cfg["seed"] + k, models, D))
    data, train = split.data, split.train_idx
    if split_name == "val":  # never the test folder
        real_u8, real_y = np.asarray(data.images[split.val_idx]), data.labels[split.val_idx].numpy()
    else:
        test = wikiart.load_split(cfg, "test", data.class_to_idx)
        real_u8, real_y = np.asarray(test.images), test.labels.numpy()
    n = min(cfg["style_transfer"]["eval_images"], len(real_y))
    if n < 5:  # the two-sample test keeps each image's renderings in one of 5 folds
        raise config.UserError(f"--evaluate {split_name} renders {n} image(s); the two-sample test needs at least 5 "
                               f"(style_transfer.eval_images, {'val_fraction' if split_name == 'val' else 'test_dir'})")
    results = {"split": split_name} | evaluate(cfg, seed_models, np.asarray(data.images[train]),
                                               data.labels[train].numpy(), real_u8, real_y, split.C, device)
    out, suffix = cfg["style_transfer"]["out_dir"], "_val" if split_name == "val" else ""
    runs.atomic_save(results, os.path.join(out, f"evaluation{suffix}.json"))
    mean = lambda name: results[name].get("mean", results[name])
    with runs.atomic_file(os.path.join(out, f"strength_curve{suffix}.png")) as f:
        plots.plot_strength_curve({TOLD: {a: mean(f"{TOLD}@{a:g}") for a in STRENGTHS} | {1.0: mean(TOLD)}}, f,
                                  "told the source: what each step towards the style costs")
    print(f"wrote {out}/evaluation{suffix}.json, strength_curve{suffix}.png")
    return results


def evaluate(cfg, seed_models, train_u8, train_y, real_u8, real_y, num_styles, device):
    """eval_images of real_u8 rendered in every other style by each seed's models [(seed, {mode: G}, the residual's
    discriminator)] and the baselines (identity, colour_stats), scored by the judge's hit rates, realism (real_u8 the
    reference, train_u8 the two-sample test's real side), SSIM, artefacts, own-style PSNR. Untold, G gets D's guess
    (as --image does); several seeds: each method's "mean" and (sample) "std", each seed's rows in "runs"."""
    st, C = cfg["style_transfer"], num_styles
    idx = pick_images(real_y, st["eval_images"], cfg["seed"])
    src_u8, src_y = real_u8[idx], real_y[idx]
    pi, pt = np.array([(i, t) for i in range(len(idx)) for t in range(C) if t != src_y[i]], np.int64).reshape(-1, 2).T
    inputs = src_u8[pi]
    t0 = time.time()
    judge = train_judge(train_u8, train_y, np.arange(len(train_y)), C, st["judge_width"], st["judge_epochs"],
                        cfg["seed"], device)
    fixed = {"n_images": len(idx), "n_outputs": len(pi), "styles": C, "chance": 1 / C,
             "judge_seconds": time.time() - t0}
    for kind, u8 in (("robust", metrics.robust_transform(real_u8)), ("raw", real_u8)):
        pred = judge_styles(judge, u8, device)
        fixed |= {f"judge_accuracy_{kind}": float((pred == real_y).mean()),
                  f"matched_ceiling_{kind}": metrics.matched_ceiling(pred, real_y, pt, C)}
    fixed["clipped_fraction_real"] = metrics.clipped_fraction(real_u8)
    path = st["autoencoder_path"]
    ae = wikiart.load_autoencoder(path, device)[0] if os.path.exists(path) else None
    fixed["autoencoder_psnr"] = (metrics.own_style_psnr(lambda x, y: ae((x + 1) / 2) * 2 - 1, real_u8, real_y, device)
                                 if ae is not None else None)
    reality = realism.RealismReference(judge_features(judge, device), real_u8, real_y, train_u8, train_y, cfg["seed"])

    def score(outputs):
        """Every measure of the outputs (inputs[k] rendered in style pt[k]) that needs no generator."""
        r = {f"{kind}_hit_rate": float((judge_styles(judge, u8, device) == pt).mean())
             for kind, u8 in (("robust", metrics.robust_transform(outputs)), ("raw", outputs))}
        r |= {f"{kind}_of_ceiling": r[f"{kind}_hit_rate"] / max(fixed[f"matched_ceiling_{kind}"], 1e-9)
              for kind in ("robust", "raw")}
        r |= reality.measure(inputs, outputs, pi, pt)
        r |= {"ssim": float(metrics.ssim(outputs, inputs).mean()),
              "clipped_fraction": metrics.clipped_fraction(outputs)}
        return r | {f"{k}_ratio": v for k, v in metrics.artefact_ratio(outputs, pt, real_u8, real_y).items()}

    per_seed = []
    for seed, models, D in tqdm(seed_models, desc="scoring seeds", leave=False):
        row, guess, G = {"seed": seed}, guess_styles(D, inputs, device), models["residual"]
        told = {"residual": guess, TOLD: src_y[pi]}
        for name, model in list(models.items()) + [(TOLD, G)]:
            row[name] = score(transfer(model, inputs, pt, told.get(name), device))
            own = lambda x, y: model(x, y, y if name == TOLD else D(x)[1].argmax(1) if name == "residual" else None)
            row[name]["own_style_psnr"] = metrics.own_style_psnr(own, real_u8, real_y, device)
        for a in STRENGTHS:  # (1 - a) own style + a target, as embedding weights (--strength a)
            weights = ((1 - a) * np.eye(C)[src_y[pi]] + a * np.eye(C)[pt]).astype(np.float32)
            row[f"{TOLD}@{a:g}"] = score(transfer(G, inputs, weights, src_y[pi], device))
        per_seed.append(row)
    baselines = {"colour_stats": score(metrics.colour_statistics_transfer(inputs, pt, train_u8, train_y, C)),
                 "identity": score(inputs)}
    names = [k for k in per_seed[0] if k != "seed"]
    if len(per_seed) == 1:
        results, means, stds = fixed | per_seed[0] | baselines, {n: per_seed[0][n] for n in names}, None
    else:
        means, stds = mean_std([{n: r[n] for n in names} for r in per_seed])
        results = fixed | {"seeds": [r["seed"] for r in per_seed], "runs": per_seed} | {
            n: {"mean": means[n], "std": stds[n]} for n in names} | baselines
    print(f"\n{len(idx)} images x {C - 1} other styles = {len(pi)} outputs; chance {1 / C:.1%}; judge "
          f"({fixed['judge_seconds']:.0f} s) on the real images {fixed['judge_accuracy_robust']:.1%} robust / "
          f"{fixed['judge_accuracy_raw']:.1%} raw, matched to the targets (the ceiling) "
          f"{fixed['matched_ceiling_robust']:.1%} / {fixed['matched_ceiling_raw']:.1%}; autoencoder PSNR "
          f"{fixed['autoencoder_psnr'] or float('nan'):.2f} dB" + (f"; mean ± std over seeds {results['seeds']}"
                                                                  if len(per_seed) > 1 else ""))
    print(tables.style_transfer_methods(means | baselines, stds))
    return results


def mean_std(rows):
    """(mean, sample std) of each number in a list of alike nested dicts."""
    if not isinstance(rows[0], dict):
        return float(np.mean(rows)), float(np.std(rows, ddof=1))
    pairs = {k: mean_std([r[k] for r in rows]) for k, v in rows[0].items() if isinstance(v, (dict, int, float))}
    return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
