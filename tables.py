"""RESULTS.md's tables from results/<profile>.json (reproduce.py writes both): a function per recipe family turns
its entries into the markdown between `<!-- table:<profile>/<name> -->` and `<!-- /table -->` (the text around the
markers is written by hand). An entry holds: family, commands (as run alone), commit, date, env (cpu, threads, gpu,
torch), wall_s, steps (command, wall_s, config: the keys that differ from the defaults) and outputs (each collected
JSON by its path in the recipe's folder)."""
import itertools
import os
import re

import config
import runs


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def pm(s, key, f):
    """" ± <s[key]>" when s (a std over seeds, or None) has it, else ""."""
    return f" ± {f(s[key])}" if s and isinstance(s.get(key), (int, float)) else ""


def two_sample(m, s):
    """The two-sample accuracy ± its std over seeds (s), or for one run the test's 95% interval."""
    t, ts = m.get("two_sample") or {}, (s or {}).get("two_sample") or {}
    return f"{pct(t.get('accuracy'))} ± {pct(ts.get('accuracy') if ts else t.get('ci95'))}"


def md_table(header, rows):
    """header: the columns as markdown writes them, "a | b | c"."""
    return "\n".join([f"| {header} |", "|" + "---|" * (header.count("|") + 1)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def setting(entry, key):
    """A config value of a recipe's first step (results store only what differs from the defaults)."""
    return (entry["steps"][0]["config"] or {}).get(key, config.flatten(config.defaults()).get(key))


def epochs_done(log, planned):
    """"12", or "7 of 40 (time cap)" for a run that its max_minutes ended."""
    done, capped = len(log or []), " (time cap)" if log and log[-1].get("time_cap") else ""
    return f"{done}" if done == planned else f"{done} of {planned}{capped}"


def per_recipe(part):
    """A table made of part(name, entry) for each recipe, one after the other."""
    return lambda entries: "\n\n".join(part(name, e) for name, e in entries)


def classifier_table(entries):
    rows = []
    for name, e in entries:
        m = e["outputs"]["test_metrics.json"]
        model = {"base": "`base` (course model)", "bonusA": "`bonusA` (course variant)"}.get(
            setting(e, "mode"), f"`resnet` width {setting(e, 'resnet_width')}, blocks {setting(e, 'resnet_blocks')}"
            + (", mixup/cutmix" if setting(e, "mixup") or setting(e, "cutmix") else ""))
        epochs = epochs_done(e["outputs"]["train_log.json"], setting(e, "epochs"))
        rows.append([model, f"{setting(e, 'image_size')} px", epochs,
                     *(pct(m[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")), f"`{name}`"])
    m = entries[0][1]["outputs"]["test_metrics.json"]
    rows.insert(0, ["majority class", "", "", pct(m["majority_class_rate"]), pct(1 / len(m["per_class"])), "–", ""])
    return (f"{m['n_images']} test images; test columns in %.\n\n"
            + md_table("model | size | epochs | accuracy | balanced accuracy | macro-F1 | recipe", rows))


@per_recipe
def imbalance_table(name, e):
    cmp = e["outputs"]["balance_comparison.json"]
    c = cmp["config"]
    rows = [[r["balance"], *(pct(r[k]) for k in ("val_balanced_accuracy", "accuracy", "balanced_accuracy", "macro_f1",
                                                 "worst_recall")),
             "" if r["posthoc_tau"] is None else f"{r['posthoc_tau']:+.2f}", f"{r['seconds']:.0f}"]
            for r in cmp["rows"]]
    done = sorted({r.get("epochs", c["epochs"]) for r in cmp["rows"]})  # fewer: the time cap ended them
    span = f"{done[0]}" if len(done) == 1 else f"{done[0]}–{done[-1]}"
    epochs = span if done == [c["epochs"]] else f"{span} of {c['epochs']} (time cap)"
    return (f"`{name}`: {c['mode']} width {c['resnet_width']}, {c['image_size']} px, epochs {epochs}, "
            f"seed {c['seed']}; test columns in %, the validation column is the best epoch's, before any post-hoc "
            "adjustment.\n\n"
            + md_table("balance | val balanced accuracy | accuracy | balanced accuracy | macro-F1 | worst recall | "
                       "post-hoc τ | train s", rows))


def imbalance_seeds_table(entries):
    by_seed = {}
    for out in (o for _, e in entries for o in e["outputs"].values()):
        rows = {r["balance"]: r for r in out["rows"]}
        if "none" in rows and "sampler+posthoc" in rows:
            by_seed[out["config"]["seed"]] = (rows["none"], rows["sampler+posthoc"])
    keys = ("accuracy", "balanced_accuracy")
    row = lambda label, a, b: [label, *(f"{pct(r['accuracy'])} / {pct(r['balanced_accuracy'])}" for r in (a, b)),
                               *(f"{100 * (b[k] - a[k]):+.1f}" for k in keys)]
    rows = [row(seed, a, b) for seed, (a, b) in sorted(by_seed.items())]
    if len(by_seed) > 1:  # the mean of each column
        rows.append(row("mean", *({k: sum(v[i][k] for v in by_seed.values()) / len(by_seed) for k in keys}
                                  for i in (0, 1))))
    return md_table("seed | `none` acc / bal. acc | `sampler+posthoc` acc / bal. acc | Δ accuracy | "
                    "Δ balanced accuracy", rows) if by_seed else None


def autoencoder_table(entries):
    rows, scores = [], lambda r: [f"{r[k]:.3f}" for k in ("nmi", "ari", "hungarian_accuracy")]
    for name, e in entries:
        m, out = e["outputs"]["metrics.json"], e["outputs"]
        rows.append([f"`{name}`: {setting(e, 'autoencoder.mode')} width {setting(e, 'autoencoder.width')}, "
                     f"{m['image_size']} px, {m['code_numel']} numbers",
                     epochs_done(out["train_log.json"], setting(e, "autoencoder.epochs")),
                     f"{m['compression']:.0f}x", f"{m['test']['psnr']:.2f} dB", "", "", "", ""])
        clusters = [v for k, v in out.items() if k.startswith("cluster")]
        rows += [["", "", "", "", f"KMeans on `{c['feature']}`", *scores(c["results"]["autoencoder"])]
                 for c in clusters]
        if clusters:
            base_name, r = [(k, v) for k, v in clusters[0]["results"].items() if k != "autoencoder"][0]
            rows.append(["", "", "", "", f"KMeans on {base_name.replace('_', ' ')} (baseline)", *scores(r)])
    return (f"{entries[0][1]['outputs']['metrics.json']['num_test']} test images; NMI, ARI and Hungarian accuracy "
            "against the true styles (k = number of styles).\n\n"
            + md_table("autoencoder | epochs | compression | test PSNR | clustering | NMI | ARI | Hungarian acc", rows))


ST_COLUMNS = {"robust_of_ceiling": "robust / raw hit ÷ ceiling", "two_sample_accuracy": "two-sample %",
              "realism_gap_closed": "realism gap closed %", "lab_gap_closed": "Lab gap closed %",
              "ssim": "SSIM to input", "blotch_ratio": "blotch / clipped px %", "own_style_psnr": "own style"}


def st_cell(key, m, s):
    """One cell of a Part 3 row (m: the numbers, s: their std over seeds or None)."""
    v = m.get(key)
    if key == "robust_of_ceiling":
        return f"{v:.2f} / {m.get('raw_of_ceiling'):.2f}"
    if key == "two_sample_accuracy":
        return two_sample(m, s)
    if key == "blotch_ratio":
        return f"{v:.2f} / {100 * m.get('clipped_fraction'):.1f}"
    if not isinstance(v, (int, float)):
        return "–"
    if key == "own_style_psnr":  # metrics.psnr's cap: zero error, the image given back exactly
        return "exact" if v >= 119.9 else f"{v:.1f} dB"
    f = (lambda x: f"{100 * x:.0f}") if key.endswith("_closed") else (lambda x: f"{x:.2f}")
    return f(v) + pm(s, key, f)


def style_transfer_methods(means, stds=None, header="method", label="`{}`"):
    """Part 3's methods, one row each (means: {method: evaluation row}; stds: their std over seeds)."""
    return md_table(" | ".join([header, *ST_COLUMNS.values()]),
                    [[label.format(n), *(st_cell(k, m, (stds or {}).get(n)) for k in ST_COLUMNS)]
                     for n, m in means.items()])


@per_recipe
def style_transfer_table(name, e):
    """A Part 3 recipe's test-split evaluation (seeds: mean ± std), after the facts of its run."""
    ev = e["outputs"]["evaluation.json"]
    rows = {k: v for k, v in ev.items() if isinstance(v, dict) and k != "runs"}
    means, stds = {k: v.get("mean", v) for k, v in rows.items()}, {k: v.get("std") for k, v in rows.items()}
    told = means.get("residual_told_source", {})
    groups = ", ".join(f"{g} {pct(a)}" for g, a in (told.get("two_sample") or {}).get("by_group", {}).items())
    grids = "".join(f"\n\n![{name}: images (rows) in every style (columns)"
                    f"{', told their own style' if 'told_source' in p else ''}]({p})" for p in e.get("pictures", [])
                    if os.path.basename(p).startswith("residual_grid"))
    return (f"`{name}` ({setting(e, 'image_size')} px, {ev['split']} split): {ev['n_outputs']} outputs "
            f"({ev['n_images']} images x every other style), seeds {ev.get('seeds', [setting(e, 'seed')])}; "
            f"chance {pct(ev['chance'])}%; judge on the real images {pct(ev['judge_accuracy_robust'])}% robust / "
            f"{pct(ev['judge_accuracy_raw'])}% raw, matched ceiling {pct(ev['matched_ceiling_robust'])} / "
            f"{pct(ev['matched_ceiling_raw'])}%; real paintings: {pct(ev['clipped_fraction_real'])}% of pixels clipped"
            + (f"; told the source, the two-sample test on each feature group alone: {groups}" if groups else "")
            + ".\n\n" + style_transfer_methods(means, stds) + grids)


def style_transfer_probes_table(entries):
    """What was tried, read on the validation split (told the source): the recipes (mean of their seeds) and each
    probe (seed 0), the probe's settings as the command gives them."""
    rows, stds = {}, {}
    for name, e in entries:
        if e["family"] == "style_transfer" and "evaluation_val.json" in e["outputs"]:
            row = e["outputs"]["evaluation_val.json"]["residual_told_source"]
            rows[f"recipe {name}"], stds[f"recipe {name}"] = row.get("mean", row), row.get("std")
        elif e["family"] == "style_transfer_probes":
            for step in e["steps"][::2]:
                probe = step["command"].split("style_transfer.out_dir=")[1].split()[0].rstrip("/").split("/")[-1]
                own = itertools.takewhile(lambda a: not a.startswith("-"),  # its own --set items
                                          step["command"].split("--set", 1)[1].split())
                sets = [a.replace("style_transfer.", "") for a in own if not a.startswith("style_transfer.out_dir")]
                rows[f"probe: {' '.join(sets)}"] = e["outputs"][f"{probe}/evaluation_val.json"]["residual_told_source"]
    return style_transfer_methods(rows, stds, "validation split, told the source", "{}") if rows else None


def text_to_image_pretrain_table(entries):
    """The stand-in base's pretraining alone: epochs (and minutes) of each stage."""
    minutes = lambda log: sum(r.get("seconds", 0) for r in log or []) / 60
    stage = lambda log: f"{len(log or [])} ({minutes(log):.1f} min)" + (" CUT SHORT" if any(
        r.get("cut_short") for r in log or []) else "")
    rows = [[f"`{name}`", *(stage(o.get(f"{d}train_log.json")) for d in ("vae/", "vae_decoder/", "")),
             f"{sum(minutes(o.get(k)) for k in o if k.endswith('train_log.json')):.0f} min"]
            for name, o in ((n, e["outputs"]) for n, e in entries)]
    return md_table("pretrained base | VAE epochs | VAE decoder alone | diffusion epochs | training in all", rows)


def t2i_row(label, m, s=None, t=None):
    """A Bonus B row: hits (x ceiling), styles above chance, two-sample, gaps; s: std over seeds; t: the training."""
    hit = lambda k: f"{pct(m[f'{k}_hit_rate'])}{pm(s, f'{k}_hit_rate', pct)} ({m.get(f'{k}_of_ceiling', 0):.2f}x)"
    gaps = "–" if "lab_gap_closed" not in m else f"{pct(m['realism_gap_closed'])} / {pct(m['lab_gap_closed'])}"
    size = t and f"{t['trainable_parameters'] / 1e6:.2f}M " + (
        f"({t['trainable_parameters'] / t['unet_parameters']:.1%} of the UNet)" if t.get("adapter_file_bytes")
        else "(UNet + text)")
    steps = t and f"{t['epochs']} epochs, {t['minutes']:.0f} min" + (" CUT SHORT" if t.get("cut_short") else "")
    return [label, hit("robust"), hit("raw"), f"{m['styles_above_chance_robust']:.3g} / {m['styles_above_chance_raw']:.3g}",
            two_sample(m, s) if m.get("two_sample") else "–", gaps, size or "–", steps or "–"]


def text_to_image_table(entries):
    """Bonus B's one table, on the test split: the base, LoRA (scales 0.5 and 1; seed 0, the mean over seeds), the
    whole model and the real paintings."""
    evs = {n: e["outputs"] for n, e in entries if "evaluation.json" in e["outputs"]}
    loras = [n for n, o in evs.items() if o["evaluation.json"]["training"].get("adapter_file_bytes")]
    if not loras:
        return None
    lora, ev = loras[0], evs[loras[0]]["evaluation.json"]
    models, tr = ev["models"], ev["training"]
    rows = [t2i_row("base (before LoRA)", models["base"]),
            t2i_row("base + LoRA, scale 0.5", models["fine-tuned@0.5"], None, tr),
            t2i_row("base + LoRA, scale 1", models["fine-tuned"], None, tr)]
    seeds = [ev] + [o for k, o in evs[lora].items() if k.startswith("seed") and k.endswith("evaluation.json")]
    if len(seeds) > 1:
        import numpy as np
        ms = [m | {"two": m["two_sample"]["accuracy"]} for m in (e["models"]["fine-tuned"] for e in seeds)]
        keys = ("robust_hit_rate", "raw_hit_rate", "styles_above_chance_robust", "styles_above_chance_raw",
                "robust_of_ceiling", "raw_of_ceiling", "realism_gap_closed", "lab_gap_closed", "two")
        mean, std = ({k: float(f([m[k] for m in ms])) for k in keys} for f in (np.mean, lambda x: np.std(x, ddof=1)))
        mean["two_sample"], std["two_sample"] = {"accuracy": mean["two"], "ci95": 0}, {"accuracy": std["two"]}
        rows.append(t2i_row(f"base + LoRA, scale 1, mean ± std of {len(seeds)} seeds", mean, std, tr))
    whole = {n: o["evaluation.json"] for n, o in evs.items()
             if n not in loras and o["evaluation.json"]["styles"] == ev["styles"]}
    rows += [t2i_row(f"the whole model (`{n}`)", w["models"]["fine-tuned"], None, w["training"])
             for n, w in whole.items()] + [t2i_row("real test paintings", models["real"])]
    per_style = [[s, *(f"{pct(m['robust_hit_per_style'].get(s))} / {pct(m['raw_hit_per_style'].get(s))}" for m in (
        models["base"], models["fine-tuned"], *(w["models"]["fine-tuned"] for w in whole.values()), models["real"])),
        pct(models["fine-tuned"]["lab_gap_closed_per_style"].get(s))] for s in ev["styles"]]
    val = evs[lora].get("evaluation_val.json")
    hits = lambda m: f"{pct(m['robust_hit_rate'])}% robust hit, two-sample {pct(m['two_sample']['accuracy'])}%"
    chosen = "" if not val else (f"On validation (seed 0), where the LoRA scale is chosen: scale 0.5 "
                                 f"{hits(val['models']['fine-tuned@0.5'])}; scale 1 "
                                 f"{hits(val['models']['fine-tuned'])}. ")
    return (f"{ev['images_per_style']} samples per style and model, {ev['steps']} sampling steps, guidance "
            f"{ev['guidance']}; chance {pct(ev['chance'])}%; x: over the real paintings' hit (the judge's matched "
            f"ceiling). The base's VAE on unseen test paintings: {ev['vae']['psnr']:.2f} dB, chroma "
            f"{ev['vae']['chroma_ratio']:.2f}x the inputs'. {chosen}\n\n"
            + md_table("model | robust hit % (x ceiling) | raw hit % (x ceiling) | styles above chance (robust / raw) "
                       "| two-sample % | realism / Lab gap closed % | trained parameters | training", rows)
            + "\n\nHit per style, robust / raw (%), and the Lab gap LoRA closes:\n\n"
            + md_table("style | base | base + LoRA | " + "whole model | " * len(whole)
                       + "real | Lab gap closed % (LoRA)", per_style)), [n for n, _ in entries if n in (lora, *whole)]


@per_recipe
def bench_table(name, e):
    b = e["outputs"]["bench.json"]
    r, g = b["ratios"], b.get("gpu")
    rows = [[label, f"{x['first_epoch_img_s']:.0f}", f"{x['steady_img_s']:.0f}", f"{x['peak_rss_bytes'] / 2**30:.2f}",
             f"{x['peak_anon_rss_bytes'] / 2**30:.2f}"] for label, x in (
        ("course (floats cached per item)", b["course"]), ("project, cache built in epoch 1", b["project_cold"]),
        ("project, cache already on disk", b["project_warm"]))]
    rows.append(["project, uint8 batches only (the host side of a GPU run)", "",
                 f"{b['project_cold']['host_uint8_batches_img_s']:.0f}", "", ""])
    on_gpu = "" if not g else (
        f" Training a ResNet-18 body at {g['image_size']} px, batch {g['batch_size']} on "
        f"{g.get('gpu') or g.get('device', 'cuda')}: {g['pipeline_img_s']:.0f} img/s from the memmap pipeline vs "
        f"{g['resident_img_s']:.0f} img/s with the data resident on the device: **{100 * g['ratio']:.0f}%** of the "
        "bound.")
    return (f"`{name}`: {b['images']} images at {b['size']} px, {b['epochs']} epochs, {b['threads']} thread per "
            f"loader, {b['cpus']} CPUs.\n\n"
            + md_table("loader | epoch 1 img/s | steady img/s | peak RSS GiB | peak anonymous RSS GiB", rows)
            + f"\n\nProject / course: first epoch {r['first_epoch_speed_cold']:.2f}x (cache built) and "
            f"{r['first_epoch_speed_warm']:.2f}x (cache on disk), steady {r['steady_speed']:.2f}x "
            f"({r['steady_speed_host_uint8']:.1f}x for uint8 batches), peak RSS {r['peak_rss']:.2f}x "
            f"({r['peak_anon_rss']:.2f}x anonymous).{on_gpu}")


def realism_table(entries):
    """The two-sample test on real paintings against the same paintings made worse in known ways."""
    c = entries[0][1]["outputs"]["calibration.json"]
    t = c["tests"]
    sizes, last = list(t), list(t)[-1]
    what = {"none": "other real paintings", "blur0.5": "Gaussian blur, sigma 0.5 px", "jpeg30": "JPEG quality 30",
            "blur1": "Gaussian blur, sigma 1 px", "blur1.5": "Gaussian blur, sigma 1.5 px",
            "down2": "2x downscale, then upscale", "noise": "colour noise (3% per channel)",
            "hue10": "hue rotated by 10 degrees"}
    rows = [[what.get(k, k), *(f"{pct(t[n][k]['accuracy'])} ± {pct(t[n][k]['ci95'])}" for n in sizes),
             ", ".join(f"{g} {pct(v)}" for g, v in t[last][k]["by_group"].items())] for k in t[sizes[0]]]
    return (f"Real WikiArt-16 training paintings at {c['size']} px (fakes: n paintings made worse; real: n other "
            f"paintings of the same styles); two-sample accuracy %, mean of {c['seeds']} seeds ± the 95% interval of "
            f"one test; {c['seconds_per_test']:.1f} s per test.\n\n"
            + md_table(" | ".join(["fakes", *(f"{n} vs {n}" for n in sizes),
                                   f"each feature group alone ({last} vs {last})"]), rows))


def demo_table(entries):
    """make demo's main job: each part's table, from the part's subfolder."""
    part = lambda e, p: {**e, "outputs": {k[len(p):]: v for k, v in e["outputs"].items() if k.startswith(p)}}
    return "\n\n".join(fn([(n, part(e, p)) for n, e in entries]) for fn, p in (
        (classifier_table, "classifier/"), (autoencoder_table, "autoencoder/"),
        (style_transfer_table, "style_transfer/")))


# table name (the recipe family that makes it) -> (function, the families it reads); a marker may also name a recipe
TABLES = {name: (globals()[f"{name}_table"], (name, *also)) for name, also in {
    "classifier": (), "imbalance": (), "imbalance_seeds": ("imbalance",), "autoencoder": (), "realism": (),
    "style_transfer": (), "style_transfer_probes": ("style_transfer",), "text_to_image": (),
    "text_to_image_pretrain": (), "bench": (), "demo": ()}.items()}


def footer(entries, profile):
    """Who made the table: per recipe its commands (as run alone), wall time, hardware, torch, commit, date."""
    def duration(seconds):
        m, s = divmod(round(seconds), 60)
        return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min {s} s" if m else f"{s} s"

    def hardware(env):
        n, what = (env["threads"], "thread") if env.get("threads") else (env["cpu_count"], "CPU")
        cpu = f"{env['cpu']}, {n} {what}{'s' if n != 1 else ''}"
        return f"{env['gpu']} ({cpu})" if env.get("gpu") else cpu
    lines = [f"_Generated by `python reproduce.py {profile.replace('-scaled', ' --scale-down')}` from "
             f"`results/{profile}.json`; do not edit by hand._"]
    for name, e in entries:
        commands = " (" + ", then ".join(f"`{c}`" for c in e["commands"]) + ")" if e.get("commands") else ""
        pictures = ", ".join(f"[{os.path.basename(p)}]({p})" for p in e.get("pictures") or [])
        lines.append(f"- `{name}`{commands}: {duration(e['wall_s'])}; {hardware(e['env'])}; torch "
                     f"{e['env']['torch']}; commit {e['commit']}; {e['date']}."
                     + (f" Pictures: {pictures}." if pictures else ""))
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


def update_markdown(path, profile, results):
    """Rebuild every <profile>/<name> table between its markers in the markdown file (atomically)."""
    if not os.path.exists(path):
        return print(f"{path} does not exist: no tables written")

    def replace(m):
        body = build_table(m.group(2), results, profile) if m.group(1) == profile else None
        return m.group(0) if body is None else f"<!-- table:{profile}/{m.group(2)} -->\n{body}\n<!-- /table -->"
    with open(path) as f:
        text = f.read()
    new = MARKER.sub(replace, text)
    if new != text:
        runs.atomic_write_text(new, path)
