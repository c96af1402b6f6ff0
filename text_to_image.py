"""Bonus B: teach a text-to-image diffusion model to paint in the WikiArt styles, prompted with the style.

    python text_to_image.py --pretrained FOLDER_OR_HUB_ID      # LoRA fine-tune on train_dir, then grid.png
    python text_to_image.py --pretrained FOLDER_OR_HUB_ID --evaluate   # + judge hit rate, specificity, NN
    python text_to_image.py --resume                           # continue training from out_dir/last.pt
    python text_to_image.py --style Ukiyo_e --n 8              # generate from the trained model (base | tuned)
    python text_to_image.py --style all --save-images          # every style, also one PNG per image
    python text_to_image.py --prompt "a Pointillism painting of a harbour" --seed 3
    python text_to_image.py -c configs/text_to_image_pretrain_w16.json   # a base pretrained here, no styles
    python text_to_image.py -c configs/text_to_image_lora_w16.json --evaluate      # LoRA on it, style prompts
    python text_to_image.py -c configs/text_to_image_full_w16.json --evaluate      # the whole model fine-tuned

Two ways to start (config "text_to_image.init"):
  pretrained  a Stable-Diffusion-style pipeline (hub id, or a folder written by save_pretrained) is
              frozen and LoRA adapters are trained on the UNet's attention projections (lora_targets,
              lora_rank, lora_alpha), optionally on the text encoder too. Only the adapters are saved:
              out_dir/lora/pytorch_lora_weights.safetensors, loadable with pipe.load_lora_weights().
              lora_rank 0 fine-tunes the whole UNet and text encoder instead (-> out_dir/pipeline/):
              the comparison LoRA is measured against (configs/text_to_image_full_w16.json).
  scratch     a small pipeline of the same diffusers classes is built from the scratch_* keys (a
              word-level CLIP tokenizer made from the prompts' words, a small CLIP text encoder, UNet
              and AutoencoderKL) and trained whole: first the VAE (vae_minutes), then the UNet and text
              encoder on its latents (max_minutes). The VAE is a small AutoencoderKL trained here rather
              than the Part-2 autoencoder: the result is then a plain StableDiffusionPipeline, generated,
              saved and evaluated by exactly the code of the pretrained path (and usable as --pretrained
              itself), with a KL-regularised latent scaled to unit variance as in Stable Diffusion, and it
              does not depend on a Part-2 run at the same image size. Its loss is L1 in YIQ with the
              chroma channels weighted by vae_chroma_weight: at the default 8x downsampling plain L1
              learns light long before colour (and the diffusion model then paints sepia whatever the
              style); the pretraining recipe's 4x VAE (16x16x4 latents) is sharper and learns colour
              faster with plain L1 (weight 1) than with the chroma weighted up.
              With train_prompt (e.g. "a painting") every training image gets that one prompt: a base
              pretrained without the styles, whose tokenizer still holds the style words (untrained; no
              weight decay on word embeddings), for `--pretrained OUT_DIR/pipeline` to LoRA-fine-tune
              with the style prompts (configs/text_to_image_pretrain_w16.json, then _lora_w16.json).
              "a {colours} painting" captions each image with its look in words ("a dark vivid orange
              painting", t2i_models.colour_words): the base then follows its prompt, as a download does.

Training: prompts from the style name (prompt_template; with named_template, artist and title come from
WikiArt file names like claude-monet_water-lilies-1917.jpg); images centre-cropped to the model's
resolution; VAE latents computed once (out_dir/latents.pt); noise-prediction loss (or v-prediction,
whatever the pipeline's scheduler says) with min-SNR weighting; class-balanced sampling; gradient
accumulation, mixed precision (dtype), gradient checkpointing; an optional EMA of the weights.
--evaluate: eval_images per style from the base and the trained model (LoRA: also at scale 0.5), same
seeds, scored with Part 3's style judge (robust and raw hit rate of the prompted style, per style and
overall, beside its recall on real test paintings; styles above chance), the style specificity of
colour/texture statistics, and Part 3's realism measures (metrics.RealismReference: a fresh CNN's
two-sample test against real training paintings of the prompted styles, Fréchet gaps in the judge's
features and in Lab moments closed from the base's samples, per style for Lab); the VAE on unseen test
paintings (PSNR, chroma ratio, Lab-moment error; vae_reconstructions.png); nearest-neighbour distances
to the training set (centre crops, as trained on) show whether samples are copies (nearest.png: each
model's samples nearest to a training image, above it).
Writes out_dir/{grid.png,evaluation.json,evaluation.png,nearest.png,vae_reconstructions.png,train_log.*,curves.png}.
"""
import contextlib
import copy
import hashlib
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import metrics
import plots
import runs
import sample_data
import style_transfer
import t2i_models as t2i
import images
import wikiart

# keys that do not change what is trained (generation and evaluation settings)
NOT_TRAINING_KEYS = ("out_dir", "steps", "guidance", "grid_seeds", "eval_images")
EXTENDABLE_KEYS = ("epochs", "max_minutes", "vae_epochs", "vae_minutes")  # --resume may raise these
DECODER_KEYS = ("vae_decoder_minutes", "vae_saturation_weight")  # the decoder stage's alone: the others never see them
KL_WEIGHT = 1e-6  # VAE: a light KL pull keeps the latent smooth without blurring it (Stable Diffusion's value)


def signature(cfg, resumable=False, stage=None):
    """What a checkpoint (resumable: of training stage `stage`) or a finished model was trained with. The VAE
    and diffusion stages leave out the decoder stage's keys: it changes neither the encoder nor the latents."""
    t = cfg["text_to_image"]
    skip = NOT_TRAINING_KEYS + (EXTENDABLE_KEYS + (DECODER_KEYS if stage != "VAE decoder" else ()) if resumable else ())
    return {"data": [cfg["train_dir"], cfg["seed"], cfg["val_fraction"]] + ([cfg["image_size"]] if t["init"] == "scratch" else []),
            "text_to_image": {k: v for k, v in t.items() if k not in skip}}


def load_base(t, source, device):
    """The pretrained pipeline, at text_to_image.resolution if set (else its own)."""
    pipe = t2i.load_pipeline(source, device, t2i.pipeline_dtype(device, t["dtype"]))
    if t["resolution"]:
        step = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        if t["resolution"] % step:
            raise config.UserError(f"text_to_image.resolution must be a multiple of {step} for this model")
        pipe.unet.register_to_config(sample_size=t["resolution"] // pipe.vae_scale_factor)
    return pipe


# ----------------------------------------------------------------------------------------------
# Data: centre-cropped images, prompts, VAE latents computed once

def training_items(cfg):
    """(classes, paths, labels, prompts) of train_dir, styles sorted like every other script."""
    t = cfg["text_to_image"]
    files_by_style, _ = images.scan_folder(cfg["train_dir"])
    classes = sorted(files_by_style)
    paths = [p for s in classes for p in files_by_style[s]]
    labels = np.array([i for i, s in enumerate(classes) for _ in files_by_style[s]])
    prompts = [t["train_prompt"] or t2i.make_prompt(classes[y], t["prompt_template"], t["named_template"], p)
               for p, y in zip(paths, labels)]
    return classes, paths, labels, prompts


def decode_batches(paths, size, batch_size, skipped):
    """Yield (positions, uint8 (B, size, size, 3)) of the readable images, centre-cropped; unreadable
    files are appended to `skipped`."""
    def work(p):
        try:
            return images.decode_image(p, size, fit="crop")
        except images.BadImage as e:
            skipped.append(f"{p}: {e}")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i in range(0, len(paths), batch_size):
            arrays = list(pool.map(work, paths[i:i + batch_size]))
            keep = [k for k, a in enumerate(arrays) if a is not None]
            if keep:
                yield np.array([i + k for k in keep]), np.stack([arrays[k] for k in keep])


def decode_training_images(cfg, paths, R):
    """(positions kept, uint8 (N, R, R, 3)): the readable training images, centre-cropped."""
    skipped, images, kept = [], np.zeros((len(paths), R, R, 3), np.uint8), []
    for pos, u8 in tqdm(decode_batches(paths, R, 256, skipped), total=math.ceil(len(paths) / 256),
                        desc=f"decoding {cfg['train_dir']}", leave=False):
        images[pos] = u8
        kept += pos.tolist()
    report_skipped(skipped)
    return np.array(kept), images[kept]


def report_skipped(skipped):
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) skipped:\n  " + "\n  ".join(skipped[:20]), file=sys.stderr)


def training_latents(cfg, pipe, device, vae_key, decoded=None):
    """{"mean", "std", "ids", "labels", "classes", "prompts", "train_idx", "val_idx"} for train_dir,
    cached in out_dir/latents.pt under (files, resolution, VAE) so a rerun or --resume skips the VAE.
    decoded: (positions, uint8 images) already in memory (the scratch path), else the files are read."""
    t = cfg["text_to_image"]
    classes, paths, labels, prompts = training_items(cfg)
    R = t2i.resolution(pipe)
    key = {"paths": paths, "resolution": R, "vae": vae_key}
    path = os.path.join(t["out_dir"], "latents.pt")
    try:
        cached = torch.load(path, weights_only=False) if os.path.exists(path) else None
    except Exception:  # a damaged cache is recomputed
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key and "colours" in cached:
        mean, std, kept, colours = cached["mean"], cached["std"], cached["kept"], cached["colours"]
        print(f"latents: reusing {path}")
    else:
        skipped, colours = [], [""] * len(paths)
        batches = (((decoded[0][i:i + 64], decoded[1][i:i + 64]) for i in range(0, len(decoded[0]), 64))
                   if decoded else decode_batches(paths, R, 32, skipped))

        def measured(batches):  # each image's colour words, from the pixels the latents are made of
            for pos, u8 in batches:
                for i, words in zip(pos.tolist(), t2i.colour_words(u8)):
                    colours[i] = words
                yield pos, u8
        mean, std, kept = t2i.encode_latents(pipe, measured(batches), len(paths), device)
        report_skipped(skipped)
        if mean is None:
            raise config.UserError(f"no readable images in {cfg['train_dir']}")
        runs.atomic_save({"key": key, "mean": mean, "std": std, "kept": kept, "colours": colours}, path)
    if "{colours}" in t["train_prompt"]:
        prompts = [" ".join(t["train_prompt"].format(colours=c).split()) for c in colours]
    tok = pipe.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    train_idx, val_idx = wikiart.stratified_split(labels[kept], cfg["val_fraction"], cfg["seed"])
    return {"mean": mean, "std": std, "ids": ids, "empty_ids": empty, "labels": labels, "classes": classes,
            "prompts": prompts, "train_idx": kept[train_idx], "val_idx": kept[val_idx]}


# ----------------------------------------------------------------------------------------------
# Training: one epoch skeleton (runs.Progress) for the VAE and the diffusion model

def fit(folder, title, objects, step, data_idx, labels, per_step, cfg, plan, device, argv, resume, validate,
        on_epoch=None):
    """Train in epochs of `steps` optimizer steps until `epochs` or `minutes` (0: no cap) is reached;
    step(indices, generator) -> logs. Balanced draws (each style equally likely) when t["balanced"]."""
    epochs, steps, minutes = plan
    progress = runs.Progress(folder, ["loss", "val_loss", "val_l1", "lr"], title, higher_is_better=False)
    last, start = os.path.join(folder, "last.pt"), 0
    sig = signature(cfg, resumable=True, stage=title)
    if resume and os.path.exists(last):
        start = runs.resume(last, progress, device, lambda c: None if c.get("signature") == sig else
                            f"{last} was trained with other settings: use another text_to_image.out_dir", **objects)
    spent = sum(h["seconds"] for h in progress.history)
    n = steps * per_step
    if cfg["text_to_image"]["balanced"]:
        draw = lambda g: wikiart.balanced_sampler_indices(torch.as_tensor(labels[data_idx]), n, g)
    else:
        draw = lambda g: torch.randint(len(data_idx), (n,), generator=g).numpy()
    with runs.on_interrupt(progress, "text_to_image.py", argv):
        for epoch in range(start, epochs):
            if minutes and spent >= minutes * 60:
                print(f"{title}: time cap of {minutes:g} minutes reached after {progress.epochs_done} epochs")
                break
            order, g = runs.epoch_order(data_idx, cfg["seed"], epoch, draw=draw)
            t0, sums, done = time.time(), {}, 0
            for i in tqdm(range(steps), desc=f"{title} epoch {epoch + 1}/{epochs}", leave=False):
                for k, v in step(order[i * per_step:(i + 1) * per_step], g).items():
                    sums[k] = sums.get(k, 0.0) + v
                done += 1
                if minutes and spent + time.time() - t0 >= minutes * 60:
                    break
            row = {"epoch": epoch + 1, "steps": done} | {k: v / done for k, v in sums.items()} | validate()
            row["seconds"] = time.time() - t0
            spent += row["seconds"]
            progress.end_epoch(row, None, lambda: runs.training_state(epoch, progress, **objects) | {"signature": sig})
            if on_epoch:
                on_epoch()
    return progress


def colour_l1(output, target, chroma_weight):
    """The VAE's reconstruction loss: L1 in YIQ, the two chroma channels weighted by chroma_weight. Plain
    L1 on RGB is mostly luminance (a colour error of a few per cent moves R, G and B a little each), so an
    AutoencoderKL trained on it learns light long before colour and, on a CPU budget, hands the diffusion
    model sepia latents; weighted up, colour errors cost as much as light ones from the first steps."""
    d = metrics.to_yiq(output - target).abs().mean((0, 2, 3))
    return d[0] + chroma_weight * (d[1] + d[2])


def saturation(x):
    """Each image's mean per-pixel chroma: the std over R, G, B (metrics.chroma's, with Bessel's correction)."""
    return x.std(1).mean((1, 2))


def train_vae(cfg, pipe, images, labels, device, resume, argv, decoder_only=False):
    """Scratch stage 1: the AutoencoderKL on whole images or random crops (vae_crop): colour_l1 + a light KL.
    decoder_only (stage 1b, vae_decoder_minutes): the decoder alone, at a tenth of the learning rate, with
    each image's saturation error added (vae_saturation_weight). An L1-trained decoder averages uncertain
    colour towards grey (0.83x the inputs' chroma at 4x); the saturation term asks for the colourfulness
    back without fixing where it goes. The encoder, and so the latents the diffusion model learns, stay as
    they were (Stable Diffusion's ft-MSE VAE was a decoder fine-tuned after the fact)."""
    t, vae = cfg["text_to_image"], pipe.vae
    train_idx, val_idx = wikiart.stratified_split(labels, cfg["val_fraction"], cfg["seed"])
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()) if decoder_only else list(vae.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=t["vae_lr"] / (10 if decoder_only else 1), weight_decay=0.0)
    crop, R = t["vae_crop"] or images.shape[1], images.shape[1]

    def step(idx, g):
        y0, x0 = (int(torch.randint(R - crop + 1, (1,), generator=g)) for _ in range(2))
        x = wikiart.to_float(images[np.sort(idx), y0:y0 + crop, x0:x0 + crop], device)
        with torch.no_grad() if decoder_only else contextlib.nullcontext():
            post = vae.encode(x).latent_dist
            z = post.sample(generator=g)
        out = vae.decode(z).sample
        rec = colour_l1(out, x, t["vae_chroma_weight"])
        if decoder_only:
            rec = rec + t["vae_saturation_weight"] * (saturation(out) - saturation(x)).abs().mean()
        loss = rec if decoder_only else rec + KL_WEIGHT * post.kl().mean()
        runs.optimizer_step(loss, opt)
        return {"loss": rec.item()}

    @torch.no_grad()
    def validate():
        vae.eval()
        err = [(vae(x).sample - x).abs().mean().item() for x, _ in
               wikiart.iterate_batches(images, torch.zeros(len(images)),
                                       subset(val_idx, t["val_images"], cfg["seed"]), 64, device)]
        vae.train()
        return {"val_l1": float(np.mean(err))} if err else {}

    vae.train()
    folder, title, minutes = ("vae_decoder", "VAE decoder", t["vae_decoder_minutes"]) if decoder_only else (
        "vae", "VAE", t["vae_minutes"])
    fit(os.path.join(t["out_dir"], folder), title, {"model": vae, "optimizer": opt}, step, train_idx, labels,
        t["vae_batch_size"], cfg, (t["vae_epochs"], t["steps_per_epoch"], minutes), device, argv, resume, validate)
    vae.eval(), vae.requires_grad_(False)


def subset(indices, n, seed):
    """n of `indices`, a seeded draw across all styles (the split lists them sorted by style)."""
    return np.sort(np.random.default_rng(seed).permutation(indices)[:n])


@contextlib.contextmanager
def averaged(ema, params):
    """Inside the block the parameters hold their EMA (if any); the training values come back after."""
    if ema:
        ema.store(params)
        ema.copy_to(params)
    try:
        yield
    finally:
        if ema:
            ema.restore(params)


def diffusion_loss(pipe, noise_sched, data, idx, g, caption_dropout, snr_gamma, amp):
    """The denoising loss on images `idx`: a latent drawn from each cached posterior, noise and a
    timestep drawn from `g`, the target the scheduler's prediction_type names, min-SNR weighted."""
    from diffusers.training_utils import compute_snr
    device, idx = pipe.unet.device, np.sort(idx)
    mean, std = data["mean"][idx].float(), data["std"][idx].float()
    z0 = (mean + std * torch.randn(mean.shape, generator=g)) * pipe.vae.config.scaling_factor
    noise = torch.randn(z0.shape, generator=g)
    ts = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
    drop = torch.rand(len(idx), generator=g) < caption_dropout  # the empty prompt: classifier-free guidance
    ids = torch.where(drop[:, None], data["empty_ids"], data["ids"][idx])
    z0, noise, ts, ids = z0.to(device), noise.to(device), ts.to(device), ids.to(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
        cond = pipe.text_encoder(ids)[0]
        pred = pipe.unet(noise_sched.add_noise(z0, noise, ts), ts, cond).sample
    kind = noise_sched.config.prediction_type
    target = {"epsilon": noise, "sample": z0}.get(kind) if kind != "v_prediction" else noise_sched.get_velocity(z0, noise, ts)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
    if snr_gamma:
        loss = loss * min_snr_weight(compute_snr(noise_sched, ts).clamp(min=1e-8), snr_gamma, kind)
    return loss.mean()


def min_snr_weight(snr, gamma, kind):
    """Hang et al. 2023's loss weight, so that high-SNR (nearly clean) steps stop dominating the gradient:
    min(snr, gamma) on the error of the clean sample (prediction_type "sample"); the noise and velocity
    errors are that error times snr and snr + 1, so their weights are divided by those."""
    return snr.clamp(max=gamma) / {"sample": 1, "epsilon": snr, "v_prediction": snr + 1}[kind]


def train_diffusion(cfg, pipe, data, params, objects, device, resume, argv, save=None):
    """Train `params` (adapters, or the whole UNet and text encoder) on the cached latents."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    t = cfg["text_to_image"]
    amp = t2i.pipeline_dtype(device, t["dtype"])
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the pipeline's own noise schedule
    # no weight decay on the word embeddings: AdamW would shrink every row, also those of words absent from
    # the training prompts (a style-blind pretraining's style words), which must stay as they were
    words = pipe.text_encoder.get_input_embeddings().weight
    groups = [{"params": [p for p in params if p is not words]}, {"params": [p for p in params if p is words],
                                                                  "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=t["lr"], weight_decay=t["weight_decay"])
    lr_sched = wikiart.make_scheduler(opt, t["warmup_steps"])  # time-capped: EMA, not decay
    ema = EMAModel(params, decay=t["ema_decay"], use_ema_warmup=True, power=0.75) if t["ema_decay"] else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    objects = objects | {"optimizer": opt, "lr_schedule": lr_sched} | ({"ema": ema} if ema else {}) | (
        {"grad_scaler": scaler} if scaler.is_enabled() else {})
    trains_text = any(p.requires_grad for p in pipe.text_encoder.parameters())
    if t["gradient_checkpointing"]:
        pipe.unet.enable_gradient_checkpointing()
        if trains_text:
            pipe.text_encoder.gradient_checkpointing_enable()
    accum, val_idx = t["grad_accum"], subset(data["val_idx"], t["val_images"], cfg["seed"])
    print(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters on {len(data['train_idx'])} images "
          f"at {t2i.resolution(pipe)} px, batch {t['batch_size']} x {accum}, {amp}, device {device}")

    def step(idx, g):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in np.array_split(idx, accum):
            loss = diffusion_loss(pipe, noise_sched, data, micro, g, t["caption_dropout"], t["snr_gamma"], amp) / accum
            scaler.scale(loss).backward()
            total += loss.item()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        lr_sched.step()
        if ema:
            ema.step(params)
        return {"loss": total, "lr": lr_sched.get_last_lr()[0]}

    @torch.no_grad()
    def validate():  # fixed images, noise and timesteps: epochs compare exactly
        g, total = torch.Generator().manual_seed(cfg["seed"]), 0.0
        pipe.unet.eval(), pipe.text_encoder.eval()
        with averaged(ema, params):
            for chunk in np.array_split(val_idx, max(1, math.ceil(len(val_idx) / t["batch_size"]))):
                if len(chunk):
                    total += diffusion_loss(pipe, noise_sched, data, chunk, g, 0.0, t["snr_gamma"], amp).item() * len(chunk)
        pipe.unet.train(), pipe.text_encoder.train(trains_text)
        return {"val_loss": total / len(val_idx)} if len(val_idx) else {}

    def on_epoch():
        if save:
            with averaged(ema, params):
                save()

    pipe.unet.train(), pipe.text_encoder.train(trains_text)
    fit(t["out_dir"], "diffusion", objects, step, data["train_idx"], data["labels"], t["batch_size"] * accum, cfg,
        (t["epochs"], t["steps_per_epoch"], t["max_minutes"]), device, argv, resume, validate, on_epoch)
    if ema:
        ema.copy_to(params)  # the averaged weights are the result
    pipe.unet.eval(), pipe.text_encoder.eval()


def weight_folders(t):
    """The folders of out_dir that hold the trained weights: from scratch the VAE stage (base/) and the
    pipeline; LoRA the adapters (lora/); lora_rank 0, the fine-tuned pipeline."""
    return ["base", "pipeline"] if t["init"] == "scratch" else ["lora"] if t["lora_rank"] else ["pipeline"]


def weights_fingerprint(out_dir, folders):
    """A hash of the trained weights' files, named in trained.json."""
    h = hashlib.sha256()
    for folder in folders:
        for root, dirs, files in os.walk(os.path.join(out_dir, folder)):
            dirs.sort()
            for name in sorted(files):
                with open(os.path.join(root, name), "rb") as f:
                    h.update(os.path.relpath(f.name, out_dir).encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def write_trained(cfg, classes):
    """trained.json, written last (atomically) once the weights are saved: what --evaluate and generation reuse."""
    t = cfg["text_to_image"]
    folders = weight_folders(t)
    runs.atomic_save({"signature": signature(cfg), "init": t["init"], "pretrained": t["pretrained"],
                      "classes": classes, "folders": folders, "weights": weights_fingerprint(t["out_dir"], folders)},
                     os.path.join(t["out_dir"], "trained.json"))


def read_trained(t):
    """trained.json if the weights beside it are the ones it names, else None: a training since (adapters
    saved every epoch, or a new base/ beside an old pipeline/) left weights that are not the trained model."""
    path = os.path.join(t["out_dir"], "trained.json")
    info = config.read_json(path) if os.path.exists(path) else None
    return info if info and info.get("weights") == weights_fingerprint(t["out_dir"], info.get("folders", [])) else None


def train_whole(cfg, pipe, data, device, resume, argv):
    """The UNet and text encoder trained whole on the latents (the VAE fixed) -> out_dir/pipeline/."""
    pipe.unet.requires_grad_(True), pipe.text_encoder.requires_grad_(True), pipe.vae.requires_grad_(False)
    params = [p for m in (pipe.unet, pipe.text_encoder) for p in m.parameters()]
    train_diffusion(cfg, pipe, data, params, {"unet": pipe.unet, "text_encoder": pipe.text_encoder},
                    device, resume, argv)
    t2i.save_pipeline(pipe, os.path.join(cfg["text_to_image"]["out_dir"], "pipeline"))
    write_trained(cfg, data["classes"])


def finetune(cfg, device, resume, argv):
    """The pretrained path: adapters on the frozen pipeline -> out_dir/lora/; lora_rank 0: the whole UNet
    and text encoder fine-tuned instead -> out_dir/pipeline/ (what LoRA is measured against)."""
    t = cfg["text_to_image"]
    pipe = load_base(t, t["pretrained"], device)
    vae_files = os.path.join(t["pretrained"], "vae")
    data = training_latents(cfg, pipe, device, [t["pretrained"], str(pipe.vae.dtype),
                                                os.path.exists(vae_files) and os.path.getmtime(vae_files)])
    if not t["lora_rank"]:
        train_whole(cfg, pipe, data, device, resume, argv)
        return {"base": (load_base(t, t["pretrained"], device), False), "fine-tuned": (pipe, False)}, data["classes"]
    params = t2i.add_lora(pipe, t)
    objects = {"lora_unet": t2i.LoraState(pipe.unet)}
    if t["lora_text_encoder"]:
        objects["lora_text_encoder"] = t2i.LoraState(pipe.text_encoder)
    lora_dir = os.path.join(t["out_dir"], "lora")
    train_diffusion(cfg, pipe, data, params, objects, device, resume, argv, lambda: t2i.save_lora(pipe, lora_dir))
    path = t2i.save_lora(pipe, lora_dir)
    write_trained(cfg, data["classes"])
    print(f"LoRA adapters: {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    return {"base": (pipe, False), "fine-tuned": (pipe, True)}, data["classes"]


@torch.no_grad()
def vae_fingerprint(vae):
    return [round(float(sum(p.double().abs().sum() for p in vae.parameters())), 6), vae.config.scaling_factor]


def train_scratch(cfg, device, resume, argv):
    """The scratch path: build, train the VAE (-> out_dir/base/), then the UNet and text encoder (-> pipeline/)."""
    t = cfg["text_to_image"]
    R = t["resolution"] or cfg["image_size"]
    classes, paths, labels, prompts = training_items(cfg)
    base_dir, vae_last = os.path.join(t["out_dir"], "base"), os.path.join(t["out_dir"], "vae", "last.pt")
    decoded = None
    if resume and os.path.isdir(base_dir) and os.path.exists(vae_last) and runs.load_checkpoint(
            vae_last, "a VAE checkpoint", ("signature",)).get("signature") == signature(cfg, True, "VAE"):
        pipe = t2i.load_pipeline(base_dir, device)  # the VAE stage is done
    else:
        style_prompts = [t2i.make_prompt(s, t["prompt_template"]) for s in classes]
        if "{colours}" in t["train_prompt"]:  # the vocabulary: every caption word
            prompts = [t["train_prompt"].format(colours=" ".join(t2i.COLOUR_WORDS))]
        pipe = t2i.build_scratch_pipeline(t, sorted(set(prompts + style_prompts)), R, cfg["seed"]).to(device)
        decoded = decode_training_images(cfg, paths, R)
        kept, images = decoded
        train_vae(cfg, pipe, images, labels[kept], device, resume, argv)
        with torch.no_grad():  # Stable Diffusion's rule: scale the latents to unit variance
            sub = images[subset(np.arange(len(images)), 1024, cfg["seed"])]
            z = torch.cat([pipe.vae.encode(wikiart.to_float(sub[i:i + 64], device)).latent_dist.sample()
                           for i in range(0, len(sub), 64)])
        pipe.vae.register_to_config(scaling_factor=float(1 / z.std()))
        t2i.save_pipeline(pipe, base_dir)
    if t["vae_decoder_minutes"]:
        kept, images = decoded = decoded or decode_training_images(cfg, paths, R)
        train_vae(cfg, pipe, images, labels[kept], device, resume, argv, decoder_only=True)
        t2i.save_pipeline(pipe, base_dir)
    data = training_latents(cfg, pipe, device, vae_fingerprint(pipe.vae), decoded)
    train_whole(cfg, pipe, data, device, resume, argv)
    return {"base": (t2i.load_pipeline(base_dir, device), False), "fine-tuned": (pipe, False)}, data["classes"]


def load_trained(cfg, device):
    """The trained models of out_dir (base and fine-tuned), for generation and evaluation."""
    t = cfg["text_to_image"]
    info = read_trained(t)
    if info is None:
        raise config.UserError(f"no trained model in {t['out_dir']} (no trained.json, or a training since did not "
                               "finish): train one first, e.g. python text_to_image.py --pretrained FOLDER, or "
                               "--init scratch")
    if info["init"] == "scratch":
        base = t2i.load_pipeline(os.path.join(t["out_dir"], "base"), device)
        tuned = t2i.load_pipeline(os.path.join(t["out_dir"], "pipeline"), device)
        return {"base": (base, False), "fine-tuned": (tuned, False)}, info["classes"]
    pipe = load_base(t, info["pretrained"], device)
    if info["folders"] == ["pipeline"]:  # lora_rank 0: the whole pipeline fine-tuned
        return {"base": (pipe, False), "fine-tuned": (t2i.load_pipeline(os.path.join(t["out_dir"], "pipeline"),
                                                                       device, pipe.unet.dtype), False)}, info["classes"]
    t2i.load_lora(pipe, os.path.join(t["out_dir"], "lora"))
    return {"base": (pipe, False), "fine-tuned": (pipe, True)}, info["classes"]


def train_or_load(cfg, device, resume, reuse, argv):
    """Reuse out_dir's model if `reuse` and it was trained with these settings, else train (or resume)."""
    t = cfg["text_to_image"]
    info = read_trained(t)
    if reuse and not resume and info and info["signature"] == signature(cfg):
        print(f"reusing the trained model in {t['out_dir']} (same training settings)")
        return load_trained(cfg, device)
    runs.save_run_config(cfg, t["out_dir"], "text_to_image.py", argv)
    with contextlib.suppress(FileNotFoundError):  # the weights change from here on: no model until it is written again
        os.remove(os.path.join(t["out_dir"], "trained.json"))
    return (train_scratch if t["init"] == "scratch" else finetune)(cfg, device, resume, argv)


# ----------------------------------------------------------------------------------------------
# Generation

def pick_rows(classes, style=None, prompt=None):
    """(labels, prompts-or-styles) of the grid rows: --prompt, --style NAME, or every style."""
    if prompt:
        return [prompt[:40]], None, [prompt]
    if style in (None, "all"):
        return list(classes), list(classes), None
    match = [config.choose(style, classes, "style")]
    return match, match, None


def plot_grid(models, labels, prompts, seeds, steps, guidance, batch_size, path, images_dir=None):
    """Rows = prompts, columns = seeds; one panel per model, same seeds, side by side."""
    plt = plots.plt()
    panels = {}
    for name, (pipe, lora) in models.items():
        flat = t2i.generate(pipe, lora, [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds],
                        steps, guidance, batch_size, desc=f"grid: {name}")
        panels[name] = flat.reshape(len(prompts), len(seeds), *flat.shape[1:])
        if images_dir:
            for r, label in enumerate(labels):
                for c, s in enumerate(seeds):
                    runs.save_png(panels[name][r, c], os.path.join(images_dir, name, f"{label[:40].replace(' ', '_')}_seed{s}.png"))
    R, pad = flat.shape[1], 2
    fig, axes = plt.subplots(1, len(panels), figsize=(2 + len(panels) * max(3, 0.9 * len(seeds)),
                                                      1.2 + 0.9 * len(prompts)), squeeze=False)
    for k, (ax, (name, grid)) in enumerate(zip(axes[0], panels.items())):
        canvas = np.full((len(prompts) * (R + pad), len(seeds) * (R + pad), 3), 255, np.uint8)
        for r in range(len(prompts)):
            for c in range(len(seeds)):
                canvas[r * (R + pad):r * (R + pad) + R, c * (R + pad):c * (R + pad) + R] = grid[r, c]
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks([c * (R + pad) + R / 2 for c in range(len(seeds))], [f"seed {s}" for s in seeds], fontsize=6)
        ax.set_yticks([r * (R + pad) + R / 2 for r in range(len(prompts))], labels if k == 0 else [], fontsize=7)
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"same seeds in every panel; {steps} steps, guidance {guidance:g}", fontsize=9)
    fig.tight_layout()
    with runs.atomic_file(path) as f:
        fig.savefig(f, dpi=110)
    plt.close(fig)
    return panels


# ----------------------------------------------------------------------------------------------
# Evaluation

def as_trained(paths, R, S):
    """uint8 (N, S, S, 3): the readable images of `paths` as diffusion training saw them (centre crops at
    the model's resolution R), resized to S like the generated samples."""
    skipped = []
    images = np.concatenate([metrics.resize(u8, S) for _, u8 in decode_batches(paths, R, 64, skipped)])
    report_skipped(skipped)
    return images


@torch.no_grad()
def reconstruct(vae, images_u8, device, batch_size=64):
    """uint8 images through the VAE: each posterior's mean, decoded (the colour the diffusion model can paint)."""
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = wikiart.to_float(images_u8[i:i + batch_size], device).to(vae.dtype)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def evaluate_vae(vae, test_u8, test_y, classes, device, path):
    """The VAE on unseen test paintings: metrics.reconstruction_measures, and a grid of one painting per
    style (the first of each) above its reconstruction, at `path`."""
    rec = reconstruct(vae, test_u8, device)
    shown = [int(np.flatnonzero(test_y == s)[0]) for s in range(len(classes)) if (test_y == s).any()]
    r = metrics.reconstruction_measures(test_u8, rec)
    with runs.atomic_file(path) as f:
        plots.plot_reconstruction_pairs(test_u8[shown], rec[shown], [classes[test_y[i]] for i in shown], f,
                                        f"the VAE on unseen test paintings (top) and its reconstructions (bottom):\n"
                                        f"{r['psnr']:.1f} dB, chroma {r['chroma_ratio']:.2f}x the inputs'")
    return r


def nearest_training(sets, train_paths, test_paths, R, S):
    """({name: (distances, indices)}: each image's nearest training image, the copy line, the training
    images compared). Training and unseen test paintings ("real") are prepared as training saw them
    (as_trained), so a sample that copies a training image is at distance 0 whatever the paintings'
    aspect ratio (squashed instead, most copied crops of 4:3 paintings lay above the copy line).
    The copy line: 1% of the unseen test paintings are closer than this to a training image."""
    train = as_trained(train_paths, R, S)
    nearest = {name: metrics.nearest_neighbours(u8, train)
               for name, u8 in (sets | {"real": as_trained(test_paths, R, S)}).items()}
    return nearest, float(np.percentile(nearest["real"][0], 1)), train


def evaluate(cfg, models, classes, device):
    """eval_images per style from each model, same seeds: the table base vs fine-tuned vs real (and, for
    LoRA, the adapters at half scale). Besides the judge and the style specificity, Part 3's realism
    measures (metrics.RealismReference): the base's samples are the inputs, each model's the outputs, the
    sample's seed its group; and the VAE on test paintings, since no sample has colours its VAE loses."""
    t = cfg["text_to_image"]
    S, C, N = cfg["image_size"], len(classes), t["eval_images"]
    data = wikiart.load_split(cfg, "train")
    if data.classes != list(classes):
        raise config.UserError(f"the model was trained on the styles {classes}, but {cfg['train_dir']} has {data.classes}")
    test = wikiart.load_split(cfg, "test", data.class_to_idx)
    split = style_transfer.Split(data, cfg)
    judge_cfg = copy.deepcopy(cfg)
    judge_cfg["style_transfer"]["out_dir"] = t["out_dir"]  # this judge's judge.pt lives here
    judge = style_transfer.train_or_load_judge(judge_cfg, split, device)
    judge_of = lambda u8: wikiart.predict(judge, u8, np.arange(len(u8)), 256, device, desc="judging").argmax(1).numpy()
    pipe, lora = models["fine-tuned"]
    if lora:  # half the adapters' update: how much of the change the scale buys
        models = models | {"fine-tuned@0.5": (pipe, 0.5)}

    styles = np.repeat(np.arange(C), N)
    prompts = [t2i.make_prompt(classes[s], t["prompt_template"]) for s in styles]
    seeds = cfg["seed"] + np.tile(np.arange(N), C)
    sets = {name: metrics.resize(t2i.generate(pipe, lora, prompts, seeds, t["steps"], t["guidance"], t["batch_size"],
                                  desc=f"evaluate: {name}"), S) for name, (pipe, lora) in models.items()}
    test_u8, test_y = np.asarray(test.images), test.labels.numpy()
    sets["real"], labels = test_u8, {name: styles for name in models} | {"real": test_y}

    # colour and texture statistics of real training paintings per style; "real" = unseen test paintings
    net = metrics.random_texture_net(cfg["seed"])
    describe = lambda u8: metrics.texture_descriptors(u8, net) + metrics.colour_histograms(u8)
    train_u8, train_y = np.asarray(data.images[split.train_idx]), data.labels[split.train_idx].numpy()
    refs = metrics.style_references(describe(train_u8), train_y, C)
    kinds = {"texture": slice(0, len(net)), "colour": slice(len(net), None), "texture+colour": slice(None)}

    def closer(desc, y, s, sl):  # mean distance to the other styles minus distance to style s
        d = [metrics.style_distance([layer[torch.as_tensor(y == s)] for layer in desc[sl]], refs[sl], u) for u in range(C)]
        return float(np.mean([d[u] for u in range(C) if u != s]) - d[s])

    present = [s for s in range(C) if (test_y == s).any()]
    desc = {name: describe(u8) for name, u8 in sets.items()}
    real_gap = {k: {s: closer(desc["real"], test_y, s, sl) for s in present} for k, sl in kinds.items()}
    nearest, copy_line, train_seen = nearest_training(sets, [data.paths[i] for i in split.train_idx], test.paths,
                                                      t2i.resolution(pipe), S)
    nn_train = {name: d for name, (d, _) in nearest.items()}
    reality = style_transfer.realism_reference(judge, test_u8, test_y, train_u8, train_y, cfg["seed"], device)
    results = {"styles": list(classes), "chance": 1 / C, "images_per_style": N, "steps": t["steps"],
               "guidance": t["guidance"], "image_size": S, "training": trained_size(pipe, lora, t),
               "vae": evaluate_vae(pipe.vae, test_u8, test_y, classes, device,
                                   os.path.join(t["out_dir"], "vae_reconstructions.png")), "models": {}}
    for name, u8 in sets.items():
        y = labels[name]
        hits_r, hits = judge_of(metrics.robust_transform(u8)) == y, judge_of(u8) == y
        per_style = lambda h: {classes[s]: float(h[y == s].mean()) for s in present}
        r = {"robust_hit_rate": float(np.mean([hits_r[y == s].mean() for s in present])),
             "raw_hit_rate": float(np.mean([hits[y == s].mean() for s in present])),
             "robust_hit_per_style": per_style(hits_r), "raw_hit_per_style": per_style(hits)}
        r |= {f"styles_above_chance_{k}": int(sum(v > 1 / C for v in r[f"{k}_hit_per_style"].values()))
              for k in ("robust", "raw")}
        for k, sl in kinds.items():
            spec = {classes[s]: closer(desc[name], y, s, sl) / real_gap[k][s] if real_gap[k][s] > 0 else float("nan")
                    for s in present}
            r[f"specificity_{k}"] = spec
            r[f"styles_specific_{k}"] = int(sum(v > 0 for v in spec.values()))
        d = nn_train[name]
        r["nn_train_distance"] = {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)), "min": float(d.min())}
        r["closer_than_test_p1"] = float((d < copy_line).mean())
        close = np.flatnonzero(d < copy_line)  # what they are: a near-blank canvas is close to any blank one
        r["close_samples"] = {"per_style": {classes[s]: int((y[close] == s).sum()) for s in np.unique(y[close])},
                              "pixel_std": [round(float(u8[i].std()), 1) for i in close[np.argsort(d[close])]]}
        if name != "real":  # realism against real paintings of the prompted styles; gaps closed from the base
            m = reality.measure(sets["base"], u8, seeds, y, per_style=True)
            m["lab_gap_closed_per_style"] = {classes[s]: v for s, v in m["lab_gap_closed_per_style"].items()}
            r |= m
        results["models"][name] = r
    for name, r in results["models"].items():  # the real paintings' hit rate is the judge's matched ceiling
        for k in ("robust", "raw"):
            r[f"{k}_of_ceiling"] = r[f"{k}_hit_rate"] / max(results["models"]["real"][f"{k}_hit_rate"], 1e-9)
    runs.atomic_save(results, os.path.join(t["out_dir"], "evaluation.json"))
    with runs.atomic_file(os.path.join(t["out_dir"], "evaluation.png")) as f:
        plots.plot_t2i_evaluation(results, nn_train, f)
    pairs = {name: [(u8[i], train_seen[nearest[name][1][i]], f"{classes[labels[name][i]]}\n{nn_train[name][i]:.3f}")
                    for i in np.argsort(nn_train[name])[:8]] for name, u8 in sets.items() if name != "real"}
    with runs.atomic_file(os.path.join(t["out_dir"], "nearest.png")) as f:
        plots.plot_nearest(pairs, copy_line, f)
    print_evaluation(results, N, C, len(present))
    print(f"wrote {os.path.join(t['out_dir'], 'evaluation.json')}, evaluation.png, nearest.png, vae_reconstructions.png")
    return results


def trained_size(pipe, lora, t):
    """What was trained: LoRA, the adapters (and their file); from scratch, the UNet and the text encoder
    (the VAE before them); beside the UNet's size."""
    count = lambda m, f=lambda n: True: sum(p.numel() for n, p in m.named_parameters() if f(n))
    unet = count(pipe.unet, lambda n: "lora_" not in n)
    if not lora:
        return {"trainable_parameters": unet + count(pipe.text_encoder), "unet_parameters": unet}
    path = os.path.join(t["out_dir"], "lora", "pytorch_lora_weights.safetensors")
    adapters = sum(count(m, lambda n: "lora_" in n) for m in (pipe.unet, pipe.text_encoder))
    return {"trainable_parameters": adapters, "unet_parameters": unet,
            "adapter_file_bytes": os.path.getsize(path) if os.path.exists(path) else None}


def print_evaluation(results, N, C, n):
    v = results["vae"]
    print(f"\nVAE on unseen test paintings: {v['psnr']:.2f} dB, chroma {v['chroma_ratio']:.2f}x the inputs', "
          f"Lab-moment error {v['lab_moment_error']:.2f} (a, b alone {v['lab_moment_error_ab']:.2f})")
    print(f"{N} images per style x {C} styles per model; chance {1 / C:.1%}; the 'real' row is the judge on "
          f"unseen test paintings (its recall per style, averaged: the matched ceiling); two-sample: a fresh CNN "
          f"tells the samples from real training paintings of their styles (50%: it cannot); Lab gap closed from the base")
    print(f"{'model':15s} {'robust hit':>10s} {'raw hit':>8s} {'styles > chance (robust/raw)':>28s} {'two-sample':>10s} "
          f"{'Lab closed':>10s} {'specific':>9s} {'NN dist median / p5':>20s}")
    for name, r in results["models"].items():
        two, lab = (f"{r[k]:{f}}" if k in r else "-" for k, f in (("two_sample_accuracy", "10.1%"), ("lab_gap_closed", "10.2f")))
        print(f"{name:15s} {r['robust_hit_rate']:10.1%} {r['raw_hit_rate']:8.1%} {r['styles_above_chance_robust']:>15d} / "
              f"{r['styles_above_chance_raw']:<2d} of {n:<3d} {two:>10s} {lab:>10s} {r['styles_specific_texture+colour']:>6d}"
              f"/{n:<2d} {r['nn_train_distance']['median']:12.3f} / {r['nn_train_distance']['p5']:.3f}")
    names = list(results["models"])
    print("hit per style, robust / raw: " + " | ".join(names))
    for style in results["styles"]:
        if style in results["models"]["real"]["robust_hit_per_style"]:
            print(f"  {style[:26]:26s} " + " | ".join(f"{results['models'][m]['robust_hit_per_style'][style]:4.0%} / "
                                                  f"{results['models'][m]['raw_hit_per_style'][style]:4.0%}" for m in names))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--pretrained", metavar="ID_OR_FOLDER", help="hub id or save_pretrained folder to LoRA fine-tune")
    parser.add_argument("--init", choices=("pretrained", "scratch"), help="override text_to_image.init")
    parser.add_argument("--resume", action="store_true", help="continue training from out_dir's last.pt")
    parser.add_argument("--evaluate", action="store_true", help="train (or reuse) and score base vs fine-tuned vs real")
    parser.add_argument("--prompt", help="generate from this prompt with the trained model (no training)")
    parser.add_argument("--style", metavar="NAME|all", help="generate this style (or all) with the trained model")
    parser.add_argument("--n", type=int, help="seeds per row of the grid (default: text_to_image.grid_seeds)")
    parser.add_argument("--seed", type=int, help="first seed of the grid (default: seed)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: text_to_image.steps)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: text_to_image.guidance)")
    parser.add_argument("--save-images", action="store_true", help="also save each grid image as a PNG")
    args, cfg = config.parse_config(parser, argv)
    t = cfg["text_to_image"]
    if args.pretrained:
        t["pretrained"], t["init"] = args.pretrained, "pretrained"
    if args.init:
        t["init"] = args.init
    for name in ("n", "steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise config.UserError(f"--{name} must be > 0")
    if args.prompt and args.style:
        raise config.UserError("give --prompt or --style, not both")
    steps = args.steps or t["steps"]
    guidance = t["guidance"] if args.guidance is None else args.guidance
    seeds = (cfg["seed"] if args.seed is None else args.seed) + np.arange(args.n or t["grid_seeds"])
    _, _, _, device = runs.start(cfg)
    generate_only = bool(args.prompt or args.style) and not args.evaluate
    if not generate_only:
        runs.lock_out_dir(t["out_dir"])  # a second run into out_dir stops here (generating only reads)
    sample_data.ensure_sample(cfg)

    info = read_trained(t) if generate_only else None
    classes = info["classes"] if info else sorted(images.scan_folder(cfg["train_dir"])[0])
    labels, styles, prompts = pick_rows(classes, args.style, args.prompt)  # an unknown style fails here, early
    if generate_only:
        models, classes = load_trained(cfg, device)
    else:
        models, classes = train_or_load(cfg, device, args.resume, args.evaluate, argv)
    prompts = prompts or [t2i.make_prompt(s, t["prompt_template"]) for s in styles]
    name = "grid.png" if not (args.prompt or args.style) or args.style == "all" else (
        "grid_prompt.png" if args.prompt else f"grid_{styles[0]}.png")
    t0 = time.time()
    plot_grid(models, labels, prompts, list(map(int, seeds)), steps, guidance, t["batch_size"],
              os.path.join(t["out_dir"], name), os.path.join(t["out_dir"], "images") if args.save_images else None)
    print(f"wrote {os.path.join(t['out_dir'], name)} ({time.time() - t0:.0f} s)")
    if args.evaluate:
        evaluate(cfg, models, classes, device)


if __name__ == "__main__":
    runs.cli(main)
