"""Part 2: do art styles cluster? Cluster the autoencoder's codes and score them against the true styles.

    python autoencoder.py && python cluster.py             # codes from autoencoder.out_dir
    python cluster.py --set cluster.method=gmm cluster.feature=stats

Seeded pipeline: features (code; stats: per-channel mean and std of every encoder map; or both, equal variance)
-> StandardScaler -> PCA -> k = number of styles -> NMI, ARI, purity, Hungarian accuracy, silhouette, beside raw
pixels at 16 px. Writes metrics.json, comparison.png, pca.png, tsne.png, contingency.png to cluster.out_dir.
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
    """(features to cluster, 2 principal components to draw): blocks standardised to equal variance, then PCA."""
    x = np.hstack([StandardScaler().fit_transform(b.astype(np.float64)) / np.sqrt(b.shape[1]) for b in block_list])
    n_comp = min(pca_dim, x.shape[0], x.shape[1]) if pca_dim else 0
    return PCA(n_comp, random_state=seed).fit_transform(x) if n_comp else x, PCA(2, random_state=seed).fit_transform(x)


def cluster(x, method, k, seed):
    models = {"kmeans": KMeans(k, n_init=10, random_state=seed),
              "gmm": GaussianMixture(k, covariance_type="diag", random_state=seed, reg_covar=1e-4),
              "agglomerative": AgglomerativeClustering(k, linkage="ward")}
    return models[method].fit_predict(x)


def plot_figures(results, views, labels, classes, cl, k, seed):
    """pca.png, tsne.png, contingency.png and comparison.png: the autoencoder beside the raw-pixel baseline."""
    p = plots.plt()
    present = np.unique(labels)
    palette = [p.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    style_colour = {c: palette[i % len(palette)] for i, c in enumerate(present)}
    colour = np.array([style_colour[c] for c in labels])
    markers = "osD^vP*X<>ph"

    def save(fig, name, **layout):
        fig.tight_layout(**layout)
        with runs.atomic_file(os.path.join(cl["out_dir"], name)) as f:
            fig.savefig(f, dpi=110)
        p.close(fig)

    def two_panel_scatter(coords, fname, what):
        fig, axes = p.subplots(1, 2, figsize=(13, 5.5))
        for ax, name in zip(axes, results):
            xy, shape = coords[name], np.array([markers[j % len(markers)] for j in views[name][2]])
            for m in np.unique(shape):  # one call per marker (not per style and cluster: hundreds of artists)
                sel = shape == m
                ax.scatter(xy[sel, 0], xy[sel, 1], s=10, c=colour[sel], marker=m, alpha=0.7, linewidths=0)
            ax.set_title(f"{name}: {what}\nmarker = {cl['method']} cluster; NMI {results[name]['nmi']:.3f}", fontsize=9)
            ax.set(xticks=[], yticks=[])
        handles = [p.Line2D([], [], marker="o", ls="", color=style_colour[c], label=classes[c]) for c in present]
        fig.legend(handles=handles, loc="center right", fontsize=7, title="true style (colour)")
        save(fig, fname, rect=(0, 0, 0.8, 1))

    two_panel_scatter({n: v[1] for n, v in views.items()}, "pca.png", "first two principal components")
    sub = np.sort(np.random.default_rng(seed).choice(len(labels), min(len(labels), cl["tsne_points"]), replace=False))
    tsne = {name: np.full((len(labels), 2), np.nan) for name in views}  # on a subsample: t-SNE is quadratic-ish
    for name, (x, _, _) in views.items():
        tsne[name][sub] = TSNE(2, perplexity=min(30, max(2, len(sub) // 4)), init="pca",
                               random_state=seed).fit_transform(x[sub])
    two_panel_scatter(tsne, "tsne.png", f"t-SNE of {len(sub)} images")

    fig, axes = p.subplots(1, 2, figsize=(2 * (0.32 * len(present) + 3), 0.3 * k + 3.5))
    for ax, name in zip(axes, results):
        table = metrics.contingency(labels, views[name][2])
        ax.imshow(table / np.maximum(table.sum(0, keepdims=True), 1), cmap="Blues", aspect="auto")
        for i, j in zip(*np.nonzero(table)):
            ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=5,
                    color="white" if table[i, j] > 0.6 * table[:, j].sum() else "black")
        ax.set_xticks(range(len(present)), [classes[c] for c in present], rotation=90, fontsize=7)
        ax.set(yticks=range(table.shape[0]), xlabel="true style", ylabel=f"{cl['method']} cluster")
        ax.set_title(f"{name}: counts (shade = share of each style)", fontsize=9)
    save(fig, "contingency.png")

    keys = ["nmi", "ari", "purity", "hungarian_accuracy", "silhouette"]
    fig, ax = p.subplots(figsize=(8, 4))
    for i, name in enumerate(results):
        ax.bar(np.arange(len(keys)) + (i - 0.5) * 0.38, [results[name][q] for q in keys], 0.38, label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xticks=range(len(keys)), xticklabels=keys,
           title=f"{cl['method']} (k={k}) on {len(labels)} {cl['split']} images: {cl['feature']} vs raw pixels")
    ax.legend()
    save(fig, "comparison.png")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, cfg = config.parse_config(config.config_parser(__doc__), argv)
    cl, seed = cfg["cluster"], cfg["seed"]
    runs.start(cfg)

    # ---- the codes written by autoencoder.py, and the raw-pixel baseline of the same images
    codes_dir = cl["codes_dir"] or cfg["autoencoder"]["out_dir"]
    codes_path = os.path.join(codes_dir, f"codes_{cl['split']}.npz")
    if not os.path.exists(codes_path):
        raise config.UserError(f"no codes at {codes_path}; run autoencoder.py first "
                               f"({runs.config_command('autoencoder.py', argv, [f'autoencoder.out_dir={codes_dir}'])})"
                               ", or point cluster.codes_dir at its out_dir")
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
    nmi = [r["nmi"] for r in results.values()]  # autoencoder, raw pixels
    report = {"split": cl["split"], "num_images": int(len(labels)), "num_styles": int(len(np.unique(labels))),
              "k": int(k), "feature": cl["feature"], "method": cl["method"], "pca_dim": cl["pca_dim"],
              "codes": codes_path, "results": results, "nmi_ratio_vs_raw_pixels": nmi[0] / max(nmi[1], 1e-12)}
    runs.atomic_save(report, os.path.join(cl["out_dir"], "metrics.json"))
    runs.save_run_config(cfg, cl["out_dir"], "cluster.py", argv)
    plot_figures(results, views, labels, classes, cl, k, seed)
    print(f"NMI autoencoder / raw pixels = {report['nmi_ratio_vs_raw_pixels']:.2f}x; wrote {cl['out_dir']}/"
          "metrics.json and pca.png, tsne.png, contingency.png, comparison.png")


if __name__ == "__main__":
    runs.cli(main)
