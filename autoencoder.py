"""Part 2: train an autoencoder (no labels), then save the codes of every image for cluster.py.

    python autoencoder.py                                   # config.json: conv autoencoder on data/sample
    python autoencoder.py --set autoencoder.mode=part2      # the course's autoencoder (16x compression)
    python autoencoder.py --set train_dir=../shared/data/wikiart16/train test_dir=../shared/data/wikiart16/test \\
        image_size=128 autoencoder.train_crop=64 autoencoder.out_dir=out/ae_w16
    python autoencoder.py --resume                          # continue from autoencoder.out_dir/last.pt
    python cluster.py                                       # then cluster the codes
    torchrun --standalone --nproc_per_node=8 autoencoder.py # 8 GPUs (multi-node: see train.py)

The style labels are never used for training: a stratified validation split of the training folder
(by image, labels only keep every style represented) measures progress and picks the best epoch.
Images are scaled to [0, 1]; the loss is MSE (+ autoencoder.l1_weight * L1). With train_crop > 0 a
fully-convolutional model trains on random crops (4x cheaper at half the side) and is evaluated on
whole images. Writes to autoencoder.out_dir: best.pt, last.pt, train_log.{json,csv}, curves.png,
metrics.json (test MSE/PSNR), reconstructions.png, codes_train.npz, codes_test.npz.
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import wikiart

parser = wikiart.config_parser(__doc__)
parser.add_argument("--resume", action="store_true", help="continue from autoencoder.out_dir/last.pt")
args, cfg = wikiart.parse_config(parser)
ae = cfg["autoencoder"]
rank, world, local_rank, device = wikiart.setup_distributed(cfg["device"])  # (0, 1, 0, device) without torchrun
wikiart.seed_everything(cfg["seed"])
out_dir = ae["out_dir"]
os.makedirs(out_dir, exist_ok=True)

# ---- data: labels are only used to stratify the validation split and to label the saved codes
with wikiart.main_first():  # rank 0 decodes and caches the images, the other ranks then read its cache
    data = wikiart.load_split(cfg, "train")
    test = wikiart.load_split(cfg, "test", data.class_to_idx)
train_idx, val_idx = wikiart.stratified_split(data.labels, ae["val_fraction"], cfg["seed"])
size, crop, bs = cfg["image_size"], ae["train_crop"], ae["batch_size"]
if crop and (crop > size or (ae["mode"] == "conv" and ae["bottleneck"] == "vector")):
    raise SystemExit(f"autoencoder.train_crop={crop} needs a spatial bottleneck and crop <= image_size ({size})")
steps_per_epoch = len(train_idx) // bs
if steps_per_epoch == 0:
    raise SystemExit(f"autoencoder.batch_size {bs} is larger than the {len(train_idx)} training images")

model = wikiart.make_autoencoder(ae, crop or size).to(device, memory_format=torch.channels_last)
with torch.no_grad():
    code_numel = model.encode(torch.zeros(1, 3, size, size, device=device))[0].numel()
compression = 3 * size * size / code_numel
print(f"{len(data)} train images ({len(train_idx)} fit / {len(val_idx)} validation), {len(test)} test, "
      f"{size} px; {ae['mode']} autoencoder, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
      f"parameters, code {code_numel} numbers = {compression:.1f}x compression; device {device}")
optimizer = wikiart.make_optimizer(model, "adamw", ae["lr"], ae["weight_decay"])
total_steps = ae["epochs"] * steps_per_epoch
scheduler = wikiart.make_scheduler(optimizer, max(1, total_steps // 20), total_steps, "cosine")


def random_crop_flip(x, g):
    """Per-image random crop to `crop` pixels and horizontal flip (no labels needed)."""
    if crop and crop < x.shape[-1]:
        oy, ox = torch.randint(0, x.shape[-2] - crop + 1, (2, len(x)), generator=g).tolist()
        x = torch.stack([img[:, a:a + crop, b:b + crop] for img, a, b in zip(x, oy, ox)])
    flip = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def run_encoder(images, indices, with_recon=True, desc="encoding"):
    """Per-image MSE (if with_recon), flattened codes and pooled feature statistics, in order."""
    model.eval()
    mses, codes, stats = [], [], []
    labels = torch.zeros(len(images), dtype=torch.long)
    for x, _ in tqdm(wikiart.iterate_batches(images, labels, indices, 128, device),
                     total=math.ceil(len(indices) / 128), desc=desc, leave=False):
        x = ((x + 1) / 2).contiguous(memory_format=torch.channels_last)  # much faster convs on CPU
        maps = model.feature_maps(x)
        codes.append(maps[-1].flatten(1).float().cpu())
        stats.append(wikiart.pooled_stats(maps).cpu())
        if with_recon:
            mses.append(((model.decode(maps[-1]) - x) ** 2).flatten(1).mean(1).cpu())
    cat = lambda t: torch.cat(t).numpy() if t else np.zeros(0, np.float32)
    return cat(mses), cat(codes), cat(stats)


def recon_metrics(mse):
    """PSNR of the mean MSE (the conservative number we report) and the mean of per-image PSNRs."""
    return {"mse": float(mse.mean()), "psnr": wikiart.psnr(float(mse.mean())),
            "psnr_mean_per_image": float(np.mean(-10 * np.log10(np.maximum(mse, 1e-12))))}


def checkpoint(epoch):
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "config": cfg,
            "class_to_idx": data.class_to_idx, "compression": compression, "code_numel": code_numel,
            "history": history, "best_mse": best_mse, "rng": torch.get_rng_state()}


# ---- resume
start_epoch, best_mse, history = 0, float("inf"), []
if args.resume:
    ckpt = wikiart.resume_training(
        os.path.join(out_dir, "last.pt"), model, optimizer, scheduler, device,
        lambda c: None if c["config"]["autoencoder"]["mode"] == ae["mode"] else
        f"holds a '{c['config']['autoencoder']['mode']}' autoencoder")
    start_epoch, best_mse, history = ckpt["epoch"] + 1, ckpt["best_mse"], ckpt["history"]

# One process per GPU under torchrun (batch_size stays the global batch); `model` stays the plain module
train_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
    model, device_ids=[device.index] if device.type == "cuda" else None)

# ---- training loop
for epoch in range(start_epoch, ae["epochs"]):
    t0 = time.time()
    g = wikiart.epoch_generator(cfg["seed"], epoch)
    order = train_idx[torch.randperm(len(train_idx), generator=g).numpy()]
    order = wikiart.shard(order, rank, world, bs)  # all ranks drew the same order
    if rank > 0:  # other crops and flips than rank 0's
        g = wikiart.epoch_generator(cfg["seed"] + 1_000_003 * rank, epoch)
    train_model.train()
    total, seen = 0.0, 0
    bar = tqdm(wikiart.iterate_batches(data.images, data.labels, order, bs // world, device, drop_last=True),
               total=steps_per_epoch, desc=f"epoch {epoch + 1}/{ae['epochs']}", leave=False)
    for x, _ in bar:  # the labels are dropped here: unsupervised
        x = random_crop_flip((x + 1) / 2, g).contiguous(memory_format=torch.channels_last)
        out = train_model(x)
        loss = F.mse_loss(out, x)
        if ae["l1_weight"]:
            loss = loss + ae["l1_weight"] * F.l1_loss(out, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, seen = total + loss.item() * len(x), seen + len(x)
        bar.set_postfix(loss=f"{total / seen:.4f}")

    total, seen = wikiart.all_reduce_sum([total, seen], device)  # over all processes
    row = {"epoch": epoch + 1, "train_loss": total / seen, "lr": optimizer.param_groups[0]["lr"]}
    if len(val_idx):
        wikiart.broadcast_buffers(model)  # every process scores rank 0's model, the one that is saved
        mse = run_encoder(data.images, wikiart.shard(val_idx, rank, world), desc="validating")[0]
        m = recon_metrics(wikiart.all_gather_shards(torch.from_numpy(mse), world).numpy())
        row.update(val_mse=m["mse"], val_psnr=m["psnr"])
    row["seconds"] = time.time() - t0
    history.append(row)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    score = row.get("val_mse", -epoch)  # no validation split: the last epoch wins
    if score < best_mse:
        best_mse = score
        if rank == 0:  # one process writes: every process holds the same model, history and scores
            wikiart.atomic_save(checkpoint(epoch), os.path.join(out_dir, "best.pt"))
    if rank == 0:
        wikiart.atomic_save(checkpoint(epoch), os.path.join(out_dir, "last.pt"))
        wikiart.write_history(history, out_dir)
        wikiart.plot_curves(history, ["train_loss", "val_mse", "val_psnr"], os.path.join(out_dir, "curves.png"),
                            f"{ae['mode']} autoencoder, {compression:.0f}x compression, {cfg['train_dir']}")

del train_model  # the DDP wrapper holds the process group: release it first
wikiart.cleanup_distributed()
if rank > 0:
    raise SystemExit  # the test metrics, figure and codes below are rank 0's work

# ---- the best epoch: test reconstruction, figure, and the codes of both splits for cluster.py
if not os.path.exists(os.path.join(out_dir, "best.pt")):
    raise SystemExit(f"no best.pt in {out_dir}: train at least one epoch (autoencoder.epochs >= 1)")
model, best = wikiart.load_autoencoder(os.path.join(out_dir, "best.pt"), device)
model = model.to(memory_format=torch.channels_last)
test_mse, test_codes, test_stats = run_encoder(test.images, np.arange(len(test)), desc="encoding test")
metrics = {"test": recon_metrics(test_mse), "best_epoch": best["epoch"] + 1, "compression": compression,
           "code_numel": code_numel, "image_size": size, "mode": ae["mode"], "num_test": len(test)}
wikiart.atomic_save(metrics, os.path.join(out_dir, "metrics.json"))
print(f"test ({len(test)} images, best epoch {metrics['best_epoch']}): MSE {metrics['test']['mse']:.5f}, "
      f"PSNR {metrics['test']['psnr']:.2f} dB (mean per image {metrics['test']['psnr_mean_per_image']:.2f}) "
      f"at {compression:.1f}x compression")


def latent_image(z):
    """A code as a picture: 3 channels as RGB, more as a grid of grey channels, a vector as a square."""
    z = z.float().cpu()
    if z.ndim == 1:
        side = math.ceil(math.sqrt(z.numel()))
        z = F.pad(z, (0, side * side - z.numel())).view(1, side, side)
    z = (z - z.amin()) / (z.amax() - z.amin() + 1e-8)
    if z.shape[0] == 3:
        return z.permute(1, 2, 0).numpy()
    cols = math.ceil(math.sqrt(z.shape[0]))
    rows = math.ceil(z.shape[0] / cols)
    h, w = z.shape[1:]
    grid = torch.ones(rows * (h + 1) - 1, cols * (w + 1) - 1)
    for i, ch in enumerate(z):
        r, c = divmod(i, cols)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = ch
    return grid.numpy()


# one test image from each of the first num_show styles present (the first image of each)
first_of_style = {}
for i, y in enumerate(test.labels.tolist()):
    first_of_style.setdefault(y, i)
show = list(first_of_style.values())[:ae["num_show"]] or [0]
with torch.no_grad():
    x = (wikiart.to_float(test.images[show], device) + 1) / 2
    z = model.encode(x)
    recon = model.decode(z)
p = wikiart.plt()
fig, axes = p.subplots(3, len(show), figsize=(2.2 * len(show), 7), squeeze=False)
for j, i in enumerate(show):
    mse_j = float(((recon[j] - x[j]) ** 2).mean())
    panels = [(x[j].permute(1, 2, 0).cpu().numpy(), test.classes[int(test.labels[i])][:22]),
              (latent_image(z[j]), f"code {tuple(z.shape[1:])}"),
              (recon[j].permute(1, 2, 0).cpu().numpy(), f"decoded {wikiart.psnr(mse_j):.1f} dB")]
    for r, (img, title) in enumerate(panels):
        axes[r][j].imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        axes[r][j].set_title(title, fontsize=8)
        axes[r][j].axis("off")
fig.suptitle(f"{ae['mode']} autoencoder: original / code / decoded ({compression:.0f}x compression)")
fig.tight_layout()
fig.savefig(os.path.join(out_dir, "reconstructions.png"), dpi=110)
p.close(fig)

_, train_codes, train_stats = run_encoder(data.images, np.arange(len(data)), with_recon=False,
                                          desc="encoding train")
for split, ds, codes, stats in (("train", data, train_codes, train_stats), ("test", test, test_codes, test_stats)):
    path = os.path.join(out_dir, f"codes_{split}.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, codes=codes.astype(np.float32), stats=stats.astype(np.float32), labels=ds.labels.numpy(),
             classes=np.array(ds.classes), paths=np.array(ds.paths), compression=compression)
    os.replace(tmp, path)
print(f"codes {train_codes.shape} (train) and {test_codes.shape} (test), pooled statistics "
      f"{train_stats.shape[1]} per image; wrote {out_dir}/codes_{{train,test}}.npz; next: python cluster.py")
