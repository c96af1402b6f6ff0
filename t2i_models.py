"""Bonus B's pipelines (diffusers' StableDiffusionPipeline: loaded, saved atomically), LoRA adapters, the
diffusion training loop and seeded generation, shared by pretrain_base.py and text_to_image.py."""
import contextlib
import glob
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import runs
import wikiart
from config import UserError

LORA_FILE = "pytorch_lora_weights.safetensors"
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "token_embedding"]
CAPTION_DROPOUT = 0.1  # training prompts replaced by "": the unconditional model classifier-free guidance needs
WEIGHT_DECAY = 0.01
VAL_IMAGES = 256  # validation images of the per-epoch validation loss
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (what save_pretrained writes)"


def style_phrase(style):
    """Folder name -> words: "Post_Impressionism" -> "Post Impressionism", "Ukiyo_e" -> "Ukiyo-e"."""
    parts = style.split("_")
    return parts[0] + "".join(("-" if len(p) == 1 else " ") + p for p in parts[1:])


def make_prompt(style, template):
    return template.format(style=style_phrase(style))


def load_pipeline(source, device):
    """A StableDiffusionPipeline (fp32) from a save_pretrained folder or a hub id; else one line saying what's wrong."""
    if not os.path.exists(source) and not HUB_ID.match(source):
        raise UserError(f"pretrained pipeline not found: '{source}'. Make one with python pretrain_base.py, or give "
                        f"--pretrained a diffusers pipeline folder ({LAYOUT}) or a hub id like org/name")
    if os.path.exists(source):
        source = os.path.realpath(source)  # one version of a folder that save_folder may replace meanwhile
        if not os.path.isfile(os.path.join(source, "model_index.json")):
            raise UserError(f"'{source}' is not a diffusers pipeline folder (no model_index.json). Expected: {LAYOUT}")
    import transformers
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    for lib in (diffusers_logging, transformers.logging):  # no per-call progress bars or chatter (ours stay)
        lib.set_verbosity_error(), lib.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False)
    except Exception as e:  # foreign files: any failure to read them is the user's to fix, in one line
        raise UserError(f"cannot load a pipeline from '{source}': {type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0][:300]}. Expected: {LAYOUT}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def save_folder(folder, write):
    """write(path) fills a new folder beside `folder`, which becomes a symlink to it in one os.replace: a reader
    finds the old whole folder or the new one, never none. The version before stays (a reader may be in it)."""
    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    new = tempfile.mkdtemp(dir=parent, prefix=f".{name}.")
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(new)
        for root, _, files in os.walk(new):  # on disk before the link names it
            for path in (os.path.join(root, f) for f in files):
                os.chmod(path, 0o666 & ~umask)  # some writers make private files
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(new, 0o777 & ~umask)  # mkdtemp makes a private folder
        os.symlink(os.path.basename(new), new + ".link")
        if os.path.isdir(folder) and not os.path.islink(folder):  # a plain folder of an older version
            shutil.rmtree(folder)
        previous = os.path.realpath(folder)
        os.replace(new + ".link", folder)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(new + ".link")
        raise
    for old in glob.glob(os.path.join(parent, f".{name}.*")):
        if old not in (new, previous):
            shutil.rmtree(old, ignore_errors=True)


def fingerprint(source):
    """A content hash of a pipeline's UNet and text-encoder files (a hub id stands for itself)."""
    if not os.path.isdir(source):
        return source
    h = hashlib.sha256()
    for part in ("unet", "text_encoder"):
        for path in sorted(glob.glob(os.path.join(os.path.realpath(source), part, "*"))):
            with open(path, "rb") as f:
                h.update(os.path.basename(path).encode() + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def add_lora(pipe, t):
    """LoRA adapters, the only trainable weights, on the UNet's t["lora_targets"] and, with t["lora_text_encoder"],
    the text encoder's attention and word embeddings (in the file, so that scale 0 is the base)."""
    from peft import LoraConfig, inject_adapter_in_model
    pipe.text_encoder.requires_grad_(False)  # peft freezes the modules it adapts
    lora = lambda targets: LoraConfig(r=t["lora_rank"], lora_alpha=t["lora_alpha"], target_modules=targets,
                                      init_lora_weights="gaussian")
    try:
        pipe.unet.add_adapter(lora(t["lora_targets"]))
        if t["lora_text_encoder"]:  # peft itself: transformers' add_adapter wants another peft version
            inject_adapter_in_model(lora(TEXT_ENCODER_TARGETS), pipe.text_encoder)
    except ValueError as e:  # peft: none of the target modules exist in the model
        raise UserError(f"no LoRA targets {t['lora_targets']} (or, for the text encoder, {TEXT_ENCODER_TARGETS}) "
                        f"in this pipeline: {str(e).splitlines()[0]}")


def adapted(pipe):
    """{name: module} of the pipeline's UNet and text encoder where they carry LoRA adapters."""
    return {n: m for n in ("unet", "text_encoder") if getattr(m := getattr(pipe, n), "peft_config", None)}


def lora_state(module):
    """The module's adapters as a state_dict/load_state_dict object: last.pt holds the adapters only."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    return SimpleNamespace(state_dict=lambda: {k: v.cpu() for k, v in get_peft_model_state_dict(module).items()},
                           load_state_dict=lambda state: set_peft_model_state_dict(module, state))


def load_lora(pipe, folder):
    """pipe.load_lora_weights(folder), checked: every tensor of the file must be in the model with the
    file's values (peft only warns about keys it cannot place, and drops them), else one line."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file
    path = os.path.join(folder, LORA_FILE)
    try:
        with warnings.catch_warnings(action="ignore"):
            pipe.load_lora_weights(os.path.realpath(folder))
        saved = load_file(path)
    except Exception as e:  # a foreign or damaged file
        raise UserError(f"cannot load the LoRA weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    loaded = {f"{n}.{k}": v for n, m in adapted(pipe).items() for adapter in m.peft_config
              for k, v in get_peft_model_state_dict(m, adapter_name=adapter).items()}
    lost = [k for k, v in saved.items() if k not in loaded or loaded[k].is_meta or not torch.equal(loaded[k].cpu(), v)]
    if lost:
        raise UserError(f"{path}: {len(lost)} of its {len(saved)} adapter tensors do not load into this pipeline "
                        f"(e.g. {lost[0]}): adapters of another model, or a damaged file")
    return pipe


def training_run(cfg, hp, labels, device, script, argv, resume=False):
    """What train_epochs needs; the validation loss is on a seeded draw of VAL_IMAGES validation images."""
    train_idx, val_idx = wikiart.stratified_split(labels, cfg["val_fraction"], cfg["seed"])
    val_idx = np.sort(np.random.default_rng(cfg["seed"]).permutation(val_idx)[:VAL_IMAGES])
    return SimpleNamespace(out_dir=hp["out_dir"], device=device, labels=labels, train_idx=train_idx, val_idx=val_idx,
                           seed=cfg["seed"], steps=hp["steps_per_epoch"], resume=resume, script=script, argv=argv,
                           deadline=time.time() + 60 * hp["max_minutes"] if hp["max_minutes"] else None)


def resolution(pipe):
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def training_data(pipe, images_u8, captions, device, batch_size=64):
    """What diffusion_loss draws from: each image's VAE posterior (float16 on the CPU), its caption's tokens, ""'s."""
    tokens = lambda texts: pipe.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    mean, std = [], []
    for i in tqdm(range(0, len(images_u8), batch_size), desc="VAE latents", leave=False):
        post = pipe.vae.encode(wikiart.to_float(images_u8[i:i + batch_size], device)).latent_dist
        mean.append(post.mean.half().cpu()), std.append(post.std.half().cpu())
    return {"mean": torch.cat(mean), "std": torch.cat(std), "ids": tokens(captions), "empty_ids": tokens([""])}


def diffusion_loss(pipe, noise_sched, data, idx, g, dropout=CAPTION_DROPOUT):
    """The denoising loss on images `idx`: a latent drawn from each posterior, noise, a timestep and the
    captions dropped drawn from `g`; the target is what the scheduler's prediction_type names."""
    device, idx = pipe.unet.device, np.sort(idx)
    mean, std = data["mean"][idx].float(), data["std"][idx].float()
    z0 = (mean + std * torch.randn(mean.shape, generator=g)) * pipe.vae.config.scaling_factor
    noise = torch.randn(z0.shape, generator=g)
    ts = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
    ids = torch.where((torch.rand(len(idx), generator=g) < dropout)[:, None], data["empty_ids"], data["ids"][idx])
    z0, noise, ts, ids = z0.to(device), noise.to(device), ts.to(device), ids.to(device)
    with runs.autocast(device):
        pred = pipe.unet(noise_sched.add_noise(z0, noise, ts), ts, pipe.text_encoder(ids)[0]).sample
    kind = noise_sched.config.prediction_type
    target = (noise_sched.get_velocity(z0, noise, ts) if kind == "v_prediction" else
              {"epsilon": noise, "sample": z0}[kind])
    return F.mse_loss(pred.float(), target.float())


def train_epochs(run, folder, title, objects, step, validate, batch_size, epochs, resume, extra=None):
    """Epochs of run.steps step(indices, the epoch's generator) calls on style-balanced draws, validate(), last.pt
    (with `extra`, which --resume must match); a loud stop after run.deadline (cut_short). True if all epochs ran."""
    progress, extra = runs.Progress(folder, ["loss", "val_loss", "val_l1", "lr"], title, False), extra or {}
    last, start = os.path.join(folder, "last.pt"), 0
    if resume:
        why = f"{last} was trained on another base or with other settings: start again without --resume"
        start = runs.resume(last, progress, run.device,
                            lambda ckpt: None if all(ckpt.get(k) == v for k, v in extra.items()) else why, **objects)
    draw = lambda g: wikiart.balanced_sampler_indices(run.labels[run.train_idx], run.steps * batch_size, g)
    with runs.on_interrupt(progress, run.script, run.argv):
        for epoch in range(start, epochs):
            order, g = runs.epoch_order(run.train_idx, run.seed, epoch, draw=draw)
            t0, logs = time.time(), []
            for i in tqdm(range(run.steps), desc=f"{title} epoch {epoch + 1}/{epochs}", leave=False):
                logs.append(step(order[i * batch_size:(i + 1) * batch_size], g))
            row = {"epoch": epoch + 1} | {k: float(np.mean([r[k] for r in logs])) for k in logs[0]} | validate()
            row["seconds"] = time.time() - t0
            cut = bool(run.deadline) and time.time() > run.deadline and epoch + 1 < epochs
            row |= {"cut_short": True} if cut else {}
            progress.end_epoch(row, None, lambda: runs.training_state(epoch, progress, **objects) | extra)
            if cut:
                print(f"\n{run.script}: WARNING: max_minutes passed: {title} CUT SHORT after epoch {epoch + 1} of "
                      f"{epochs}, not the recipe's training; continue with: "
                      f"{runs.command_line(run.script, run.argv, ['--resume'])}", file=sys.stderr)
                return False
    return True


def train_diffusion(run, pipe, data, hp, resume, ema_decay=0.0, extra=None):
    """Train the UNet's and text encoder's parameters that require grad (no dropout in these models: no train or
    eval mode), the word embeddings without weight decay (untrained style words stay). True if all epochs ran."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the pipeline's own noise schedule
    params = [p for m in (pipe.unet, pipe.text_encoder) for p in m.parameters() if p.requires_grad]
    words = pipe.text_encoder.get_input_embeddings().weight
    groups = [{"params": [p for p in params if p is not words]},
              {"params": [p for p in params if p is words], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp["lr"], weight_decay=WEIGHT_DECAY)
    lr_sched = wikiart.make_scheduler(opt, hp["warmup_steps"])
    ema = EMAModel(params, decay=ema_decay, use_ema_warmup=True, power=0.75) if ema_decay else None
    objects = {f"lora_{n}": lora_state(m) for n, m in adapted(pipe).items()} or {
        "unet": pipe.unet, "text_encoder": pipe.text_encoder}
    objects |= {"optimizer": opt, "lr_schedule": lr_sched} | ({"ema": ema} if ema else {})
    print(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters on {len(run.train_idx)} images "
          f"at {resolution(pipe)} px")

    def step(idx, g):
        loss = diffusion_loss(pipe, noise_sched, data, idx, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        if ema:
            ema.step(params)
        return {"loss": loss.item(), "lr": lr_sched.get_last_lr()[0]}

    @torch.no_grad()
    def validate():  # the same images, noise and timesteps every epoch; with the averaged weights
        if not len(run.val_idx):
            return {}
        g, n = torch.Generator().manual_seed(run.seed), len(run.val_idx)
        if ema:
            ema.store(params), ema.copy_to(params)
        loss = sum(diffusion_loss(pipe, noise_sched, data, b, g, 0.0).item() * len(b)
                   for b in np.array_split(run.val_idx, -(-n // hp["batch_size"]))) / n
        if ema:
            ema.restore(params)
        return {"val_loss": loss}

    done = train_epochs(run, run.out_dir, "diffusion", objects, step, validate, hp["batch_size"], hp["epochs"],
                        resume, extra)
    if ema:
        ema.copy_to(params)
    return done


@torch.no_grad()
def generate(pipe, scale, prompts, seeds, steps, guidance, batch_size, desc="generating"):
    """uint8 (N, R, R, 3): image i from prompts[i] and its own generator seeded with seeds[i], whatever its batch;
    scale: the LoRA scale (0: the base exactly, 1: the adapters as trained)."""
    lora, R, out = bool(adapted(pipe)), resolution(pipe), []
    # the word embeddings' adapters scaled here: peft's scale_layer (0.22), through which diffusers scales the
    # text encoder, skips embedding layers, so scale 0 would not be the base
    words = [(m, dict(m.scaling)) for m in pipe.text_encoder.modules() if getattr(m, "lora_embedding_A", None)]
    for m, old in words:
        m.scaling.update({k: v * float(scale) for k, v in old.items()})
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch_size]]
            with runs.autocast(pipe.device):
                images = pipe(list(prompts[i:i + batch_size]), height=R, width=R, num_inference_steps=steps,
                              guidance_scale=guidance, generator=gens, output_type="np",
                              cross_attention_kwargs={"scale": float(scale)} if lora else None).images
            out.append(np.clip(np.round(images * 255), 0, 255).astype(np.uint8))
    finally:
        for m, old in words:
            m.scaling.update(old)
    return np.concatenate(out)
