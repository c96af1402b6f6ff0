"""Regenerate RESULTS.md: run the recipes of a profile, collect their JSON into results/<profile>.json and
rewrite RESULTS.md's tables from it.

    python reproduce.py cpu                          # the reduced WikiArt-16 runs of RESULTS.md (hours, 2 at a time)
    python reproduce.py cpu --only classifier_w16_64 # some recipes of a profile
    python reproduce.py gpu                          # the GPU recipes (docs/gpu.md); --scale-down: a CPU dry run
    python reproduce.py smoke                        # every CPU recipe on a tiny generated sample: a check
    python reproduce.py cpu --dry-run                # what would run, be skipped or resumed

A recipe is the commands RESULTS.md shows for one table, run as subprocesses with their output in numbered logs;
every out/ path moves under out/results/<profile>/, so recipe X writes to out/results/<profile>/X/. The project's
one "already done, skip it": a step whose arguments, resolved config and inputs (the fingerprints of the steps that
wrote what it reads) are unchanged since it finished is skipped; an interrupted one resumes.
"""
import argparse
import concurrent.futures
import functools
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time

from PIL import Image

import config
import runs
import tables

HERE = os.path.dirname(os.path.abspath(__file__))
in_repo = functools.partial(os.path.join, HERE)  # a path in the repository (an absolute path stays as it is)
W16 = "../shared/data/wikiart16"
OUT_KEY = {"train.py": "out_dir", "test.py": "out_dir", "compare_balance.py": "out_dir",  # where a step writes
           "autoencoder.py": "autoencoder.out_dir", "cluster.py": "cluster.out_dir",
           "style_transfer.py": "style_transfer.out_dir", "text_to_image.py": "text_to_image.out_dir",
           "pretrain_base.py": "base.out_dir"}
READS = {"autoencoder.py": ("autoencoder",), "cluster.py": ("cluster", "autoencoder"),  # sections besides the top
         "style_transfer.py": ("style_transfer",), "text_to_image.py": ("text_to_image",),
         "pretrain_base.py": ("base", "text_to_image")}
RESUMES = ("train.py", "autoencoder.py", "style_transfer.py", "text_to_image.py", "pretrain_base.py")
_steps, _stopping = set(), threading.Event()  # running step processes; set once a stop signal came


def recipe(name, family, commands, makes, pictures=(), alone=False):
    """commands: run in order from the repository root; makes: the files of a finished recipe in out/<name>/ (its
    .json are collected); pictures: PNGs there kept as JPEGs beside results/<profile>.json; alone: a benchmark."""
    return {"family": family, "commands": commands, "makes": [f"out/{name}/{m}" for m in makes],
            "pictures": [f"out/{name}/{p}" for p in pictures], "alone": alone}


def classifier(name):
    return recipe(name, "classifier", [f"train.py -c configs/{name}.json", f"test.py -c configs/{name}.json"],
                  ["test_metrics.json", "train_log.json"], ["confusion.png"])


def autoencoder(name, features=("code", "stats", "code+stats")):
    clusters = [f"cluster.py -c configs/{name}.json --set cluster.feature={f} cluster.out_dir=out/{name}/cluster_{f}"
                for f in features]
    return recipe(name, "autoencoder", [f"autoencoder.py -c configs/{name}.json", *clusters],
                  ["metrics.json", "train_log.json", *(f"cluster_{f}/metrics.json" for f in features)],
                  ["reconstructions.png", *(f"cluster_{f}/contingency.png" for f in features[1:2])])


def style_transfer(name, photos=False):
    """Train 3 seeds, choose on validation, score on test; photos: the seed-0 model on scikit-learn's two photos."""
    commands = [f"style_transfer.py -c configs/{name}.json --seeds 3",
                *(f"style_transfer.py --evaluate {s} --seeds 3 -c configs/{name}.json" for s in ("val", "test"))]
    use = [f"style_transfer.py -c configs/{name}.json --image {{photos}} {a}" for a in
           ("--style all --out photos", "--style Ukiyo_e --out photos_Ukiyo_e", "--style Fauvism --out photos_Fauvism")]
    shown = ["photos/00_china_all_styles", "photos/01_flower_all_styles", "photos_Ukiyo_e/00_china_Ukiyo_e",
             "photos_Fauvism/01_flower_Fauvism"]
    return recipe(name, "style_transfer", commands + (use if photos else []),
                  ["evaluation_val.json", "evaluation.json", "residual/train_log.json"],
                  [f"{f}.png" for f in ("residual/grid", "residual/grid_told_source", "naive/grid", "strength_curve",
                                        *(shown if photos else ()))])


def text_to_image(name, seeds=(0,)):
    """LoRA (or the whole model): seed 0 scored on validation (the scale is chosen there) and test; seed<k>/: more."""
    commands = [f"text_to_image.py{a} -c configs/{name}.json" for a in ("", " --evaluate val", " --evaluate test")]
    for s in seeds[1:]:
        sets = f" --set seed={s} text_to_image.out_dir=out/{name}/seed{s}"
        commands += [f"text_to_image.py{a} -c configs/{name}.json{sets}" for a in ("", " --evaluate test")]
    return recipe(name, "text_to_image", commands, ["evaluation_val.json", "evaluation.json", "train_log.json",
                                                    *(f"seed{s}/evaluation.json" for s in seeds[1:])],
                  [f"{f}.png" for f in ("grid", "nearest", "vae_reconstructions", "evaluation")])


def probes(name, base):
    """What was tried around a recipe, each setting trained (seed 0) and scored on the validation split only."""
    tried = {"no_teacher": "style_transfer.teacher_steps=0",
             "no_teacher_no_range": "style_transfer.teacher_steps=0 style_transfer.w_range=0",
             "w_cls_10": "style_transfer.w_cls=10",
             "teacher_4000_w_cls_6": "style_transfer.teacher_steps=4000 style_transfer.w_cls=6"}
    return recipe(name, "style_transfer_probes", [
        f"style_transfer.py{a} -c configs/{base}.json --set style_transfer.out_dir=out/{name}/{p} {v}"
        for p, v in tried.items() for a in ("", " --evaluate val")], [f"{p}/evaluation_val.json" for p in tried])


RECIPES = {
    "sample": recipe("sample", None, ["sample_data.py --out out/sample --size 32 --scale 0.03"], ["train"]),
    "realism_w16": recipe("realism_w16", "realism", ["realism.py {data}/train {realism} --out out/realism_w16"],
                          ["calibration.json"], ["calibration.png"]),
    **{n: classifier(n) for n in ("classifier_w16_64", "classifier_w16_64_base", "classifier_w16_64_bonusA")},
    "imbalance_w16_64": recipe("imbalance_w16_64", "imbalance", [
        "compare_balance.py -c configs/imbalance_w16_64.json --options none weights1 sampler logit_adjust drw "
        "none+posthoc sampler+posthoc logit_adjust+posthoc"], ["balance_comparison.json"]),
    "imbalance_w16_64_seeds": recipe("imbalance_w16_64_seeds", "imbalance_seeds", [  # seed 0 is imbalance_w16_64
        f"compare_balance.py -c configs/imbalance_w16_64.json --options none sampler+posthoc "
        f"--set seed={s} out_dir=out/imbalance_w16_64_seeds/seed{s}" for s in (1, 2)],
        [f"seed{s}/balance_comparison.json" for s in (1, 2)]),
    "autoencoder_w16_128": autoencoder("autoencoder_w16_128"),
    "autoencoder_w16_64": autoencoder("autoencoder_w16_64", features=()),
    "style_transfer_w16_64": style_transfer("style_transfer_w16_64"),
    **{n: style_transfer(n, photos=True) for n in ("style_transfer_w16_64_real", "style_transfer_w16_128_real")},
    "style_transfer_w16_64_probes": probes("style_transfer_w16_64_probes", "style_transfer_w16_64_real"),
    "text_to_image_pretrain_w16": recipe("text_to_image_pretrain_w16", "text_to_image_pretrain", [
        "pretrain_base.py -c configs/text_to_image_pretrain_w16.json"],
        ["pipeline/model_index.json", *(f"{d}train_log.json" for d in ("", "vae/", "vae_decoder/"))], ["grid.png"]),
    "text_to_image_lora_w16": text_to_image("text_to_image_lora_w16", seeds=(0, 1, 2)),
    "text_to_image_full_w16": text_to_image("text_to_image_full_w16"),
    "text_to_image_sample": recipe("text_to_image_sample", "text_to_image", [
        f"{s} -c configs/text_to_image_sample.json" for s in ("pretrain_base.py", "text_to_image.py",
                                                               "text_to_image.py --evaluate test")],
        ["lora/evaluation.json"]),
    **{n: recipe(n, "bench", [f"prepare_data.py {{data}} out/{n}/images {{prepare}}",  # bench_416: CPU, bench_gpu: GPU
                              f"bench.py out/{n}/images/train {{bench}} --out out/{n}"], ["bench.json"], alone=True)
       for n in ("bench_416", "bench_gpu")},
    "demo_sample": recipe("demo_sample", "demo", [f"{s} -c configs/demo_sample.json" for s in (
        "train.py", "test.py", "autoencoder.py", "cluster.py", "style_transfer.py", "style_transfer.py --evaluate")],
        ["classifier/test_metrics.json", "classifier/train_log.json", "autoencoder/metrics.json",
         "autoencoder/train_log.json", "autoencoder/cluster/metrics.json", "style_transfer/evaluation.json"]),
    # GPU (docs/gpu.md): WikiArt-16 at 128 px, each recipe with a max_minutes guard
    **{n: classifier(n) for n in ("classifier_w16_128", "classifier_w16_128_base", "classifier_w16_128_bonusA")},
    "imbalance_w16_128": recipe("imbalance_w16_128", "imbalance", [
        "compare_balance.py -c configs/imbalance_w16_128.json --options none weights1 sampler logit_adjust "
        "none+posthoc sampler+posthoc"], ["balance_comparison.json"]),
    "autoencoder_w16_128_gpu": autoencoder("autoencoder_w16_128_gpu"),
    "style_transfer_w16_128_gpu": style_transfer("style_transfer_w16_128_gpu"),
}
# the order they start in, two at a time (a step waits for the recipes it reads): the calibration and the
# quick recipes while the Bonus B base pretrains, then the long chains
CPU = ["text_to_image_pretrain_w16", "autoencoder_w16_64", "style_transfer_w16_64_real", "style_transfer_w16_64",
       "realism_w16", "classifier_w16_64", "classifier_w16_64_base", "classifier_w16_64_bonusA", "imbalance_w16_64",
       "text_to_image_lora_w16", "style_transfer_w16_64_probes", "text_to_image_full_w16", "text_to_image_sample",
       "demo_sample", "autoencoder_w16_128", "imbalance_w16_64_seeds", "style_transfer_w16_128_real", "bench_416"]
PROFILES = {  # configs: overlaid on every config-driven step; set: --set items for each; data, prepare, bench:
    # the recipes' {placeholders}; jobs: recipes at once; pictures: key PNGs kept beside results/<profile>.json
    "smoke": {"recipes": ["sample", *[n for n in CPU if n not in ("bench_416", "style_transfer_w16_128_real")]],
              "configs": ["configs/smoke.json"], "jobs": 2, "data": "out/sample",
              "realism": "--size 32 --n 60 --seeds 1",
              "set": ["train_dir=out/sample/train", "test_dir=out/sample/test", "threads=1"],
              "about": "every CPU recipe on a 32-px generated sample with tiny models: a check, not a result"},
    "cpu": {"recipes": CPU, "jobs": 2, "pictures": True, "data": W16, "prepare": "--size 416 --limit 3000",
            "realism": "--size 64 --n 384 960 --seeds 3",
            "bench": "--size 416 --epochs 3", "about": "WikiArt-16, reduced runs for a 2-core CPU, one thread each"},
    "gpu": {"recipes": ["classifier_w16_128", "classifier_w16_128_base", "classifier_w16_128_bonusA",
                        "imbalance_w16_128", "autoencoder_w16_128_gpu", "style_transfer_w16_128_gpu", "bench_gpu"],
            "jobs": 1, "pictures": True, "data": W16, "prepare": "--size 128 --limit 3000",
            "bench": "--size 128 --epochs 2 --gpu-size 128 --gpu-batch 256 --gpu-steps 50",
            "about": "WikiArt-16 at 128 px on one GPU"},
}
SCALE_DOWN = {"configs": ["configs/scale_down.json"], "prepare": "--size 32 --limit 300",
              "bench": "--size 32 --epochs 2 --gpu-size 32 --gpu-batch 32 --gpu-steps 1 --device cpu --precision bf16"}


def move(value, root):
    """out/X -> <root>/X: a profile's copy of every output path."""
    return root + value[3:] if isinstance(value, str) and value.startswith("out/") else value


def resolve(argv):
    args, _ = config.config_parser(None).parse_known_args(argv)
    return config.load_config([config.DEFAULT_CONFIG] + [in_repo(p) for p in args.config], args.set, note_missing=False)


def placeholders(command, prof):
    """{data}, {prepare}, {bench}, {realism} from the profile; {photos}: scikit-learn's china.jpg and flower.jpg."""
    import sklearn.datasets
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    folder = os.path.relpath(folder, HERE) if folder.startswith(HERE + os.sep) else folder  # the same in any clone
    photos = " ".join(shlex.quote(os.path.join(folder, f)) for f in ("china.jpg", "flower.jpg"))
    return command.format(photos=photos, **{k: prof.get(k, "") for k in ("data", "prepare", "bench", "realism")})


def expand(name, command, prof, root, extra_set):
    """(script, argv, resolved config or None) of one recipe command in a profile: its overlays and --set
    items added, every out/ path (in its arguments and resolved config) moved under root."""
    script, *argv = shlex.split(placeholders(command, prof))
    argv = [move(a, root) for a in argv]
    if script not in OUT_KEY:
        return script, argv, None
    argv += [a for c in prof.get("configs", []) for a in ("-c", c)]
    sets = [f"{k}={move(v, root)}" for k, _, v in (i.partition("=") for i in [*prof.get("set", []), *extra_set])]
    cfg = config.flatten(resolve(argv + (["--set", *sets] if sets else [])))
    if not (cfg[OUT_KEY[script]] + "/").startswith(f"out/{name}/"):
        raise config.UserError(f"recipe {name}: {script} writes to {cfg[OUT_KEY[script]]}; its config must write under "
                        f"out/{name}/")
    sections, given = ("", *READS.get(script, ())), {i.partition("=")[0] for i in sets}
    moved = [f"{k}={move(v, root)}" for k, v in cfg.items()
             if move(v, root) != v and k.rpartition(".")[0] in sections and k not in given]
    argv += ["--set", *sets, *moved]
    return script, argv, resolve(argv)


def fingerprint(script, argv, cfg, inputs):
    """A finished step stays valid while its arguments, config sections and inputs' fingerprints are unchanged."""
    if cfg is not None:  # the config by its resolved values (of what the script reads), the other arguments as given
        cfg = {k: v for k, v in cfg.items() if not isinstance(v, dict) or k in READS.get(script, ())}
        argv = config.config_parser(None).parse_known_args(argv)[1]
    key = json.dumps([script, argv, cfg] + ([inputs] if inputs else []), sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def inputs_of(name, step, root):
    """{path: recipe}: the paths in other recipes' folders that a step's arguments or config name."""
    _, argv, cfg = step
    values = list(argv) + (list(config.flatten(cfg).values()) if cfg else [])
    paths = {v: v[len(root) + 1:].split("/")[0] for v in values if isinstance(v, str) and v.startswith(root + "/")}
    return {p: n for p, n in paths.items() if n != name}


def fingerprints(plans, root):
    """{recipe: its steps' fingerprints}; plans in profile order, so what a step reads is fingerprinted first."""
    def writers(d, path):  # the steps of recipe d whose out_dir holds `path` (all of them if none does)
        outs = [config.flatten(c)[OUT_KEY[s]] if c else None for s, _, c in plans[d]]
        return [i for i, o in enumerate(outs) if o and (path + "/").startswith(o + "/")] or range(len(outs))
    prints = {}
    for n, steps in plans.items():
        reads = [inputs_of(n, step, root) for step in steps]
        prints[n] = [fingerprint(*step, {p: [prints[d][i] for i in writers(d, p)] for p, d in r.items() if d in prints})
                     for step, r in zip(steps, reads)]
    return prints


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def git_commit():
    """HEAD's short hash, +dirty when tracked files other than the generated ones changed."""
    try:
        git = lambda *a: subprocess.check_output(["git", *a], cwd=HERE, stderr=subprocess.DEVNULL, text=True).strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!RESULTS.md", ":!results")
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("REPRO_COMMIT", "unknown")  # a copy of the working tree without git


def now():
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def run_step(script, argv, log_path, quiet):
    """`python script argv` from the repository root, its output appended to log_path. (exit status, seconds)"""
    cmd, t0 = [sys.executable, script, *argv], time.time()
    with open(log_path, "ab") as log:
        log.write(f"\n=== {now()}: {shlex.join(cmd)}\n".encode())
        p = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _steps.add(p)
        try:
            for chunk in iter(lambda: p.stdout.read1(1 << 16), b""):
                log.write(chunk)
                log.flush()
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
        finally:
            _steps.discard(p)
    return p.wait(), time.time() - t0


def run_recipe(name, steps, prints, folder, makes, force, dry_run, quiet):
    """Run what is left of a recipe: 'skipped', 'ran', 'resumed', 'failed' or 'stopped'."""
    state_path = os.path.join(folder, "reproduce.json")
    state = read_json(state_path, {"recipe": name, "steps": []})
    old = state["steps"] = (state["steps"] + [None] * len(steps))[:len(steps)]
    finished = [o is not None and o["fingerprint"] == f and o["status"] == "done" for o, f in zip(old, prints)]
    if all(finished) and all(os.path.exists(m) for m in makes) and not force:
        print(f"== {name}: finished with the same config and inputs, skipped")
        return "skipped"
    status, rerun = "ran", force
    defaults = config.flatten(config.defaults())  # a step's record keeps the config keys that differ from them
    for i, ((script, argv, cfg), fp) in enumerate(zip(steps, prints)):
        if finished[i] and not rerun:
            continue
        if _stopping.is_set():  # a stop signal came: no new step starts
            return "stopped"
        rerun = True  # every step after one that runs again reads its new outputs
        before = old[i] if old[i] is not None and old[i]["fingerprint"] == fp and old[i]["status"] != "done" else None
        flat = cfg and config.flatten(cfg)
        resume = (before is not None and script in RESUMES and "--evaluate" not in argv and "--image" not in argv
                  and any("last.pt" in files for _, _, files in os.walk(in_repo(flat[OUT_KEY[script]]))))
        args = argv + (["--resume"] if resume else [])
        print(f"== {name} [{i + 1}/{len(steps)}] {'resuming' if resume else 'running'}: "
              + runs.command_line(script, args))
        if dry_run:
            continue
        status = "resumed" if resume else status
        env = runs.environment(runs.get_device(cfg["device"]) if cfg else None)
        record = {"command": runs.command_line(script, argv), "fingerprint": fp, "status": "started",
                  "commit": git_commit(), "env": env | {"threads": (cfg or {}).get("threads") or None},
                  "config": cfg and {k: v for k, v in flat.items() if defaults.get(k) != v},
                  "wall_s": before.get("wall_s", 0) if before else 0}
        state["steps"][i] = record
        runs.atomic_save(state, state_path)
        rc, wall = run_step(script, args, os.path.join(folder, f"{i + 1}_{os.path.splitext(script)[0]}.log"), quiet)
        record.update(status="done" if rc == 0 else "stopped" if _stopping.is_set() else "failed", finished=now(),
                      wall_s=record["wall_s"] + wall)
        runs.atomic_save(state, state_path)
        if rc != 0:
            if record["status"] == "failed":
                print(f"== {name}: python {script} failed (exit status {rc}); its output is in {folder}/{i + 1}_*.log")
            return record["status"]
    return status


def collect(name, prof, root, kept):
    """A finished recipe's entry in results/<profile>.json (None if unfinished); kept: where its pictures go as
    JPEGs when the profile keeps them."""
    folder, r = in_repo(os.path.join(root, name)), RECIPES[name]
    steps = (read_json(os.path.join(folder, "reproduce.json")) or {}).get("steps", [])
    makes = [in_repo(move(m, root)) for m in r["makes"]]
    if len(steps) != len(r["commands"]) or any(s is None or s["status"] != "done" for s in steps) \
            or not all(map(os.path.exists, makes)):
        return None
    outputs = {os.path.relpath(m, folder): read_json(m) for m in makes if m.endswith(".json")}
    for v in outputs.values():
        if isinstance(v, dict):
            v.pop("confusion_matrix", None)  # the PNG shows it; keeps results/*.json small
    main_step = max(steps, key=lambda s: s.get("wall_s", 0))
    alone = [f"python {placeholders(c.replace('{photos}', '$PHOTOS'), prof)}" for c in r["commands"]]
    pictures = [p for p in (in_repo(move(m, root)) for m in r["pictures"]) if os.path.exists(p)]
    if prof.get("pictures"):
        pictures = sorted(os.path.relpath(copy_picture(p, os.path.join(kept, os.path.relpath(p, folder).replace(
            os.sep, "_"))), HERE) for p in pictures)
    return {"family": r["family"], "fingerprints": [s["fingerprint"] for s in steps],
            "commands": None if prof.get("configs") else alone,
            "commit": ", ".join(sorted({s["commit"] for s in steps})), "date": steps[-1]["finished"],
            "env": main_step["env"], "wall_s": sum(s.get("wall_s", 0) for s in steps),
            "steps": [{k: s[k] for k in ("command", "wall_s", "config")} for s in steps], "outputs": outputs,
            "pictures": pictures}


def publish(prof, profile, root, prints, results_path, markdown):
    """results/<profile>.json: every recipe finished with its current fingerprints (an entry of an earlier
    recipe version is dropped: a table never passes an old run off as its recipe's); then RESULTS.md's tables."""
    earlier, recipes = (read_json(results_path) or {}).get("recipes", {}), {}
    for n in prints:  # the profile's recipes that resolve
        entry = collect(n, prof, root, os.path.join(os.path.dirname(results_path), profile, n)) or earlier.get(n)
        if entry is not None and RECIPES[n]["family"] and entry.get("fingerprints") == prints[n]:
            recipes[n] = entry
    results = {"profile": profile, "about": prof["about"], "recipes": recipes}
    runs.atomic_save(results, results_path)
    if markdown:
        tables.update_markdown(markdown, profile, results)
    return results


def copy_picture(src, dst, side=2400):
    """src as a JPEG (quality 85, longer side at most `side`) at dst with .jpg; the path written."""
    dst = os.path.splitext(dst)[0] + ".jpg"
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.LANCZOS)
        with runs.atomic_file(dst) as f:
            im.save(f, "JPEG", quality=85)
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", choices=list(PROFILES))
    ap.add_argument("--only", nargs="+", metavar="RECIPE", help="these recipes of the profile")
    ap.add_argument("--scale-down", action="store_true", help="the profile at toy sizes on the CPU: a dry run")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides for every config-driven step")
    ap.add_argument("--jobs", type=int, help="recipes at once (default: the profile's; a benchmark runs alone)")
    ap.add_argument("--force", action="store_true", help="run the recipes again even if they finished")
    ap.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    ap.add_argument("--tables-only", action="store_true",
                    help="rebuild RESULTS.md's tables from results/<profile>.json")
    ap.add_argument("--out", default="out/results", help="where the recipes' folders go (<out>/<profile>/<recipe>)")
    ap.add_argument("--results", default="results", help="folder of <profile>.json")
    ap.add_argument("--markdown", default="RESULTS.md", help="the file whose tables are rebuilt")
    args = ap.parse_args(argv)
    profile = args.profile + ("-scaled" if args.scale_down else "")
    prof = PROFILES[args.profile]
    if args.scale_down:
        prof = prof | SCALE_DOWN | {"configs": prof.get("configs", []) + SCALE_DOWN["configs"]}
    unknown = [n for n in args.only or [] if n not in prof["recipes"]]
    if unknown:
        raise config.UserError(f"no recipe {', '.join(unknown)} in profile {args.profile}; its recipes: "
                        f"{', '.join(prof['recipes'])}")
    names = [n for n in prof["recipes"] if not args.only or n in args.only]
    out = os.path.abspath(in_repo(args.out))  # inside the repository: as a relative path, as recipes name it
    root = os.path.join(os.path.relpath(out, HERE) if out.startswith(HERE + os.sep) else out, profile)
    results_path = in_repo(os.path.join(args.results if not args.scale_down else args.out, f"{profile}.json"))
    markdown = None if args.scale_down else in_repo(args.markdown)
    plans = {}
    for n in prof["recipes"]:  # every command resolved first: a bad recipe stops before anything runs
        try:
            plans[n] = [expand(n, c, prof, root, args.set) for c in RECIPES[n]["commands"]]
        except (config.UserError, KeyError) as e:
            if n in names:
                raise config.UserError(f"recipe {n} does not resolve: {e}")
    prints = fingerprints(plans, root)
    if args.tables_only:
        results = publish(prof, profile, root, prints, results_path, markdown)
        return print(f"{args.markdown}: tables rebuilt from {len(results['recipes'])} recipes")
    deps = {n: {d for step in plans[n] for d in inputs_of(n, step, root).values()} for n in names}
    jobs = max(1, args.jobs or prof.get("jobs", 1))
    # alone: a benchmark, or a recipe whose steps want more threads than its share of the cores (spinning
    # OpenMP threads that outnumber the cores slow every recipe several-fold)
    alone = {n for n in names if RECIPES[n]["alone"] and not args.scale_down and args.profile != "smoke"
             or any(c is not None and (c["threads"] or os.cpu_count()) > max(1, (os.cpu_count() or 1) // jobs)
                    for _, _, c in plans[n])} if jobs > 1 else set()
    print(f"profile {profile}: {prof['about']}; recipes {', '.join(names)}; folders under {root}/")
    statuses, running, quiet = {}, {}, jobs > 1
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        try:
            while len(statuses) < len(names):
                for n in [n for n in names if n not in statuses and n not in running.values()]:
                    blocked = [d for d in deps[n] if statuses.get(d) in ("failed", "blocked", "stopped")]
                    if blocked:
                        statuses[n] = "blocked"
                        print(f"== {n}: not run, it needs {', '.join(blocked)}")
                    elif (len(running) < jobs and all(d in statuses for d in deps[n] if d in names)
                          and not (running and (n in alone or alone & set(running.values())))):
                        makes = [in_repo(move(m, root)) for m in RECIPES[n]["makes"]]
                        running[pool.submit(run_recipe, n, plans[n], prints[n], in_repo(os.path.join(root, n)), makes,
                                            args.force, args.dry_run, quiet)] = n
                if running:
                    done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        statuses[running.pop(future)] = future.result()
                    if not args.dry_run:
                        publish(prof, profile, root, prints, results_path, markdown)
        except KeyboardInterrupt as e:  # Ctrl-C reaches the steps too; a SIGTERM (`kill`) came to this process only
            _stopping.set()
            for p in list(_steps) if isinstance(e, runs.Stopped) else ():
                p.send_signal(e.signum)  # each step saves its epoch and stops; the pool waits for them
            why, status = runs.stop_reason(e)
            print(f"\n{why}: run the same command again to continue", file=sys.stderr)
            raise SystemExit(status)
    failed = [n for n, s in statuses.items() if s in ("failed", "blocked")]
    print(f"\n{profile}: " + ", ".join(f"{n} {s}" for n, s in statuses.items())
          + f"; results in {os.path.relpath(results_path)}")
    if failed:
        raise SystemExit(f"reproduce.py: {', '.join(failed)} failed; see the logs in their folders under {root}/")


if __name__ == "__main__":
    runs.cli(main)
