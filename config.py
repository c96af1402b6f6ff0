"""The config keys: each one's default, allowed values and help (--help-config prints them); a misspelt key gets a
"did you mean". Every script loads, later winning: the defaults below <- config.json (the values you edit) <- -c FILE
(repeatable) <- --set KEY=VALUE ... (a section's keys take a dot: --set autoencoder.epochs=3)."""
import argparse
import copy
import difflib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "config.json")
_noted_missing = set()  # config.json's missing keys already noted (each once per process)

# key: (default, help[, rule]); rule: a key of RULES ("0..1": inclusive) or a tuple of choices
RULES = {">0": ("> 0", lambda v: v > 0), ">=0": (">= 0", lambda v: v >= 0),
         "0..1": ("in [0, 1]", lambda v: 0 <= v <= 1), "0..<1": ("in [0, 1)", lambda v: 0 <= v < 1)}
SCHEMA = {
    "": {  # top level: the data, the run and the classifier (train.py, test.py, compare_balance.py)
        "seed": (0, "fixes the validation split, initialisation, shuffling, sampling, augmentation", ">=0"),
        "device": ("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:1, mps"),
        "threads": (0, "CPU threads for torch (0: torch's default); results are bit-identical per count", ">=0"),
        "precision": ("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 (on a CPU too), fp32",
                      ("auto", "bf16", "fp32")),
        "train_dir": ("data/sample/train", "training folder <root>/<Style>/<image> (the sample is generated)"),
        "test_dir": ("data/sample/test", "test folder, same layout; never used to choose a model"),
        "image_size": (64, "images are squashed to this square size (course: 416; WikiArt-16: 128)", ">0"),
        "cache_dir": ("cache", "where decoded uint8 images are cached; \"\" disables the cache"),
        "out_dir": ("out/classifier", "checkpoints, logs and plots of train.py / test.py"),
        "mode": ("resnet", "classifier: base (course model), bonusA (its variant), resnet (from scratch)",
                 ("base", "bonusA", "resnet")),
        "resnet_width": (32, "ResNet stage widths w, 2w, 4w, 8w (64 with [2,2,2,2] = ResNet-18 body)", ">0"),
        "resnet_blocks": ([1, 1, 1, 1], "ResNet blocks per stage", ">0"),
        "epochs": (12, "length of the schedule (1 warm-up epoch, then cosine decay)", ">0"),
        "stop_after": (0, "end this run after N epochs (0: never); continue with --resume", ">=0"),
        "max_minutes": (0.0, "a guard: end training after the epoch in which this many minutes have passed "
                        "(0: none); says so, --resume continues", ">=0"),
        "batch_size": (64, "images per step (the global batch under torchrun)", ">0"),
        "lr": (0.003, "AdamW peak learning rate (weight decay 0.05, label smoothing 0.1)", ">0"),
        "augment": (True, "random resized crop + horizontal flip, on the batch on the training device"),
        "mixup": (0.0, "mixup Beta(a, a) parameter (0: off); with cutmix, one of the two per batch", ">=0"),
        "cutmix": (0.0, "cutmix Beta(a, a) parameter (0: off)", ">=0"),
        "val_fraction": (0.1, "stratified validation split carved from the training folder", "0..<1"),
        "balance": ("none", "class-imbalance handling (README, Part 1)",
                    ("none", "weights1", "weights2", "weights3", "effective", "sampler", "logit_adjust", "drw")),
        "posthoc": (False, "after training: test-time prior correction, tau chosen on validation"),
    },
    "autoencoder": {  # Part 2: autoencoder.py (and the encoder style_transfer.py builds on)
        "mode": ("conv", "part2 (the course's autoencoder) or conv (residual, normalised)", ("part2", "conv")),
        "out_dir": ("out/autoencoder", "checkpoints, logs, figures and codes_{train,test}.npz"),
        "epochs": (8, "training epochs", ">0"),
        "batch_size": (32, "images per step", ">0"),
        "lr": (0.002, "AdamW peak learning rate (5% warm-up, then cosine)", ">0"),
        "width": (16, "conv: channels of the first stage (doubling per stage)", ">0"),
        "downsample": (3, "conv: stride-2 stages; code side = image_size / 2**downsample", ">0"),
        "code_channels": (12, "conv: channels of the code map", ">0"),
        "bottleneck": ("spatial", "conv: spatial (a code map) or vector (code_dim numbers)", ("spatial", "vector")),
        "code_dim": (256, "conv, vector bottleneck: numbers in the code", ">0"),
        "train_crop": (32, "random training crop side (0: whole images); spatial bottleneck only", ">=0"),
    },
    "cluster": {  # Part 2: cluster.py
        "out_dir": ("out/cluster", "metrics.json and the figures"),
        "codes_dir": ("", "folder of codes_{train,test}.npz (\"\": autoencoder.out_dir)"),
        "split": ("test", "which codes to cluster", ("train", "test")),
        "feature": ("code+stats", "code, stats (per-channel mean/std of the encoder maps) or both",
                    ("code", "stats", "code+stats")),
        "method": ("kmeans", "clustering method", ("kmeans", "gmm", "agglomerative")),
        "k": (0, "number of clusters (0: the number of styles)", ">=0"),
        "pca_dim": (50, "PCA dimensions before clustering (0: no PCA)", ">=0"),
        "tsne_points": (2000, "images in the t-SNE subsample", ">0"),
    },
    "style_transfer": {  # Part 3: style_transfer.py (defaults: the recommended recipe's method settings)
        "out_dir": ("out/style_transfer", "models, figures, evaluation.json, stylised images"),
        "autoencoder_path": ("out/autoencoder/best.pt", "Part-2 checkpoint whose per-style mean codes initialise the "
                             "style embeddings"),
        "width": (32, "generator channels at 1/4 of the side (1/4 of it at full size, twice it at 1/8); also "
                  "the naive baseline's", ">0"),
        "style_dim": (64, "width of the style MLP", ">0"),
        "source_known_fraction": (0.5, "0: the source style is no generator input (told later, its change is "
                                  "subtracted); >0: an input, known in this fraction of samples (else not)", "0..1"),
        "luminance_detail": (True, "the detail residual changes luminance only: every change of hue goes through the "
                             "smooth colour transform (no rainbow fringes)"),
        "colour_prior": (True, "the colour transform starts from the target style's mean offset of channel means and "
                         "stds from the source style's (scaled back where it would clip); the network learns the rest"),
        "colour_cells": (1, "the colour change is averaged to this x this cells (0: one cell per 8x8 pixels; "
                         "1: one colour transform per image)", ">=0"),
        "d_width": (16, "discriminator base width", ">0"),
        "teacher_steps": (1500, "0: the style term follows the discriminator's style head; >0: a separate classifier "
                          "(width 32) trained this many steps (of 64) on real paintings first, then frozen", ">=0"),
        "d_warmup_steps": (300, "steps (of 64 paintings) training the discriminator's style head alone first", ">=0"),
        "epochs": (4, "generator training epochs", ">0"),
        "steps_per_epoch": (60, "random batches per epoch (0: one pass over the training split)", ">=0"),
        "batch_size": (16, "images per step", ">0"),
        "lr": (0.0005, "Adam learning rate of the generator, the discriminator (and twice it, the teacher)", ">0"),
        "same_style_fraction": (0.4, "fraction of training targets equal to the source style", "0..1"),
        "w_cls": (3.0, "loss weight: style classification of the outputs (and of real paintings for D)", ">=0"),
        "w_rec": (50.0, "loss weight: L1 reconstruction when target = source", ">=0"),
        "w_structure": (20.0, "loss weight: coarse luminance layout kept", ">=0"),
        "w_range": (100.0, "loss weight: how far outputs go beyond the colour range before clipping", ">=0"),
        "w_colour": (8.0, "loss weight: colour histogram of each other-style output vs its target style's mean", ">=0"),
        "w_texture": (0.0, "loss weight: random-net Gram matrices, each style's running mean of its outputs "
                      "pulled to the style's mean", ">=0"),
        "naive_epochs": (0, "epochs of the naive baseline (the course's first attempt), trained and evaluated "
                         "beside the generator (0: none)", ">=0"),
        "judge_width": (16, "style judge (a ResNet, trained in each evaluation): width", ">0"),
        "judge_epochs": (4, "style judge: epochs", ">0"),
        "eval_images": (40, "--evaluate: images, each rendered in every other style", ">0"),
        "grid_rows": (8, "validation images in grid.png", ">0"),
    },
    "text_to_image": {  # Bonus B: text_to_image.py (LoRA, or the whole model, on a Stable-Diffusion-style pipeline)
        "pretrained": ("out/text_to_image_base/pipeline", "save_pretrained folder or hub id of the pipeline to "
                       "fine-tune (--pretrained); pretrain_base.py writes one to base.out_dir/pipeline"),
        "out_dir": ("out/text_to_image", "lora/ or pipeline/, last.pt, logs, grid.png, evaluation.json"),
        "resolution": (0, "training and generation side in px (0: the pipeline's own)", ">=0"),
        "prompt_template": ("a {style} painting", "prompt of a style; {style} becomes e.g. Post Impressionism"),
        "lora_rank": (8, "LoRA rank (0: no adapters, the whole UNet and text encoder fine-tuned)", ">=0"),
        "lora_alpha": (8, "LoRA alpha (the update is scaled by alpha / rank)", ">0"),
        "lora_targets": (["to_q", "to_k", "to_v", "to_out.0", "time_emb_proj", "add_embedding.proj"],
                         "UNet modules that get adapters (attention; the prompt's path into every ResNet block)"),
        "lora_text_encoder": (True, "also adapters on the text encoder's attention and word embeddings"),
        "batch_size": (32, "images per step (training and generation)", ">0"),
        "lr": (0.001, "AdamW learning rate (after warm-up: constant)", ">0"),
        "warmup_steps": (50, "linear learning-rate warm-up, steps", ">=0"),
        "epochs": (29, "training epochs of steps_per_epoch steps", ">0"),
        "steps_per_epoch": (50, "steps between logs and checkpoints", ">0"),
        "max_minutes": (0.0, "guard: end training after the epoch in which this many minutes have passed, "
                        "flagged as cut short (0: none); --resume continues", ">=0"),
        "steps": (30, "sampling steps", ">0"),
        "guidance": (4.0, "classifier-free guidance scale (1: none)", ">=0"),
        "grid_seeds": (4, "seeds per style in grid.png", ">0"),
        "eval_images": (24, "--evaluate: images per style and model", ">0"),
    },
    "base": {  # Bonus B: pretrain_base.py (the stand-in base, pretrained here without the styles)
        "out_dir": ("out/text_to_image_base", "pipeline/ (what text_to_image.pretrained loads), last.pt, logs"),
        "train_prompt": ("a {colours} painting", "every training image's caption; {colours} becomes its brightness, "
                         "saturation, hue and contrast in words (the style words stay untrained)"),
        "unet_channels": ([32, 64, 128], "UNet widths (multiples of 32), one cross-attention level each", ">0"),
        "vae_channels": ([32, 64, 64], "AutoencoderKL widths; downsampling 2**(len - 1)", ">0"),
        "latent_channels": (4, "AutoencoderKL latent channels", ">0"),
        "vae_epochs": (36, "VAE epochs of steps_per_epoch steps", ">0"),
        "vae_decoder_epochs": (7, "then epochs of the decoder alone, each image's saturation error weighed in "
                               "(the encoder and latents stay)", ">=0"),
        "epochs": (154, "then UNet and text-encoder epochs on the latents", ">0"),
        "steps_per_epoch": (50, "steps between logs and checkpoints (every stage)", ">0"),
        "batch_size": (32, "images per diffusion step (the VAE's: 16)", ">0"),
        "lr": (0.001, "diffusion AdamW learning rate (after warm-up: constant)", ">0"),
        "warmup_steps": (50, "linear learning-rate warm-up, diffusion steps", ">=0"),
        "ema_decay": (0.999, "EMA of the UNet and text-encoder weights, the result (0: off)", "0..<1"),
        "max_minutes": (0.0, "guard: end training after the epoch in which this many minutes have passed, "
                        "flagged as cut short (0: none); --resume continues", ">=0"),
    },
}


class UserError(Exception):
    """A user's mistake (a typo, a missing folder, a checkpoint that does not fit): one line on stderr, status 2."""


class ConfigError(UserError, ValueError):
    """A config mistake: unknown key, wrong type, value out of range, unreadable config file."""


def defaults():
    """The full default config (nested dict) from the schema."""
    cfg = {section: {key: spec[0] for key, spec in keys.items()} for section, keys in SCHEMA.items()}
    return copy.deepcopy(cfg.pop("") | cfg)


def complete(saved):
    """A config saved in a checkpoint, with every key added since at its default (the old behaviour)."""
    cfg = defaults()
    for key, value in saved.items():
        cfg[key] = cfg[key] | value if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def _spec(key, where=""):
    """The key's (default, help[, rule]), or a ConfigError for an unknown key (with a "did you mean")."""
    section, _, name = key.rpartition(".")
    if name in SCHEMA.get(section, {}):
        return SCHEMA[section][name]
    sections = [s for s in SCHEMA if s]
    if not section and name in SCHEMA:  # a section name where a value was expected
        first = next(iter(SCHEMA[name]))
        raise ConfigError(f"{where}'{name}' is a section: in a config file it takes an object such as "
                          f'{{"{first}": ...}}; on the command line --set {name}.{first}=...')
    if section not in SCHEMA:
        guess = difflib.get_close_matches(section, sections, 1)
        raise ConfigError(f"{where}unknown config section '{section}'." + (f" did you mean '{guess[0]}.{name}'?"
                          if guess else "") + f" Sections: {', '.join(sections)}")
    names = list(SCHEMA[section])
    guess = difflib.get_close_matches(name, names + ([] if section else sections), 1, 0.6)
    hint = ("" if not guess else f" did you mean the section '{guess[0]}'?" if guess[0] in sections and not section
            else f" did you mean '{(section + '.') if section else ''}{guess[0]}'?")
    what = f"section '{section}'" if section else "the top level"
    raise ConfigError(f"{where}unknown config key '{key}'.{hint} Keys of {what}: {', '.join(names)}")


def choose(name, options, what):
    """The option that `name` means (case, '-' and ' ' vs '_' ignored), or a UserError with a guess."""
    norm = lambda v: v.lower().replace("-", "_").replace(" ", "_")
    if match := [o for o in options if norm(o) == norm(name)]:
        return match[0]
    guess = difflib.get_close_matches(name, options, 1, 0.5)
    raise UserError(f"unknown {what} '{name}'" + (f"; did you mean '{guess[0]}'?" if guess else ".")
                    + f" The model's {what}s: {', '.join(options)}")


def check_value(key, value, where=""):
    """The value with the default's type (an int is accepted for a float), inside its allowed range."""
    spec = _spec(key, where)
    default, rule = spec[0], spec[2] if len(spec) > 2 else None
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    ok = (isinstance(value, bool) if isinstance(default, bool) else number(value) if isinstance(default, float) else
          number(value) and isinstance(value, int) if isinstance(default, int) else isinstance(value, type(default)))
    if not ok:
        raise ConfigError(f"{where}config key '{key}' must be {type(default).__name__} "
                          f"(like the default {json.dumps(default)}), got {json.dumps(value)}")
    value = float(value) if isinstance(default, float) else value
    if isinstance(value, list) and not value and default:
        raise ConfigError(f"{where}config key '{key}' must not be empty (like the default {json.dumps(default)})")
    for v in value if isinstance(value, list) else [value]:
        if isinstance(rule, tuple) and v not in rule or rule in RULES and not RULES[rule][1](v):
            allowed = "one of " + ", ".join(rule) if isinstance(rule, tuple) else RULES[rule][0]
            raise ConfigError(f"{where}config key '{key}' must be {allowed}, got {json.dumps(value)}")
    return value


def flatten(cfg, prefix=""):
    """A nested config as dotted keys: {"seed": 0, ..., "autoencoder.epochs": 8, ...}."""
    out = {}
    for k, v in cfg.items():
        out.update(flatten(v, prefix + k + ".") if isinstance(v, dict) and (prefix + k) in SCHEMA else {prefix + k: v})
    return out


def _set(cfg, key, value):
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value


def shown(path):
    """A path as messages show it: relative to the current folder when it is inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def read_json(path):
    """The JSON object in a config file, or a ConfigError naming the file (and where its syntax breaks)."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{shown(path)}, line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}")
    if not isinstance(values, dict):
        raise ConfigError(f"{shown(path)}: a config file holds one JSON object {{\"key\": value, ...}}, "
                          f"not a {type(values).__name__}")
    return values


def load_config(files=(DEFAULT_CONFIG,), overrides=(), note_missing=True):
    """The resolved config: schema defaults <- each file in turn <- KEY=VALUE overrides (config.json's gaps noted)."""
    cfg = defaults()
    for path in files:
        values = {k: v for k, v in flatten(read_json(path)).items() if not k.startswith("_")}  # _doc, _command
        for key, value in values.items():
            _set(cfg, key, check_value(key, value, f"{shown(path)}: "))
        if note_missing and os.path.abspath(path) == os.path.abspath(DEFAULT_CONFIG):
            if missing := [k for k in flatten(defaults()) if k not in values and k not in _noted_missing]:
                _noted_missing.update(missing)
                print(f"note: config.json has no {', '.join(missing)}; using the default "
                      f"({', '.join(json.dumps(_spec(k)[0]) for k in missing)})", file=sys.stderr)
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        try:  # a string key takes the text as it is (--set out_dir=123), the others JSON (--set resnet_blocks=[2,2])
            value = raw if isinstance(_spec(key, "--set: ")[0], str) else json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # not JSON (--set epochs=three): check_value says which type it takes
        _set(cfg, key, check_value(key, value, "--set: "))
    return cfg


def help_text():
    """Every key, its default and its help, by section (--help-config)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section or 'top level'}]")
        for name, spec in keys.items():
            allowed = f" ({'|'.join(spec[-1])})" if isinstance(spec[-1], tuple) else ""
            key = (section + "." if section else "") + name
            lines.append(f"  {key:34s} {json.dumps(spec[0]):22s} {spec[1]}{allowed}")
    return "\n".join(lines)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the docstring shown as written (-h) and a usage mistake as one line, exit status 2."""

    def __init__(self, description=None, **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def config_parser(doc):
    """The command line every script shares: -c FILE (repeatable) and --set KEY=VALUE ..."""
    parser = ArgumentParser(doc)
    parser.add_argument("-c", "--config", action="append", default=[], metavar="FILE",
                        help="JSON file of config values overlaid on config.json (repeatable, later wins)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set epochs=5 autoencoder.mode=part2 (repeatable)")
    parser.add_argument("--help-config", action="version", version=help_text(),  # printed as --version is
                        help="list every config key and exit")
    return parser


def parse_config(parser, argv=None):
    """(args, cfg); a config mistake raises ConfigError (one line and status 2 under runs.cli)."""
    args = parser.parse_args(argv)
    files = [DEFAULT_CONFIG] + [p for p in args.config if os.path.abspath(p) != DEFAULT_CONFIG]
    return args, load_config(files, args.set)


def explicit_keys(args):
    """Config keys given on this command line (-c FILE or --set), not left at config.json's value."""
    keys = {item.split("=", 1)[0] for item in args.set}
    for path in args.config:
        if os.path.abspath(path) != DEFAULT_CONFIG:
            keys |= {k for k in flatten(read_json(path)) if not k.startswith("_")}
    return keys
