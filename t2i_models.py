"""Bonus B's model side (text_to_image.py is the script): load a Stable-Diffusion-style pipeline from
the hub or a folder, build a small one of the same classes from the config (--init scratch), prompts
from style names and WikiArt file names, LoRA adapters, atomic saving of adapters and pipelines, VAE
latents and seeded generation.

Every pipeline here is a diffusers StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, CLIPTokenizer, a noise scheduler), so training, generation and evaluation run the same
code whether the weights were downloaded or built here.
"""
import contextlib
import json
import math
import os
import re
import shutil
import tempfile

import numpy as np
import torch
from tqdm import tqdm

import wikiart
from config import UserError

def quiet_hf():
    """Silence the libraries' per-call progress bars and deprecation chatter (our own tqdm bars stay)."""
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ----------------------------------------------------------------------------------------------
# Prompts

def style_phrase(style):
    """Folder name -> words: "Post_Impressionism" -> "Post Impressionism", "Ukiyo_e" -> "Ukiyo-e"."""
    parts = style.split("_")
    out = parts[0]
    for p in parts[1:]:
        out += ("-" if len(p) == 1 else " ") + p
    return out


def parse_wikiart_filename(path):
    """WikiArt's "<artist>_<title>-<year>.jpg" -> (artist, title) in words, or None for other names:
    "claude-monet_water-lilies-1917.jpg" -> ("claude monet", "water lilies")."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if "_" not in stem:
        return None
    artist, title = stem.split("_", 1)
    title = re.sub(r"\(\d+\)$", "", title)           # "-1889(1)": a duplicate's suffix
    title = re.sub(r"(-\d{4})+$", "", title)         # trailing year(s)
    artist, title = artist.replace("-", " ").strip(), title.replace("-", " ").replace("_", " ").strip()
    return (artist, title) if artist and title else None


def make_prompt(style, template, named_template="", path=None):
    """The training/generation prompt for an image of `style`: `template` with {style}, or, when the
    file name gives an artist and a title and named_template is set, that one ({artist}, {title})."""
    named = parse_wikiart_filename(path) if (path and named_template) else None
    if named:
        return named_template.format(style=style_phrase(style), artist=named[0], title=named[1])
    return template.format(style=style_phrase(style))


# caption words for a base pretrained without the styles: brightness, saturation, dominant hue, contrast
COLOUR_WORDS = ("dark", "light", "grey", "vivid", "red", "orange", "yellow", "green", "blue", "purple", "flat", "contrasty")
HUES = ((20, "red"), (45, "orange"), (75, "yellow"), (165, "green"), (270, "blue"), (330, "purple"), (360, "red"))


def colour_words(images_u8):
    """Each image's look in words, measured from its pixels: "dark vivid orange contrasty". Captions for a
    base pretrained without the styles, so that its UNet learns to follow the prompt (as a downloaded
    base does) and LoRA has a text path to teach the style words on. Thresholds: WikiArt-16's quartiles
    at 64 px (mean luminance 0.39 / 0.60, mean chroma 0.095 / 0.21, luminance std 0.137 / 0.206); the
    middle half of each gets no word. Hue: the chroma-weighted mean hue angle, named when not grey."""
    x = np.asarray(images_u8, np.float32) / 255
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
    chroma = x.max(-1) - x.min(-1)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = np.degrees(np.arctan2((np.sqrt(3) * (g - b) * chroma).sum((1, 2)),
                                ((2 * r - g - b) * chroma).sum((1, 2)))) % 360
    out = []
    for lm, ls, cm, h in zip(luma.mean((1, 2)), luma.std((1, 2)), chroma.mean((1, 2)), hue):
        words = ["dark" if lm < 0.39 else "light" if lm > 0.60 else "",
                 "grey" if cm < 0.095 else "vivid" if cm > 0.21 else "",
                 "" if cm < 0.095 else next(name for top, name in HUES if h < top),
                 "flat" if ls < 0.137 else "contrasty" if ls > 0.206 else ""]
        out.append(" ".join(w for w in words if w))
    return out


# ----------------------------------------------------------------------------------------------
# Loading a pipeline (the real path: a hub id or a folder written by save_pretrained)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (what save_pretrained writes)"


def pipeline_dtype(device, name="auto"):
    """auto: bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere (CPU kernels are fp32)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_pipeline(source, device, dtype=torch.float32):
    """A StableDiffusionPipeline from a local folder or a hub id, on `device` in `dtype`; a missing
    or unreadable folder is a UserError saying what was expected."""
    if not source:
        raise UserError("no pretrained model given: pass --pretrained HUB_ID_OR_FOLDER (e.g. a folder saved "
                        "with save_pretrained, or stable-diffusion-v1-5/stable-diffusion-v1-5 with internet), "
                        "or --init scratch")
    local = os.path.exists(source)
    if not local and not HUB_ID.match(source):
        raise UserError(f"pretrained model folder not found: '{source}'. Expected a diffusers pipeline folder: "
                        f"{LAYOUT}, or a hub id like org/name")
    if local and not os.path.isfile(os.path.join(source, "model_index.json")):
        raise UserError(f"'{source}' is not a diffusers pipeline folder (no model_index.json). Expected: {LAYOUT}")
    from diffusers import StableDiffusionPipeline  # imported here: a wrong path fails fast, without it
    quiet_hf()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)
    except Exception as e:  # foreign files: any failure to read them is the user's to fix, in one line
        first = (str(e).strip().splitlines() or [""])[0][:300]
        where = f"the folder '{source}'" if local else f"'{source}' from the Hugging Face hub (no internet here?)"
        raise UserError(f"cannot load a pipeline from {where}: {type(e).__name__}: {first}. Expected: {LAYOUT}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------
# A small pipeline of the same classes, built from the config (--init scratch)

def bpe(word, ranks):
    """CLIP's byte-pair encoding of one word: the lowest-ranked adjacent pair merged everywhere, again."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        rank, pair = min((ranks.get(p, math.inf), p) for p in zip(symbols, symbols[1:]))
        if rank == math.inf:
            break
        merged, i = [], 0
        while i < len(symbols):
            if tuple(symbols[i:i + 2]) == pair:
                merged.append(pair[0] + pair[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def word_tokenizer(prompts, folder):
    """A CLIPTokenizer whose vocabulary is the prompts' words (BPE merges that spell each word as one
    token, checked word by word: a chain of prefixes alone breaks "baroque" at the "a r" of "art") plus
    single characters, so any other word still tokenizes, letter by letter."""
    from transformers import CLIPTokenizer
    words = sorted({w for p in prompts for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", p.lower())})
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(set("abcdefghijklmnopqrstuvwxyz0123456789-,.'") | set("".join(words))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    ranks = {}
    for w in words:  # while BPE leaves a word in pieces, one more merge (ranked last: no whole word changes)
        while len(pieces := bpe(w, ranks)) > 1:
            ranks[pieces[0], pieces[1]] = len(ranks)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    merges = [f"{a} {b}" for a, b in ranks]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=1024)
    longest = max(len(tok(p).input_ids) for p in prompts)
    tok.model_max_length = 8 * math.ceil(longest / 8)  # room for start and end tokens, a tidy length
    return tok


def build_scratch_pipeline(t, prompts, resolution, seed):
    """An untrained StableDiffusionPipeline sized by the config's scratch_* keys."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    quiet_hf()
    vae_ch, unet_ch, width = t["scratch_vae_channels"], t["scratch_unet_channels"], t["scratch_text_width"]
    factor = 2 ** (len(vae_ch) - 1)
    if resolution % (factor * 2 ** (len(unet_ch) - 1)):
        raise UserError(f"resolution {resolution} must be divisible by {factor * 2 ** (len(unet_ch) - 1)} "
                        f"(VAE x{factor}, then {len(unet_ch) - 1} UNet downsamplings)")
    if width % 32 or any(c % 32 for c in unet_ch):
        raise UserError("scratch_text_width and scratch_unet_channels must be multiples of 32 (attention heads of 32)")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = word_tokenizer(prompts, tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=t["scratch_text_layers"], num_attention_heads=width // 32,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    groups = max(1, math.gcd(*vae_ch) // 4)  # 4 channels a group (1 would normalise each channel's mean: the colour)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(vae_ch),
                        up_block_types=("UpDecoderBlock2D",) * len(vae_ch), block_out_channels=tuple(vae_ch),
                        layers_per_block=1, latent_channels=t["scratch_latent_channels"], norm_num_groups=groups,
                        sample_size=resolution, mid_block_add_attention=False)
    n = len(unet_ch)
    unet = UNet2DConditionModel(
        sample_size=resolution // factor, in_channels=t["scratch_latent_channels"],
        out_channels=t["scratch_latent_channels"], layers_per_block=t["scratch_unet_layers"],
        block_out_channels=tuple(unet_ch), down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=width,
        attention_head_dim=tuple(c // 32 for c in unet_ch),  # diffusers' name for the number of heads
        norm_num_groups=math.gcd(*unet_ch) // 8,  # 8 channels a group: a colour cast is not normalised away
        # the prompt, attention-pooled, is also added to the timestep embedding (Imagen's pooled text
        # embedding): every ResNet block sees the style from the first steps on, not only cross-attention
        addition_embed_type="text", addition_embed_type_num_heads=width // 32)
    # cosine schedule, v-prediction, trailing timesteps: the last step is (nearly) pure noise, so sampling
    # starts where training ended, and dark or bright styles keep their overall brightness
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False,
                              set_alpha_to_one=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, folder):
    """save_pretrained into a temp folder beside `folder`, then swapped in: never half a pipeline."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(folder) + ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes a private folder; give it the usual permissions
        pipe.save_pretrained(tmp)
        old = tmp + ".old"
        if os.path.exists(folder):
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# LoRA

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "token_embedding"]


def add_lora(pipe, t):
    """Freeze the pipeline and add trainable LoRA adapters (fp32) to the UNet's attention projections
    (t["lora_targets"]) and, if t["lora_text_encoder"], to the text encoder's. Returns the trainables.

    A base that never saw the style words (pretrained under "a painting") is taught them by the text
    encoder's adapters, the word embeddings included (token_embedding: a rank-r change of each word's
    input vector, the low-rank form of textual inversion; on a base pretrained here it raised LoRA's
    hit from 6.5% to 9.4% in the same 10 minutes, RESULTS.md). Every trained weight then lives in the one adapter file that
    load_lora_weights reads, the base stays byte for byte the same, and the LoRA scale (0 = the base
    exactly) covers the whole change; trained embedding rows instead would need a second file and loader
    (diffusers' load_textual_inversion refuses words the tokenizer already has), and scale 0 would not
    undo them."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    lora = lambda targets: LoraConfig(r=t["lora_rank"], lora_alpha=t["lora_alpha"], target_modules=targets,
                                      init_lora_weights="gaussian")
    try:
        pipe.unet.add_adapter(lora(t["lora_targets"]))
    except ValueError as e:  # peft: none of the target modules exist in the model
        raise UserError(f"lora_targets {t['lora_targets']}: {str(e).splitlines()[0]}")
    modules = [pipe.unet]
    if t["lora_text_encoder"]:
        try:  # peft itself: transformers' text_encoder.add_adapter wants a newer peft than the pinned one
            inject_adapter_in_model(lora(TEXT_ENCODER_TARGETS), pipe.text_encoder)
        except ValueError as e:
            raise UserError(f"lora_text_encoder: no adapters on this text encoder's {TEXT_ENCODER_TARGETS}: "
                            f"{str(e).splitlines()[0]}")
        modules.append(pipe.text_encoder)
    cast_training_params(modules, torch.float32)  # adapters train in fp32 even on an fp16/bf16 base
    return [p for m in modules for p in m.parameters() if p.requires_grad]


class LoraState:
    """The adapters of one module as a state_dict/load_state_dict object, so checkpoints (last.pt)
    hold the adapters only: megabytes, not the gigabytes of the base model."""

    def __init__(self, module):
        self.module = module

    def state_dict(self):
        from peft.utils import get_peft_model_state_dict
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.module).items()}

    def load_state_dict(self, state):
        from peft.utils import set_peft_model_state_dict
        set_peft_model_state_dict(self.module, state)


def save_lora(pipe, folder):
    """<folder>/pytorch_lora_weights.safetensors (diffusers' format, with rank and alpha), written
    atomically; StableDiffusionPipeline.load_lora_weights(folder) reads it back."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    layers, meta = {}, {}
    for name in ("unet", "text_encoder"):
        m = getattr(pipe, name)
        if getattr(m, "peft_config", None):
            adapter = next(iter(m.peft_config))
            layers[name] = convert_state_dict_to_diffusers(get_peft_model_state_dict(m, adapter_name=adapter))
            meta[name] = m.peft_config[adapter].to_dict()
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp") as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=layers.get("unet"), text_encoder_lora_layers=layers.get("text_encoder"),
            unet_lora_adapter_metadata=meta.get("unet"), text_encoder_lora_adapter_metadata=meta.get("text_encoder"))
        os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"),
                   os.path.join(folder, "pytorch_lora_weights.safetensors"))
    return os.path.join(folder, "pytorch_lora_weights.safetensors")


def load_lora(pipe, folder):
    path = os.path.join(folder, "pytorch_lora_weights.safetensors")
    if not os.path.exists(path):
        raise UserError(f"no LoRA weights at {path}: train them first (python text_to_image.py --pretrained ...)")
    try:
        pipe.load_lora_weights(folder)
    except Exception as e:  # a foreign or damaged file
        raise UserError(f"cannot load the LoRA weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return pipe


def has_lora(pipe):
    return bool(getattr(pipe.unet, "peft_config", None))


# ----------------------------------------------------------------------------------------------
# Latents and generation

def resolution(pipe):
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def encode_latents(pipe, batches, n, device):
    """The VAE posterior (mean, std) of every image, float16 on the CPU; positions without a readable image
    get std 0 and are dropped by the caller."""
    vae, dtype = pipe.vae.eval(), pipe.vae.dtype
    mean = std = None
    kept = []
    for pos, u8 in tqdm(batches, desc="VAE latents (once)", leave=False):
        dist = vae.encode(wikiart.to_float(u8, device).to(dtype)).latent_dist
        if mean is None:
            mean = torch.zeros((n, *dist.mean.shape[1:]), dtype=torch.float16)
            std = torch.zeros_like(mean)
        mean[pos], std[pos] = dist.mean.half().cpu(), dist.std.half().cpu()
        kept += pos.tolist()
    return mean, std, np.array(sorted(kept))


@torch.no_grad()
def generate(pipe, lora, prompts, seeds, steps, guidance, batch_size, desc="generating"):
    """uint8 (N, R, R, 3): image i from prompts[i] and its own generator seeded with seeds[i], so an
    image does not depend on its batch, and the base and fine-tuned models start from the same noise.
    lora: the LoRA scale (False/0: the base model, True/1: the adapters as trained, 0.5: half their update),
    diffusers' cross_attention_kwargs scale, which scales the text encoder's adapters too."""
    scale = float(lora) if has_lora(pipe) else 0.0
    R, out = resolution(pipe), []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        with word_adapters_scaled(pipe, scale):
            images = pipe(list(prompts[i:i + batch_size]), height=R, width=R, num_inference_steps=steps,
                          guidance_scale=guidance, generator=gens, output_type="np",
                          cross_attention_kwargs={"scale": scale} if has_lora(pipe) else None).images
        out.append(np.clip(np.round(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


@contextlib.contextmanager
def word_adapters_scaled(pipe, scale):
    """The LoRA scale applied to the word embeddings' adapters too: diffusers scales the text encoder's
    adapters through peft's scale_layer, which (peft 0.21) skips embedding layers (it looks for the
    adapter among lora_A, where an embedding keeps lora_embedding_A), so scale 0 would not be the base."""
    layers = [m for m in pipe.text_encoder.modules() if getattr(m, "lora_embedding_A", None)]
    saved = [dict(m.scaling) for m in layers]
    for m in layers:
        m.scaling.update({k: v * scale for k, v in m.scaling.items()})
    try:
        yield
    finally:
        for m, old in zip(layers, saved):
            m.scaling.update(old)
