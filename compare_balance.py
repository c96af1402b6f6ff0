"""Part 1: train one classifier per class-imbalance option, same seed/model/budget, and compare them.

    python compare_balance.py                                   # every option on the sample data
    python compare_balance.py --options none logit_adjust sampler sampler+posthoc --set epochs=5
    python compare_balance.py --set train_dir=../shared/data/wikiart16/train \\
        test_dir=../shared/data/wikiart16/test image_size=128 out_dir=out/balance_w16

Each option runs `train.py` then `test.py` with `--set balance=<option> out_dir=<out_dir>/<option>`
(`<option>+posthoc` also sets posthoc=true: the same training, then a test-time prior correction);
an option whose run already finished with the same config is reused (re-running resumes a comparison).
Best epochs are picked on the validation split; the test columns are reported, never used to choose.
Writes <out_dir>/balance_comparison.{md,json,png}: accuracy, balanced accuracy, macro-F1 and the
worst per-class recall, one row per option; and balance_per_style.png: every option's test recall per
style, styles sorted by training count.
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch
from tqdm import tqdm

import wikiart

parser = wikiart.config_parser(__doc__)
# "<option>+posthoc": that training, then the test-time prior correction tuned on validation (posthoc=true)
OPTIONS = [*wikiart.BALANCE_OPTIONS, *(o + "+posthoc" for o in wikiart.BALANCE_OPTIONS)]
parser.add_argument("--options", nargs="+", default=[*wikiart.BALANCE_OPTIONS, "none+posthoc", "sampler+posthoc"],
                    choices=OPTIONS, metavar="OPTION",
                    help="balance options to compare (default: all, plus none+posthoc and sampler+posthoc): "
                         f"{', '.join(wikiart.BALANCE_OPTIONS)}, each optionally +posthoc")
args, cfg = wikiart.parse_config(parser)
base_out = cfg["out_dir"] if "out_dir" in wikiart.explicit_keys(args) else "out/balance"
here = os.path.dirname(os.path.abspath(__file__))
passthrough = ["-c", args.config, "--set", *args.set]


def finished(out, run_cfg):
    """A finished earlier run with exactly this config is reused, so an interrupted comparison resumes."""
    metrics, ckpt = os.path.join(out, "test_metrics.json"), os.path.join(out, "last.pt")
    if not (os.path.exists(metrics) and os.path.exists(ckpt)):
        return False
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    defaults = wikiart.load_config()  # a key added to config.json after that run: it ran with the default
    classifier_keys = [k for k, v in run_cfg.items() if not isinstance(v, dict)]  # not the other parts' sections
    return (all(saved["config"].get(k, defaults[k]) == run_cfg[k] for k in classifier_keys)
            and saved["epoch"] + 1 == run_cfg["epochs"])


rows, tests = [], {}
for option in tqdm(args.options, desc="balance options", unit="run"):
    out = os.path.join(base_out, option)
    balance, _, posthoc = option.partition("+")
    overrides = [f"balance={balance}", f"posthoc={str(bool(posthoc)).lower()}", f"out_dir={out}"]
    if finished(out, wikiart.load_config(args.config, [*args.set, *overrides])):
        print(f"balance={option}: reusing the finished run in {out}")
        overrides = None
    for script in ("train.py", "test.py") if overrides else ():
        cmd = [sys.executable, os.path.join(here, script), *passthrough, *overrides]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"{script} failed for balance={option}: {' '.join(cmd)}")
    with open(os.path.join(out, "test_metrics.json")) as f:
        test = json.load(f)
    with open(os.path.join(out, "train_log.json")) as f:
        history = json.load(f)
    best_val = max((h.get("val_balanced_accuracy", 0) for h in history), default=0)
    rows.append({"balance": option, "posthoc_tau": test.get("posthoc_tau"),
                 "val_balanced_accuracy": best_val, "accuracy": test["accuracy"],
                 "balanced_accuracy": test["balanced_accuracy"], "macro_f1": test["macro_f1"],
                 "worst_recall": test["worst_recall"],
                 "recall_per_style": {n: m["recall"] for n, m in test["per_class"].items() if m["support"]},
                 "seconds": sum(h["seconds"] for h in history)})
    tests[option] = test

columns = ["val_balanced_accuracy", "accuracy", "balanced_accuracy", "macro_f1", "worst_recall"]
lines = [f"Data: {cfg['train_dir']} -> {cfg['test_dir']}, mode {cfg['mode']}, {cfg['epochs']} epochs, "
         f"image_size {cfg['image_size']}, seed {cfg['seed']} (test columns: never used for selection)", "",
         "| balance | " + " | ".join(c.replace("_", " ") for c in columns) + " | post-hoc τ | train s |",
         "|---" * (len(columns) + 3) + "|"]
for r in rows:
    tau = "" if r["posthoc_tau"] is None else f"{r['posthoc_tau']:+.2f}"
    lines.append(f"| {r['balance']} | " + " | ".join(f"{100 * r[c]:.1f}" for c in columns) +
                 f" | {tau} | {r['seconds']:.0f} |")
table = "\n".join(lines)
print("\n" + table)
os.makedirs(base_out, exist_ok=True)
wikiart.atomic_write_text(table + "\n", os.path.join(base_out, "balance_comparison.md"))
wikiart.atomic_save({"config": cfg, "rows": rows}, os.path.join(base_out, "balance_comparison.json"))

p = wikiart.plt()
fig, ax = p.subplots(figsize=(1.1 * len(rows) + 4, 4))
metrics = ["accuracy", "balanced_accuracy", "macro_f1", "worst_recall"]
width = 0.8 / len(metrics)
for i, m in enumerate(metrics):
    ax.bar(np.arange(len(rows)) + i * width, [r[m] for r in rows], width, label=m.replace("_", " "))
ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [r["balance"] for r in rows], rotation=20)
ax.set_ylim(0, 1)
ax.set_title(f"class-imbalance options on {cfg['test_dir']} ({cfg['mode']})")
ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
fig.tight_layout()
fig.savefig(os.path.join(base_out, "balance_comparison.png"), dpi=110)

# the per-style view: where each option's gains and losses fall, styles sorted by training count
label_counts = test.get("label_counts") or torch.load(  # test.py of before label_counts were saved
    os.path.join(out, "best.pt"), map_location="cpu", weights_only=False)["label_counts"]
wikiart.plot_per_class_recall(tests, label_counts, os.path.join(base_out, "balance_per_style.png"),
                              "recall per style (training count in brackets)")
print(f"wrote {base_out}/balance_comparison.md, .json, .png and balance_per_style.png")
