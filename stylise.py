"""style_transfer.py --image: your images rendered with the trained out_dir/residual/model.pt.

Images are squashed to the model's size (one style also at their own aspect, --max-side, brush marks on a photo);
the generator is told their style (--source NAME, else the discriminator's guess). Results: out_dir/stylised/."""
import math
import os

import torch
import torch.nn.functional as F

import config
import images
import metrics
import plots
import runs
import transfer_models as tm
import wikiart


def add_arguments(parser):
    use = parser.add_argument_group("your own images (with the trained out_dir/residual/model.pt)")
    use.add_argument("--image", nargs="+", metavar="PATH", help="image files, or folders of them")
    use.add_argument("--style", default="all", metavar="NAME", help="target style, or all (default: a strip of all)")
    use.add_argument("--mix", nargs="+", metavar="NAME:W", help="a weighted mixture of styles instead of --style")
    use.add_argument("--strength", type=float, default=1.0, help="0: own-style reconstruction ... 1: the target")
    use.add_argument("--source", metavar="NAME", help="the inputs' own style if known (else the discriminator's guess)")
    use.add_argument("--keep-colour", action="store_true", help="keep the input's colours (luminance-only transfer)")
    use.add_argument("--max-side", type=int, default=512, metavar="SIDE",
                     help="also save at the input's own aspect and resolution, longer side at most SIDE (0: off)")
    use.add_argument("--paint", type=int, metavar="PX", help="brush radius at full resolution (default: 6 px for "
                     "an image of unknown style, a photo; 0 with --source: a painting keeps its own surface)")
    use.add_argument("--out", metavar="NAME", help="results folder inside out_dir (default: stylised)")


def keep_colour(out, x):
    """Luminance-only transfer (Gatys et al. 2016): the output's Y (of YIQ) with the input's I and Q, per pixel."""
    to = lambda img: metrics.to_yiq((img + 1) / 2)
    return metrics.from_yiq(torch.cat([to(out)[:, :1], to(x)[:, 1:]], 1)).clamp(0, 1) * 2 - 1


def paint_strokes(x, radius, sectors=8, sharpness=8.0):
    """Brush marks a 64-px model cannot draw into a photo: the generalised Kuwahara filter (Papari et al. 2007),
    each pixel the mean of the most uniform of 8 sectors of a disc around it (flat patches, sharp edges)."""
    if radius < 1:
        return x
    dy, dx = torch.meshgrid(torch.arange(-radius, radius + 1.0), torch.arange(-radius, radius + 1.0), indexing="ij")
    disc = torch.exp(-(dx ** 2 + dy ** 2) / (radius ** 2 / 2)) * (dx ** 2 + dy ** 2 <= radius ** 2 + 0.5)
    angle, kernels = torch.atan2(dy, dx), []
    for i in range(sectors):  # a smooth angular window per sector; each shares the centre pixel
        k = disc * ((1 + torch.cos(angle - 2 * math.pi * i / sectors)) / 2) ** sectors
        k[radius, radius] = 1.0
        kernels.append(k / k.sum())
    kernels = torch.stack(kernels)[:, None].to(x)
    n, c, h, w = x.shape
    padded = F.pad(x, (radius,) * 4, mode="reflect").reshape(n * c, 1, h + 2 * radius, w + 2 * radius)
    mean = F.conv2d(padded, kernels).reshape(n, c, sectors, h, w)
    spread = (F.conv2d(padded ** 2, kernels).reshape(n, c, sectors, h, w) - mean ** 2).clamp_min(0).sum(1).sqrt()
    weight = ((spread.amin(1, keepdim=True) + 1e-3) / (spread + 1e-3)) ** sharpness  # the most uniform sectors
    return (weight[:, None] * mean).sum(2) / weight[:, None].sum(2)


def targets_of(args, classes):
    """[(label, weights over styles (C,))] from --style NAME|all or --mix NAME:w ..."""
    if not args.mix:
        names = classes if args.style == "all" else [config.choose(args.style, classes, "style")]
        return [(n, torch.eye(len(classes))[classes.index(n)]) for n in names]
    w = torch.zeros(len(classes))
    for item in args.mix:
        name, sep, weight = item.rpartition(":")
        try:
            weight = float(weight if sep else "")  # no ':' is a ValueError too
        except ValueError:
            raise config.UserError(f"--mix expects NAME:WEIGHT items (e.g. Cubism:0.7), got '{item}'") from None
        w[classes.index(config.choose(name, classes, "style"))] += weight
    if (w < 0).any() or w.sum() <= 0:
        raise config.UserError("--mix weights must be >= 0 with a positive sum")
    label = "mix_" + "_".join(f"{classes[s]}{w[s] / w.sum():.2f}" for s in w.nonzero().flatten().tolist())
    return [(label, w / w.sum())]


@torch.no_grad()
def stylise(cfg, args, argv, device):
    """Render --image files in the --style/--mix targets with out_dir/residual/model.pt (the module docstring)."""
    path = os.path.join(cfg["style_transfer"]["out_dir"], "residual", "model.pt")
    if not os.path.exists(path):
        raise config.UserError(f"no trained style-transfer model at {path}: train one first: "
                               + runs.config_command("style_transfer.py", argv))
    if not 0 <= args.strength <= 1:
        raise config.UserError(f"--strength must be in [0, 1], got {args.strength}")
    if args.paint is not None and args.paint < 0:
        raise config.UserError(f"--paint must be >= 0 pixels, got {args.paint}")
    G, D, ckpt = tm.load_model(path, device)
    classes = sorted(ckpt["class_to_idx"], key=ckpt["class_to_idx"].get)
    S, C, targets = ckpt["config"]["image_size"], len(classes), targets_of(args, classes)
    given = classes.index(config.choose(args.source, classes, "style")) if args.source else None
    pictures, paths, skipped = images.load_image_inputs(args.image, S)
    results_dir = os.path.join(cfg["style_transfer"]["out_dir"], args.out or "stylised")
    x = wikiart.to_float(pictures, device)
    probs = torch.softmax(D(x)[1], 1).cpu()  # the own style: the jointly trained discriminator's style head
    own = probs.argmax(1) if given is None else torch.full((len(x),), given)  # the start, and what G is told
    report, a, how = [], args.strength, "predicted" if given is None else "given"
    paint = args.paint if args.paint is not None else (0 if given is not None else 6)  # a photo gets brush marks
    recolour = keep_colour if args.keep_colour else (lambda out, x: out)
    for i, p in enumerate(paths):
        stem, guess = f"{i:02d}_{os.path.splitext(os.path.basename(p))[0]}", f"{classes[own[i]]} {probs[i, own[i]]:.0%}"
        source = F.one_hot(own[i], C).float()[None].to(device)
        mixes = [(1 - a) * source + a * w[None].to(device) for _, w in targets]  # strength a, as embedding weights
        tiles = [wikiart.to_uint8(recolour(G(x[i:i + 1], m, source), x[i:i + 1]))[0] for m in mixes]
        if len(targets) > 1:  # a strip of every style, at the model's size
            outputs = [f"{stem}_all_styles.png"]
            with runs.atomic_file(os.path.join(results_dir, outputs[0])) as f:
                plots.plot_strip([pictures[i]] + tiles, ["input"] + [t[0] for t in targets], f,
                                 f"{os.path.basename(p)} (own style, {how}: {guess}); strength {a:g}"
                                 + (", colours kept" if args.keep_colour else ""))
        else:
            outputs = [f"{stem}_{targets[0][0]}_{S}px.png"]
            runs.save_png(tiles[0], os.path.join(results_dir, outputs[0]))
            if args.max_side:  # also at the input's own aspect and resolution
                full = wikiart.to_float(images.decode_image(p, args.max_side, "keep")[None], device)
                big = recolour(G.render_full(x[i:i + 1], full, mixes[0], source), full)
                big = torch.lerp(big, paint_strokes(big, paint), a)  # strength 0: the image as it was
                outputs.append(f"{stem}_{targets[0][0]}.png")
                runs.save_png(wikiart.to_uint8(big)[0], os.path.join(results_dir, outputs[-1]))
        report.append({"path": p, "own_style": classes[own[i]], "own_style_given": given is not None,
                       "own_probability": float(probs[i, own[i]]), "outputs": outputs})
        print(f"{p}: own style ({how}) {guess} -> {targets[0][0] if len(targets) == 1 else 'every style'}: "
              f"{', '.join(outputs)}")
    runs.atomic_save({"checkpoint": path, "command": runs.command_line("style_transfer.py", argv), "image_size": S,
                      "style": args.style if not args.mix else None, "mix": args.mix,
                      "targets": {label: w.tolist() for label, w in targets}, "strength": a, "source": args.source,
                      "keep_colour": args.keep_colour, "max_side": args.max_side, "paint": paint,
                      "n_images": len(report), "skipped": skipped, "images": report},
                     os.path.join(results_dir, "stylised.json"))
    runs.save_run_config(cfg, results_dir, "style_transfer.py", argv)
    print(f"{len(report)} image(s) stylised, {len(skipped)} skipped; wrote {results_dir}/ (stylised.json)")
