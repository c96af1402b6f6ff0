"""Train a style classifier on WikiArt (or the built-in sample data, generated on first use).

    python train.py                                    # config.json: resnet on data/sample
    python train.py --set mode=base epochs=5           # the course's in-class model (bonusA: its variant)
    python train.py --set balance=sampler posthoc=true # Part 1: imbalance handling (README)
    python train.py -c configs/classifier_w16_64.json  # a recipe: WikiArt-16 at 64 px (RESULTS.md)
    python train.py --set stop_after=3 ; python train.py --resume   # stop after 3 epochs, then continue
    torchrun --standalone --nproc_per_node=8 train.py  # 8 GPUs (docs/operations.md)

The style map (sorted style names -> labels) comes from the training folder; a stratified validation split
of it picks best.pt (the test folder is never read). Writes to out_dir: best.pt, last.pt, train_log.*, curves.png.
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import ddp
import metrics
import runs
import sample_data
import wikiart

# --resume continues only a run trained with the same values of these (others may change: test_dir, threads...)
TRAINING_KEYS = ("seed", "train_dir", "image_size", "mode", "resnet_width", "resnet_blocks", "epochs", "batch_size",
                 "lr", "augment", "mixup", "cutmix", "val_fraction", "balance")
WEIGHT_DECAY, WARMUP_EPOCHS, LABEL_SMOOTHING, DRW_START = 0.05, 1, 0.1, 0.6  # drw: the first 60% of epochs unweighted


def make_loss(cfg, train_counts, device):
    """The loss for cfg["balance"]: plain, class-weighted (drw: after DRW_START) or logit-adjusted cross-entropy."""
    balance = cfg["balance"]
    weights = (wikiart.class_weights(train_counts, balance).to(device)
               if balance in ("weights1", "weights2", "weights3", "effective", "drw") else None)
    # logit_adjust: adding the log prior in the loss pushes the model to give rare styles bigger margins
    adjust = wikiart.logit_adjustment(train_counts).to(device) if balance == "logit_adjust" else 0.0

    def loss_fn(logits, y, epoch):
        w = None if balance == "drw" and epoch < int(DRW_START * cfg["epochs"]) else weights
        return F.cross_entropy((logits + adjust).float(), y, weight=w, label_smoothing=LABEL_SMOOTHING)
    return loss_fn


def validation_logits(model, data, indices, rank, world, device, precision="auto"):
    """Logits of data.images[indices] (each process scores every world-th image; gathered)."""
    ddp.broadcast_buffers(model)  # every process scores rank 0's model, the one that is saved
    logits = wikiart.predict(model, data.images, ddp.shard(indices, rank, world), 256, device, "validating", precision)
    return ddp.all_gather_shards(logits, world)


def calibrate_posthoc(best, model, data, val_idx, rank=0, world=1, device=torch.device("cpu")):
    """Checkpoint `best` with logit_bias = -tau * log prior, tau chosen on the validation split (test.py adds it)."""
    model.load_state_dict(best["model"])
    train_idx = np.setdiff1d(np.arange(len(data)), val_idx)
    train_counts = torch.bincount(data.labels[train_idx], minlength=len(data.classes))
    logits = validation_logits(model, data, val_idx, rank, world, device, best["config"].get("precision", "auto"))
    tau, rows = wikiart.choose_posthoc_tau(logits, data.labels[val_idx], train_counts, data.classes)
    print(f"post-hoc logit adjustment: tau {tau} (validation accuracy / balanced accuracy: "
          + ", ".join(f"tau {t}: {a:.3f}/{b:.3f}" for t, a, b in rows[::10]) + ")")
    return best | {"logit_bias": -wikiart.logit_adjustment(train_counts, tau), "posthoc_tau": tau,
                   "config": {**best["config"], "posthoc": True}}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    args, cfg = config.parse_config(parser, argv)
    rank, world, _, device = runs.start(cfg)  # (0, 1, 0, device) without torchrun
    out_dir = cfg["out_dir"]

    # ---- data: the style map is fixed by the training folder; validation is carved out of it
    with ddp.main_first():  # rank 0 decodes and caches the images, the other ranks then read its cache
        sample_data.ensure_sample(cfg, ["train"])
        data = wikiart.load_split(cfg, "train")
    classes, C = data.classes, len(data.classes)
    train_idx, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
    train_counts = torch.bincount(data.labels[train_idx], minlength=C)
    if cfg["posthoc"] and not len(val_idx):
        raise config.UserError(f"posthoc=true chooses tau on the validation split, but val_fraction="
                               f"{cfg['val_fraction']} leaves no validation images: raise val_fraction")
    batch_size = runs.fit_batch_size(cfg["batch_size"], len(train_idx), "batch_size", world)
    steps_per_epoch = len(train_idx) // batch_size
    if world > 1:  # batch_size stays the global batch: the same training as one process with that batch
        print(f"{world} processes ({torch.distributed.get_backend()}): {batch_size // world} images per "
              f"process and step, global batch {batch_size}")
    print(f"{len(data)} images of {C} styles in {cfg['train_dir']}: {len(train_idx)} train / {len(val_idx)} "
          f"validation; largest {classes[int(train_counts.argmax())]} ({int(train_counts.max())}), "
          f"smallest {classes[int(train_counts.argmin())]} ({int(train_counts.min())}); device {device}")

    # ---- model, optimiser, schedule, loss
    model = wikiart.make_classifier(cfg, C).to(device, memory_format=torch.channels_last)
    print(f"mode {cfg['mode']}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = wikiart.make_optimizer(model, cfg["lr"], WEIGHT_DECAY)
    scheduler = wikiart.make_scheduler(optimizer, WARMUP_EPOCHS * steps_per_epoch, cfg["epochs"] * steps_per_epoch)
    loss_fn = make_loss(cfg, train_counts, device)
    progress = runs.Progress(out_dir, ["train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy"],
                             f"{cfg['mode']} on {cfg['train_dir']}")

    def checkpoint(epoch):
        return runs.training_state(epoch, progress, model=model, optimizer=optimizer, scheduler=scheduler) | {
            "config": cfg, "class_to_idx": data.class_to_idx, "label_counts": data.label_counts, "world_size": world}

    def does_not_fit(ckpt):
        if ckpt.get("class_to_idx") != data.class_to_idx:
            return (f"{last} was trained on the styles {', '.join(ckpt.get('class_to_idx', {}))}; "
                    f"{cfg['train_dir']} holds {', '.join(classes)}: use another out_dir")
        return runs.mismatch(ckpt.get("config", {}), cfg, TRAINING_KEYS, last)

    last = os.path.join(out_dir, "last.pt")
    start_epoch = runs.resume(last, progress, device, does_not_fit, model=model, optimizer=optimizer,
                              scheduler=scheduler) if args.resume else 0
    runs.lock_out_dir(out_dir)  # a second run into out_dir stops here, before anything is written
    train_model = ddp.wrap_ddp(model, world, device)
    runs.save_run_config(cfg, out_dir, "train.py", argv)

    # ---- training loop; stop_after > 0 ends this run early (a time-limited job), --resume continues
    end_epoch = min(cfg["epochs"], start_epoch + cfg["stop_after"]) if cfg["stop_after"] > 0 else cfg["epochs"]
    sampler = None
    if cfg["balance"] == "sampler":  # each style drawn about equally often, N draws with replacement
        sampler = lambda g: wikiart.balanced_sampler_indices(data.labels[train_idx], len(train_idx), g)
    with runs.on_interrupt(progress, "train.py", argv):
        for epoch in range(start_epoch, end_epoch):
            t0 = time.time()
            order, g = runs.epoch_order(train_idx, cfg["seed"], epoch, rank, world, batch_size, sampler)
            train_model.train()
            total, seen = 0.0, 0
            bar = tqdm(wikiart.iterate_batches(data.images, data.labels, order, batch_size // world, device,
                                               drop_last=True),
                       total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False)
            for x, y in bar:
                x = x.contiguous(memory_format=torch.channels_last)
                if cfg["augment"]:
                    x = wikiart.augment(x, g)
                x, y2, lam = wikiart.mix_batch(x, y, cfg["mixup"], cfg["cutmix"], g)
                with runs.autocast(device, cfg["precision"]):
                    logits = train_model(x)
                loss = lam * loss_fn(logits, y, epoch) + (1 - lam) * loss_fn(logits, y2, epoch)
                runs.optimizer_step(loss, optimizer, scheduler)
                total, seen = total + loss.item() * len(y), seen + len(y)
                bar.set_postfix(loss=f"{total / seen:.3f}")

            row = runs.epoch_row(epoch, total, seen, optimizer, device)
            if len(val_idx):
                logits = validation_logits(model, data, val_idx, rank, world, device, cfg["precision"])
                y = data.labels[val_idx]
                m = metrics.classification_metrics(y.numpy(), logits.argmax(1).numpy(), classes)
                row.update(val_loss=float(F.cross_entropy(logits, y)), val_accuracy=m["accuracy"],
                           val_balanced_accuracy=m["balanced_accuracy"], val_macro_f1=m["macro_f1"])
            row["seconds"] = time.time() - t0
            score = row.get("val_balanced_accuracy", epoch)  # no validation split: the last epoch wins
            capped = runs.time_is_up(device, epoch + 1, end_epoch)  # max_minutes: end after this epoch, resumable
            progress.end_epoch(row | ({"time_cap": True} if capped else {}), score, lambda: checkpoint(epoch))
            if capped:
                break

    # ---- posthoc: test-time logits - tau * log prior, tau chosen on validation (later: --resume --set posthoc=true)
    ended = progress.epochs_done == cfg["epochs"] or progress.history and progress.history[-1].get("time_cap")
    if cfg["posthoc"] and ended and len(val_idx):
        ddp.barrier()  # rank 0 has written best.pt: every process must score that same model
        best = runs.load_checkpoint(os.path.join(out_dir, "best.pt"), "a train.py checkpoint", device=device)
        best = calibrate_posthoc(best, model, data, val_idx, rank, world, device)
        if ddp.is_main():
            runs.atomic_save(best, os.path.join(out_dir, "best.pt"))

    best_text = "none" if progress.best_score is None else f"{progress.best_score:.4f}"
    print(f"best validation balanced accuracy {best_text}; checkpoints and logs in {out_dir}")
    if ended:
        print(f"next: {runs.config_command('test.py', argv)}")
    del train_model  # the DDP wrapper holds the process group: release it first
    ddp.cleanup_distributed()


if __name__ == "__main__":
    runs.cli(main)
