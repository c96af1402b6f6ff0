"""Bonus B's stand-in base (nothing can be downloaded here): a small Stable-Diffusion-style pipeline pretrained
on train_dir WITHOUT the styles, for text_to_image.py to fine-tune with the style prompts.

    python pretrain_base.py                                      # -> base.out_dir/pipeline
    python pretrain_base.py -c configs/text_to_image_pretrain_w16.json
    python pretrain_base.py --resume                             # continue where Ctrl-C stopped it

Stable Diffusion's classes, small, with a word-level tokenizer (the style words stay untrained). Three stages:
the VAE (vae_epochs); its decoder alone, each image's saturation error weighed in (vae_decoder_epochs); then
the UNet and text encoder on the latents (epochs), each painting captioned with its look measured from its
pixels ("a dark vivid orange painting"). Writes base.out_dir/{pipeline/,vae/,vae_decoder/,train_log.*}.
"""
import contextlib
import json
import math
import os
import re
import sys
import tempfile

import numpy as np
import torch

import config
import metrics
import runs
import sample_data
import t2i_models as t2i
import wikiart

TEXT_WIDTH, TEXT_LAYERS, UNET_LAYERS = 128, 2, 1
VAE_LR, VAE_BATCH = 0.002, 16
KL_WEIGHT = 1e-6  # a light KL pull keeps the latent smooth without blurring it (Stable Diffusion's value)
SATURATION_WEIGHT = 2.0
COLOUR_WORDS = ("dark", "light", "grey", "vivid", "red", "orange", "yellow", "green", "blue", "purple", "flat",
                "contrasty")
HUES = ((20, "red"), (45, "orange"), (75, "yellow"), (165, "green"), (270, "blue"), (330, "purple"), (360, "red"))


def colour_words(images_u8):
    """Each image's look in words: brightness, saturation, hue (chroma-weighted mean angle, unless grey) and
    contrast; the thresholds are WikiArt-16's quartiles at 64 px, the middle half of each gets no word."""
    x = np.asarray(images_u8, np.float32) / 255
    luma, chroma = x @ np.array([0.299, 0.587, 0.114], np.float32), x.max(-1) - x.min(-1)
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


def bpe(word, ranks):
    """CLIP's byte-pair encoding of one word: the lowest-ranked adjacent pair merged everywhere, again."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        rank, pair = min((ranks.get(p, math.inf), p) for p in zip(symbols, symbols[1:]))
        if rank == math.inf:
            break
        merged, i = [], 0
        while i < len(symbols):
            take = tuple(symbols[i:i + 2]) == pair
            merged.append(pair[0] + pair[1] if take else symbols[i])
            i += 2 if take else 1
        symbols = merged
    return symbols


def word_tokenizer(prompts, folder):
    """A CLIPTokenizer whose vocabulary is the prompts' words (BPE merges that spell each word as one token,
    checked word by word) plus single characters, so any other word still tokenizes, letter by letter."""
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
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranks))
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=1024)
    tok.model_max_length = 8 * math.ceil(max(len(tok(p).input_ids) for p in prompts) / 8)
    return tok


def build_pipeline(b, prompts, resolution, seed):
    """An untrained StableDiffusionPipeline sized by the base section, its tokenizer made from `prompts`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    vae_ch, unet_ch, latent = b["vae_channels"], b["unet_channels"], b["latent_channels"]
    step = 2 ** (len(vae_ch) - 1) * 2 ** (len(unet_ch) - 1)
    if resolution % step or any(c % 32 for c in unet_ch):
        raise config.UserError(f"image_size {resolution} must be divisible by {step} (VAE and UNet downsamplings) "
                               f"and base.unet_channels multiples of 32 (attention heads of 32)")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = word_tokenizer(prompts, tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_WIDTH // 32,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * len(vae_ch),
                        up_block_types=("UpDecoderBlock2D",) * len(vae_ch), block_out_channels=tuple(vae_ch),
                        layers_per_block=1, latent_channels=latent, sample_size=resolution,
                        # 4 channels a group (1 would normalise each channel's mean away: the colour)
                        norm_num_groups=max(1, math.gcd(*vae_ch) // 4), mid_block_add_attention=False)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2 ** (len(vae_ch) - 1), in_channels=latent, out_channels=latent,
        layers_per_block=UNET_LAYERS, block_out_channels=tuple(unet_ch),
        down_block_types=("CrossAttnDownBlock2D",) * len(unet_ch),
        up_block_types=("CrossAttnUpBlock2D",) * len(unet_ch), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=tuple(c // 32 for c in unet_ch),  # diffusers' name for the number of heads
        norm_num_groups=math.gcd(*unet_ch) // 8,
        # the prompt, attention-pooled, is also added to the timestep embedding: every ResNet block sees it
        addition_embed_type="text", addition_embed_type_num_heads=TEXT_WIDTH // 32)
    # cosine schedule, v-prediction, trailing timesteps: sampling starts from (nearly) pure noise, where
    # training ended, so dark or bright styles keep their overall brightness
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False,
                              set_alpha_to_one=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_vae(run, vae, images, device, epochs, decoder_only):
    """The AutoencoderKL on L1 in YIQ + a light KL; decoder_only: the decoder alone, at a tenth of the learning
    rate, with each image's saturation (mean per-pixel chroma) error added: an L1 decoder greys uncertain colour."""
    vae.requires_grad_(not decoder_only)
    if decoder_only:
        vae.decoder.requires_grad_(True), vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=VAE_LR / (10 if decoder_only else 1), weight_decay=0.0)
    saturation = lambda x: x.std(1).mean((1, 2))

    def step(idx, g):
        x = wikiart.to_float(images[np.sort(idx)], device)
        with torch.no_grad() if decoder_only else contextlib.nullcontext():
            post = vae.encode(x).latent_dist
            z = post.sample(generator=g)
        out = vae.decode(z).sample
        rec = metrics.to_yiq(out - x).abs().mean((0, 2, 3)).sum()
        penalty = SATURATION_WEIGHT * (saturation(out) - saturation(x)).abs().mean() if decoder_only else (
            KL_WEIGHT * post.kl().mean())
        runs.optimizer_step(rec + penalty, opt)
        return {"loss": rec.item()}

    @torch.no_grad()
    def validate():  # no dropout in the VAE: train and eval modes are the same
        err = [(vae(x).sample - x).abs().mean().item() for x in (wikiart.to_float(images[run.val_idx[i:i + 64]], device)
                                                              for i in range(0, len(run.val_idx), 64))]
        return {"val_l1": float(np.mean(err))} if err else {}

    folder = "vae_decoder" if decoder_only else "vae"
    resume = run.resume and (not decoder_only or os.path.exists(os.path.join(run.out_dir, folder, "last.pt")))
    return t2i.train_epochs(run, os.path.join(run.out_dir, folder), f"VAE{' decoder' if decoder_only else ''}",
                            {"model": vae, "optimizer": opt}, step, validate, VAE_BATCH, epochs, resume)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from the last.pt of the stage that was stopped")
    args, cfg = config.parse_config(parser, argv)
    b, out = cfg["base"], cfg["base"]["out_dir"]
    _, _, _, device = runs.start(cfg)
    runs.lock_out_dir(out)
    sample_data.ensure_sample(cfg, ("train",))
    runs.save_run_config(cfg, out, "pretrain_base.py", argv)
    data = wikiart.load_split(cfg, "train")
    images = np.asarray(data.images)
    run = t2i.training_run(cfg, b, data.labels.numpy(), device, "pretrain_base.py", argv, args.resume)
    if not args.resume:  # a fresh start: no stage may resume an earlier run's checkpoint later
        for folder in ("vae", "vae_decoder", "."):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, folder, "last.pt"))
    vocabulary = [b["train_prompt"].format(colours=" ".join(COLOUR_WORDS))] + [
        t2i.make_prompt(s, cfg["text_to_image"]["prompt_template"]) for s in data.classes]
    pipe = build_pipeline(b, vocabulary, cfg["image_size"], cfg["seed"]).to(device)

    if not (train_vae(run, pipe.vae, images, device, b["vae_epochs"], False)
            and train_vae(run, pipe.vae, images, device, b["vae_decoder_epochs"], True)):
        return
    with torch.no_grad():  # Stable Diffusion's rule: latents scaled to unit variance
        sub = images[np.sort(np.random.default_rng(cfg["seed"]).permutation(len(images))[:1024])]
        g = torch.Generator().manual_seed(cfg["seed"])
        z = torch.cat([pipe.vae.encode(wikiart.to_float(sub[i:i + 64], device)).latent_dist.sample(generator=g)
                       for i in range(0, len(sub), 64)])
    pipe.vae.register_to_config(scaling_factor=float(1 / z.std()))
    captions = [" ".join(b["train_prompt"].format(colours=c).split()) for c in colour_words(images)]
    latents = t2i.training_data(pipe, images, captions, device)
    print(f"captions: {len(set(captions))} distinct, e.g. '{captions[0]}'")
    done = t2i.train_diffusion(run, pipe, latents, b, args.resume and os.path.exists(os.path.join(out, "last.pt")),
                               b["ema_decay"])
    t2i.save_folder(os.path.join(out, "pipeline"), pipe.save_pretrained)
    print(f"wrote {os.path.join(out, 'pipeline')}{'' if done else ' (training CUT SHORT by max_minutes)'}; "
          f"fine-tune it: python text_to_image.py --pretrained {os.path.join(out, 'pipeline')}")


if __name__ == "__main__":
    runs.cli(main)
