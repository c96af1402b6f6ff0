"""Side-by-side loader benchmark: the course's loader against this project's, on the same folder.

    python prepare_data.py ../shared/data/wikiart16 /tmp/w16_416 --size 416 --limit 3000
    python bench.py /tmp/w16_416/train --size 416 --epochs 3 --out out/bench

(a) course: torchvision read_image per item, .float(), cached per item in a dict, DataLoader with
    batch 32, shuffle, no workers (a re-implementation of the course's WikiArtDataset).
(b) project: images decoded once into the uint8 .npy cache (memory-mapped), batches from
    wikiart.iterate_batches (float in [-1, 1]); the cache is built in a fresh temp folder, so the
    first epoch includes the decoding. A second process then measures a later run (cache on disk).
Each loader runs in its own child process, so its peak RSS (getrusage) is its own. Epoch 1 is the
first epoch; "steady" is the mean of the later epochs. Also reported: peak anonymous RSS (memory the
process owns; memory-mapped cache pages are page cache, shared and reclaimable, but count in RSS),
and (b') the host-side part of (b) on a GPU run: uint8 batches gathered from the memmap (the float
conversion and augmentation then happen on the GPU).
With CUDA: resnet training images/s with data from the memmap pipeline against the same model on
data already resident on the GPU (the bound). Skipped without CUDA unless --device cpu asks for it
(a dry run of the GPU comparison, e.g. with --precision bf16). Writes <out>/bench.{json,png}.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from PIL import Image

import config
import plots
import runs
import images
import wikiart
from config import UserError


class PeakAnon:
    """Samples RssAnon from /proc every 10 ms in a thread (Linux); the peak is a lower bound."""

    def __init__(self):
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.01)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---- (a) the course's loader, re-implemented

class CourseImage:
    def __init__(self, imgdir, label, filename):
        self.imgdir, self.label, self.filename = imgdir, label, filename
        self.image, self.loaded = None, False

    def get(self):
        if not self.loaded:
            self.image = read_image(os.path.join(self.imgdir, self.label, self.filename)).float()
            self.loaded = True
        return self.image


class CourseDataset(torch.utils.data.Dataset):
    def __init__(self, imgdir, device="cpu"):
        self.filedict, self.indices, classes = {}, [], set()
        for dirpath, _, files in os.walk(imgdir):
            arttype = os.path.basename(dirpath)
            for art in sorted(files):
                key = f"{arttype}/{art}"  # the course keyed by file name only; we keep same-named files
                self.filedict[key] = CourseImage(imgdir, arttype, art)
                self.indices.append(key)
                classes.add(arttype)
        self.classes, self.device = sorted(classes), device

    def __len__(self):
        return len(self.filedict)

    def __getitem__(self, idx):
        imgobj = self.filedict[self.indices[idx]]
        return imgobj.get().to(self.device), self.classes.index(imgobj.label)


def run_course(data, size, epochs):
    global read_image
    from torchvision.io import read_image  # imported before timing, as at the top of the course's file
    dataset = CourseDataset(data)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for x, y in loader:
            assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
        times.append(time.perf_counter() - t)
    return len(dataset), times, {}


# ---- (b) the project's loader

def run_project(data, size, epochs, cache_dir):
    device = torch.device("cpu")
    t = time.perf_counter()
    ds = wikiart.WikiArtDataset(data, size, cache_dir=cache_dir, verbose=False)
    load_s = time.perf_counter() - t
    times = []
    for epoch in range(epochs):
        g = runs.epoch_generator(0, epoch)
        order = torch.randperm(len(ds), generator=g).numpy()
        t = time.perf_counter()
        for x, y in wikiart.iterate_batches(ds.images, ds.labels, order, 32, device):
            assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
        times.append(time.perf_counter() - t)
    times[0] += load_s  # the first epoch pays for opening (cold: decoding) the data
    # (b') host-side work when training on a GPU: uint8 batches only
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).numpy()
    t = time.perf_counter()
    for _, batch in wikiart.uint8_batches(ds.images, order, 32):
        batch = torch.from_numpy(batch)
    host_u8 = len(order) / (time.perf_counter() - t)
    return len(ds), times, {"open_s": load_s, "host_uint8_batches_img_s": host_u8}


def child(args):
    sampler = PeakAnon()
    torch.set_num_threads(args.threads)
    if args.child == "course":
        n, times, extra = run_course(args.data, args.size, args.epochs)
    else:
        n, times, extra = run_project(args.data, args.size, args.epochs, args.cache_dir)
    result = {"loader": args.child, "images": n, "epoch_s": times,
              "first_epoch_img_s": n / times[0],
              "steady_img_s": n / float(np.mean(times[1:])) if len(times) > 1 else None,
              "peak_rss_bytes": peak_rss(), "peak_anon_rss_bytes": sampler.stop(), **extra}
    print("RESULT " + json.dumps(result))


def run_child(name, args, cache_dir):
    cmd = [sys.executable, os.path.abspath(__file__), args.data, "--child", name, "--size", str(args.size),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--cache-dir", cache_dir]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name} benchmark failed:\n{p.stderr[-3000:]}")
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ---- GPU: training throughput from the memmap pipeline vs data resident on the GPU

def train_throughput(images, labels, device, steps, batch_size, resident, width=64, blocks=(2, 2, 2, 2),
                     precision="auto"):
    """Images/s of resnet training steps (forward, backward, AdamW) with augmentation on `device`.
    resident=True: all uint8 images already on the device, batches indexed there (the bound)."""
    model = wikiart.ResNet(int(labels.max()) + 1, width, list(blocks)).to(device, memory_format=torch.channels_last)
    opt = wikiart.make_optimizer(model, 1e-3, 0.05)
    g = torch.Generator().manual_seed(0)
    if resident:
        gpu_images, gpu_labels = torch.as_tensor(np.asarray(images)).to(device), labels.to(device)

    def batches():
        while True:
            order = torch.randperm(len(labels), generator=g).numpy()
            if resident:
                for i in range(0, len(order) - batch_size + 1, batch_size):
                    idx = torch.as_tensor(order[i:i + batch_size], device=device)
                    x = gpu_images[idx].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
                    yield x, gpu_labels[idx]
            else:
                yield from wikiart.iterate_batches(images, labels, order, batch_size, device, drop_last=True)

    def step(x, y):
        x = wikiart.augment(x.contiguous(memory_format=torch.channels_last), g)
        with runs.autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        runs.optimizer_step(loss, opt)

    it = batches()
    for _ in range(min(5, steps)):  # warm-up: cudnn autotuning, allocator
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t)


def gpu_part(args):
    if args.device == "auto" and not torch.cuda.is_available():
        print("no CUDA device: the GPU training comparison is skipped")
        return None
    device = runs.get_device("cuda" if args.device == "auto" else args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as cache:
        ds = wikiart.WikiArtDataset(args.data, args.gpu_size, cache_dir=cache, verbose=False)
        run = lambda resident: train_throughput(ds.images, ds.labels, device, args.gpu_steps, args.gpu_batch,
                                                resident, precision=args.precision)
        piped, bound = run(False), run(True)
    print(f"{device.type.upper()} resnet-18 training at {args.gpu_size}px, batch {args.gpu_batch}: memmap pipeline "
          f"{piped:.0f} img/s, data resident on the device {bound:.0f} img/s, ratio {piped / bound:.2f}")
    return {"image_size": args.gpu_size, "batch_size": args.gpu_batch, "pipeline_img_s": piped,
            "resident_img_s": bound, "ratio": piped / bound, "device": str(device), "precision": args.precision,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def plot(results, path):
    p = plots.plt()
    names = ["course", "project (cold)", "project (warm)"]
    rows = [results["course"], results["project_cold"], results["project_warm"]]
    panels = [("first epoch, images/s", [r["first_epoch_img_s"] for r in rows]),
              ("steady epochs, images/s", [r["steady_img_s"] or 0 for r in rows]),
              ("peak RSS, GiB", [r["peak_rss_bytes"] / 2**30 for r in rows])]
    fig, axes = p.subplots(1, 3, figsize=(12, 3.4))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(names, values, color=["tab:gray", "tab:blue", "tab:cyan"])
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{results['images']} images at {results['size']}px, {results['threads']} thread(s)")
    fig.tight_layout()
    with runs.atomic_file(path) as f:
        fig.savefig(f, dpi=110)
    p.close(fig)


def main(argv=None):
    ap = config.ArgumentParser(__doc__)
    ap.add_argument("data", help="a folder of <Style>/ folders of images already at --size (see prepare_data.py)")
    ap.add_argument("--size", type=int, default=416, help="image side; the course loader does not resize")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per loader (>= 2: first + steady)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--gpu-size", type=int, default=128)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-steps", type=int, default=50)
    ap.add_argument("--device", default="auto",
                    help="the training comparison's device: auto (CUDA, skipped without), cuda, cpu (a dry run)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="see config.py")
    ap.add_argument("--child", choices=["course", "project"], help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (first epoch + steady state)")
    for flag in ("size", "threads", "gpu_size", "gpu_batch", "gpu_steps"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    files, _ = images.scan_folder(args.data)
    first = next(iter(files.values()))[0]
    try:
        with Image.open(first) as im:
            size = im.size
    except OSError as e:
        raise UserError(f"{first} is not a readable image ({e}): bench.py times a folder of images already "
                        f"at --size (prepare_data.py --size {args.size} makes one)")
    if size != (args.size, args.size):
        raise UserError(f"images in {args.data} are {size[0]}x{size[1]}, not {args.size}: "
                        f"make a copy at that size with prepare_data.py --size {args.size}")
    results = {"data": os.path.abspath(args.data), "size": args.size, "epochs": args.epochs,
               "threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as cache:
        for name, child_name in (("course", "course"), ("project_cold", "project"), ("project_warm", "project")):
            print(f"running {name} ...", flush=True)
            results[name] = run_child(child_name, args, cache)
    results["images"] = results["course"]["images"]
    c, pc, pw = results["course"], results["project_cold"], results["project_warm"]
    results["ratios"] = {
        "first_epoch_speed_cold": pc["first_epoch_img_s"] / c["first_epoch_img_s"],
        "first_epoch_speed_warm": pw["first_epoch_img_s"] / c["first_epoch_img_s"],
        "steady_speed": pc["steady_img_s"] / c["steady_img_s"],
        "steady_speed_host_uint8": pc["host_uint8_batches_img_s"] / c["steady_img_s"],
        "peak_rss": pc["peak_rss_bytes"] / c["peak_rss_bytes"],
        "peak_anon_rss": pc["peak_anon_rss_bytes"] / c["peak_anon_rss_bytes"],
    }
    results["gpu"] = gpu_part(args)
    gib = 2**30
    print(f"\n{results['images']} images at {args.size}px, {args.threads} torch thread(s), {os.cpu_count()} CPUs")
    print(f"{'loader':16s} {'epoch 1 img/s':>14s} {'steady img/s':>13s} {'peak RSS GiB':>13s} {'peak anon GiB':>14s}")
    for name in ("course", "project_cold", "project_warm"):
        r = results[name]
        print(f"{name:16s} {r['first_epoch_img_s']:14.0f} {r['steady_img_s']:13.0f} "
              f"{r['peak_rss_bytes'] / gib:13.2f} {r['peak_anon_rss_bytes'] / gib:14.2f}")
    print(f"{'project uint8 host batches (GPU path)':40s} {pc['host_uint8_batches_img_s']:.0f} img/s")
    print("ratios project/course: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()))
    runs.atomic_save(results, os.path.join(args.out, "bench.json"))
    plot(results, os.path.join(args.out, "bench.png"))
    print(f"saved {args.out}/bench.json and bench.png")


if __name__ == "__main__":
    runs.cli(main)
