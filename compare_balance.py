"""Part 1: train one classifier per class-imbalance option (same seed, model, budget) and compare them.

    python compare_balance.py                                   # every option on the sample data
    python compare_balance.py --options none sampler sampler+posthoc --set epochs=5
    python compare_balance.py -c configs/imbalance_w16_64.json  # the WikiArt-16 comparison (RESULTS.md)

Option X runs train.py and test.py with balance=X into <out_dir>/X; X+posthoc calibrates X's run on the
validation split (as posthoc=true does) into <out_dir>/X+posthoc. The same command again continues an interrupted
comparison. Writes <out_dir>/balance_comparison.{md,json,png} and balance_per_style.png (test recall per style).
"""
import json
import os
import sys

import numpy as np
from tqdm import tqdm

import config
import images
import plots
import runs
import sample_data
import test
import train
import wikiart

OPTIONS = [*wikiart.BALANCE_OPTIONS, *(o + "+posthoc" for o in wikiart.BALANCE_OPTIONS)]
DEFAULT_OPTIONS = [*wikiart.BALANCE_OPTIONS, "none+posthoc", "sampler+posthoc"]
TEST_COLUMNS = ["accuracy", "balanced_accuracy", "macro_f1", "worst_recall"]  # from test.py's test_metrics.json


def posthoc_from(plain_out, out, cfg):
    """<out>/best.pt: the plain run's best model with the post-hoc bias chosen on its validation split."""
    device = runs.get_device(cfg["device"])
    model, best = test.load_classifier(os.path.join(plain_out, "best.pt"), device)
    data = wikiart.load_split(best["config"], "train")
    _, val_idx = wikiart.stratified_split(data.labels, best["config"]["val_fraction"], best["config"]["seed"])
    if not len(val_idx):
        raise config.UserError(f"+posthoc chooses tau on the validation split, but val_fraction="
                               f"{best['config']['val_fraction']} leaves no validation images: raise val_fraction")
    best = train.calibrate_posthoc(best, model, data, val_idx, device=device)
    best["config"]["out_dir"] = out
    runs.atomic_save(best, os.path.join(out, "best.pt"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--options", nargs="+", default=DEFAULT_OPTIONS, choices=OPTIONS, metavar="OPTION",
                        help="balance options to compare (default: all, plus none+posthoc and sampler+posthoc): "
                             f"{', '.join(wikiart.BALANCE_OPTIONS)}, each optionally +posthoc")
    args, cfg = config.parse_config(parser, argv)
    base_out = cfg["out_dir"] if "out_dir" in config.explicit_keys(args) else "out/balance"
    sample_data.ensure_sample(cfg, ["train"])
    images.scan_folder(cfg["train_dir"])  # a missing training folder is one line, before base_out is made
    runs.lock_out_dir(base_out)  # a second comparison into it stops here (each train.py run locks its own)
    passthrough = [a for p in args.config for a in ("-c", p)] + ["--set", *args.set]

    rows, tests = [], {}
    for option in tqdm(args.options, desc="balance options", unit="run"):
        balance, _, posthoc = option.partition("+")
        plain_out, out = os.path.join(base_out, balance), os.path.join(base_out, option)
        run_argv = passthrough + [f"balance={balance}", "posthoc=false", f"out_dir={plain_out}"]
        train.main(run_argv + (["--resume"] if os.path.exists(os.path.join(plain_out, "last.pt")) else []))
        test.main(run_argv)
        if posthoc:
            posthoc_from(plain_out, out, cfg)
            test.main(passthrough + [f"out_dir={out}"])
        with open(os.path.join(out, "test_metrics.json")) as f:
            result = json.load(f)
        with open(os.path.join(plain_out, "train_log.json")) as f:
            history = json.load(f)
        best_val = max((h.get("val_balanced_accuracy", 0) for h in history), default=0)
        rows.append({"balance": option, "posthoc_tau": result.get("posthoc_tau"), "val_balanced_accuracy": best_val,
                     **{c: result[c] for c in TEST_COLUMNS},
                     "recall_per_style": {n: m["recall"] for n, m in result["per_class"].items() if m["support"]},
                     "seconds": sum(h["seconds"] for h in history), "epochs": len(history)})
        tests[option] = result

    columns = ["val_balanced_accuracy", *TEST_COLUMNS]
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
    runs.atomic_write_text(table + "\n", os.path.join(base_out, "balance_comparison.md"))
    runs.atomic_save({"config": cfg, "rows": rows}, os.path.join(base_out, "balance_comparison.json"))
    runs.save_run_config(cfg, base_out, "compare_balance.py", argv)

    p = plots.plt()
    fig, ax = p.subplots(figsize=(1.1 * len(rows) + 4, 4))
    width = 0.8 / len(TEST_COLUMNS)
    for i, m in enumerate(TEST_COLUMNS):
        ax.bar(np.arange(len(rows)) + i * width, [r[m] for r in rows], width, label=m.replace("_", " "))
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [r["balance"] for r in rows], rotation=20)
    ax.set(ylim=(0, 1), title=f"class-imbalance options on {cfg['test_dir']} ({cfg['mode']})")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    with runs.atomic_file(os.path.join(base_out, "balance_comparison.png")) as f:
        fig.savefig(f, dpi=110)
    p.close(fig)
    # the per-style view: where each option's gains and losses fall, styles sorted by training count
    with runs.atomic_file(os.path.join(base_out, "balance_per_style.png")) as f:
        plots.plot_per_class_recall(tests, next(iter(tests.values()))["label_counts"], f,
                                    "recall per style (training count in brackets)")
    print(f"wrote {base_out}/balance_comparison.md, .json, .png and balance_per_style.png")


if __name__ == "__main__":
    runs.cli(main)
