"""Train a style classifier on WikiArt (or the built-in sample data, generated on first use).

    python train.py                                    # config.json: resnet on data/sample
    python train.py --set mode=base epochs=5           # the course's in-class model
    python train.py --set balance=logit_adjust         # Part 1: imbalance handling (README)
    python train.py --set balance=sampler posthoc=true # ... then a prior correction tuned on validation
    python train.py --set train_dir=../shared/data/wikiart16/train \\
                          test_dir=../shared/data/wikiart16/test image_size=128 out_dir=out/w16
    python train.py --resume                           # continue from out_dir/last.pt

Several GPUs (DistributedDataParallel, one process per GPU; batch_size stays the global batch):
    torchrun --standalone --nproc_per_node=8 train.py               # 8 GPUs on one machine
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 \
             --master_port=29500 train.py                          # 2 machines, on the first (master)
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 \
             --master_port=29500 train.py                          # ... and on the second
    (without Infiniband, prepend NCCL_IB_DISABLE=1; on CPU, --set device=cpu uses gloo)

The style map (sorted style names -> labels) comes from the training folder and is stored in every
checkpoint. A stratified validation split of the training folder picks the best epoch; the test
folder is never read here. Writes to out_dir: best.pt, last.pt, train_log.{json,csv}, curves.png.
"""
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import wikiart

parser = wikiart.config_parser(__doc__)
parser.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
args, cfg = wikiart.parse_config(parser)
rank, world, local_rank, device = wikiart.setup_distributed(cfg["device"])  # (0, 1, 0, device) without torchrun
wikiart.seed_everything(cfg["seed"])
out_dir = cfg["out_dir"]
os.makedirs(out_dir, exist_ok=True)

# ---- data: the style map is fixed by the training folder; validation is carved out of it
with wikiart.main_first():  # rank 0 decodes and caches the images, the other ranks then read its cache
    data = wikiart.load_split(cfg, "train")
classes, C = data.classes, len(data.classes)
train_idx, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
train_counts = torch.bincount(data.labels[train_idx], minlength=C)
steps_per_epoch = len(train_idx) // cfg["batch_size"]
if steps_per_epoch == 0:
    raise SystemExit(f"batch_size {cfg['batch_size']} is larger than the {len(train_idx)} training images")
if world > 1:  # batch_size stays the global batch: the same training as one process with that batch
    print(f"{world} processes ({torch.distributed.get_backend()}): {cfg['batch_size'] // world} images per "
          f"process and step, global batch {cfg['batch_size']}")
print(f"{len(data)} images of {C} styles in {cfg['train_dir']}: {len(train_idx)} train / {len(val_idx)} "
      f"validation; largest {classes[int(train_counts.argmax())]} ({int(train_counts.max())}), "
      f"smallest {classes[int(train_counts.argmin())]} ({int(train_counts.min())}); device {device}")

# ---- model, optimiser, schedule, loss
model = wikiart.make_classifier(cfg, C).to(device, memory_format=torch.channels_last)
print(f"mode {cfg['mode']}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
optimizer = wikiart.make_optimizer(model, cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["momentum"])
scheduler = wikiart.make_scheduler(optimizer, cfg["warmup_epochs"] * steps_per_epoch,
                                   cfg["epochs"] * steps_per_epoch, cfg["schedule"])
balance = cfg["balance"]
if balance not in wikiart.BALANCE_OPTIONS:
    hint = " (post-hoc adjustment is its own key now: --set balance=none posthoc=true)" if balance == "posthoc" else ""
    raise SystemExit(f"unknown balance '{balance}'; valid: {', '.join(wikiart.BALANCE_OPTIONS)}{hint}")
weights = (wikiart.class_weights(train_counts, balance, cfg["effective_beta"]).to(device)
           if balance in ("weights1", "weights2", "weights3", "effective", "drw") else None)
adjust = (wikiart.logit_adjustment(train_counts, cfg["logit_tau"]).to(device)
          if balance == "logit_adjust" else None)


def loss_fn(logits, y, epoch):
    if adjust is not None:  # logit-adjusted loss: the model is pushed to give rare styles bigger margins
        logits = logits + adjust
    w = weights
    if balance == "drw" and epoch < int(cfg["drw_start"] * cfg["epochs"]):
        w = None  # deferred re-weighting: plain loss first, class weights for the last epochs
    return F.cross_entropy(logits.float(), y, weight=w, label_smoothing=cfg["label_smoothing"])


def validation_logits(indices):
    wikiart.broadcast_buffers(model)  # every process scores rank 0's model, the one that is saved
    logits = wikiart.predict(model, data.images, wikiart.shard(indices, rank, world), 256, device, desc="validating")
    return wikiart.all_gather_shards(logits, world)  # each process scored every world-th image


def evaluate(indices):
    logits = validation_logits(indices)
    y = data.labels[indices]
    m = wikiart.classification_metrics(y.numpy(), logits.argmax(1).numpy(), classes)
    m["loss"] = float(F.cross_entropy(logits, y)) if len(indices) else float("nan")
    return m


def checkpoint(epoch):
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "config": cfg,
            "class_to_idx": data.class_to_idx, "label_counts": data.label_counts,
            "history": history, "best_score": best_score, "rng": torch.get_rng_state(), "world_size": world}


# ---- resume
start_epoch, best_score, history = 0, -1.0, []
if args.resume:
    ckpt = wikiart.resume_training(
        os.path.join(out_dir, "last.pt"), model, optimizer, scheduler, device,
        lambda c: None if c["class_to_idx"] == data.class_to_idx else
        f"was trained on other styles than {cfg['train_dir']} holds")
    start_epoch, best_score, history = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["history"]

# One process per GPU under torchrun: DDP averages the gradients of all processes in backward.
# `model` stays the plain module: evaluation and checkpoints use it, so test.py loads them unchanged.
train_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
    model, device_ids=[device.index] if device.type == "cuda" else None)

# ---- training loop
# stop_after > 0 ends this run early (e.g. a time-limited job); --resume picks up from last.pt
end_epoch = min(cfg["epochs"], start_epoch + cfg["stop_after"]) if cfg["stop_after"] > 0 else cfg["epochs"]
for epoch in range(start_epoch, end_epoch):
    t0 = time.time()
    g = wikiart.epoch_generator(cfg["seed"], epoch)
    if balance == "sampler":  # each style drawn about equally often, N draws with replacement
        order = train_idx[wikiart.balanced_sampler_indices(data.labels[train_idx], len(train_idx), g)]
    else:
        order = train_idx[torch.randperm(len(train_idx), generator=g).numpy()]
    order = wikiart.shard(order, rank, world, cfg["batch_size"])  # all ranks drew the same order
    if rank > 0:  # other crops, flips, mixes and dropout masks than rank 0's (README: Distributed)
        g = wikiart.epoch_generator(cfg["seed"] + 1_000_003 * rank, epoch)
    train_model.train()
    total, seen = 0.0, 0
    bar = tqdm(wikiart.iterate_batches(data.images, data.labels, order, cfg["batch_size"] // world, device,
                                         drop_last=True),
               total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False)
    for x, y in bar:
        x = x.contiguous(memory_format=torch.channels_last)
        if cfg["augment"]:
            x = wikiart.augment(x, g, cfg["crop_min_scale"])
        x, y2, lam = wikiart.mix_batch(x, y, cfg["mixup"], cfg["cutmix"], g)
        with wikiart.autocast(device):
            logits = train_model(x)
        loss = lam * loss_fn(logits, y, epoch) + (1 - lam) * loss_fn(logits, y2, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, seen = total + loss.item() * len(y), seen + len(y)
        bar.set_postfix(loss=f"{total / seen:.3f}")

    total, seen = wikiart.all_reduce_sum([total, seen], device)  # over all processes
    row = {"epoch": epoch + 1, "train_loss": total / seen, "lr": optimizer.param_groups[0]["lr"]}
    if len(val_idx):
        m = evaluate(val_idx)
        row.update(val_loss=m["loss"], val_accuracy=m["accuracy"], val_balanced_accuracy=m["balanced_accuracy"],
                   val_macro_f1=m["macro_f1"])
    row["seconds"] = time.time() - t0
    history.append(row)
    score = row.get("val_" + cfg["select_metric"], epoch)  # no validation split: the last epoch wins
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if score > best_score:
        best_score = score
        if rank == 0:  # one process writes: every process holds the same model, history and scores
            wikiart.atomic_save(checkpoint(epoch), os.path.join(out_dir, "best.pt"))
    if rank == 0:
        wikiart.atomic_save(checkpoint(epoch), os.path.join(out_dir, "last.pt"))
        wikiart.write_history(history, out_dir)
        wikiart.plot_curves(history, ["train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy"],
                            os.path.join(out_dir, "curves.png"), f"{cfg['mode']} on {cfg['train_dir']}")

# ---- posthoc: after training with any balance option, test-time logits - tau * log prior, with tau
# chosen on the validation split (a finished run can be calibrated later: --resume --set posthoc=true)
if cfg["posthoc"] and end_epoch == cfg["epochs"] and len(val_idx):
    best = torch.load(os.path.join(out_dir, "best.pt"), map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    tau, rows = wikiart.choose_posthoc_tau(validation_logits(val_idx), data.labels[val_idx], train_counts,
                                           classes, cfg["posthoc_max_drop"])
    best["logit_bias"], best["posthoc_tau"] = -wikiart.logit_adjustment(train_counts, tau), tau
    best["config"] = {**best["config"], "posthoc": True}
    print(f"post-hoc logit adjustment: tau {tau} (validation accuracy / balanced accuracy: "
          + ", ".join(f"tau {t}: {a:.3f}/{b:.3f}" for t, a, b in rows[::10]) + ")")
    if rank == 0:
        wikiart.atomic_save(best, os.path.join(out_dir, "best.pt"))

print(f"best validation {cfg['select_metric']} {best_score:.4f}; checkpoints and logs in {out_dir}")
del train_model  # the DDP wrapper holds the process group: release it first
wikiart.cleanup_distributed()
