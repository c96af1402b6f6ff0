"""Bonus B: fine-tune a Stable-Diffusion-style pipeline to paint in the WikiArt styles, prompted with the style.

    python pretrain_base.py                                  # first, a base (nothing can be downloaded here)
    python text_to_image.py                                  # LoRA on it -> out_dir/lora, grid.png
    python text_to_image.py --pretrained FOLDER_OR_HUB_ID    # on any StableDiffusionPipeline folder or hub id
    python text_to_image.py --resume                         # continue training from out_dir/last.pt
    python text_to_image.py --evaluate val                   # base vs fine-tuned on validation paintings
    python text_to_image.py --evaluate                       # ... on test paintings -> evaluation.json
    python text_to_image.py --style Ukiyo_e --n 8            # draw with the trained model (base | fine-tuned)
    python text_to_image.py --style all --save-images        # every style, one PNG per image too
    python text_to_image.py --prompt "a Pointillism painting of a harbour" --seed 3

lora_rank 0 fine-tunes the whole UNet and text encoder instead (-> out_dir/pipeline/). The adapters,
out_dir/lora/pytorch_lora_weights.safetensors, load in any script with diffusers' pipe.load_lora_weights.
"""
import os
import sys

import numpy as np

import config
import plots
import runs
import sample_data
import t2i_eval
import t2i_models as t2i
import wikiart


def load_base(t, device):
    """The pipeline to fine-tune, at text_to_image.resolution if set (else its own)."""
    pipe = t2i.load_pipeline(t["pretrained"], device)
    if t["resolution"]:
        step = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        if t["resolution"] % step:
            raise config.UserError(f"text_to_image.resolution must be a multiple of {step} for this pipeline")
        pipe.unet.register_to_config(sample_size=t["resolution"] // pipe.vae_scale_factor)
    return pipe


def train(cfg, device, resume, argv):
    """Adapters on the frozen pipeline -> out_dir/lora/ (lora_rank 0: the whole UNet and text encoder ->
    out_dir/pipeline/), beside info.json naming the base by a hash of its weights. Returns the pipeline."""
    t = cfg["text_to_image"]
    base = t2i.fingerprint(t["pretrained"])
    pipe = load_base(t, device)

    # the training folder at the pipeline's resolution, its VAE latents computed once
    data = wikiart.WikiArtDataset(cfg["train_dir"], t2i.resolution(pipe), cache_dir=cfg["cache_dir"] or None)
    prompts = [t2i.make_prompt(data.classes[y], t["prompt_template"]) for y in data.labels.numpy()]
    latents = t2i.training_data(pipe, data.images, prompts, device)
    if t["lora_rank"]:
        t2i.add_lora(pipe, t)
    else:
        pipe.unet.requires_grad_(True), pipe.text_encoder.requires_grad_(True)
    run = t2i.training_run(cfg, t, data.labels.numpy(), device, "text_to_image.py", argv)
    settings = [t[k] for k in ("resolution", "lora_rank", "lora_alpha", "lora_targets", "lora_text_encoder")]
    done = t2i.train_diffusion(run, pipe, latents, t, resume, extra={"base": base, "lora": settings})

    folder = os.path.join(t["out_dir"], "lora" if t["lora_rank"] else "pipeline")
    info = {"pretrained": t["pretrained"], "base_fingerprint": base, "styles": data.classes, "cut_short": not done}

    def write(tmp):  # the adapters as peft's state dicts: the one format load_lora_weights reads whole
        from peft.utils import get_peft_model_state_dict
        if parts := t2i.adapted(pipe):
            pipe.save_lora_weights(
                tmp, **{f"{n}_lora_layers": get_peft_model_state_dict(m) for n, m in parts.items()},
                **{f"{n}_lora_adapter_metadata": m.peft_config["default"].to_dict() for n, m in parts.items()})
        else:
            pipe.save_pretrained(tmp)
        runs.atomic_save(info, os.path.join(tmp, "info.json"))
    t2i.save_folder(folder, write)
    print(f"wrote {folder}" + ("" if done else " (training CUT SHORT by max_minutes)"))
    return pipe


def load_trained(cfg, device, train_command):
    """{name: (pipeline, LoRA scale)} of the base and the fine-tuned model as out_dir's files give them (never
    objects still in memory: what a user loads is what is drawn and scored), and the training's info.json."""
    t = cfg["text_to_image"]
    folder = os.path.join(t["out_dir"], "lora" if t["lora_rank"] else "pipeline")
    if not os.path.isfile(os.path.join(folder, "info.json")):
        raise config.UserError(f"no trained {'adapters' if t['lora_rank'] else 'pipeline'} in {folder}: "
                               f"train them first: {train_command}")
    info, base = config.read_json(os.path.join(folder, "info.json")), load_base(t, device)
    if info["base_fingerprint"] != t2i.fingerprint(t["pretrained"]):
        raise config.UserError(f"{folder} was trained on another base than {t['pretrained']} holds now (it was "
                               f"retrained or replaced since): train again: {train_command}")
    if not t["lora_rank"]:
        return {"base": (base, 0), "fine-tuned": (t2i.load_pipeline(folder, device), 0)}, info
    tuned = t2i.load_lora(load_base(t, device), folder)
    return {"base": (base, 0), "fine-tuned": (tuned, 1), "fine-tuned@0.5": (tuned, 0.5)}, info


def draw_grid(models, labels, prompts, seeds, steps, guidance, batch_size, path, images_dir=None):
    """Rows = prompts, columns = seeds; one panel per model, the same seeds in each."""
    plt, panels = plots.plt(), {}
    for name, (pipe, scale) in models.items():
        flat = t2i.generate(pipe, scale, [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds],
                            steps, guidance, batch_size, desc=f"grid: {name}")
        panels[name] = flat.reshape(len(prompts), len(seeds), *flat.shape[1:])
        for r, label in enumerate(labels if images_dir else []):
            for c, s in enumerate(seeds):
                file = f"{label[:40].replace(' ', '_')}_seed{s}.png"
                runs.save_png(panels[name][r, c], os.path.join(images_dir, name, file))
    R, pad = flat.shape[1], 2
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(2 + len(panels) * max(3, 0.9 * len(seeds)),
                                                                     1.2 + 0.9 * len(prompts)))
    for k, (ax, (name, grid)) in enumerate(zip(axes[0], panels.items())):
        tiles = np.pad(grid, ((0, 0), (0, 0), (0, pad), (0, pad), (0, 0)), constant_values=255)  # white gutters
        ax.imshow(tiles.transpose(0, 2, 1, 3, 4).reshape(len(prompts) * (R + pad), -1, 3), interpolation="nearest")
        ax.set_xticks([c * (R + pad) + R / 2 for c in range(len(seeds))], [f"seed {s}" for s in seeds], fontsize=6)
        ax.set_yticks([r * (R + pad) + R / 2 for r in range(len(prompts))], labels if k == 0 else [], fontsize=7)
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"same seeds in every panel; {steps} steps, guidance {guidance:g}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    with runs.atomic_file(path) as f:
        fig.savefig(f, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.config_parser(__doc__)
    parser.add_argument("--pretrained", metavar="ID_OR_FOLDER", help="pipeline to fine-tune (text_to_image.pretrained)")
    parser.add_argument("--resume", action="store_true", help="continue training from out_dir/last.pt")
    parser.add_argument("--evaluate", nargs="?", const="test", choices=("val", "test"),
                        help="score the trained model: on validation paintings (val) or test paintings (default)")
    parser.add_argument("--style", metavar="NAME|all", help="draw this style (or all) with the trained model")
    parser.add_argument("--prompt", help="draw this prompt with the trained model")
    parser.add_argument("--n", type=int, help="seeds per row (default: text_to_image.grid_seeds)")
    parser.add_argument("--seed", type=int, help="first seed of the grid (default: seed)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: text_to_image.steps)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (default: text_to_image.guidance)")
    parser.add_argument("--save-images", action="store_true", help="also save each image of the grid as a PNG")
    args, cfg = config.parse_config(parser, argv)
    t = cfg["text_to_image"]
    t["pretrained"] = args.pretrained or t["pretrained"]
    if any(v is not None and v <= 0 for v in (args.n, args.steps)):
        raise config.UserError("--n and --steps must be > 0")
    if args.prompt and args.style:
        raise config.UserError("give --prompt or --style, not both")
    train_command = runs.config_command("text_to_image.py", argv, [f"text_to_image.pretrained={args.pretrained}"]
                                        if args.pretrained else [])
    _, _, _, device = runs.start(cfg)
    if not (args.style or args.prompt):  # drawing only reads out_dir; training and evaluating write it
        runs.lock_out_dir(t["out_dir"])
        sample_data.ensure_sample(cfg, ("train", "test") if args.evaluate == "test" else ("train",))
    if args.evaluate:
        t2i_eval.evaluate(cfg, args.evaluate, device, *load_trained(cfg, device, train_command))
        return
    if not (args.style or args.prompt):
        runs.save_run_config(cfg, t["out_dir"], "text_to_image.py", argv)
        train(cfg, device, args.resume, argv)
    models, info = load_trained(cfg, device, train_command)
    if args.prompt:
        labels, prompts, name = [args.prompt[:40]], [args.prompt], "grid_prompt.png"
    else:
        labels = info["styles"] if args.style in (None, "all") else [config.choose(args.style, info["styles"], "style")]
        prompts, name = [t2i.make_prompt(s, t["prompt_template"]) for s in labels], (
            "grid.png" if args.style in (None, "all") else f"grid_{labels[0]}.png")
    seeds = (cfg["seed"] if args.seed is None else args.seed) + np.arange(args.n or t["grid_seeds"])
    guidance = t["guidance"] if args.guidance is None else args.guidance
    draw_grid({k: models[k] for k in ("base", "fine-tuned")}, labels, prompts, seeds.tolist(), args.steps or t["steps"],
              guidance, t["batch_size"], os.path.join(t["out_dir"], name),
              os.path.join(t["out_dir"], "images") if args.save_images else None)


if __name__ == "__main__":
    runs.cli(main)
