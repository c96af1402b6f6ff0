"""Part 2: do art styles cluster? Cluster the autoencoder's codes and score them against the true styles.

    python autoencoder.py && python cluster.py             # codes from autoencoder.out_dir
    python cluster.py --set cluster.method=gmm cluster.feature=stats

Seeded pipeline: features (code: the bottleneck; stats: per-channel mean and std of every encoder map;
code+stats: both, equal variance) -> StandardScaler -> PCA -> k = number of styles -> NMI, ARI, purity,
Hungarian accuracy, silhouette. The same pipeline on raw pixels at 16 px is the baseline. Labels only
score and colour. Writes to cluster.out_dir: metrics.json, comparison.png, pca.png, tsne.png,
contingency.png (each figure beside the raw-pixel baseline).
"""
import os
import sys
import zipfile

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

import config
import metrics
import plots
import runs
import images


def prepare(block_list, pca_dim, seed):
    """Standardise each block, give every block the same total variance, then PCA. Returns
    (features to cluster, 2 principal components to draw)."""
    parts = [StandardScaler().fit_transform(b.astype(np.float64)) / np.sqrt(b.shape[1]) for b in block_list]
    x = np.concatenate(parts, 1)
    n_comp = min(pca_dim, x.shape[0], x.shape[1]) if pca_dim else 0
    return PCA(n_comp, random_state=seed).fit_transform(x) if n_comp else x, PCA(2, random_state=seed).fit_transform(x)


def cluster(x, method, k, seed):
    if method == "kmeans":
        return KMeans(k, n_init=10, random_state=seed).fit_predict(x)
    if method == "gmm":
        return GaussianMixture(k, covariance_type="diag", random_state=seed, reg_covar=1e-4).fit(x).predict(x)
    return AgglomerativeClustering(k, linkage="ward").fit_predict(x)


def plot_figures(results, views, labels, classes, cl, k, out_dir, seed):
    """pca.png, tsne.png, contingency.png and comparison.png: the autoencoder
    feature next to the raw-pixel baseline (colour = true style, marker = cluster)."""
    p = plots.plt()
    present = np.unique(labels)
    palette = [p.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    style_colour = {c: palette[i % len(palette)] for i, c in enumerate(present)}
    markers = "osD^vP*X<>ph"

    def scatter_by_style(ax, xy, assign, title):
        shape = np.array([markers[j % len(markers)] for j in assign])
        colour = np.array([style_colour[c] for c in labels])
        for m in np.unique(shape):  # one call per marker (not per style and cluster: hundreds of artists)
            sel = shape == m
            ax.scatter(xy[sel, 0], xy[sel, 1], s=10, c=colour[sel], marker=m, alpha=0.7, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    def style_legend(fig):
        handles = [p.Line2D([], [], marker="o", ls="", color=style_colour[c], label=classes[c]) for c in present]
        fig.legend(handles=handles, loc="center right", fontsize=7, title="true style (colour)")

    def two_panel_scatter(coords, fname, what):
        fig, axes = p.subplots(1, 2, figsize=(13, 5.5))
        for ax, name in zip(axes, results):
            scatter_by_style(ax, coords[name], views[name][2],
                             f"{name}: {what}\nmarker = {cl['method']} cluster; NMI {results[name]['nmi']:.3f}")
        style_legend(fig)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        with runs.atomic_file(os.path.join(out_dir, fname)) as f:
            fig.savefig(f, dpi=110)
        p.close(fig)

    two_panel_scatter({n: v[1] for n, v in views.items()}, "pca.png", "first two principal components")
    # t-SNE on a seeded subsample (it is quadratic-ish in the number of points)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(labels), min(len(labels), cl["tsne_points"]), replace=False))
    tsne = {}
    for name, (x, _, _) in views.items():
        emb = np.full((len(labels), 2), np.nan)
        emb[sub] = TSNE(2, perplexity=min(30, max(2, len(sub) // 4)), init="pca",
                        random_state=seed).fit_transform(x[sub])
        tsne[name] = emb
    two_panel_scatter(tsne, "tsne.png", f"t-SNE of {len(sub)} images")

    fig, axes = p.subplots(1, 2, figsize=(2 * (0.32 * len(present) + 3), 0.3 * k + 3.5))
    for ax, name in zip(axes, results):
        table = metrics.contingency(labels, views[name][2])
        ax.imshow(table / np.maximum(table.sum(0, keepdims=True), 1), cmap="Blues", aspect="auto")
        for (i, j), v in np.ndenumerate(table):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=5,
                        color="white" if v > 0.6 * table[:, j].sum() else "black")
        ax.set_xticks(range(len(present)), [classes[c] for c in present], rotation=90, fontsize=7)
        ax.set_yticks(range(table.shape[0]))
        ax.set_xlabel("true style")
        ax.set_ylabel(f"{cl['method']} cluster")
        ax.set_title(f"{name}: counts (shade = share of each style)", fontsize=9)
    fig.tight_layout()
    with runs.atomic_file(os.path.join(out_dir, "contingency.png")) as f:
        fig.savefig(f, dpi=110)
    p.close(fig)

    keys = ["nmi", "ari", "purity", "hungarian_accuracy", "silhouette"]
    fig, ax = p.subplots(figsize=(8, 4))
    for i, name in enumerate(results):
        ax.bar(np.arange(len(keys)) + (i - 0.5) * 0.38, [results[name][q] for q in keys], 0.38, label=name)
    ax.set_xticks(range(len(keys)), keys)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"{cl['method']} (k={k}) on {len(labels)} {cl['split']} images: {cl['feature']} vs raw pixels")
    ax.legend()
    fig.tight_layout()
    with runs.atomic_file(os.path.join(out_dir, "comparison.png")) as f:
        fig.savefig(f, dpi=110)
    p.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, cfg = config.parse_config(config.config_parser(__doc__), argv)
    cl, seed = cfg["cluster"], cfg["seed"]
    runs.start(cfg)
    out_dir = cl["out_dir"]

    # ---- the codes written by autoencoder.py, and the raw-pixel baseline of the same images
    codes_dir = cl["codes_dir"] or cfg["autoencoder"]["out_dir"]
    codes_path = os.path.join(codes_dir, f"codes_{cl['split']}.npz")
    if not os.path.exists(codes_path):
        raise config.UserError(
            f"no codes at {codes_path}; run autoencoder.py first "
            f"({runs.config_command('autoencoder.py', argv, [f'autoencoder.out_dir={codes_dir}'])}), "
            "or point cluster.codes_dir at its out_dir")
    try:
        with np.load(codes_path) as npz:
            labels, classes, paths = npz["labels"], [str(c) for c in npz["classes"]], [str(p) for p in npz["paths"]]
            codes, stats = npz["codes"], npz["stats"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise config.UserError(f"{codes_path} is not a codes file written by autoencoder.py ({type(e).__name__}: "
                               f"{str(e)[:120]}); run autoencoder.py again")
    blocks = {"code": [codes], "stats": [stats], "code+stats": [codes, stats]}
    k = cl["k"] or len(np.unique(labels))
    if len(labels) <= max(k, 2):
        raise config.UserError(f"{codes_path} holds {len(labels)} image(s): clustering into k={k} groups needs "
                               f"more than {max(k, 2)}; use more images (cluster.split=train) or a smaller cluster.k")
    print(f"{len(labels)} {cl['split']} images of {len(np.unique(labels))} styles from {codes_path}; "
          f"feature '{cl['feature']}' ({sum(b.shape[1] for b in blocks[cl['feature']])} numbers), "
          f"{cl['method']} with k={k}")
    bs = 16  # the raw-pixel baseline's side
    pixels, kept, skipped = images.load_images([(classes[y], p) for y, p in zip(labels, paths)], bs,
                                                cfg["cache_dir"] or None, desc=f"raw pixels at {bs} px")
    if skipped:
        raise config.UserError(f"{len(skipped)} image(s) of {codes_path} can no longer be read, e.g. {skipped[0]}")
    pixels = pixels.reshape(len(pixels), -1).astype(np.float32) / 255

    results, views = {}, {}
    for name, block_list in (("autoencoder", blocks[cl["feature"]]), (f"raw_pixels_{bs}px", [pixels])):
        x, pc2 = prepare(block_list, cl["pca_dim"], seed)
        assign = cluster(x, cl["method"], k, seed)
        m = metrics.clustering_metrics(labels, assign)
        m["silhouette"] = float(silhouette_score(x, assign, sample_size=min(len(x), 5000), random_state=seed)
                                if len(np.unique(assign)) > 1 else float("nan"))
        m["dims"] = int(sum(b.shape[1] for b in block_list))
        results[name], views[name] = m, (x, pc2, assign)
        print(f"{name:22s} NMI {m['nmi']:.3f}  ARI {m['ari']:.3f}  purity {m['purity']:.3f}  "
              f"Hungarian acc {m['hungarian_accuracy']:.3f}  silhouette {m['silhouette']:.3f}")
    ae_name, base_name = list(results)
    report = {"split": cl["split"], "num_images": int(len(labels)), "num_styles": int(len(np.unique(labels))),
              "k": int(k), "feature": cl["feature"], "method": cl["method"], "pca_dim": cl["pca_dim"],
              "codes": codes_path, "results": results,
              "nmi_ratio_vs_raw_pixels": results[ae_name]["nmi"] / max(results[base_name]["nmi"], 1e-12)}
    runs.atomic_save(report, os.path.join(out_dir, "metrics.json"))
    runs.save_run_config(cfg, out_dir, "cluster.py", argv)
    plot_figures(results, views, labels, classes, cl, k, out_dir, seed)
    print(f"NMI autoencoder / raw pixels = {report['nmi_ratio_vs_raw_pixels']:.2f}x; wrote {out_dir}/metrics.json and "
          "pca.png, tsne.png, contingency.png, comparison.png")


if __name__ == "__main__":
    runs.cli(main)
