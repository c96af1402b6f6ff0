"""Figures (matplotlib without a display), each saved as a PNG to `path`: a file name, or the open file of
runs.atomic_file, as the scripts pass it (a failed write keeps the previous figure)."""
import numpy as np


def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def save(fig, path, tight=True):  # tight: lay the panels out (else the caller placed them)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt().close(fig)


def plot_curves(history, keys, path, title=""):  # one panel per key of the per-epoch history (list of dicts)
    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt().subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot([h["epoch"] for h in history if k in h], [h[k] for h in history if k in h], marker="o")
        ax.set(xlabel="epoch", title=k)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


def plot_confusion(cm, classes, path, title="confusion matrix (rows normalised)"):
    cm, n = np.asarray(cm, dtype=np.float64), len(classes)
    fig, ax = plt().subplots(figsize=(0.35 * n + 3, 0.35 * n + 2.5))
    im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted style", ylabel="true style", title=title)
    fig.colorbar(im, ax=ax, fraction=0.04)
    save(fig, path)


def plot_per_class_recall(runs, label_counts, path, title="per-class recall (sorted by training count)"):
    """Test recall per style: `runs` is one metrics dict (bars) or {run name: metrics} (a line each)."""
    if "per_class" in runs:
        runs = {None: runs}
    first = next(iter(runs.values()))["per_class"]
    names = sorted((n for n in first if first[n]["support"]), key=lambda n: -label_counts.get(n, 0))
    fig, ax = plt().subplots(figsize=(0.35 * len(names) + (3 if len(runs) == 1 else 6), 4.5))
    for run, m in runs.items():
        recall = [m["per_class"][n]["recall"] for n in names]
        if len(runs) == 1:
            ax.bar(range(len(names)), recall, color="tab:blue")
            ax.axhline(m["balanced_accuracy"], color="tab:red", ls="--", label="balanced accuracy")
        else:
            ax.plot(range(len(names)), recall, marker="o", ms=3, lw=1,
                    label=f"{run} (bal. acc. {100 * m['balanced_accuracy']:.1f})")
    ax.set_xticks(range(len(names)), [f"{n} ({label_counts.get(n, 0)})" for n in names], rotation=90, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="test recall", title=title)
    ax.legend(fontsize=7, **({} if len(runs) == 1 else {"loc": "upper left", "bbox_to_anchor": (1.01, 1)}))
    save(fig, path)


SHOW_IMAGES = 8  # images drawn in the figure of an --image run (all of them are in its CSV/JSON)


def plot_top_styles(pictures, names, tops, path, title=""):
    """Each picture beside a bar chart of its top-k styles (tops[i]: [{"style", "probability"}], most likely first)."""
    fig, axes = plt().subplots(len(pictures), 2, figsize=(8, 2.0 * len(pictures) + 0.6), squeeze=False,
                               gridspec_kw={"width_ratios": [1, 2.2]})
    for (ax_img, ax_bar), picture, name, top in zip(axes, pictures, names, tops):
        ax_img.imshow(picture)
        ax_img.set_title(name if len(name) <= 28 else "..." + name[-25:], fontsize=8)
        ax_img.axis("off")
        styles, probs = [t["style"] for t in top][::-1], [t["probability"] for t in top][::-1]
        ax_bar.barh(range(len(top)), probs, color=["tab:blue"] * (len(top) - 1) + ["tab:orange"])
        ax_bar.set_yticks(range(len(top)), styles, fontsize=8)
        ax_bar.set_xlim(0, 1)
        for y, prob in enumerate(probs):
            ax_bar.text(min(prob + 0.01, 0.88), y, f"{100 * prob:.1f}%", va="center", fontsize=8)
        ax_bar.tick_params(axis="x", labelsize=7)
    axes[-1][1].set_xlabel("probability")
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def image_rows(rows, labels, path, title, figsize, top, hspace=None):  # rows of images, columns labelled on top
    fig, axes = plt().subplots(len(rows), len(rows[0]), figsize=figsize, squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].axis("off")
    for ax, label in zip(axes[0], labels):
        ax.set_title(label.replace("_", " "), fontsize=6, rotation=30, ha="left", x=0.1)
    fig.suptitle(title, fontsize=8, y=0.98)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=top, wspace=0.08, hspace=hspace)
    save(fig, path, tight=False)


def plot_strip(tiles, labels, path, title=""):  # one row (stylise.py --style all)
    image_rows([tiles], labels, path, title, (1.1 * len(tiles) + 0.4, 2.0), top=0.62)


def plot_reconstruction_pairs(inputs_u8, outputs_u8, labels, path, title):  # inputs above their reconstructions
    image_rows([inputs_u8, outputs_u8], labels, path, title, (max(6.0, 1.1 * len(inputs_u8) + 0.6), 3.2), top=0.72,
               hspace=0.05)


def plot_transfer_grid(sources, columns, source_styles, classes, path, title):
    """Source images (rows) beside their renderings in every style (columns[s]); a red frame marks their own style."""
    p = plt()
    C, S, n, pad = len(classes), sources.shape[1], len(sources), 2
    canvas = np.full((n * (S + pad), (C + 1) * (S + pad) + pad * 2, 3), 255, np.uint8)
    for r in range(n):
        for c, col in enumerate([sources] + list(columns)):
            x0 = c * (S + pad) + (3 * pad if c > 0 else 0)  # a gap after the source column
            canvas[r * (S + pad):r * (S + pad) + S, x0:x0 + S] = col[r]
    fig_w = max(8, canvas.shape[1] / 45)
    fig, ax = p.subplots(figsize=(fig_w, fig_w * canvas.shape[0] / canvas.shape[1] + 2.2))
    ax.imshow(canvas, interpolation="nearest")
    for r, y_true in enumerate(source_styles):
        ax.text(-4, r * (S + pad) + S / 2, classes[y_true], ha="right", va="center", fontsize=7)
        x0 = (y_true + 1) * (S + pad) + 3 * pad
        ax.add_patch(p.Rectangle((x0 - 1.5, r * (S + pad) - 1.5), S + 2, S + 2, fill=False, ec="red", lw=1.5))
    ax.set_xticks([S / 2] + [c * (S + pad) + 3 * pad + S / 2 for c in range(1, C + 1)],
                  ["SOURCE"] + list(classes), rotation=90, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, pad=10)
    save(fig, path)


def plot_strength_curve(curves, path, title=""):  # hit and realism against --strength: {method: {strength: row}}
    measures = [("robust_of_ceiling", "robust hit / ceiling"), ("raw_of_ceiling", "raw hit / ceiling"),
                ("two_sample_accuracy", "two-sample accuracy (0.5 = real)"),
                ("realism_gap_closed", "realism gap closed"), ("lab_gap_closed", "Lab gap closed")]
    value = lambda r, key: r["two_sample"]["accuracy"] if key == "two_sample_accuracy" else r.get(key, float("nan"))
    fig, ax = plt().subplots(figsize=(6.5, 4))
    for (key, label), colour in zip(measures, ("C0", "C1", "C3", "C2", "C4")):
        for (method, curve), style in zip(curves.items(), ("-", "--", ":")):
            a = sorted(curve)
            ax.plot(a, [value(curve[x], key) for x in a], style, marker="o", color=colour,
                    label=f"{label}" + (f" ({method})" if len(curves) > 1 else ""))
    ax.set_xlabel("strength (0: the input, 1: the target style)")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    save(fig, path)


def plot_style_embeddings(weights, initial, prototypes, classes, path, mode, rendered_as):
    """Style embeddings (C, D): a 2D PCA (arrows from `initial`) beside each one rendered (uint8 (C, S, S, 3))."""
    import torch
    p = plt()
    C, S = len(classes), prototypes.shape[1]
    both = torch.cat([weights, initial]) if initial is not None else weights
    centred = (both - both.mean(0)).double()
    xy = (centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T).numpy()
    fig = p.figure(figsize=(14, 6.5))
    ax = fig.add_subplot(1, 2, 1)
    colours = p.cm.tab20(np.linspace(0, 1, C))
    for s in range(C):
        ax.scatter(*xy[s], color=colours[s], s=40, zorder=3)
        ax.annotate(classes[s], xy[s], fontsize=6)
        if initial is not None:
            ax.annotate("", xy[s], xy[C + s], arrowprops=dict(arrowstyle="->", color=colours[s], lw=0.8))
    ax.set_title(f"{mode}: style embeddings, 2D PCA" + (" (arrows: from the initial mean codes)" if initial is not None
                                                         else ""), fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    n_col = int(np.ceil(np.sqrt(C)))
    sheet = np.full((int(np.ceil(C / n_col)) * (S + 12), n_col * (S + 4), 3), 255, np.uint8)
    for s in range(C):
        r, c = divmod(s, n_col)
        sheet[r * (S + 12):r * (S + 12) + S, c * (S + 4):c * (S + 4) + S] = prototypes[s]
        ax.text(c * (S + 4) + S / 2, r * (S + 12) + S + 6, classes[s][:14], ha="center", fontsize=5)
    ax.imshow(sheet)
    ax.axis("off")
    ax.set_title("each embedding rendered: " + rendered_as, fontsize=9)
    save(fig, path)


def plot_nearest(pairs, copy_line, path):  # per model: its samples nearest to a training image above that image
    n = max(len(v) for v in pairs.values())
    fig, axes = plt().subplots(2 * len(pairs), n, figsize=(1.6 * n, 3.6 * len(pairs)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, items) in enumerate(pairs.items()):
        for c, (sample, nearest, label) in enumerate(items):
            axes[2 * r, c].imshow(sample)
            axes[2 * r, c].set_title(label, fontsize=7)
            axes[2 * r + 1, c].imshow(nearest)
        for k, text, size in ((0, name, 9), (1, "nearest\ntraining", 8)):
            axes[2 * r + k, 0].text(-0.1, 0.5, text, transform=axes[2 * r + k, 0].transAxes, rotation=90, ha="right",
                                    va="center", fontsize=size)
    fig.suptitle(f"samples nearest to a training image (RMS distance at 32 px; 1% of unseen real paintings are "
                 f"closer than {copy_line:.3f})", fontsize=9)
    save(fig, path)


def plot_t2i_evaluation(results, nn_train, path):
    """Bonus B: per style and model the judge's hit rate and the Lab gap closed; distances to training images."""
    models, split = results["models"], results["split"]
    styles = list(models["real"]["robust_hit_per_style"])
    fig, axes = plt().subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
    x, w = np.arange(len(styles)), 0.8 / len(models)
    for k, (name, r) in enumerate(models.items()):
        hits = [r["robust_hit_per_style"][s] for s in styles]
        axes[0].bar(x + k * w, hits, w, label=f"{name} ({r['robust_hit_rate']:.1%})")
        if name not in ("real", "base"):
            axes[1].bar(x + k * w, [r["lab_gap_closed_per_style"].get(s, np.nan) for s in styles], w, label=name)
    axes[0].axhline(results["chance"], color="k", ls=":", label="chance")
    axes[0].set_title(f"judge: robust hit rate of the prompted style (real: recall on {split} paintings)", fontsize=9)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].axhline(1, color="k", lw=0.8, ls=":")
    axes[1].set_title("Lab colour gap closed from the base's samples (0) to real paintings of the style (1)",
                      fontsize=9)
    for ax in axes[:2]:
        ax.set_xticks(x + 0.4 - w / 2, styles, rotation=90, fontsize=7)
        ax.legend(fontsize=7)
    for name, d in nn_train.items():
        axes[2].hist(d, bins=40, histtype="step", density=True, label=f"real ({split})" if name == "real" else name)
    axes[2].set_xlabel("RMS distance to the nearest training image (32 px)")
    axes[2].set_title("nearest training image (a copy: near 0; blur alone also lowers it)", fontsize=9)
    axes[2].legend(fontsize=7)
    save(fig, path)


def plot_calibration(table, path):  # the realism test on real paintings against degraded copies, per test size
    sizes = list(table)
    kinds = list(table[sizes[0]])
    fig, ax = plt().subplots(figsize=(9, 3.6))
    width = 0.8 / len(sizes)
    for j, n in enumerate(sizes):
        ax.bar(np.arange(len(kinds)) + j * width, [100 * table[n][k]["accuracy"] for k in kinds], width,
               yerr=[100 * table[n][k]["ci95"] for k in kinds], label=f"{n} vs {n}")
    ax.axhline(50, color="k", lw=0.6, ls="--")
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds)
    ax.set(ylim=(40, 101), ylabel="two-sample accuracy %",
           title="real paintings against the same paintings made worse (50% = indistinguishable)")
    ax.legend(fontsize=8)
    save(fig, path)
