"""RESULTS.md's tables from results/<profile>.json (reproduce.py writes both): a function per recipe family turns
its entries into the markdown between `<!-- table:<profile>/<name> -->` and `<!-- /table -->` (the text around the
markers is written by hand). An entry holds: family, commands (as run alone), commit, date, env (cpu, threads, gpu,
torch), wall_s, steps (command, wall_s, config: the keys that differ from the defaults) and outputs (each collected
JSON by its path in the recipe's folder)."""
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
    capped = " (time cap)" if log and log[-1].get("time_cap") else ""
    return f"{done}" if done == planned else f"{done} of {planned}{capped}"


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

    def row(label, a, b):
        return [label, *(f"{pct(r['accuracy'])} / {pct(r['balanced_accuracy'])}" for r in (a, b)),
                *(f"{100 * (b[k] - a[k]):+.1f}" for k in ("accuracy", "balanced_accuracy"))]
    rows = [row(seed, a, b) for seed, (a, b) in sorted(by_seed.items())]
    if len(by_seed) > 1:  # the mean of each column
        rows.append(row("mean", *({k: sum(v[i][k] for v in by_seed.values()) / len(by_seed)
                                   for k in ("accuracy", "balanced_accuracy")} for i in (0, 1))))
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
        scores = lambda r: [f"{r[k]:.3f}" for k in ("nmi", "ari", "hungarian_accuracy")]
        rows += [["", "", "", "", f"KMeans on `{c['feature']}`", *scores(c["results"]["autoencoder"])]
                 for c in clusters]
        if clusters:
            base_name, r = [(k, v) for k, v in clusters[0]["results"].items() if k != "autoencoder"][0]
            rows.append(["", "", "", "", f"KMeans on {base_name.replace('_', ' ')} (baseline)", *scores(r)])
    n = entries[0][1]["outputs"]["metrics.json"]["num_test"]
    return (f"{n} test images; NMI, ARI and Hungarian accuracy against the true styles (k = number of styles).\n\n"
            + md_table(["autoencoder", "epochs", "compression", "test PSNR", "clustering", "NMI", "ARI",
                        "Hungarian acc"], rows))


ST_COLUMNS = {"robust_of_ceiling": "robust / raw hit ÷ ceiling", "two_sample_accuracy": "two-sample %",
              "realism_gap_closed": "realism gap closed %", "lab_gap_closed": "Lab gap closed %",
              "ssim": "SSIM to input", "blotch_ratio": "blotch / clipped px %", "own_style_psnr": "own style"}


def st_cell(key, m, s):
    """One cell of a Part 3 row (m: the numbers, s: their std over seeds or None)."""
    get = lambda d, k: (d or {}).get(k)
    if key == "robust_of_ceiling":
        return f"{get(m, key):.2f} / {get(m, 'raw_of_ceiling'):.2f}"
    if key == "two_sample_accuracy":
        t, ts = m.get("two_sample") or {}, (s or {}).get("two_sample") or {}
        spread = ts.get("accuracy") if ts else t.get("ci95")  # seeds: their std; one run: the test's 95% interval
        return f"{pct(t.get('accuracy'))} ± {pct(spread)}"
    if key == "blotch_ratio":
        return f"{get(m, key):.2f} / {100 * get(m, 'clipped_fraction'):.1f}"
    v, sd = get(m, key), get(s, key)
    if not isinstance(v, (int, float)):
        return "–"
    if key == "own_style_psnr":  # metrics.psnr's cap: zero error, the image given back exactly
        return "exact" if v >= 119.9 else f"{v:.1f} dB"
    f = (lambda x: f"{100 * x:.0f}") if key.endswith("_closed") else (lambda x: f"{x:.2f}")
    return f(v) + (f" ± {f(sd)}" if isinstance(sd, (int, float)) else "")


def style_transfer_methods(means, stds=None, header="method", label="`{}`"):
    """Part 3's methods, one row each (means: {method: evaluation row}; stds: their std over seeds)."""
    return md_table([header, *ST_COLUMNS.values()], [[label.format(n), *(st_cell(k, m, (stds or {}).get(n)) for k in
                                                                          ST_COLUMNS)] for n, m in means.items()])


def style_transfer_table(entries):
    """Each Part 3 recipe's test-split evaluation (seeds: mean ± std), after the facts of its run."""
    parts = []
    for name, e in entries:
        ev = e["outputs"]["evaluation.json"]
        rows = {k: v for k, v in ev.items() if isinstance(v, dict) and k != "runs"}
        means = {k: v.get("mean", v) for k, v in rows.items()}
        stds = {k: v.get("std") for k, v in rows.items()}
        told = means.get("residual_told_source", {})
        groups = ", ".join(f"{g} {pct(a)}" for g, a in (told.get("two_sample") or {}).get("by_group", {}).items())
        facts = (f"`{name}` ({setting(e, 'image_size')} px, {ev['split']} split): {ev['n_outputs']} outputs "
                 f"({ev['n_images']} images x every other style), seeds {ev.get('seeds', [setting(e, 'seed')])}; "
                 f"chance {pct(ev['chance'])}%; judge on the real images {pct(ev['judge_accuracy_robust'])}% robust / "
                 f"{pct(ev['judge_accuracy_raw'])}% raw, matched ceiling {pct(ev['matched_ceiling_robust'])} / "
                 f"{pct(ev['matched_ceiling_raw'])}%; real paintings: {pct(ev['clipped_fraction_real'])}% of pixels "
                 "clipped" + (f"; told the source, the two-sample test on each feature group alone: {groups}"
                              if groups else ""))
        grids = [f"![{name}: images (rows) in every style (columns)"
                 f"{', told their own style' if 'told_source' in p else ''}]({p})" for p in e.get("pictures", [])
                 if os.path.basename(p).startswith("residual_grid")]
        parts.append(facts + ".\n\n" + style_transfer_methods(means, stds) + "".join(f"\n\n{g}" for g in grids))
    return "\n\n".join(parts)


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
                own = step["command"].split("--set", 1)[1].split()  # the probe's own --set items, up to the next option
                own = own[:next((i for i, a in enumerate(own) if a.startswith("-")), len(own))]
                sets = [a.replace("style_transfer.", "") for a in own if not a.startswith("style_transfer.out_dir")]
                rows[f"probe: {' '.join(sets)}"] = e["outputs"][f"{probe}/evaluation_val.json"]["residual_told_source"]
    return style_transfer_methods(rows, stds, "validation split, told the source", "{}") if rows else None


def text_to_image_pretrain_table(entries):
    """The stand-in base's pretraining alone: epochs (and minutes) of each stage."""
    minutes = lambda log: sum(r.get("seconds", 0) for r in log or []) / 60
    stage = lambda log: f"{len(log or [])} ({minutes(log):.1f} min)" + (" CUT SHORT" if any(
        r.get("cut_short") for r in log or []) else "")
    rows = []
    for name, e in entries:
        o = e["outputs"]
        total = sum(minutes(o.get(k)) for k in o if k.endswith("train_log.json"))
        rows.append([f"`{name}`", *(stage(o.get(f"{d}train_log.json")) for d in ("vae/", "vae_decoder/", "")),
                     f"{total:.0f} min"])
    return md_table(["pretrained base", "VAE epochs", "VAE decoder alone", "diffusion epochs", "training in all"], rows)


def t2i_row(label, m, s=None, trained="–", training="–"):
    """A Bonus B row: hits (x ceiling), styles above chance, two-sample, gaps; s: std over seeds."""
    sd = lambda k, f: f" ± {f(s[k])}" if s and isinstance(s.get(k), (int, float)) else ""
    hit = lambda k: f"{pct(m[f'{k}_hit_rate'])}{sd(f'{k}_hit_rate', pct)} ({m.get(f'{k}_of_ceiling', 0):.2f}x)"
    two = m.get("two_sample")
    spread = two and (s or {}).get("two_sample", {}).get("accuracy", two["ci95"])  # seeds: their std; else the 95% CI
    two = "–" if not two else f"{pct(two['accuracy'])} ± {pct(spread)}"
    gaps = "–" if "lab_gap_closed" not in m else f"{pct(m['realism_gap_closed'])} / {pct(m['lab_gap_closed'])}"
    return [label, hit("robust"), hit("raw"), f"{m['styles_above_chance_robust']:g} / {m['styles_above_chance_raw']:g}",
            two, gaps, trained, training]


def text_to_image_table(entries):
    """Bonus B's one table, on the test split: the base, LoRA (scales 0.5 and 1; seed 0, the mean over seeds), the
    whole model and the real paintings."""
    evs = {n: e["outputs"] for n, e in entries if "evaluation.json" in e["outputs"]}
    loras = [n for n, o in evs.items() if o["evaluation.json"]["training"].get("adapter_file_bytes")]
    if not loras:
        return None
    lora, ev = loras[0], evs[loras[0]]["evaluation.json"]
    models, tr = ev["models"], ev["training"]
    size = lambda t: f"{t['trainable_parameters'] / 1e6:.2f}M " + (
        f"({t['trainable_parameters'] / t['unet_parameters']:.1%} of the UNet)" if t.get("adapter_file_bytes")
        else "(UNet + text)")
    steps = lambda t: f"{t['epochs']} epochs, {t['minutes']:.0f} min" + (" CUT SHORT" if t.get("cut_short") else "")
    rows = [t2i_row("base (before LoRA)", models["base"]),
            t2i_row("base + LoRA, scale 0.5", models["fine-tuned@0.5"], None, size(tr), steps(tr)),
            t2i_row("base + LoRA, scale 1", models["fine-tuned"], None, size(tr), steps(tr))]
    seeds = [ev] + [o for k, o in evs[lora].items() if k.startswith("seed") and k.endswith("evaluation.json")]
    if len(seeds) > 1:
        import numpy as np
        ms = [e["models"]["fine-tuned"] for e in seeds]
        keys = ("robust_hit_rate", "raw_hit_rate", "styles_above_chance_robust", "styles_above_chance_raw",
                "robust_of_ceiling", "raw_of_ceiling", "realism_gap_closed", "lab_gap_closed")
        mean = {k: float(np.mean([m[k] for m in ms])) for k in keys}
        std = {k: float(np.std([m[k] for m in ms], ddof=1)) for k in keys}
        mean["two_sample"] = {"accuracy": float(np.mean([m["two_sample"]["accuracy"] for m in ms])), "ci95": 0}
        std["two_sample"] = {"accuracy": float(np.std([m["two_sample"]["accuracy"] for m in ms], ddof=1))}
        rows.append(t2i_row(f"base + LoRA, scale 1, mean ± std of {len(seeds)} seeds", mean, std, size(tr), steps(tr)))
    whole = [n for n in evs if n not in loras and evs[n]["evaluation.json"]["styles"] == ev["styles"]]
    for n in whole:
        w = evs[n]["evaluation.json"]
        rows.append(t2i_row(f"the whole model (`{n}`)", w["models"]["fine-tuned"], None, size(w["training"]),
                            steps(w["training"])))
    rows.append(t2i_row("real test paintings", models["real"]))
    per_style = [[s, *(f"{pct(m['robust_hit_per_style'].get(s))} / {pct(m['raw_hit_per_style'].get(s))}" for m in (
        models["base"], models["fine-tuned"], *(evs[n]["evaluation.json"]["models"]["fine-tuned"] for n in whole),
        models["real"])), pct(models["fine-tuned"]["lab_gap_closed_per_style"].get(s))] for s in ev["styles"]]
    val = evs[lora].get("evaluation_val.json")
    hits = lambda m: f"{pct(m['robust_hit_rate'])}% robust hit, two-sample {pct(m['two_sample']['accuracy'])}%"
    chosen = "" if not val else (f"On validation (seed 0), where the LoRA scale is chosen: scale 0.5 "
                                 f"{hits(val['models']['fine-tuned@0.5'])}; scale 1 "
                                 f"{hits(val['models']['fine-tuned'])}. ")
    return (f"{ev['images_per_style']} samples per style and model, {ev['steps']} sampling steps, guidance "
            f"{ev['guidance']}; chance {pct(ev['chance'])}%; x: over the real paintings' hit (the judge's matched "
            f"ceiling). The base's VAE on unseen test paintings: {ev['vae']['psnr']:.2f} dB, chroma "
            f"{ev['vae']['chroma_ratio']:.2f}x the inputs'. {chosen}\n\n"
            + md_table(["model", "robust hit % (x ceiling)", "raw hit % (x ceiling)", "styles above chance (robust / "
                        "raw)", "two-sample %", "realism / Lab gap closed %", "trained parameters", "training"], rows)
            + "\n\nHit per style, robust / raw (%), and the Lab gap LoRA closes:\n\n"
            + md_table(["style", "base", "base + LoRA", *("whole model" for n in whole), "real",
                        "Lab gap closed % (LoRA)"], per_style)), [n for n, _ in entries if n in (lora, *whole)]


def bench_table(entries):
    parts = []
    for name, e in entries:
        b = e["outputs"]["bench.json"]
        rows = [[label, f"{r['first_epoch_img_s']:.0f}", f"{r['steady_img_s']:.0f}",
                 f"{r['peak_rss_bytes'] / 2**30:.2f}", f"{r['peak_anon_rss_bytes'] / 2**30:.2f}"]
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


def realism_table(entries):
    """The two-sample test on real paintings against the same paintings made worse in known ways."""
    c = entries[0][1]["outputs"]["calibration.json"]
    sizes = list(c["tests"])
    what = {"none": "other real paintings", "blur0.5": "Gaussian blur, sigma 0.5 px", "jpeg30": "JPEG quality 30",
            "blur1": "Gaussian blur, sigma 1 px", "blur1.5": "Gaussian blur, sigma 1.5 px",
            "down2": "2x downscale, then upscale", "noise": "colour noise (3% per channel)",
            "hue10": "hue rotated by 10 degrees"}
    cell = lambda r: f"{pct(r['accuracy'])} ± {pct(r['ci95'])}"
    last = sizes[-1]
    rows = [[what.get(k, k), *(cell(c["tests"][n][k]) for n in sizes),
             ", ".join(f"{g} {pct(v)}" for g, v in c["tests"][last][k]["by_group"].items())]
            for k in c["tests"][sizes[0]]]
    return (f"Real WikiArt-16 training paintings at {c['size']} px (fakes: n paintings made worse; real: n other "
            f"paintings of the same styles); two-sample accuracy %, mean of {c['seeds']} seeds ± the 95% interval of "
            f"one test; {c['seconds_per_test']:.1f} s per test.\n\n"
            + md_table(["fakes", *(f"{n} vs {n}" for n in sizes), f"each feature group alone ({last} vs {last})"],
                       rows))


def demo_table(entries):
    """make demo's main job: each part's table, from the part's subfolder."""
    def part(e, prefix):
        return {**e, "outputs": {k[len(prefix):]: v for k, v in e["outputs"].items() if k.startswith(prefix)}}
    parts = ((classifier_table, "classifier/"), (autoencoder_table, "autoencoder/"),
             (style_transfer_table, "style_transfer/"))
    return "\n\n".join(fn([(n, part(e, prefix)) for n, e in entries]) for fn, prefix in parts)


# table name -> (function, the recipe families it reads: the first makes the table, the others it also uses);
# a marker may also name one recipe
TABLES = {"classifier": (classifier_table, ("classifier",)), "imbalance": (imbalance_table, ("imbalance",)),
          "imbalance_seeds": (imbalance_seeds_table, ("imbalance_seeds", "imbalance")),
          "autoencoder": (autoencoder_table, ("autoencoder",)), "realism": (realism_table, ("realism",)),
          "style_transfer": (style_transfer_table, ("style_transfer",)),
          "style_transfer_probes": (style_transfer_probes_table, ("style_transfer_probes", "style_transfer")),
          "text_to_image": (text_to_image_table, ("text_to_image",)),
          "text_to_image_pretrain": (text_to_image_pretrain_table, ("text_to_image_pretrain",)),
          "bench": (bench_table, ("bench",)), "demo": (demo_table, ("demo",))}


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

