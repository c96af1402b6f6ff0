"""Part 2: train an autoencoder (no labels), then save the codes of every image for cluster.py.

    python autoencoder.py                                   # config.json: conv autoencoder on data/sample
    python autoencoder.py --set autoencoder.mode=part2      # the course's autoencoder (16x compression)
    python autoencoder.py -c configs/autoencoder_w16_128.json   # WikiArt-16 at 128 px (RESULTS.md)
    python autoencoder.py --resume                          # continue from autoencoder.out_dir/last.pt
    python autoencoder.py --image photo.jpg my_paintings/   # your images through the trained model

Labels only stratify the validation split, which picks best.pt. MSE on [0, 1] images (train_crop: trained on random
crops, scored on whole images). Writes best.pt, last.pt, train_log.*, curves.png, metrics.json (test PSNR),
reconstructions.png and codes_{train,test}.npz to autoencoder.out_dir; --image: reconstruct/ (PSNR per image).
"""
import math
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
import plots
import runs
import sample_data
import images
import wikiart

# what a checkpoint's weights depend on: --resume refuses a checkpoint made with other values
MODEL_KEYS = ("image_size", "autoencoder.mode", "autoencoder.width", "autoencoder.downsample",
              "autoencoder.code_channels", "autoencoder.bottleneck", "autoencoder.code_dim")


def random_crop_flip(x, crop, g):
    """Per-image random crop to `crop` pixels and horizontal flip (no labels needed)."""
    if crop and crop < x.shape[-1]:
        oy, ox = torch.randint(0, x.shape[-2] - crop + 1, (2, len(x)), generator=g).tolist()
        x = torch.stack([img[:, a:a + crop, b:b + crop] for img, a, b in zip(x, oy, ox)])
    flip = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def run_encoder(model, images, device, indices=None, with_recon=True, desc="encoding"):
    """Per-image MSE (if with_recon), flattened codes and pooled feature statistics of images[indices] (all)."""
    model.eval()
    indices = np.arange(len(images)) if indices is None else indices
    mses, codes, stats = [], [], []
    for _, batch in tqdm(wikiart.uint8_batches(images, indices, 128), total=math.ceil(len(indices) / 128),
                         desc=desc, leave=False):
        x = ((wikiart.to_float(batch, device) + 1) / 2).contiguous(memory_format=torch.channels_last)  # fast on CPU
        maps = model.feature_maps(x)
        codes.append(maps[-1].flatten(1).float().cpu())
        stats.append(wikiart.pooled_stats(maps).cpu())
        if with_recon:
            mses.append(((model.decode(maps[-1]) - x) ** 2).flatten(1).mean(1).cpu())
    cat = lambda t: torch.cat(t).numpy() if t else np.zeros(0, np.float32)
    return cat(mses), cat(codes), cat(stats)


def recon_metrics(mse):
    """PSNR of the mean MSE (the conservative number we report) and the mean of per-image PSNRs."""
    return {"mse": float(mse.mean()), "psnr": metrics.psnr(float(mse.mean())),
            "psnr_mean_per_image": float(np.mean(-10 * np.log10(np.maximum(mse, 1e-12))))}


def latent_image(z):
    """A code as a picture: 3 channels as RGB, more as a grid of grey channels, a vector as a square."""
    z = z.float().cpu()
    if z.ndim == 1:
        side = math.ceil(math.sqrt(z.numel()))
        z = F.pad(z, (0, side * side - z.numel())).view(1, side, side)
    z = (z - z.amin()) / (z.amax() - z.amin() + 1e-8)
    if z.shape[0] == 3:
        return z.permute(1, 2, 0).numpy()
    n, h, w = z.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    z = F.pad(z, (0, 1, 0, 1, 0, rows * cols - n), value=1.0)  # white gaps right of and below channels, white cells
    return z.view(rows, cols, h + 1, w + 1).transpose(1, 2).reshape(rows * (h + 1), cols * (w + 1))[:-1, :-1].numpy()


@torch.no_grad()
def plot_reconstructions(model, images_u8, titles, path, title):
    """Original / code / decoded (with its PSNR) for each image, one column each."""
    x = (wikiart.to_float(images_u8, next(model.parameters()).device) + 1) / 2
    z = model.encode(x)
    recon = model.decode(z)
    p = plots.plt()
    fig, axes = p.subplots(3, len(x), figsize=(2.2 * len(x), 7), squeeze=False)
    for j in range(len(x)):
        mse_j = float(((recon[j] - x[j]) ** 2).mean())
        panels = [(x[j].permute(1, 2, 0).cpu().numpy(), titles[j][:22]),
                  (latent_image(z[j]), f"code {tuple(z.shape[1:])}"),
                  (recon[j].permute(1, 2, 0).cpu().numpy(), f"decoded {metrics.psnr(mse_j):.1f} dB")]
        for r, (img, text) in enumerate(panels):
            axes[r][j].imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            axes[r][j].set_title(text, fontsize=8)
            axes[r][j].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with runs.atomic_file(path) as f:
        fig.savefig(f, dpi=110)
    p.close(fig)


def reconstruct_images(inputs, cfg, device, args, argv):
    """--image: each image through the trained autoencoder; PSNR printed, JSON and figure saved."""
    out_dir = cfg["autoencoder"]["out_dir"]
    path = os.path.join(out_dir, "best.pt")
    if not os.path.exists(path):
        raise config.UserError(f"no trained autoencoder at {path}: train one first with: "
                               f"{runs.config_command('autoencoder.py', argv)}")
    model, ckpt = wikiart.load_autoencoder(path, device)
    model = model.to(memory_format=torch.channels_last)
    run_cfg = {**ckpt["config"], "device": cfg["device"], "threads": cfg["threads"]}
    size = run_cfg["image_size"]
    pictures, paths, skipped = images.load_image_inputs(inputs, size)
    mse = run_encoder(model, pictures, device, desc="reconstructing")[0]
    rows = [{"path": p, "mse": float(e), "psnr": metrics.psnr(float(e))} for p, e in zip(paths, mse)]
    width = min(50, max(len(p) for p in paths))
    print(f"{'image':{width}s}  PSNR (dB)")
    for r in rows:
        name = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3):]
        print(f"{name:{width}s}  {r['psnr']:8.2f}")
    summary = recon_metrics(mse)
    print(f"{len(rows)} image(s) at {size} px, {ckpt['config']['autoencoder']['mode']} autoencoder: PSNR of the mean "
          f"MSE {summary['psnr']:.2f} dB (mean per image {summary['psnr_mean_per_image']:.2f}); {len(skipped)} skipped")

    results_dir = os.path.join(out_dir, args.out or "reconstruct")
    runs.atomic_save({"checkpoint": path, "epoch": ckpt["epoch"] + 1, "mode": run_cfg["autoencoder"]["mode"],
                      "image_size": size, "fit": "squash", "compression": ckpt.get("compression"),
                      "inputs": list(inputs), "command": runs.command_line("autoencoder.py", argv),
                      "n_images": len(rows), "overall": summary, "skipped": skipped, "images": rows},
                     os.path.join(results_dir, "reconstructions.json"))
    runs.save_run_config(run_cfg, results_dir, "autoencoder.py", argv)
    show = slice(0, plots.SHOW_IMAGES)
    plot_reconstructions(model, pictures[show], [os.path.basename(p) for p in paths[show]],
                         os.path.join(results_dir, "reconstructions.png"),
                         f"{run_cfg['autoencoder']['mode']} autoencoder ({size} px): original / code / decoded")
    print(f"wrote {results_dir}/reconstructions.json, reconstructions.png")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from autoencoder.out_dir/last.pt")
    parser.add_argument("--image", nargs="+", metavar="PATH",
                        help="reconstruct these image files (or the images directly inside these folders) "
                             "with the trained autoencoder.out_dir/best.pt; trains nothing")
    parser.add_argument("--out", metavar="NAME", help="--image: write to NAME/ inside autoencoder.out_dir")
    args, cfg = config.parse_config(parser, argv)
    rank, world, _, device = runs.start(cfg)  # (0, 1, 0, device) without torchrun
    if args.image:
        return reconstruct_images(args.image, cfg, device, args, argv)
    ae = cfg["autoencoder"]
    out_dir = ae["out_dir"]

    # ---- data: labels are only used to stratify the validation split and to label the saved codes
    with ddp.main_first():  # rank 0 decodes and caches the images, the other ranks then read its cache
        sample_data.ensure_sample(cfg)
        data = wikiart.load_split(cfg, "train")
        test = wikiart.load_split(cfg, "test", data.class_to_idx)
    train_idx, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
    size, crop, bs = cfg["image_size"], ae["train_crop"], ae["batch_size"]
    if crop and (crop > size or (ae["mode"] == "conv" and ae["bottleneck"] == "vector")):
        raise config.UserError(f"autoencoder.train_crop={crop} needs a spatial bottleneck and crop <= image_size "
                               f"({size})")
    bs = runs.fit_batch_size(bs, len(train_idx), "autoencoder.batch_size", world)
    steps_per_epoch = len(train_idx) // bs

    model = wikiart.make_autoencoder(ae, crop or size).to(device, memory_format=torch.channels_last)
    with torch.no_grad():
        code_numel = model.encode(torch.zeros(1, 3, size, size, device=device))[0].numel()
    compression = 3 * size * size / code_numel
    print(f"{len(data)} train images ({len(train_idx)} fit / {len(val_idx)} validation), {len(test)} test, "
          f"{size} px; {ae['mode']} autoencoder, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters, code {code_numel} numbers = {compression:.1f}x compression; device {device}")
    optimizer = wikiart.make_optimizer(model, ae["lr"], 0.0)
    total_steps = ae["epochs"] * steps_per_epoch
    scheduler = wikiart.make_scheduler(optimizer, max(1, total_steps // 20), total_steps)
    progress = runs.Progress(out_dir, ["train_loss", "val_mse", "val_psnr"],
                             f"{ae['mode']} autoencoder, {compression:.0f}x compression, {cfg['train_dir']}",
                             higher_is_better=False)

    def checkpoint(epoch):
        return runs.training_state(epoch, progress, model=model, optimizer=optimizer, scheduler=scheduler) | {
            "config": cfg, "class_to_idx": data.class_to_idx, "compression": compression, "code_numel": code_numel}

    last = os.path.join(out_dir, "last.pt")
    start_epoch = runs.resume(last, progress, device,
                              lambda c: runs.mismatch(c.get("config", {}), cfg, MODEL_KEYS, last),
                              model=model, optimizer=optimizer, scheduler=scheduler) if args.resume else 0
    runs.lock_out_dir(out_dir)  # a second run into out_dir stops here, before anything is written (--image reads only)
    train_model = ddp.wrap_ddp(model, world, device)
    runs.save_run_config(cfg, out_dir, "autoencoder.py", argv)

    # ---- training loop
    with runs.on_interrupt(progress, "autoencoder.py", argv):
        for epoch in range(start_epoch, ae["epochs"]):
            t0 = time.time()
            order, g = runs.epoch_order(train_idx, cfg["seed"], epoch, rank, world, bs)
            train_model.train()
            total, seen = 0.0, 0
            bar = tqdm(wikiart.iterate_batches(data.images, data.labels, order, bs // world, device, drop_last=True),
                       total=steps_per_epoch, desc=f"epoch {epoch + 1}/{ae['epochs']}", leave=False)
            for x, _ in bar:  # the labels are dropped here: unsupervised
                x = random_crop_flip((x + 1) / 2, crop, g).contiguous(memory_format=torch.channels_last)
                loss = F.mse_loss(train_model(x), x)
                runs.optimizer_step(loss, optimizer, scheduler)
                total, seen = total + loss.item() * len(x), seen + len(x)
                bar.set_postfix(loss=f"{total / seen:.4f}")

            row = runs.epoch_row(epoch, total, seen, optimizer, device)
            if len(val_idx):
                ddp.broadcast_buffers(model)  # every process scores rank 0's model, the one that is saved
                mse = run_encoder(model, data.images, device, ddp.shard(val_idx, rank, world), desc="validating")[0]
                m = recon_metrics(ddp.all_gather_shards(torch.from_numpy(mse), world).numpy())
                row.update(val_mse=m["mse"], val_psnr=m["psnr"])
            row["seconds"] = time.time() - t0
            capped = runs.time_is_up(device, epoch + 1, ae["epochs"])  # max_minutes: end after this epoch, resumable
            progress.end_epoch(row | ({"time_cap": True} if capped else {}), row.get("val_mse", -epoch),
                               lambda: checkpoint(epoch))  # no validation: the last epoch wins
            if capped:
                break

    del train_model  # the DDP wrapper holds the process group: release it first
    ddp.cleanup_distributed()
    if rank > 0:
        return  # the test metrics, figure and codes below are rank 0's work

    # ---- the best epoch: test reconstruction, figure, and the codes of both splits for cluster.py
    model, best = wikiart.load_autoencoder(os.path.join(out_dir, "best.pt"), device)
    model = model.to(memory_format=torch.channels_last)
    test_mse, test_codes, test_stats = run_encoder(model, test.images, device, desc="encoding test")
    results = {"test": recon_metrics(test_mse), "best_epoch": best["epoch"] + 1, "compression": compression,
               "code_numel": code_numel, "image_size": size, "mode": ae["mode"], "num_test": len(test)}
    runs.atomic_save(results, os.path.join(out_dir, "metrics.json"))
    print(f"test ({len(test)} images, best epoch {results['best_epoch']}): MSE {results['test']['mse']:.5f}, "
          f"PSNR {results['test']['psnr']:.2f} dB (mean per image {results['test']['psnr_mean_per_image']:.2f}) "
          f"at {compression:.1f}x compression")

    show = np.unique(test.labels.numpy(), return_index=True)[1][:6]  # the first test image of the first 6 styles
    plot_reconstructions(model, test.images[show], [test.classes[int(test.labels[i])] for i in show],
                         os.path.join(out_dir, "reconstructions.png"),
                         f"{ae['mode']} autoencoder: original / code / decoded ({compression:.0f}x compression)")

    _, train_codes, train_stats = run_encoder(model, data.images, device, with_recon=False, desc="encoding train")
    for split, ds, codes, stats in (("train", data, train_codes, train_stats), ("test", test, test_codes, test_stats)):
        with runs.atomic_file(os.path.join(out_dir, f"codes_{split}.npz")) as f:
            np.savez(f, codes=codes.astype(np.float32), stats=stats.astype(np.float32), labels=ds.labels.numpy(),
                     classes=np.array(ds.classes), paths=np.array(ds.paths), compression=compression)
    # the codes cluster.py reads: cluster.codes_dir, else autoencoder.out_dir (both as configured here)
    hint = [] if (cfg["cluster"]["codes_dir"] or out_dir) == out_dir else [f"cluster.codes_dir={out_dir}"]
    print(f"codes {train_codes.shape} (train) and {test_codes.shape} (test), pooled statistics "
          f"{train_stats.shape[1]} per image; wrote {out_dir}/codes_{{train,test}}.npz; "
          f"next: {runs.config_command('cluster.py', argv, hint)}")


if __name__ == "__main__":
    runs.cli(main)
