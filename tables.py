"""The tables of RESULTS.md, made from results/<profile>.json (reproduce.py writes both): one function per
recipe family turns the entries of its recipes into markdown, and rewrite_tables() puts each table
between its markers, `<!-- table:<profile>/<name> -->` and `<!-- /table -->`, leaving the rest alone.
<name> is a table below (every recipe of its families in the profile) or one recipe.

An entry (one recipe's results) holds: family, commands (as run alone; None for an overlaid profile),
commit, date, env (cpu, threads, gpu, torch, ...), wall_s, steps (command, wall_s, config: the keys that
differ from the defaults) and outputs (each collected JSON file by its path in the recipe's folder).
A new kind of table: a function here and its line in TABLES.
"""
import os
import re

import config
import runs


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def md_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def setting(entry, key, step=0):
    """A config value of a recipe's step (results store only what differs from the defaults)."""
    return (entry["steps"][step]["config"] or {}).get(key, config.flatten(config.defaults()).get(key))


def epochs_done(log, planned):
    """"12", or "7 of 40 (time cap)" for a run that its max_minutes ended."""
    done = len(log or [])
    if done == planned:
        return f"{done}"
    return f"{done} of {planned}" + (" (time cap)" if log and log[-1].get("time_cap") else "")


def classifier_table(entries):
    rows, majority = [], None
    for name, e in entries:
        m = e["outputs"]["test_metrics.json"]
        mode, size = setting(e, "mode"), setting(e, "image_size")
        model = {"base": "`base` (course model)", "bonusA": "`bonusA` (course variant)"}.get(
            mode, f"`resnet` width {setting(e, 'resnet_width')}, blocks {setting(e, 'resnet_blocks')}"
            + (", mixup/cutmix" if setting(e, "mixup") or setting(e, "cutmix") else ""))
        rows.append([model, f"{size} px", epochs_done(e["outputs"]["train_log.json"], setting(e, "epochs")),
                     pct(m["accuracy"]), pct(m["balanced_accuracy"]), pct(m["macro_f1"]), f"`{name}`"])
        majority = majority or (m["majority_class_rate"], 1 / len(m["per_class"]), m["n_images"])
    rows.insert(0, ["majority class", "", "", pct(majority[0]), pct(majority[1]), "–", ""])
    return (f"{majority[2]} test images; test columns in %.\n\n"
            + md_table(["model", "size", "epochs", "accuracy", "balanced accuracy", "macro-F1", "recipe"], rows))


def imbalance_table(entries):
    parts = []
    for name, e in entries:
        cmp = e["outputs"]["balance_comparison.json"]
        c = cmp["config"]
        rows = [[r["balance"], pct(r["val_balanced_accuracy"]), pct(r["accuracy"]), pct(r["balanced_accuracy"]),
                 pct(r["macro_f1"]), pct(r["worst_recall"]),
                 "" if r["posthoc_tau"] is None else f"{r['posthoc_tau']:+.2f}", f"{r['seconds']:.0f}"]
                for r in cmp["rows"]]
        done = sorted({r.get("epochs", c["epochs"]) for r in cmp["rows"]})  # fewer: the time cap ended them
        span = f"{done[0]}" if len(done) == 1 else f"{done[0]}–{done[-1]}"
        epochs = span if done == [c["epochs"]] else f"{span} of {c['epochs']} (time cap)"
        parts.append(f"`{name}`: {c['mode']} width {c['resnet_width']}, {c['image_size']} px, epochs {epochs}, "
                     f"seed {c['seed']}; test columns in %, the validation column is the best epoch's, before any "
                     "post-hoc adjustment.\n\n" + md_table(
                         ["balance", "val balanced accuracy", "accuracy", "balanced accuracy", "macro-F1",
                          "worst recall", "post-hoc τ", "train s"], rows))
    return "\n\n".join(parts)


def imbalance_seeds_table(entries):
    by_seed = {}
    for _, e in entries:
        for out in e["outputs"].values():
            rows = {r["balance"]: r for r in out["rows"]}
            if "none" in rows and "sampler+posthoc" in rows:
                by_seed[out["config"]["seed"]] = (rows["none"], rows["sampler+posthoc"])
    if not by_seed:
        return None
    rows = []
    for seed, (a, b) in sorted(by_seed.items()):
        rows.append([seed, f"{pct(a['accuracy'])} / {pct(a['balanced_accuracy'])}",
                     f"{pct(b['accuracy'])} / {pct(b['balanced_accuracy'])}",
                     f"{100 * (b['accuracy'] - a['accuracy']):+.1f}",
                     f"{100 * (b['balanced_accuracy'] - a['balanced_accuracy']):+.1f}"])
    if len(by_seed) > 1:
        mean = lambda i, k: sum(v[i][k] for v in by_seed.values()) / len(by_seed)
        rows.append(["mean", f"{pct(mean(0, 'accuracy'))} / {pct(mean(0, 'balanced_accuracy'))}",
                     f"{pct(mean(1, 'accuracy'))} / {pct(mean(1, 'balanced_accuracy'))}",
                     f"{100 * (mean(1, 'accuracy') - mean(0, 'accuracy')):+.1f}",
                     f"{100 * (mean(1, 'balanced_accuracy') - mean(0, 'balanced_accuracy')):+.1f}"])
    return md_table(["seed", "`none` acc / bal. acc", "`sampler+posthoc` acc / bal. acc", "Δ accuracy",
                     "Δ balanced accuracy"], rows)


def autoencoder_table(entries):
    rows = []
    for name, e in entries:
        m, out = e["outputs"]["metrics.json"], e["outputs"]
        model = (f"`{name}`: {setting(e, 'autoencoder.mode')} width {setting(e, 'autoencoder.width')}, "
                 f"{m['image_size']} px, {m['code_numel']} numbers")
        rows.append([model, epochs_done(out["train_log.json"], setting(e, "autoencoder.epochs")),
                     f"{m['compression']:.0f}x", f"{m['test']['psnr']:.2f} dB", "", "", "", ""])
        clusters = [v for k, v in out.items() if k.startswith("cluster")]
        for c in clusters:
            r = c["results"]["autoencoder"]
            rows.append(["", "", "", "", f"KMeans on `{c['feature']}`", f"{r['nmi']:.3f}", f"{r['ari']:.3f}",
                         f"{r['hungarian_accuracy']:.3f}"])
        if clusters:
            base_name, r = [(k, v) for k, v in clusters[0]["results"].items() if k != "autoencoder"][0]
            rows.append(["", "", "", "", f"KMeans on {base_name.replace('_', ' ')} (baseline)", f"{r['nmi']:.3f}",
                         f"{r['ari']:.3f}", f"{r['hungarian_accuracy']:.3f}"])
    n = entries[0][1]["outputs"]["metrics.json"]["num_test"]
    return (f"{n} test images; NMI, ARI and Hungarian accuracy against the true styles (k = number of styles).\n\n"
            + md_table(["autoencoder", "epochs", "compression", "test PSNR", "clustering", "NMI", "ARI",
                        "Hungarian acc"], rows))


ST_COLUMNS = {  # evaluation.json key: column title; keys not listed here still get a column (defensive)
    "robust_hit_rate": "robust hit %", "raw_hit_rate": "raw hit %", "robust_of_ceiling": "robust / ceiling",
    "raw_of_ceiling": "raw / ceiling", "two_sample_accuracy": "two-sample acc. %",
    "realism_gap_closed": "realism gap closed %", "lab_gap_closed": "Lab gap closed %",
    "texture_gap_closed": "texture gap closed %", "colour_gap_closed": "colour gap closed %",
    "ssim": "SSIM to input", "artefact_ratio": "artefact ratio", "periodic_ratio": "periodic ratio",
    "border_ratio": "border ratio", "blotch_ratio": "blotch ratio",
    "clipped_fraction": "clipped px %", "own_style_psnr": "own-style PSNR dB"}


def st_cell(key, value, std=None):
    if not isinstance(value, (int, float)):
        return "–"
    if key == "own_style_psnr" and value >= 119.9:  # metrics.psnr's cap: zero error, the image given back exactly
        return "exact"
    f = (lambda v: f"{100 * v:.1f}") if key.endswith(("_rate", "_closed", "_accuracy", "_fraction")) else (lambda v: f"{v:.3f}")
    return f(value) + (f" ± {f(std)}" if isinstance(std, (int, float)) else "")


def style_transfer_methods(means, stds=None, code=False):
    """One row per method (residual, naive, colour_stats, identity) of --evaluate's numbers; with stds,
    'mean ± std' cells. style_transfer.py prints it too."""
    keys = [k for k in ST_COLUMNS if any(k in m for m in means.values())]
    keys += sorted({k for m in means.values() for k, v in m.items() if k not in ST_COLUMNS
                    and isinstance(v, (int, float))})
    rows = [[f"`{m}`" if code else m, *(st_cell(k, means[m].get(k), ((stds or {}).get(m) or {}).get(k))
                                        for k in keys)] for m in means]
    return md_table(["method", *(ST_COLUMNS.get(k, k) for k in keys)], rows)


def style_transfer_table(entries):
    parts = []
    for name, e in entries:
        ev = e["outputs"]["evaluation.json"]
        methods = {k: v for k, v in ev.items() if isinstance(v, dict)}  # residual, naive, colour_stats, identity
        means = {k: v["mean"] if isinstance(v.get("mean"), dict) else v for k, v in methods.items()}
        stds = {k: v.get("std") if isinstance(v.get("mean"), dict) else {} for k, v in methods.items()}
        g = lambda k: ev.get(k) if isinstance(ev.get(k), (int, float)) else None
        facts = [f"{g('n_outputs')} outputs ({g('n_images')} test images x every other style)",
                 f"chance {pct(g('chance'))}%",
                 f"judge on real test images {pct(g('judge_test_accuracy_robust'))}% robust / "
                 f"{pct(g('judge_test_accuracy_raw'))}% raw"]
        if g("matched_ceiling_robust") is not None:
            facts.append(f"matched ceiling {pct(g('matched_ceiling_robust'))}% robust / "
                         f"{pct(g('matched_ceiling_raw'))}% raw")
        if g("clipped_fraction_real") is not None:
            facts.append(f"real test paintings: {pct(g('clipped_fraction_real'))}% of pixels clipped")
        if g("autoencoder_psnr") is not None:
            facts.append(f"the Part-2 autoencoder's PSNR on the same test images {g('autoencoder_psnr'):.2f} dB")
        if "seeds" in ev:
            facts.append(f"mean ± std over seeds {ev['seeds']}")
        log = e["outputs"].get("residual/train_log.json")
        if log is not None:
            facts.append(f"residual epochs: {epochs_done(log, setting(e, 'style_transfer.epochs'))}, "
                         f"{setting(e, 'style_transfer.steps_per_epoch')} steps each")
        grids = [f"![{name}: test images (rows) in every style (columns)"
                 f"{', told their own style' if 'told_source' in p else ''}]({p})" for p in e.get("pictures", [])
                 if os.path.basename(p).startswith("residual_grid")]  # the picture is the result: shown, not only linked
        parts.append(f"`{name}` ({setting(e, 'image_size')} px): " + "; ".join(facts) + ".\n\n"
                     + style_transfer_methods(means, stds, code=True) + "".join(f"\n\n{g}" for g in grids))
    return "\n\n".join(parts)


def bench_table(entries):
    parts = []
    for name, e in entries:
        b = e["outputs"]["bench.json"]
        gib = 2 ** 30
        rows = [[label, f"{r['first_epoch_img_s']:.0f}", f"{r['steady_img_s']:.0f}",
                 f"{r['peak_rss_bytes'] / gib:.2f}", f"{r['peak_anon_rss_bytes'] / gib:.2f}"]
                for label, r in (("course (floats cached per item)", b["course"]),
                                 ("project, cache built in epoch 1", b["project_cold"]),
                                 ("project, cache already on disk", b["project_warm"]))]
        rows.append(["project, uint8 batches only (the host side of a GPU run)", "",
                     f"{b['project_cold']['host_uint8_batches_img_s']:.0f}", "", ""])
        r = b["ratios"]
        text = (f"`{name}`: {b['images']} images at {b['size']} px, {b['epochs']} epochs, {b['threads']} thread per "
                f"loader, {b['cpus']} CPUs.\n\n" + md_table(
                    ["loader", "epoch 1 img/s", "steady img/s", "peak RSS GiB", "peak anonymous RSS GiB"], rows)
                + f"\n\nProject / course: first epoch {r['first_epoch_speed_cold']:.2f}x (cache built) and "
                f"{r['first_epoch_speed_warm']:.2f}x (cache on disk), steady {r['steady_speed']:.2f}x "
                f"({r['steady_speed_host_uint8']:.1f}x for uint8 batches), peak RSS {r['peak_rss']:.2f}x "
                f"({r['peak_anon_rss']:.2f}x anonymous).")
        g = b.get("gpu")
        if g:
            text += (f" Training a ResNet-18 body at {g['image_size']} px, batch {g['batch_size']} on "
                     f"{g.get('gpu') or g.get('device', 'cuda')}: {g['pipeline_img_s']:.0f} img/s from the memmap "
                     f"pipeline vs {g['resident_img_s']:.0f} img/s with the data resident on the device: "
                     f"**{100 * g['ratio']:.0f}%** of the bound.")
        parts.append(text)
    return "\n\n".join(parts)


def demo_table(entries):
    """make demo's main job: each part's table, from the part's subfolder."""
    def part(e, prefix):
        return {**e, "outputs": {k[len(prefix):]: v for k, v in e["outputs"].items() if k.startswith(prefix)}}
    parts = ((classifier_table, "classifier/"), (autoencoder_table, "autoencoder/"),
             (style_transfer_table, "style_transfer/"))
    return "\n\n".join(fn([(n, part(e, prefix)) for n, e in entries]) for fn, prefix in parts)


def training_minutes(e):
    """(VAE epochs, VAE minutes, diffusion epochs, diffusion minutes) of a text_to_image recipe's logs; the
    VAE's count its decoder stage too (vae_decoder_minutes)."""
    log, vae_log = e["outputs"].get("train_log.json") or [], e["outputs"].get("vae/train_log.json") or []
    vae_log = vae_log + (e["outputs"].get("vae_decoder/train_log.json") or [])
    return len(vae_log), log_minutes(vae_log), len(log), log_minutes(log)


def log_minutes(log):
    return sum(r.get("seconds", 0) for r in log) / 60


def hit_cell(m, kind):
    """'hit (x ceiling)' of a text-to-image model's robust or raw hit rate."""
    x = m.get(f"{kind}_of_ceiling")
    return f"{pct(m.get(f'{kind}_hit_rate'))} ({'–' if x is None else f'{x:.2f}'}x)"


def text_to_image_table(entries):
    parts = []
    for name, e in entries:
        ev = e["outputs"]["evaluation.json"]
        n_styles = len(ev.get("styles", []))
        num = lambda v, f: "–" if v is None else f"{v:{f}}"
        rows, per_style = [], []
        for model, m in ev.get("models", {}).items():
            nn = m.get("nn_train_distance", {})
            rows.append([f"`{model}`", hit_cell(m, "robust"), hit_cell(m, "raw"),
                         f"{m.get('styles_above_chance_robust', '–')} / {m.get('styles_above_chance_raw', '–')}",
                         pct(m.get("two_sample_accuracy")), num(m.get("lab_gap_closed"), ".2f"),
                         f"{m.get('styles_specific_texture+colour', '–')} / {n_styles}",
                         " / ".join(f"{nn[k]:.3f}" if k in nn else "–" for k in ("median", "p5", "min")),
                         pct(m.get("closer_than_test_p1"))])
        models = ev.get("models", {})
        for style in ev.get("styles", []):
            per_style.append([style] + [f"{pct(m.get('robust_hit_per_style', {}).get(style))} / "
                                        f"{pct(m.get('raw_hit_per_style', {}).get(style))}" for m in models.values()]
                             + [num(models.get("fine-tuned", {}).get("lab_gap_closed_per_style", {}).get(style), ".2f")])
        vae_epochs, vae_min, epochs, minutes = training_minutes(e)
        facts = [f"{ev.get('images_per_style')} images per style, {ev.get('steps')} sampling steps, guidance "
                 f"{ev.get('guidance')}", f"chance {pct(ev.get('chance'))}%",
                 "training: " + (f"VAE {vae_epochs} epochs ({vae_min:.1f} min), " if vae_epochs else "")
                 + f"diffusion {epochs} epochs ({minutes:.1f} min)"]
        size = ev.get("training")
        if size:
            facts.append(f"{size['trainable_parameters'] / 1e6:.2f}M parameters trained, "
                         f"{size['trainable_parameters'] / size['unet_parameters']:.1%} of the UNet's "
                         f"{size['unet_parameters'] / 1e6:.2f}M"
                         + (f", adapter file {size['adapter_file_bytes'] / 1e6:.2f} MB" if size.get("adapter_file_bytes") else ""))
        vae = ev.get("vae")
        if vae:
            facts.append(f"its VAE on unseen test paintings: {vae['psnr']:.2f} dB, chroma {vae['chroma_ratio']:.2f}x "
                         f"the inputs', Lab-moment error {vae['lab_moment_error']:.2f}")
        parts.append(f"`{name}` ({ev.get('image_size')} px): " + "; ".join(facts) + ". The `real` row is unseen "
                     "real test paintings: its hit rate is the judge's matched ceiling (x: a model's hit over it). "
                     "Two-sample: a fresh CNN's held-out accuracy telling the samples from real training paintings "
                     "of their styles (50 = it cannot); Lab gap closed: from the base's samples (0) to real paintings "
                     "of the prompted styles (1).\n\n"
                     + md_table(["model", "robust hit", "raw hit", "styles above chance (robust / raw)", "two-sample",
                                 "Lab gap closed", "specific styles (texture+colour)",
                                 "NN distance to train (median / p5 / min)", "closer than test p1"], rows)
                     + ("\n\nHit per style, robust / raw:\n\n" + md_table(
                         ["style", *(f"`{m}`" for m in models), "Lab gap closed (`fine-tuned`)"], per_style)
                        if per_style and "raw_hit_per_style" in next(iter(models.values()), {}) else ""))
    return "\n\n".join(parts)


def text_to_image_pretrain_table(entries):
    """The pretrained base's training alone (it stands in for a download): no style prompt, no evaluation."""
    rows = []
    for name, e in entries:
        vae_epochs, vae_min, epochs, minutes = training_minutes(e)
        decoder = e["outputs"].get("vae_decoder/train_log.json") or []
        rows.append([f"`{name}`", f"{vae_epochs - len(decoder)} ({vae_min - log_minutes(decoder):.1f} min)",
                     f"{len(decoder)} ({log_minutes(decoder):.1f} min)" if decoder else "–",
                     f"{epochs} ({minutes:.1f} min)", f"{vae_min + minutes:.1f} min"])
    return md_table(["pretrained base", "VAE epochs", "VAE decoder alone", "diffusion epochs", "training in all"], rows)


def text_to_image_lora_table(entries):
    """Issue 34's one table: the pretrained base (style prompts, before LoRA), base + LoRA at scale 0.5 and
    1, and the whole-model training of the same styles and size, each recipe with its judge's ceiling;
    (markdown, the recipes it used), or None without a LoRA recipe."""
    evs = {n: e["outputs"]["evaluation.json"] for n, e in entries if "evaluation.json" in e["outputs"]}
    loras = [n for n, ev in evs.items() if (ev.get("training") or {}).get("adapter_file_bytes")]
    if not loras:
        return None
    lora_ev = evs[loras[0]]
    whole = [n for n, ev in evs.items() if n not in loras and ev.get("styles") == lora_ev.get("styles")
             and ev.get("image_size") == lora_ev.get("image_size")]
    pretrain = [training_minutes(e) for n, e in entries if e["family"] == "text_to_image_pretrain"]
    num = lambda v, f: "–" if v is None else f"{v:{f}}"
    rows = []

    def row(label, m, size, minutes):
        share = "" if not size else (f" ({size['trainable_parameters'] / size['unet_parameters']:.1%} of the UNet)"
                                     if size["trainable_parameters"] < size["unet_parameters"] else
                                     " (UNet and text encoder)")
        rows.append([label, hit_cell(m, "robust"), hit_cell(m, "raw"),
                     f"{m.get('styles_above_chance_robust', '–')} / {m.get('styles_above_chance_raw', '–')}",
                     pct(m.get("two_sample_accuracy")), pct(m.get("lab_gap_closed")), pct(m.get("closer_than_test_p1")),
                     f"{size['trainable_parameters'] / 1e6:.2f}M{share}" if size else "–",
                     f"{size['adapter_file_bytes'] / 1e6:.2f} MB" if size and size.get("adapter_file_bytes") else "–",
                     minutes])

    base_minutes = f"{sum(p[1] + p[3] for p in pretrain):.0f} min pretraining" if pretrain else "–"
    models, size = lora_ev["models"], lora_ev["training"]
    _, _, epochs, minutes = training_minutes(dict(entries)[loras[0]])
    row(f"`{loras[0]}` base (before LoRA)", models["base"], None, base_minutes)
    for name, label in (("fine-tuned@0.5", "base + LoRA, scale 0.5"), ("fine-tuned", "base + LoRA, scale 1")):
        if name in models:
            row(label, models[name], size, f"{minutes:.0f} min ({epochs} epochs)")
    for n in whole:
        vae_epochs, vae_min, epochs, minutes = training_minutes(dict(entries)[n])
        row(f"`{n}`: whole model", evs[n]["models"]["fine-tuned"], evs[n].get("training"),
            f"{vae_min + minutes:.0f} min (VAE {vae_min:.0f}, diffusion {epochs} epochs)" if vae_epochs else
            f"{minutes:.0f} min ({epochs} epochs)")
    row("real test paintings", models["real"], None, "")
    styles = lora_ev["styles"]
    per_style = [[s] + [f"{pct(m.get('robust_hit_per_style', {}).get(s))} / {pct(m.get('raw_hit_per_style', {}).get(s))}"
                        for m in (models["base"], models["fine-tuned"], *(evs[n]["models"]["fine-tuned"] for n in whole))]
                 + [pct(models["fine-tuned"].get("lab_gap_closed_per_style", {}).get(s))] for s in styles]
    v = lora_ev.get("vae") or {}
    body = (f"{lora_ev['images_per_style']} samples per style (the same seeds for every model), "
            f"{lora_ev['steps']} sampling steps, guidance {lora_ev['guidance']}; chance {pct(lora_ev['chance'])}%; "
            f"x: a hit rate over real test paintings' (the judge's matched ceiling); two-sample: a fresh CNN's held-out "
            f"accuracy telling the samples from real training paintings of the prompted styles (50 = it cannot); "
            f"Lab gap closed from the base's samples (0) to real paintings of the style (100); copy line: samples "
            f"closer to a training image than the closest 1% of real test paintings. The base's VAE on unseen test "
            f"paintings: {num(v.get('psnr'), '.2f')} dB, chroma {num(v.get('chroma_ratio'), '.2f')}x the inputs'.\n\n"
            + md_table(["model", "robust hit (x ceiling)", "raw hit (x ceiling)", "styles above chance (robust / raw)",
                        "two-sample %", "Lab gap closed %", "copy line %", "trained parameters", "adapter file",
                        "training"], rows)
            + "\n\nHit per style, robust / raw (%):\n\n"
            + md_table(["style", "base", "base + LoRA", *(f"whole model (`{n}`)" for n in whole),
                        "Lab gap closed % (LoRA)"], per_style))
    return body, [n for n, e in entries if n in (*loras[:1], *whole) or e["family"] == "text_to_image_pretrain"]


# table name -> (function, the recipe families it reads: the first makes the table, the others it also uses);
# a marker may also name one recipe
TABLES = {"classifier": (classifier_table, ("classifier",)), "imbalance": (imbalance_table, ("imbalance",)),
          "imbalance_seeds": (imbalance_seeds_table, ("imbalance_seeds", "imbalance")),
          "autoencoder": (autoencoder_table, ("autoencoder",)),
          "style_transfer": (style_transfer_table, ("style_transfer",)), "bench": (bench_table, ("bench",)),
          "demo": (demo_table, ("demo",)), "text_to_image": (text_to_image_table, ("text_to_image",)),
          "text_to_image_pretrain": (text_to_image_pretrain_table, ("text_to_image_pretrain",)),
          "text_to_image_lora": (text_to_image_lora_table, ("text_to_image", "text_to_image_pretrain"))}


def duration(seconds):
    m, s = divmod(round(seconds), 60)
    return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min {s} s" if m else f"{s} s"


def hardware(env):
    n, what = (env["threads"], "thread") if env.get("threads") else (env["cpu_count"], "CPU")
    cpu = f"{env['cpu']}, {n} {what}{'s' if n != 1 else ''}"
    return f"{env['gpu']} ({cpu})" if env.get("gpu") else cpu


def footer(entries, profile):
    """Who made the table: per recipe its commands (as run alone), wall time, hardware, torch, commit, date."""
    lines = [f"_Generated by `python reproduce.py {profile.replace('-scaled', ' --scale-down')}` from "
             f"`results/{profile}.json`; do not edit by hand._"]
    for name, e in entries:
        commands = " (" + ", then ".join(f"`{c}`" for c in e["commands"]) + ")" if e.get("commands") else ""
        lines.append(f"- `{name}`{commands}: {duration(e['wall_s'])}; {hardware(e['env'])}; torch "
                     f"{e['env']['torch']}; commit {e['commit']}; {e['date']}."
                     + (f" **Made by an earlier version of its recipe** ({'; '.join(e['recipe_changed'])}): "
                        f"rerun it for the current one." if e.get("recipe_changed") else "")
                     + ("" if not e.get("pictures") else " Pictures: " + ", ".join(
                         f"[{os.path.basename(p)}]({p})" for p in e["pictures"]) + "."))
    return "\n".join(lines)


def build_table(name, results, profile):
    """The markdown between a table's markers, or None if the results have nothing for it."""
    entries = results["recipes"]
    if name in TABLES:
        fn, families = TABLES[name]
        chosen = [(n, e) for n, e in entries.items() if e["family"] in families]
    elif name in entries and entries[name]["family"] in TABLES:
        fn, chosen = TABLES[entries[name]["family"]][0], [(name, entries[name])]
    else:
        return None
    body = fn(chosen) if chosen else None
    if isinstance(body, tuple):  # (markdown, the recipes it used): the footer names only those
        body, used = body
        chosen = [(n, e) for n, e in chosen if n in used]
    return None if body is None else f"{body}\n\n{footer(chosen, profile)}"


MARKER = re.compile(r"<!-- table:([\w.-]+)/([\w.+-]+) -->\n.*?<!-- /table -->", re.S)


def rewrite_tables(text, profile, results):
    """RESULTS.md text with every <profile>/<name> table rebuilt; (new text, names rebuilt)."""
    done = []

    def replace(m):
        body = build_table(m.group(2), results, profile) if m.group(1) == profile else None
        if body is None:
            return m.group(0)
        done.append(m.group(2))
        return f"<!-- table:{profile}/{m.group(2)} -->\n{body}\n<!-- /table -->"
    return MARKER.sub(replace, text), done


def update_markdown(path, profile, results):
    """Rebuild the profile's tables in the markdown file (atomically); the names rebuilt."""
    if not os.path.exists(path):
        print(f"{path} does not exist: no tables written")
        return []
    with open(path) as f:
        text = f.read()
    new, rebuilt = rewrite_tables(text, profile, results)
    if new != text:
        runs.atomic_write_text(new, path)
    return rebuilt


def all_tables(results, profile):
    """Every table this profile's results can fill: one per family present."""
    families = {e["family"] for e in results["recipes"].values()}
    names = [n for n, (_, fams) in TABLES.items() if fams[0] in families]
    return {n: t for n in names if (t := build_table(n, results, profile)) is not None}

