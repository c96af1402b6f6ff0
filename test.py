"""Evaluate a trained classifier on the test folder.

    python test.py                                   # out_dir/best.pt from config.json
    python test.py --set out_dir=out/w16             # another run
    python test.py --checkpoint out/w16/last.pt --set test_dir=../shared/data/wikiart16/test

The model, its image size and its style map come from the checkpoint; the test folder is the one it
was trained alongside unless test_dir is set here. Test images are labelled by style *name* through
the stored map, so labels cannot shift between runs. Writes to out_dir: test_metrics.json,
confusion.png (rows normalised) and per_class_recall.png (styles sorted by training count).
"""
import json
import os

import torch

import wikiart

parser = wikiart.config_parser(__doc__)
parser.add_argument("--checkpoint", help="default: out_dir/best.pt")
args, cfg = wikiart.parse_config(parser)
path = args.checkpoint or os.path.join(cfg["out_dir"], "best.pt")
if not os.path.exists(path):
    raise SystemExit(f"no checkpoint at {path}: run train.py first (or pass --checkpoint / --set out_dir=...)")
ckpt = torch.load(path, map_location="cpu", weights_only=False)
out_dir = os.path.dirname(os.path.abspath(path))

# Everything about the model comes from the checkpoint; the user may only point at other data.
run_cfg = dict(ckpt["config"])
for key in wikiart.explicit_keys(args) & {"test_dir", "device", "cache_dir"}:
    run_cfg[key] = cfg[key]
device = wikiart.get_device(run_cfg["device"])
data = wikiart.load_split(run_cfg, "test", class_to_idx=ckpt["class_to_idx"])
model = wikiart.make_classifier(run_cfg, len(ckpt["class_to_idx"]))
model.load_state_dict(ckpt["model"])
model.to(device, memory_format=torch.channels_last)

logits = wikiart.predict(model, data.images, list(range(len(data))), 256, device, desc="testing")
if "logit_bias" in ckpt:  # posthoc=true: - tau * log prior, tau chosen on the validation split
    logits = logits + ckpt["logit_bias"]
metrics = wikiart.classification_metrics(data.labels.numpy(), logits.argmax(1).numpy(), data.classes)
majority = max(metrics["per_class"].values(), key=lambda m: m["support"])["support"] / len(data)
metrics.update(checkpoint=path, epoch=ckpt["epoch"] + 1, test_dir=run_cfg["test_dir"], n_images=len(data),
               majority_class_rate=majority, skipped=data.skipped, mode=run_cfg["mode"],
               balance=run_cfg["balance"], posthoc_tau=ckpt.get("posthoc_tau"),
               classes=data.classes, label_counts=ckpt["label_counts"])

print(wikiart.format_per_class(metrics, ckpt["label_counts"]))
print(f"\n{run_cfg['mode']} on {len(data)} test images of {run_cfg['test_dir']}: accuracy {metrics['accuracy']:.4f}  "
      f"balanced accuracy {metrics['balanced_accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
      f"(majority class {majority:.4f})")
wikiart.atomic_save(metrics, os.path.join(out_dir, "test_metrics.json"))
wikiart.plot_confusion(metrics["confusion_matrix"], data.classes, os.path.join(out_dir, "confusion.png"),
                       f"{run_cfg['mode']}: test confusion (rows normalised)")
wikiart.plot_per_class_recall(metrics, ckpt["label_counts"], os.path.join(out_dir, "per_class_recall.png"),
                              f"{run_cfg['mode']} / balance={run_cfg['balance']}: test recall per style")
print(f"wrote {out_dir}/test_metrics.json, confusion.png, per_class_recall.png")
