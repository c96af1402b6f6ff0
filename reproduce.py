"""Regenerate every headline result with one command: run the recipes of a profile, collect their JSON
into results/<profile>.json and rewrite the tables of RESULTS.md from it.

    python reproduce.py smoke                        # every CPU recipe on a tiny generated sample (~1.5 min)
    python reproduce.py cpu                          # the reduced WikiArt-16 runs RESULTS.md shows (hours)
    python reproduce.py gpu                          # the GPU recipes on one GPU, time caps within 9 min
    python reproduce.py gpu --scale-down             # the GPU recipes on the CPU at toy sizes: a dry run
    python reproduce.py cpu --only imbalance_w16_64  # some recipes of a profile
    python reproduce.py cpu --dry-run                # what would run, be skipped or resumed
    python reproduce.py cpu --set threads=1          # a config override for every config-driven step

A recipe is the list of commands RESULTS.md shows for one table or row family (for example `python
train.py -c configs/classifier_w16_64.json`, then `python test.py -c ...`), run in order as subprocesses
of this Python, each one's output teed to a numbered log in the recipe's folder. Every path under out/
in a command or in its resolved config is moved under out/results/<profile>/, so the recipe X (whose
config writes to out/X/) writes to out/results/<profile>/X/. A recipe whose steps all finished with the
same arguments, resolved config and inputs (what they read from other recipes' folders, by the
fingerprints of the steps that wrote it) is skipped; an interrupted step is continued (--resume for
train.py, autoencoder.py and style_transfer.py; compare_balance.py and style_transfer.py --evaluate reuse
what finished) and the steps after a step that ran run again. After each recipe, the JSON of every finished
recipe goes to results/<profile>.json, and each table between `<!-- table:<profile>/<name> -->` and
`<!-- /table -->` in RESULTS.md is rebuilt from it, with the commit, date, hardware, torch version and
wall time of its recipes; nothing outside the markers changes. <name> is a table family (all recipes of
that family in the profile) or one recipe. --scale-down writes to out/results/<profile>-scaled/ and
prints its tables instead.

To add a recipe: a config in configs/, an entry in RECIPES (commands, family, the files it makes), its
name in PROFILES. A new kind of table: a function in tables.py.
"""
import argparse
import codecs
import concurrent.futures
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

import torch
from PIL import Image

import config
import runs
import tables
from config import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
_steps = set()  # the step processes running now: a SIGTERM to this process is passed on to them
W16 = "../shared/data/wikiart16"
CONFIG_SCRIPTS = ("train.py", "test.py", "compare_balance.py", "autoencoder.py", "cluster.py", "style_transfer.py",
                  "text_to_image.py")
OUT_KEY = {"train.py": "out_dir", "test.py": "out_dir", "compare_balance.py": "out_dir",  # where a step writes
           "autoencoder.py": "autoencoder.out_dir", "cluster.py": "cluster.out_dir",
           "style_transfer.py": "style_transfer.out_dir", "text_to_image.py": "text_to_image.out_dir"}
READS = {"autoencoder.py": ("autoencoder",), "cluster.py": ("cluster", "autoencoder"),  # sections besides the top
         "style_transfer.py": ("style_transfer",), "text_to_image.py": ("text_to_image", "style_transfer")}
LAST_PT = {  # what --resume continues, for the scripts that have it
    "train.py": lambda c: os.path.join(c["out_dir"], "last.pt"),
    "autoencoder.py": lambda c: os.path.join(c["autoencoder"]["out_dir"], "last.pt"),
    "style_transfer.py": lambda c: os.path.join(c["style_transfer"]["out_dir"], c["style_transfer"]["mode"], "last.pt"),
    "text_to_image.py": lambda c: os.path.join(c["text_to_image"]["out_dir"], "last.pt")}


# ----------------------------------------------------------------------------------------------
# Recipes: commands as RESULTS.md shows them (run from the repository root). {data}, {prepare} and
# {bench} come from the profile. `makes`: the files a finished recipe has; its .json ones are collected.

def recipe(family, commands, makes, also=(), alone=False, pictures=()):
    """also: JSON files collected if they are there; alone: a timing benchmark, run while no other recipe runs;
    pictures: PNGs copied (as JPEGs) next to results/<profile>.json (profiles with "pictures") for RESULTS.md."""
    return {"family": family, "commands": commands, "makes": makes, "also": list(also), "alone": alone,
            "pictures": list(pictures)}


def classifier(name):
    return recipe("classifier", [f"train.py -c configs/{name}.json", f"test.py -c configs/{name}.json"],
                  [f"out/{name}/test_metrics.json", f"out/{name}/train_log.json"],
                  pictures=[f"out/{name}/confusion.png"])


FEATURES = ("code", "stats", "code+stats")


def autoencoder(name, features=FEATURES):
    clusters = [f"cluster.py -c configs/{name}.json --set cluster.feature={f} cluster.out_dir=out/{name}/cluster_{f}"
                for f in features]
    return recipe("autoencoder", [f"autoencoder.py -c configs/{name}.json", *clusters],
                  [f"out/{name}/metrics.json", f"out/{name}/train_log.json",
                   *(f"out/{name}/cluster_{f}/metrics.json" for f in features)],
                  pictures=[f"out/{name}/reconstructions.png", *(f"out/{name}/cluster_{f}/contingency.png"
                                                                 for f in features[1:2])])


def style_transfer(name, seeds=1, photos=False):
    """photos: the seed-0 model on scikit-learn's two real photos ({photos}), untold: every style, and one
    style each at 512 px."""
    use = [f"style_transfer.py -c configs/{name}.json --image {{photos}} {a}" for a in
           ("--style all --out photos", "--style Ukiyo_e --out photos_Ukiyo_e", "--style Fauvism --out photos_Fauvism")]
    shown = ["photos/00_china_all_styles", "photos/01_flower_all_styles", "photos_Ukiyo_e/00_china_Ukiyo_e",
             "photos_Fauvism/01_flower_Fauvism"]
    return recipe("style_transfer", [f"style_transfer.py --evaluate --seeds {seeds} -c configs/{name}.json",
                                     *(use if photos else [])],
                  [f"out/{name}/evaluation.json"], also=[f"out/{name}/residual/train_log.json"],
                  pictures=[f"out/{name}/{f}.png" for f in ("residual/grid", "residual/grid_told_source", "naive/grid",
                                                               "strength_curve", *(shown if photos else ()))])


def text_to_image(name):
    return recipe("text_to_image", [f"text_to_image.py --evaluate -c configs/{name}.json"],
                  [f"out/{name}/evaluation.json"], also=[f"out/{name}/train_log.json", f"out/{name}/vae/train_log.json"],
                  pictures=[f"out/{name}/grid.png", f"out/{name}/nearest.png", f"out/{name}/vae_reconstructions.png"])


def text_to_image_pretrain(name):
    """A base pipeline trained here without the styles (it stands in for a download): training only, its
    time reported alone; text_to_image recipes fine-tune and evaluate it."""
    return recipe("text_to_image_pretrain", [f"text_to_image.py -c configs/{name}.json"],
                  [f"out/{name}/train_log.json", f"out/{name}/vae/train_log.json", f"out/{name}/pipeline"],
                  also=[f"out/{name}/vae_decoder/train_log.json"], pictures=[f"out/{name}/grid.png"])


def bench(name):
    return recipe("bench", [f"prepare_data.py {{data}} out/{name}/images {{prepare}}",
                            f"bench.py out/{name}/images/train {{bench}} --out out/{name}"],
                  [f"out/{name}/bench.json"], alone=True)


IMBALANCE_64 = "none weights1 sampler logit_adjust drw none+posthoc sampler+posthoc logit_adjust+posthoc"
RECIPES = {
    "sample": recipe(None, ["sample_data.py --out out/sample --size 32 --scale 0.03"],
                     ["out/sample/train", "out/sample/test"]),
    "demo_sample": recipe("demo", [f"{script} -c configs/demo_sample.json" for script in (
        "train.py", "test.py", "autoencoder.py", "cluster.py", "style_transfer.py --evaluate")],
        [f"out/demo_sample/{f}" for f in ("classifier/test_metrics.json", "classifier/train_log.json",
                                          "autoencoder/metrics.json", "autoencoder/train_log.json",
                                          "autoencoder/cluster/metrics.json", "style_transfer/evaluation.json")],
        also=["out/demo_sample/style_transfer/residual/train_log.json"]),
    # CPU: WikiArt-16, reduced (64 px classifiers; 128 px autoencoder)
    "classifier_w16_64": classifier("classifier_w16_64"),
    "classifier_w16_64_base": classifier("classifier_w16_64_base"),
    "classifier_w16_64_bonusA": classifier("classifier_w16_64_bonusA"),
    "imbalance_w16_64": recipe("imbalance",
                               [f"compare_balance.py -c configs/imbalance_w16_64.json --options {IMBALANCE_64}"],
                               ["out/imbalance_w16_64/balance_comparison.json"]),
    "imbalance_w16_64_seeds": recipe("imbalance_seeds", [  # seed 0 is imbalance_w16_64
        f"compare_balance.py -c configs/imbalance_w16_64.json --options none sampler+posthoc "
        f"--set seed={s} out_dir=out/imbalance_w16_64_seeds/seed{s}" for s in (1, 2)],
        [f"out/imbalance_w16_64_seeds/seed{s}/balance_comparison.json" for s in (1, 2)]),
    "autoencoder_w16_128": autoencoder("autoencoder_w16_128"),
    "autoencoder_w16_64": autoencoder("autoencoder_w16_64", features=()),
    "style_transfer_w16_64": style_transfer("style_transfer_w16_64", seeds=3),
    "style_transfer_w16_128": style_transfer("style_transfer_w16_128", seeds=3),
    "style_transfer_w16_64_real": style_transfer("style_transfer_w16_64_real", seeds=3, photos=True),
    "style_transfer_w16_128_real": style_transfer("style_transfer_w16_128_real", seeds=3, photos=True),
    "bench_416": bench("bench_416"),
    "text_to_image_full_w16": text_to_image("text_to_image_full_w16"),  # the whole base fine-tuned
    "text_to_image_sample": text_to_image("text_to_image_sample"),
    "text_to_image_pretrain_w16": text_to_image_pretrain("text_to_image_pretrain_w16"),
    "text_to_image_lora_w16": text_to_image("text_to_image_lora_w16"),  # LoRA on text_to_image_pretrain_w16
    # GPU: WikiArt-16 at 128 px, each recipe with a time cap (max_minutes in its config)
    "classifier_w16_128": classifier("classifier_w16_128"),
    "classifier_w16_128_base": classifier("classifier_w16_128_base"),
    "classifier_w16_128_bonusA": classifier("classifier_w16_128_bonusA"),
    "imbalance_w16_128": recipe("imbalance", ["compare_balance.py -c configs/imbalance_w16_128.json --options "
                                              "none weights1 sampler logit_adjust none+posthoc sampler+posthoc"],
                                ["out/imbalance_w16_128/balance_comparison.json"]),
    "autoencoder_w16_128_gpu": autoencoder("autoencoder_w16_128_gpu"),
    "style_transfer_w16_128_gpu": style_transfer("style_transfer_w16_128_gpu", seeds=3),
    "bench_gpu": bench("bench_gpu"),
}

# longest first (two recipes run at once): the last to start are short, so both slots end together
CPU = ["text_to_image_pretrain_w16", "autoencoder_w16_128", "style_transfer_w16_128", "style_transfer_w16_128_real",
       "text_to_image_full_w16", "text_to_image_lora_w16", "imbalance_w16_64", "classifier_w16_64",
       "classifier_w16_64_base", "classifier_w16_64_bonusA", "imbalance_w16_64_seeds", "text_to_image_sample",
       "autoencoder_w16_64", "style_transfer_w16_64", "style_transfer_w16_64_real", "demo_sample", "bench_416"]
PROFILES = {
    # configs: overlaid on every config-driven step (after its own -c); set: --set items for each of them;
    # data, prepare, bench: fill the recipes' {placeholders}; jobs: the default of --jobs;
    # benchmark_alone: False lets the benchmark share the machine (smoke: its numbers mean nothing);
    # pictures: each recipe's key PNGs go to results/<profile>/<recipe>/ as JPEGs (committed, shown in RESULTS.md)
    "smoke": {"recipes": ["sample", *CPU], "configs": ["configs/smoke.json"], "jobs": 2, "benchmark_alone": False,
              "set": ["train_dir=out/sample/train", "test_dir=out/sample/test", "threads=1"], "data": "out/sample",
              "prepare": "--size 48 --limit 40", "bench": "--size 48 --epochs 2", "about": "the built-in sample "
              "generator at 32 px (27 styles, ~430 training images), tiny models, one epoch: it checks the "
              "pipeline, the numbers mean nothing"},
    "cpu": {"recipes": CPU, "jobs": 2, "pictures": True, "data": W16,  # 1 thread per recipe
            "prepare": "--size 416 --limit 3000", "bench": "--size 416 --epochs 3", "about": "WikiArt-16, reduced runs for a 2-core CPU, and make demo"},
    "gpu": {"recipes": ["classifier_w16_128", "classifier_w16_128_base", "classifier_w16_128_bonusA",
                        "imbalance_w16_128", "autoencoder_w16_128_gpu", "style_transfer_w16_128_gpu", "bench_gpu"],
            "data": W16, "prepare": "--size 128 --limit 3000",
            "bench": "--size 128 --epochs 2 --gpu-size 128 --gpu-batch 256 --gpu-steps 50",
            "budget_minutes": 9, "pictures": True,
            "about": "WikiArt-16 at 128 px on one GPU, each recipe with a time cap"},
}
SCALE_DOWN = {"configs": ["configs/scale_down.json"], "prepare": "--size 32 --limit 300",
              "bench": "--size 32 --epochs 2 --gpu-size 32 --gpu-batch 32 --gpu-steps 1 --device cpu --precision bf16"}


def settings(profile, scale_down=False):
    """A profile's settings, with the --scale-down overlay added after its own."""
    prof = dict(PROFILES[profile])
    if scale_down:
        prof |= {k: v for k, v in SCALE_DOWN.items() if k != "configs"}
        prof["configs"] = prof.get("configs", []) + SCALE_DOWN["configs"]
        prof["about"] += ", scaled down to toy sizes on the CPU (a dry run)"
    return prof


# ----------------------------------------------------------------------------------------------
# Steps: a recipe command in a profile, with its resolved config

def in_repo(path):
    return path if os.path.isabs(path) else os.path.join(HERE, path)


def move(value, root):
    """out/X -> <root>/X: a profile's copy of every output path."""
    return root + value[3:] if isinstance(value, str) and value.startswith("out/") else value


def resolve(argv):
    """The resolved config of a config-driven script's arguments, as the script will see it."""
    args, _ = config.config_parser(None).parse_known_args(argv)
    return config.load_config([config.DEFAULT_CONFIG] + [in_repo(p) for p in args.config], args.set, note_missing=False)


def placeholders(command, prof):
    """{data}, {prepare}, {bench} from the profile; {photos}: scikit-learn's two real photos."""
    photos = ""
    if "{photos}" in command:
        import sklearn.datasets
        folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        folder = os.path.relpath(folder, HERE) if os.path.abspath(folder).startswith(HERE + os.sep) else folder
        photos = " ".join(shlex.quote(os.path.join(folder, f)) for f in ("china.jpg", "flower.jpg"))
    return command.format(photos=photos, **{k: prof.get(k, "") for k in ("data", "prepare", "bench")})


def expand(name, command, prof, root, extra_set):
    """(script, argv, resolved config or None) of one recipe command in a profile: the profile's
    overlay and --set items added, every out/ path moved under root."""
    script, *argv = shlex.split(placeholders(command, prof))
    argv = [move(a, root) for a in argv]
    if script not in CONFIG_SCRIPTS:
        return script, argv, None
    argv += [a for c in prof.get("configs", []) for a in ("-c", c)]
    sets = [f"{k}={move(v, root)}" for k, _, v in (item.partition("=") for item in [*prof.get("set", []), *extra_set])]
    cfg = config.flatten(resolve(argv + (["--set", *sets] if sets else [])))
    out = cfg[OUT_KEY[script]]
    if not (out == f"out/{name}" or out.startswith(f"out/{name}/")):
        raise UserError(f"recipe {name}: {script} writes to {out}; its config must write under out/{name}/")
    sections, given = ("", *READS.get(script, ())), {item.partition("=")[0] for item in sets}  # sets: moved already
    moved = [f"{k}={move(v, root)}" for k, v in cfg.items()
             if move(v, root) != v and k.rpartition(".")[0] in sections and k not in given]
    argv += ["--set", *sets, *moved]
    return script, argv, resolve(argv)


def wide(plans, jobs, cores):
    """The recipes whose steps ask for more threads than their share of the cores when `jobs` recipes run
    at once: they run alone. (OpenMP threads that outnumber the cores spin against each other: a
    2-thread step beside another recipe on 2 cores ran 3.5x slower than alone.)"""
    share = max(1, cores // jobs)
    return [n for n, steps in plans.items() if any(cfg is not None and (cfg["threads"] or cores) > share
                                                   for _, _, cfg in steps)]


def fingerprint(script, argv, cfg, inputs=None):
    """What decides whether a finished step is still valid: its arguments, the parts of its resolved
    config it reads (a new key in another script's section does not rerun it) and `inputs`, the
    fingerprints of the steps that wrote what it reads from other recipes (a retrained autoencoder
    reruns the style transfer built on it)."""
    if cfg is not None:
        cfg = {k: v for k, v in cfg.items() if not isinstance(v, dict) or k in READS.get(script, ())}
    # a step that reads no other recipe keeps the fingerprint it had before inputs counted: it stays finished
    return hashlib.sha256(json.dumps([script, argv, cfg] + ([inputs] if inputs else []),
                                     sort_keys=True).encode()).hexdigest()[:16]


def inputs_of(name, step, root):
    """{path: recipe}: the paths in other recipes' folders that a step's arguments or resolved config name
    (what it reads from them: a recipe writes only into its own folder)."""
    _, argv, cfg = step
    values = list(argv) + (list(config.flatten(cfg).values()) if cfg else [])
    paths = {v: v[len(root) + 1:].split("/")[0] for v in values if isinstance(v, str) and v.startswith(root + "/")}
    return {p: n for p, n in paths.items() if n != name}


def writers(steps, path):
    """The indices of the steps whose output folder holds `path` (all of them where none says)."""
    inside = [i for i, (script, _, cfg) in enumerate(steps)
              if cfg is not None and (path + "/").startswith(config.flatten(cfg)[OUT_KEY[script]] + "/")]
    return inside or list(range(len(steps)))


def fingerprints(plans, root):
    """{recipe: its steps' fingerprints}, each with the fingerprints of the steps that write what it reads
    from other recipes (which are themselves fingerprinted with their inputs first: plans in profile order)."""
    prints = {}
    for n, steps in plans.items():
        prints[n] = [fingerprint(*step, {p: [prints[d][i] for i in writers(plans[d], p)]
                                         for p, d in inputs_of(n, step, root).items() if d in prints})
                     for step in steps]
    return prints


def step_environment(cfg):
    """Hardware and software of a step: the device its config picks and the threads torch will use."""
    device = runs.get_device(cfg["device"] if cfg else "auto")  # bench.py uses CUDA where there is one
    env = runs.environment(device)
    env["threads"] = (cfg["threads"] or torch.get_num_threads()) if cfg else None
    return env


def git_commit():
    """HEAD's short hash (+dirty if tracked files other than the generated ones changed);
    REPRO_COMMIT where there is no git (the GPU machine gets a copy of the working tree)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, check=True).stdout
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!RESULTS.md", ":!results").strip()
        return run("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("REPRO_COMMIT", "unknown")


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def run_step(script, argv, log_path, quiet):
    """Run `python script argv` from the repository root, its output teed to log_path (appended)."""
    cmd = [sys.executable, script, *argv]
    decode = codecs.getincrementaldecoder("utf-8")("replace")
    t0 = time.time()
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
                    sys.stdout.write(decode.decode(chunk))
                    sys.stdout.flush()
        except KeyboardInterrupt:  # the child got the Ctrl-C too: let it save what it has
            p.wait()
            raise
        finally:
            _steps.discard(p)
    return p.wait(), time.time() - t0


def run_recipe(name, steps, prints, folder, makes, force, dry_run, quiet):
    """Run what is left of a recipe (prints: its steps' fingerprints). Returns 'skipped', 'ran', 'resumed'
    or 'failed'."""
    state_path = os.path.join(folder, "reproduce.json")
    state = read_json(state_path, {"recipe": name, "steps": []})
    old = state["steps"] + [None] * (len(steps) - len(state["steps"]))
    finished = [o is not None and o["fingerprint"] == f and o["status"] == "done" for o, f in zip(old, prints)]
    if all(finished) and all(os.path.exists(m) for m in makes) and not force:
        print(f"== {name}: finished with the same config, skipped")
        return "skipped"
    status = "ran"
    state["steps"] = old[:len(steps)]
    rerun = force
    for i, ((script, argv, cfg), fp) in enumerate(zip(steps, prints)):
        if finished[i] and not rerun:
            print(f"== {name} [{i + 1}/{len(steps)}] finished earlier: python {script} ...")
            continue
        rerun = True  # every step after one that runs again uses its new outputs
        before = old[i] if old[i] is not None and old[i]["fingerprint"] == fp and old[i]["status"] != "done" else None
        last = LAST_PT[script](cfg) if script in LAST_PT else None
        resume = (before is not None and last is not None and os.path.exists(in_repo(last))
                  and os.path.getmtime(in_repo(last)) >= before["started_at"])  # this attempt's checkpoint
        args = argv + (["--resume"] if resume else [])
        print(f"== {name} [{i + 1}/{len(steps)}] {'resuming' if resume else 'running'}: "
              f"{shlex.join(['python', script, *args])}")
        if dry_run:
            continue
        status = "resumed" if resume else status
        record = {"command": shlex.join(["python", script, *argv]), "fingerprint": fp, "status": "started",
                  "started_at": before["started_at"] if before else time.time(), "commit": git_commit(),
                  "env": step_environment(cfg), "config": config_diff(cfg)}
        state["steps"][i] = record
        runs.atomic_save(state, state_path)
        log = os.path.join(folder, f"{i + 1}_{os.path.splitext(script)[0]}.log")
        rc, wall = run_step(script, args, log, quiet)
        record.update(status="done" if rc == 0 else "failed", finished=now(),
                      wall_s=wall + (before.get("wall_s", 0) if before else 0))  # resumed: both attempts
        runs.atomic_save(state, state_path)
        if rc != 0:
            print(f"== {name}: python {script} failed (exit status {rc}); its output is in {log}")
            return "failed"
    return status


def config_diff(cfg):
    """The keys of a resolved config that differ from the schema's defaults (what a recipe sets)."""
    if cfg is None:
        return None
    defaults = config.flatten(config.defaults())
    return {k: v for k, v in config.flatten(cfg).items() if defaults.get(k) != v}


# ----------------------------------------------------------------------------------------------
# Collecting: results/<profile>.json

def collect(name, prof, root):
    """The entry of a finished recipe in results/<profile>.json, from its folder (None if unfinished)."""
    folder, makes = in_repo(os.path.join(root, name)), [in_repo(move(m, root)) for m in RECIPES[name]["makes"]]
    state = read_json(os.path.join(folder, "reproduce.json"))
    steps = state["steps"] if state else []
    if not steps or any(s is None or s["status"] != "done" for s in steps) or not all(map(os.path.exists, makes)):
        return None
    outputs = {}
    for m in makes + [in_repo(move(a, root)) for a in RECIPES[name]["also"]]:
        if m.endswith(".json") and os.path.exists(m):
            data = read_json(m)
            if isinstance(data, dict):
                data.pop("confusion_matrix", None)  # the PNG shows it; keeps results/*.json small
            outputs[os.path.relpath(m, folder)] = data
    pictures = [p for p in (in_repo(move(m, root)) for m in RECIPES[name]["pictures"]) if os.path.exists(p)]
    main_step = max(steps, key=lambda s: s.get("wall_s", 0))
    alone = not prof.get("configs")  # the commands as RESULTS.md shows them are what ran (out/ moved)
    return {"family": RECIPES[name]["family"],
            "commands": [f"python {placeholders(c, prof)}" for c in RECIPES[name]["commands"]] if alone else None,
            "commit": ", ".join(sorted({s["commit"] for s in steps})), "date": steps[-1]["finished"],
            "env": main_step["env"], "wall_s": sum(s.get("wall_s", 0) for s in steps),
            "steps": [{k: s[k] for k in ("command", "wall_s", "finished", "config")} for s in steps],
            "outputs": outputs, "pictures": {os.path.relpath(p, folder).replace(os.sep, "_"): p for p in pictures}}


def needs(name, steps, root):
    """The recipes whose folders this recipe's steps read: they must finish first."""
    return {d for step in steps for d in inputs_of(name, step, root).values()}


def copy_picture(src, dst, side=2400):
    """src as a JPEG (quality 85) at dst with .jpg, its longer side at most `side` px: a figure of many
    128-px tiles keeps about its native resolution at a seventh of the PNG's bytes. The path written."""
    dst = os.path.splitext(dst)[0] + ".jpg"
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.LANCZOS)
        with runs.atomic_file(dst) as f:
            im.save(f, "JPEG", quality=85)
    return dst


def with_recipe_changes(results, prof, root):
    """results for the tables: an entry made by an earlier version of its recipe lists what changed
    since (`recipe_changed`: resolved config keys, then -> now), so a table never passes an old run off
    as its recipe's."""
    recipes, defaults = {}, config.flatten(config.defaults())
    for n, e in results["recipes"].items():
        try:
            now = [config_diff(cfg) for _, _, cfg in (expand(n, c, prof, root, []) for c in RECIPES[n]["commands"])]
        except (KeyError, UserError):  # a recipe that no longer exists or no longer resolves
            now = None
        then = [s.get("config") for s in e.get("steps", [])]
        value = lambda diff, k: diff.get(k, defaults.get(k))  # a key not in a diff has its default
        changed = ["its commands"] if now is None or len(now) != len(then) else sorted(
            {f"{k} {value(a, k)} -> {value(b, k)}" for a, b in zip(then, now) if a is not None and b is not None
             for k in set(a) | set(b) if value(a, k) != value(b, k)})
        recipes[n] = dict(e, recipe_changed=changed) if changed else e
    return dict(results, recipes=recipes)


def publish(prof, profile, root, results, results_path, markdown):
    """Collect every finished recipe of the profile into results/<profile>.json (a recipe not finished
    here keeps its earlier entry) and rebuild the markdown's tables; the new results."""
    recipes = {}
    for n in prof["recipes"]:
        entry = collect(n, prof, root)
        if entry is not None:  # its pictures copied (and named) next to results/<profile>.json, if wanted
            folder = os.path.join(os.path.dirname(results_path), profile, n)
            entry["pictures"] = sorted(os.path.relpath(copy_picture(src, os.path.join(folder, name)), HERE)
                                       for name, src in entry["pictures"].items()) if prof.get("pictures") else []
        entry = entry or results["recipes"].get(n)
        if entry is not None and RECIPES[n]["family"] is not None:
            recipes[n] = entry
    results = {"profile": profile, "about": prof["about"], "recipes": recipes}
    runs.atomic_save(results, results_path)
    if markdown:
        tables.update_markdown(markdown, profile, with_recipe_changes(results, prof, root))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", choices=list(PROFILES))
    ap.add_argument("--only", nargs="+", metavar="RECIPE", help="these recipes of the profile (in its order)")
    ap.add_argument("--scale-down", action="store_true",
                    help="the profile's recipes at toy sizes on the CPU (bf16, batch 256, time caps kept): a dry run")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides for every config-driven step, e.g. threads=1")
    ap.add_argument("--jobs", type=int, help="recipes run at once (a recipe waits for those it reads from; a "
                    "benchmark, or a recipe with more threads than its share of the cores, runs alone; with more "
                    "than 1, output goes only to the logs); default: the profile's (smoke and cpu: 2; gpu: 1)")
    ap.add_argument("--force", action="store_true", help="run the recipes' commands again even if they finished "
                    "(compare_balance.py and style_transfer.py still reuse their finished parts: delete a folder to "
                    "start it from scratch)")
    ap.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    ap.add_argument("--tables-only", action="store_true",
                    help="run nothing: rebuild the markdown's tables from results/<profile>.json")
    ap.add_argument("-q", "--quiet", action="store_true", help="step output only in the logs")
    ap.add_argument("--out", default="out/results", help="where the recipes' folders go (<out>/<profile>/<recipe>)")
    ap.add_argument("--results", default="results", help="folder of <profile>.json (committed)")
    ap.add_argument("--markdown", default="RESULTS.md", help="the file whose tables are rebuilt")
    args = ap.parse_args(argv)

    profile = args.profile + ("-scaled" if args.scale_down else "")
    prof = settings(args.profile, args.scale_down)
    jobs = max(1, args.jobs or prof.get("jobs", 1))
    unknown = [n for n in args.only or [] if n not in prof["recipes"]]
    if unknown:
        raise UserError(f"no recipe {', '.join(unknown)} in profile {args.profile}; "
                        f"its recipes: {', '.join(prof['recipes'])}")
    names = [n for n in prof["recipes"] if not args.only or n in args.only]
    out_root = os.path.abspath(in_repo(args.out))
    root = os.path.join(os.path.relpath(out_root, HERE) if out_root.startswith(HERE + os.sep) else out_root, profile)
    results_path = in_repo(os.path.join(args.out, f"{profile}.json") if args.scale_down
                           else os.path.join(args.results, f"{profile}.json"))
    markdown = None if args.scale_down else in_repo(args.markdown)

    if args.tables_only:
        results = read_json(results_path)
        if results is None:
            raise UserError(f"no results at {results_path}: run the profile first")
        rebuilt = tables.update_markdown(markdown, profile, with_recipe_changes(results, prof, root))
        print(f"{args.markdown}: rebuilt {', '.join(rebuilt) or 'no table'}")
        return

    # every command resolved first, so a bad recipe stops before anything runs
    plans = {n: [expand(n, c, prof, root, args.set) for c in RECIPES[n]["commands"]] for n in prof["recipes"]}
    deps = {n: needs(n, plans[n], root) for n in names}
    for n in names:
        later = [d for d in deps[n] if d in prof["recipes"] and prof["recipes"].index(d) > prof["recipes"].index(n)]
        if later:
            raise UserError(f"recipe {n} reads the outputs of {', '.join(later)}, which come after it in {profile}")
    prints = fingerprints(plans, root)

    cores = os.cpu_count() or 1
    exclusive = set(wide({n: plans[n] for n in names}, jobs, cores)) if jobs > 1 else set()
    if exclusive:
        print(f"{', '.join(sorted(exclusive))}: more threads than {cores} cores / {jobs} recipes at once: run alone")
    if prof.get("benchmark_alone", True):
        exclusive |= {n for n in names if RECIPES[n]["alone"]}
    print(f"profile {profile}: {prof['about']}; recipes {', '.join(names)}; folders under {root}/")
    results = read_json(results_path) or {"profile": profile, "recipes": {}}
    statuses, running, t0 = {}, {}, time.time()
    quiet = args.quiet or jobs > 1

    def ready(n):  # its inputs are there, a slot is free, and a benchmark or a wide recipe has the machine to itself
        alone = n in exclusive or any(r in exclusive for r in running.values())
        return len(running) < jobs and all(d in statuses for d in deps[n] if d in names) and not (alone and running)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        try:
            while len(statuses) < len(names):
                for n in names:
                    if n in statuses or n in running.values():
                        continue
                    blocked = [d for d in deps[n] if statuses.get(d) in ("failed", "blocked")]
                    if blocked:
                        statuses[n] = "blocked"
                        print(f"== {n}: not run, it needs {', '.join(blocked)}")
                    elif ready(n):
                        makes = [in_repo(move(m, root)) for m in RECIPES[n]["makes"]]
                        folder = in_repo(os.path.join(root, n))
                        if not args.dry_run:  # a dry run leaves nothing behind
                            os.makedirs(folder, exist_ok=True)
                        running[pool.submit(run_recipe, n, plans[n], prints[n], folder, makes, args.force,
                                            args.dry_run, quiet)] = n
                if not running:
                    continue
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    statuses[running.pop(future)] = future.result()
                if not args.dry_run:
                    results = publish(prof, profile, root, results, results_path, markdown)
        except KeyboardInterrupt as e:  # Ctrl-C reaches the steps too; a SIGTERM (`kill`) may have come here only
            for p in list(_steps) if isinstance(e, runs.Stopped) else ():
                p.send_signal(e.signum)  # each step saves its epoch and stops; the pool waits for them
            why, status = runs.stop_reason(e)
            print(f"\n{why}: run the same command again to continue", file=sys.stderr)
            raise SystemExit(status)
    if args.dry_run:
        return

    for n, e in results["recipes"].items():  # Part 3's evaluation.json is changing: say what it holds
        for k, v in e["outputs"].items():
            if k.endswith("evaluation.json") and isinstance(v, dict):
                print(f"{n}/{k} holds: {', '.join(sorted(v))}")
    results = with_recipe_changes(results, prof, root)
    made = tables.all_tables(results, profile)
    if args.scale_down:
        for name, table in made.items():
            print(f"\n### {profile}/{name}\n\n{table}")
    else:
        rebuilt = tables.update_markdown(markdown, profile, results)
        missing = [n for n in made if n not in rebuilt]
        print(f"\n{args.markdown}: tables {', '.join(f'{profile}/{n}' for n in rebuilt) or 'none'} are up to date"
              + (f"; no marker for {', '.join(f'<!-- table:{profile}/{n} -->' for n in missing)}" if missing else ""))
    total = sum(e["wall_s"] for e in results["recipes"].values())
    print(f"\n{profile}: " + ", ".join(f"{n} {s}" for n, s in statuses.items())
          + f"; {tables.duration(time.time() - t0)} now; {tables.duration(total)} for all its recipes"
          + (f" (budget {prof['budget_minutes']} min)" if prof.get("budget_minutes") and not args.scale_down else "")
          + f"; results in {os.path.relpath(results_path)}")
    failed = [n for n, s in statuses.items() if s in ("failed", "blocked")]
    if failed:
        raise SystemExit(f"reproduce.py: {', '.join(failed)} failed; see the logs in their folders under {root}/")


if __name__ == "__main__":
    runs.cli(main)
