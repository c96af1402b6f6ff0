"""Bonus B's models and training loop, shared by pretrain_base.py and text_to_image.py: Stable-Diffusion-style
pipelines (diffusers' StableDiffusionPipeline: UNet, AutoencoderKL, CLIP text encoder and tokenizer, a noise
scheduler) loaded from a folder or the hub and saved atomically, prompts from style names, LoRA adapters
(add, save, load and check), VAE latents, the denoising loss and its epochs, seeded generation."""
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


def quiet_hf():
    """Silence the libraries' per-call progress bars and chatter (our own tqdm bars stay)."""
    import diffusers
    import transformers
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def style_phrase(style):
    """Folder name -> words: "Post_Impressionism" -> "Post Impressionism", "Ukiyo_e" -> "Ukiyo-e"."""
    parts = style.split("_")
    return parts[0] + "".join(("-" if len(p) == 1 else " ") + p for p in parts[1:])


def make_prompt(style, template):
    return template.format(style=style_phrase(style))


# ----------------------------------------------------------------------------------------------
# Pipelines: loaded from a folder (or the hub), saved as one folder swapped in whole

def load_pipeline(source, device):
    """A StableDiffusionPipeline (fp32) from a save_pretrained folder or a hub id; a missing or unreadable
    folder is one line saying what was expected."""
    if not os.path.exists(source) and not HUB_ID.match(source):
        raise UserError(f"pretrained pipeline not found: '{source}'. Make one with python pretrain_base.py, or give "
                        f"--pretrained a diffusers pipeline folder ({LAYOUT}) or a hub id like org/name")
    if os.path.exists(source):
        source = os.path.realpath(source)  # one version of a folder that save_folder may replace meanwhile
        if not os.path.isfile(os.path.join(source, "model_index.json")):
            raise UserError(f"'{source}' is not a diffusers pipeline folder (no model_index.json). Expected: {LAYOUT}")
    from diffusers import StableDiffusionPipeline
    quiet_hf()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False)
    except Exception as e:  # foreign files: any failure to read them is the user's to fix, in one line
        raise UserError(f"cannot load a pipeline from '{source}': {type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0][:300]}. Expected: {LAYOUT}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def save_folder(folder, write):
    """write(path) fills a new folder beside `folder`, which becomes a symlink to it in one os.replace: a
    reader finds the old whole folder or the new one, never none. The version before stays (a reader may be
    inside it); older ones go."""
    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    new = tempfile.mkdtemp(dir=parent, prefix=f".{name}.")
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(new)
        for root, _, files in os.walk(new):  # on disk before the link names it
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~umask)  # some writers make private files
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
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
    """A content hash of a pipeline's UNet and text-encoder files: the base adapters were trained on (a hub
    id stands for itself). About 1 s per GB."""
    if not os.path.isdir(source):
        return source
    h = hashlib.sha256()
    for part in ("unet", "text_encoder"):
        for path in sorted(glob.glob(os.path.join(os.path.realpath(source), part, "*"))):
            with open(path, "rb") as f:
                h.update(os.path.basename(path).encode() + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# LoRA

def add_lora(pipe, t):
    """Freeze the pipeline and add trainable fp32 LoRA adapters to the UNet's t["lora_targets"] and, with
    t["lora_text_encoder"], to the text encoder's attention and word embeddings (a rank-r change of each
    word's input vector: the low-rank form of textual inversion, in the same file, so that scale 0 is the
    base exactly). Returns the trainable parameters."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    lora = lambda targets: LoraConfig(r=t["lora_rank"], lora_alpha=t["lora_alpha"], target_modules=targets,
                                      init_lora_weights="gaussian")
    try:
        pipe.unet.add_adapter(lora(t["lora_targets"]))
        if t["lora_text_encoder"]:  # peft itself: transformers' add_adapter wants another peft version
            inject_adapter_in_model(lora(TEXT_ENCODER_TARGETS), pipe.text_encoder)
    except ValueError as e:  # peft: none of the target modules exist in the model
        raise UserError(f"no LoRA targets {t['lora_targets']} (or, for the text encoder, {TEXT_ENCODER_TARGETS}) "
                        f"in this pipeline: {str(e).splitlines()[0]}")
    modules = [pipe.unet] + ([pipe.text_encoder] if t["lora_text_encoder"] else [])
    cast_training_params(modules, torch.float32)
    return [p for m in modules for p in m.parameters() if p.requires_grad]


class LoraState:
    """One module's adapters as a state_dict/load_state_dict object: last.pt holds the adapters only."""

    def __init__(self, module):
        self.module = module

    def state_dict(self):
        from peft.utils import get_peft_model_state_dict
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.module).items()}

    def load_state_dict(self, state):
        from peft.utils import set_peft_model_state_dict
        set_peft_model_state_dict(self.module, state)


def save_lora(pipe, folder, info):
    """folder/pytorch_lora_weights.safetensors with info.json beside it, swapped in whole. peft's state dicts
    are saved as they are, the one format load_lora_weights reads whole whatever the targets (converted to
    diffusers' names, attention adapters became lora.down/up but add_embedding.proj kept lora_A/B, and
    load_lora_weights read one of the two)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    parts = {n: m for n in ("unet", "text_encoder") if getattr(m := getattr(pipe, n), "peft_config", None)}

    def write(tmp):
        StableDiffusionPipeline.save_lora_weights(
            tmp, **{f"{n}_lora_layers": get_peft_model_state_dict(m) for n, m in parts.items()},
            **{f"{n}_lora_adapter_metadata": m.peft_config["default"].to_dict() for n, m in parts.items()})
        runs.atomic_save(info, os.path.join(tmp, "info.json"))
    save_folder(folder, write)


def load_lora(pipe, folder):
    """pipe.load_lora_weights(folder), checked: every tensor of the file must be in the model with the
    file's values (peft only warns about keys it cannot place, and drops them), else one line."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file
    path = os.path.join(folder, LORA_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe.load_lora_weights(os.path.realpath(folder))
        saved = load_file(path)
    except Exception as e:  # a foreign or damaged file
        raise UserError(f"cannot load the LoRA weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    modules = {n: getattr(pipe, n) for n in ("unet", "text_encoder")}
    loaded = {f"{n}.{k}": v for n, m in modules.items() for adapter in getattr(m, "peft_config", {})
              for k, v in get_peft_model_state_dict(m, adapter_name=adapter).items()}
    lost = [k for k, v in saved.items() if k not in loaded or loaded[k].is_meta or not torch.equal(loaded[k].cpu(), v)]
    if lost:
        raise UserError(f"{path}: {len(lost)} of its {len(saved)} adapter tensors do not load into this pipeline "
                        f"(e.g. {lost[0]}): adapters of another model, or a damaged file")
    return pipe


# ----------------------------------------------------------------------------------------------
# Training: VAE latents, the denoising loss, epochs of steps

def split(labels, cfg):
    """(training, validation) indices of the training folder's images: the split every part makes."""
    return wikiart.stratified_split(labels, cfg["val_fraction"], cfg["seed"])


def training_split(labels, cfg):
    """(training indices, validation-loss indices: a seeded draw of VAL_IMAGES validation images)."""
    train_idx, val_idx = split(labels, cfg)
    return train_idx, np.sort(np.random.default_rng(cfg["seed"]).permutation(val_idx)[:VAL_IMAGES])


def resolution(pipe):
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def encode_latents(vae, images_u8, device, batch_size=64):
    """(mean, std) of each image's VAE posterior, float16 on the CPU: diffusion draws a latent from each per
    step and never runs the encoder again."""
    mean, std = [], []
    for i in tqdm(range(0, len(images_u8), batch_size), desc="VAE latents", leave=False):
        post = vae.encode(wikiart.to_float(images_u8[i:i + batch_size], device)).latent_dist
        mean.append(post.mean.half().cpu()), std.append(post.std.half().cpu())
    return torch.cat(mean), torch.cat(std)


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
    """Epochs of run.steps calls of step(indices, generator) -> {name: number}, the images drawn balanced over
    the styles from run.train_idx with the epoch's own generator (an epoch replays exactly after --resume).
    After each: validate()'s numbers, folder/last.pt (objects and `extra`, which a resumed run must match),
    train_log, curves.png. The max_minutes guard (run.deadline) ends training after the epoch in which it
    passes and says so loudly (the log's row: cut_short). True if every epoch ran."""
    progress, extra = runs.Progress(folder, ["loss", "val_loss", "val_l1", "lr"], title, False), extra or {}
    last, start = os.path.join(folder, "last.pt"), 0
    if resume:
        why = f"{last} was trained on another base or with other settings: start again without --resume"
        start = runs.resume(last, progress, run.device,
                            lambda ckpt: None if all(ckpt.get(k) == v for k, v in extra.items()) else why, **objects)
    labels = torch.as_tensor(run.labels[run.train_idx])
    draw = lambda g: wikiart.balanced_sampler_indices(labels, run.steps * batch_size, g)
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


def train_diffusion(run, pipe, params, data, hp, objects, resume, ema_decay=0.0, extra=None):
    """Train `params` (adapters, or the whole UNet and text encoder) on data's latents and prompt ids, in
    epochs of hp["steps_per_epoch"] steps of hp["batch_size"]: AdamW (no weight decay on the word embeddings:
    a style-blind base's style words stay as they were), warm-up then constant, gradients clipped at 1, and
    with ema_decay an average of the weights, the result. True if every epoch ran (train_epochs)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the pipeline's own noise schedule
    words = pipe.text_encoder.get_input_embeddings().weight
    groups = [{"params": [p for p in params if p is not words]},
              {"params": [p for p in params if p is words], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp["lr"], weight_decay=WEIGHT_DECAY)
    lr_sched = wikiart.make_scheduler(opt, hp["warmup_steps"])
    ema = EMAModel(params, decay=ema_decay, use_ema_warmup=True, power=0.75) if ema_decay else None
    objects |= {"optimizer": opt, "lr_schedule": lr_sched} | ({"ema": ema} if ema else {})
    trains_text = any(p.requires_grad for p in pipe.text_encoder.parameters())
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
        pipe.unet.eval(), pipe.text_encoder.eval()
        if ema:
            ema.store(params), ema.copy_to(params)
        loss = sum(diffusion_loss(pipe, noise_sched, data, b, g, 0.0).item() * len(b)
                   for b in np.array_split(run.val_idx, -(-n // hp["batch_size"]))) / n
        if ema:
            ema.restore(params)
        pipe.unet.train(), pipe.text_encoder.train(trains_text)
        return {"val_loss": loss}

    pipe.unet.train(), pipe.text_encoder.train(trains_text)
    done = train_epochs(run, run.out_dir, "diffusion", objects, step, validate, hp["batch_size"], hp["epochs"],
                        resume, extra)
    if ema:
        ema.copy_to(params)
    pipe.unet.eval(), pipe.text_encoder.eval()
    return done


# ----------------------------------------------------------------------------------------------
# Generation

@torch.no_grad()
def generate(pipe, scale, prompts, seeds, steps, guidance, batch_size, desc="generating"):
    """uint8 (N, R, R, 3): image i from prompts[i] and its own generator seeded with seeds[i], so an image
    does not depend on its batch and every model starts from the same noise. scale: the LoRA scale (0: the
    base exactly, 1: the adapters as trained), diffusers' cross_attention_kwargs scale, text encoder too."""
    lora = bool(getattr(pipe.unet, "peft_config", None))
    R, out = resolution(pipe), []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        with word_adapters_scaled(pipe, float(scale)), runs.autocast(pipe.device):
            images = pipe(list(prompts[i:i + batch_size]), height=R, width=R, num_inference_steps=steps,
                          guidance_scale=guidance, generator=gens, output_type="np",
                          cross_attention_kwargs={"scale": float(scale)} if lora else None).images
        out.append(np.clip(np.round(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


@contextlib.contextmanager
def word_adapters_scaled(pipe, scale):
    """The LoRA scale applied to the word embeddings' adapters too: peft's scale_layer (0.22), through which
    diffusers scales the text encoder, skips embedding layers, so scale 0 would not be the base."""
    layers = [m for m in pipe.text_encoder.modules() if getattr(m, "lora_embedding_A", None)]
    saved = [dict(m.scaling) for m in layers]
    for m in layers:
        m.scaling.update({k: v * scale for k, v in m.scaling.items()})
    try:
        yield
    finally:
        for m, old in zip(layers, saved):
            m.scaling.update(old)
