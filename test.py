"""Evaluate a trained classifier on a labelled folder, or classify your own images with it.

    python test.py                                   # out_dir/best.pt on the run's own test folder
    python test.py --set test_dir=../shared/data/wikiart16/test   # another labelled folder
    python test.py --image photo.jpg my_paintings/ --topk 5       # your images: the top styles of each

The model, its image size and its style map come from the checkpoint (test images are labelled by style
name through it). A labelled folder gives test_metrics.json, confusion.png, per_class_recall.png in out_dir
(another folder: out_dir/eval_<folder>/). --image decodes files as training did (EXIF orientation, colour
profile, squashed) and writes predictions.{csv,json,png} to out_dir/predictions/; unreadable files are skipped.
"""
import csv
import os
import re
import sys

import torch

import config
import metrics
import plots
import runs
import sample_data
import images
import wikiart


def load_classifier(path, device):
    """(model in eval mode, checkpoint) from a train.py checkpoint."""
    ckpt = runs.load_checkpoint(path, "a train.py checkpoint (out_dir/best.pt or last.pt)",
                                needs=("model", "config", "class_to_idx", "label_counts"))
    ckpt["config"] = config.complete(ckpt["config"])  # keys added since that run: their defaults
    model = wikiart.make_classifier(ckpt["config"], len(ckpt["class_to_idx"]))
    runs.load_weights(model, ckpt["model"], path)
    return model.to(device, memory_format=torch.channels_last).eval(), ckpt


def scores(model, ckpt, images, device, desc, precision="auto"):
    """Logits of uint8 images (N, H, W, 3) plus the checkpoint's post-hoc bias (posthoc=true), if any."""
    return wikiart.predict(model, images, range(len(images)), 256, device, desc, precision) + ckpt.get("logit_bias", 0)


def folder_name(path):
    """A short name for a folder's results: its last two path components, e.g. wikiart16_test."""
    parts = os.path.realpath(path).strip(os.sep).split(os.sep)[-2:]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)) or "root"


def evaluate_folder(model, ckpt, run_cfg, path, results_dir, device, argv):
    """Accuracy, balanced accuracy, macro-F1, per-class table and figures on a labelled folder."""
    sample_data.ensure_sample(run_cfg, ["test"])
    data = wikiart.load_split(run_cfg, "test", class_to_idx=ckpt["class_to_idx"])
    logits = scores(model, ckpt, data.images, device, "testing", run_cfg["precision"])
    m = metrics.classification_metrics(data.labels.numpy(), logits.argmax(1).numpy(), data.classes)
    majority = max(m["per_class"].values(), key=lambda c: c["support"])["support"] / len(data)
    m.update(checkpoint=path, epoch=ckpt["epoch"] + 1, test_dir=run_cfg["test_dir"], n_images=len(data),
             majority_class_rate=majority, skipped=data.skipped, mode=run_cfg["mode"], balance=run_cfg["balance"],
             posthoc_tau=ckpt.get("posthoc_tau"), classes=data.classes, label_counts=ckpt["label_counts"],
             image_size=run_cfg["image_size"], command=runs.command_line("test.py", argv))

    print(metrics.format_per_class(m, ckpt["label_counts"]))
    print(f"\n{run_cfg['mode']} on {len(data)} images of {run_cfg['test_dir']}: accuracy {m['accuracy']:.4f}  balanced "
          f"accuracy {m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  (majority class {majority:.4f})")
    runs.atomic_save(m, os.path.join(results_dir, "test_metrics.json"))
    runs.save_run_config(run_cfg, results_dir, "test.py", argv)
    with runs.atomic_file(os.path.join(results_dir, "confusion.png")) as f:
        plots.plot_confusion(m["confusion_matrix"], data.classes, f,
                             f"{run_cfg['mode']}: test confusion (rows normalised)")
    with runs.atomic_file(os.path.join(results_dir, "per_class_recall.png")) as f:
        plots.plot_per_class_recall(m, ckpt["label_counts"], f,
                                    f"{run_cfg['mode']} / balance={run_cfg['balance']}: test recall per style")
    print(f"wrote {results_dir}/test_metrics.json, confusion.png, per_class_recall.png")


def classify_images(model, ckpt, run_cfg, path, inputs, topk, results_dir, device, argv):
    """The top-k styles of each image named by --image: printed, and saved as CSV, JSON and PNG."""
    classes = sorted(ckpt["class_to_idx"], key=ckpt["class_to_idx"].get)
    hint = "; to score a labelled <Style>/ folder: python test.py --set test_dir={folder}"
    pictures, paths, skipped = images.load_image_inputs(inputs, run_cfg["image_size"], hint)
    probs = torch.softmax(scores(model, ckpt, pictures, device, "classifying", run_cfg["precision"]), 1)
    k = min(topk, len(classes))
    top_p, top_i = probs.topk(k, 1)
    rows = [{"path": p, "top": [{"style": classes[i], "probability": float(q)} for q, i in zip(qs, idx.tolist())],
             "probabilities": {c: float(q) for c, q in zip(classes, ps)}}
            for p, qs, idx, ps in zip(paths, top_p, top_i, probs)]

    width = min(40, max(len(p) for p in paths))
    print(f"{'image':{width}s}  " + "  ".join(f"{f'top-{j + 1}':>33s}" for j in range(k)))
    for r in rows:
        name = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3):]
        print(f"{name:{width}s}  " + "  ".join(f"{t['style']:>26s} {100 * t['probability']:5.1f}%" for t in r["top"]))

    with runs.atomic_file(os.path.join(results_dir, "predictions.csv"), "w") as f:
        writer = csv.writer(f)
        writer.writerow(["path"] + [f"{c}_{j + 1}" for j in range(k) for c in ("style", "probability")])
        writer.writerows([r["path"]] + [v for t in r["top"] for v in (t["style"], f"{t['probability']:.6f}")]
                         for r in rows)
    runs.atomic_save({"checkpoint": path, "epoch": ckpt["epoch"] + 1, "mode": run_cfg["mode"],
                      "image_size": run_cfg["image_size"], "fit": "squash", "topk": k,
                      "posthoc_tau": ckpt.get("posthoc_tau"), "inputs": list(inputs),
                      "command": runs.command_line("test.py", argv), "classes": classes,
                      "n_images": len(rows), "skipped": skipped, "predictions": rows},
                     os.path.join(results_dir, "predictions.json"))
    runs.save_run_config(run_cfg, results_dir, "test.py", argv)
    shown = rows[:plots.SHOW_IMAGES]  # drawn as the user sees them: upright, own aspect ratio
    pictures = [images.decode_image(r["path"], 160, "letterbox") for r in shown]
    with runs.atomic_file(os.path.join(results_dir, "predictions.png")) as f:
        plots.plot_top_styles(pictures, [os.path.basename(r["path"]) for r in shown], [r["top"] for r in shown], f,
                              f"{run_cfg['mode']} ({os.path.basename(path)}, {run_cfg['image_size']} px): "
                              f"top-{k} styles")
    print(f"{len(rows)} image(s) classified, {len(skipped)} skipped; wrote {results_dir}/predictions.csv, "
          f"predictions.json, predictions.png")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--checkpoint", help="default: out_dir/best.pt")
    parser.add_argument("--image", nargs="+", metavar="PATH",
                        help="classify these image files, or the images directly inside these folders")
    parser.add_argument("--topk", type=int, default=3, help="--image: styles listed per image (default 3)")
    parser.add_argument("--out", metavar="NAME", help="write to NAME/ in the checkpoint's folder (absolute: there)")
    args, cfg = config.parse_config(parser, argv)
    if args.topk < 1:
        raise config.UserError(f"--topk must be at least 1, got {args.topk}")
    path = args.checkpoint or os.path.join(cfg["out_dir"], "best.pt")
    if not os.path.exists(path):
        raise config.UserError(f"no checkpoint at {path}: train one first ({runs.config_command('train.py', argv)}), "
                               "or pass --checkpoint FILE or --set out_dir=...")
    out_dir = os.path.dirname(os.path.abspath(path))

    # Everything about the model comes from the checkpoint; the user may only point at other data.
    device = runs.get_device(cfg["device"])
    model, ckpt = load_classifier(path, device)
    keys = config.explicit_keys(args) & {"test_dir", "device", "cache_dir", "threads", "precision"}
    run_cfg = ckpt["config"] | {key: cfg[key] for key in keys}
    runs.start(run_cfg)

    if args.image:
        one_folder = len(args.image) == 1 and os.path.isdir(args.image[0])
        name = args.out or (f"predictions_{folder_name(args.image[0])}" if one_folder else "predictions")
        classify_images(model, ckpt, run_cfg, path, args.image, args.topk, os.path.join(out_dir, name), device, argv)
    else:  # the run's own test folder writes to out_dir itself (other code reads out_dir/test_metrics.json)
        own = os.path.realpath(run_cfg["test_dir"]) == os.path.realpath(ckpt["config"]["test_dir"])
        name = args.out or (None if own else f"eval_{folder_name(run_cfg['test_dir'])}")
        evaluate_folder(model, ckpt, run_cfg, path, os.path.join(out_dir, name) if name else out_dir, device, argv)


if __name__ == "__main__":
    runs.cli(main)
