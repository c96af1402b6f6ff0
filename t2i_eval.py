"""Bonus B's evaluation, text_to_image.py --evaluate [val|test]: eval_images per style from the base and the
fine-tuned model (LoRA also at scale 0.5), the same seeds for each, against real paintings (val: the training
folder's validation split, never the test folder; test: the test folder's) -> out_dir/evaluation[_val].json:
  hit      a style judge (transfer_eval, trained on the training split) names the prompted style, raw and after
           metrics.robust_transform; per style, styles above chance, x the real paintings' hit (the ceiling)
  realism  a two-sample test against real training paintings of the prompted styles (realism.py); Fréchet
           (judge features) and Lab gaps closed from the base's samples (0) to real paintings (1)
  VAE      its PSNR and chroma ratio on the real paintings; copies: each sample's nearest training image
"""
import json
import os

import numpy as np
import torch

import config
import metrics
import plots
import realism
import runs
import t2i_models as t2i
import transfer_eval
import wikiart

JUDGE_WIDTH, JUDGE_EPOCHS = 16, 4  # Part 3's judge


def evaluate(cfg, split, device, models, info):
    """models: {name: (pipeline, LoRA scale)} as text_to_image.load_trained gives them; info: the training's."""
    t, S = cfg["text_to_image"], cfg["image_size"]
    N, out, suffix = t["eval_images"], t["out_dir"], "_val" if split == "val" else ""
    data = wikiart.load_split(cfg, "train")
    if data.classes != info["styles"]:
        raise config.UserError(f"the model was trained on the styles {info['styles']}, but {cfg['train_dir']} "
                               f"has {data.classes}")
    y, C, classes = data.labels.numpy(), len(data.classes), data.classes
    train_idx, val_idx = wikiart.stratified_split(y, cfg["val_fraction"], cfg["seed"])
    if split == "val":
        real_u8, real_y = np.asarray(data.images[val_idx]), y[val_idx]
    else:
        test = wikiart.load_split(cfg, "test", data.class_to_idx)
        real_u8, real_y = np.asarray(test.images), test.labels.numpy()
    train_u8, train_y = np.asarray(data.images[train_idx]), y[train_idx]
    judge = transfer_eval.train_judge(data.images, y, train_idx, C, JUDGE_WIDTH, JUDGE_EPOCHS, cfg["seed"], device)
    features = transfer_eval.judge_features(judge, device)
    reference = realism.RealismReference(features, real_u8, real_y, train_u8, train_y, cfg["seed"])

    styles, seeds = np.repeat(np.arange(C), N), cfg["seed"] + np.tile(np.arange(N), C)
    prompts = [t2i.make_prompt(classes[s], t["prompt_template"]) for s in styles]
    sets = {name: metrics.resize(t2i.generate(pipe, scale, prompts, seeds, t["steps"], t["guidance"], t["batch_size"],
                                              desc=f"evaluate: {name}"), S) for name, (pipe, scale) in models.items()}
    sets["real"] = real_u8
    nearest = {name: metrics.nearest_neighbours(u8, train_u8) for name, u8 in sets.items()}
    copy_line = float(np.percentile(nearest["real"][0], 1))  # 1% of unseen real paintings are this close
    present = [s for s in range(C) if (real_y == s).any()]
    vae = evaluate_vae(models["base"][0].vae, real_u8, real_y, classes, device,
                       os.path.join(out, f"vae_reconstructions{suffix}.png"))
    results = {"split": split, "styles": classes, "chance": 1 / C, "images_per_style": N, "steps": t["steps"],
               "guidance": t["guidance"], "image_size": S, "training": training(models, info, t), "vae": vae,
               "copy_line": copy_line, "models": {}}
    for name, u8 in sets.items():
        target, r = real_y if name == "real" else styles, {}
        for kind, images in (("robust", metrics.robust_transform(u8)), ("raw", u8)):
            hit = transfer_eval.judge_styles(judge, images, device) == target
            per_style = {classes[s]: float(hit[target == s].mean()) for s in present}
            r |= {f"{kind}_hit_rate": float(np.mean(list(per_style.values()))), f"{kind}_hit_per_style": per_style,
                  f"styles_above_chance_{kind}": int(sum(v > 1 / C for v in per_style.values()))}
        d = nearest[name][0]
        r["nn_train_distance"] = {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)),
                                  "min": float(d.min())}
        r["closer_than_copy_line"] = float((d < copy_line).mean())
        if name != "real":  # against real paintings of the prompted styles; the gaps closed from the base's samples
            m = reference.measure(sets["base"], u8, seeds, styles, per_style=True)
            r |= m | {"lab_gap_closed_per_style": {classes[s]: v for s, v in m["lab_gap_closed_per_style"].items()}}
        results["models"][name] = r
    for r in results["models"].values():
        for kind in ("robust", "raw"):
            r[f"{kind}_of_ceiling"] = r[f"{kind}_hit_rate"] / max(results["models"]["real"][f"{kind}_hit_rate"], 1e-9)

    runs.atomic_save(results, os.path.join(out, f"evaluation{suffix}.json"))
    with runs.atomic_file(os.path.join(out, f"evaluation{suffix}.png")) as f:
        plots.plot_t2i_evaluation(results, {name: d for name, (d, _) in nearest.items()}, f)
    pairs = {name: [(u8[i], train_u8[nearest[name][1][i]], f"{classes[styles[i]]}\n{nearest[name][0][i]:.3f}")
                    for i in np.argsort(nearest[name][0])[:8]] for name, u8 in sets.items() if name != "real"}
    with runs.atomic_file(os.path.join(out, f"nearest{suffix}.png")) as f:
        plots.plot_nearest(pairs, copy_line, f)
    show(results)
    print(f"wrote {os.path.join(out, f'evaluation{suffix}.json')} and its pictures")
    return results


def training(models, info, t):
    """What was trained (LoRA: the adapters and their file), for how many epochs, whether max_minutes cut it short."""
    tuned, count = models["fine-tuned"][0], lambda m, f: sum(p.numel() for n, p in m.named_parameters() if f(n))
    unet = count(tuned.unet, lambda n: "lora_" not in n)
    if t["lora_rank"]:
        adapters = sum(count(m, lambda n: "lora_" in n) for m in (tuned.unet, tuned.text_encoder))
        trained = {"trainable_parameters": adapters,
                   "adapter_file_bytes": os.path.getsize(os.path.join(t["out_dir"], "lora", t2i.LORA_FILE))}
    else:
        trained = {"trainable_parameters": unet + count(tuned.text_encoder, lambda n: True)}
    with open(os.path.join(t["out_dir"], "train_log.json")) as f:
        history = json.load(f)
    return trained | {"unet_parameters": unet, "epochs": history[-1]["epoch"], "epochs_planned": t["epochs"],
                      "minutes": sum(h["seconds"] for h in history) / 60, "cut_short": info["cut_short"]}


def evaluate_vae(vae, real_u8, real_y, classes, device, path):
    """The VAE on unseen paintings: PSNR, chroma ratio (< 1: colour averaged away), one per style pictured."""
    with torch.no_grad():
        rec = np.concatenate([wikiart.to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample) for x in
                              (wikiart.to_float(real_u8[i:i + 64], device) for i in range(0, len(real_u8), 64))])
    mse = float(((real_u8.astype(np.float64) - rec) ** 2).mean()) / 255 ** 2
    r = {"psnr": metrics.psnr(mse), "chroma_ratio": metrics.chroma(rec) / max(metrics.chroma(real_u8), 1e-9)}
    shown = [int(np.flatnonzero(real_y == s)[0]) for s in range(len(classes)) if (real_y == s).any()]
    with runs.atomic_file(path) as f:
        plots.plot_reconstruction_pairs(real_u8[shown], rec[shown], [classes[real_y[i]] for i in shown], f,
                                        f"the VAE on unseen paintings (top) and its reconstructions (bottom):\n"
                                        f"{r['psnr']:.1f} dB, chroma {r['chroma_ratio']:.2f}x the inputs'")
    return r


def show(results):
    v, C = results["vae"], len(results["styles"])
    print(f"\nVAE on unseen paintings: {v['psnr']:.2f} dB, chroma {v['chroma_ratio']:.2f}x the inputs'. "
          f"{results['images_per_style']} images per style x {C} styles per model; chance {results['chance']:.1%}; "
          f"'real': {results['split']} paintings (the judge's matched ceiling)")
    print(f"{'model':15s} {'robust hit':>10s} {'raw hit':>8s} {'styles > chance':>16s} {'two-sample':>11s} "
          f"{'Lab closed':>10s} {'NN median':>9s} {'copies':>7s}")
    for name, r in results["models"].items():
        two = f"{r['two_sample']['accuracy']:.1%}" if "two_sample" in r else "-"
        lab = f"{r['lab_gap_closed']:.2f}" if "lab_gap_closed" in r else "-"
        above = f"{r['styles_above_chance_robust']} / {r['styles_above_chance_raw']} of {C}"
        print(f"{name:15s} {r['robust_hit_rate']:10.1%} {r['raw_hit_rate']:8.1%} {above:>16s} {two:>11s} {lab:>10s} "
              f"{r['nn_train_distance']['median']:9.3f} {r['closer_than_copy_line']:7.1%}")
