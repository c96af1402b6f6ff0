"""Evaluate a trained classifier on the test folder.

    python test.py                                   # out_dir/best.pt from config.json
    python test.py --set out_dir=out/w16             # another run
    python test.py --checkpoint out/w16/last.pt --set test_dir=../shared/data/wikiart16/test

The model, its image size and its style map come from the checkpoint; the test folder is the one it
was trained alongside unless test_dir is set here. Test images are labelled by style *name* through
the stored map, so labels cannot shift between runs. Writes to out_dir: test_metrics.json,
confusion.png (rows normalised) and per_class_recall.png (styles sorted by training count).
"""
import os
import sys

import torch

import config
import metrics
import plots
import runs
import sample_data
import wikiart


def load_classifier(path, device):
    """(model in eval mode, checkpoint) from a train.py checkpoint."""
    ckpt = runs.load_checkpoint(path, "a train.py checkpoint (out_dir/best.pt or last.pt)",
                                needs=("model", "config", "class_to_idx"))
    model = wikiart.make_classifier(ckpt["config"], len(ckpt["class_to_idx"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device, memory_format=torch.channels_last).eval(), ckpt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--checkpoint", help="default: out_dir/best.pt")
    args, cfg = config.parse_config(parser, argv)
    path = args.checkpoint or os.path.join(cfg["out_dir"], "best.pt")
    if not os.path.exists(path):
        raise config.UserError(f"no checkpoint at {path}: run train.py first (or pass --checkpoint / --set out_dir=...)")
    out_dir = os.path.dirname(os.path.abspath(path))

    # Everything about the model comes from the checkpoint; the user may only point at other data.
    device = runs.get_device(cfg["device"])
    model, ckpt = load_classifier(path, device)
    run_cfg = dict(ckpt["config"])
    for key in config.explicit_keys(args) & {"test_dir", "device", "cache_dir", "threads", "precision"}:
        run_cfg[key] = cfg[key]
    run_cfg.setdefault("threads", 0)
    run_cfg.setdefault("precision", "auto")
    runs.start(run_cfg)
    sample_data.ensure_sample(run_cfg)
    data = wikiart.load_split(run_cfg, "test", class_to_idx=ckpt["class_to_idx"])

    logits = wikiart.predict(model, data.images, list(range(len(data))), 256, device, desc="testing",
                             precision=run_cfg["precision"])
    if "logit_bias" in ckpt:  # posthoc=true: - tau * log prior, tau chosen on the validation split
        logits = logits + ckpt["logit_bias"]
    m = metrics.classification_metrics(data.labels.numpy(), logits.argmax(1).numpy(), data.classes)
    majority = max(m["per_class"].values(), key=lambda c: c["support"])["support"] / len(data)
    m.update(checkpoint=path, epoch=ckpt["epoch"] + 1, test_dir=run_cfg["test_dir"], n_images=len(data),
             majority_class_rate=majority, skipped=data.skipped, mode=run_cfg["mode"],
             balance=run_cfg["balance"], posthoc_tau=ckpt.get("posthoc_tau"),
             classes=data.classes, label_counts=ckpt["label_counts"])

    print(metrics.format_per_class(m, ckpt["label_counts"]))
    print(f"\n{run_cfg['mode']} on {len(data)} test images of {run_cfg['test_dir']}: accuracy {m['accuracy']:.4f}  "
          f"balanced accuracy {m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
          f"(majority class {majority:.4f})")
    runs.atomic_save(m, os.path.join(out_dir, "test_metrics.json"))
    runs.save_run_config(run_cfg, out_dir, "test.py", argv)
    plots.plot_confusion(m["confusion_matrix"], data.classes, os.path.join(out_dir, "confusion.png"),
                         f"{run_cfg['mode']}: test confusion (rows normalised)")
    plots.plot_per_class_recall(m, ckpt["label_counts"], os.path.join(out_dir, "per_class_recall.png"),
                                f"{run_cfg['mode']} / balance={run_cfg['balance']}: test recall per style")
    print(f"wrote {out_dir}/test_metrics.json, confusion.png, per_class_recall.png")


if __name__ == "__main__":
    runs.cli(main)
