"""Side-by-side loader benchmark: the course's loader against this project's, on the same folder.

    python prepare_data.py ../shared/data/wikiart16 /tmp/w16_416 --size 416 --limit 3000
    python bench.py /tmp/w16_416/train --size 416 --epochs 3 --out out/bench

course: torchvision read_image, .float(), cached per item in a dict, DataLoader (batch 32, shuffle). project_cold
/ project_warm: the memory-mapped uint8 .npy cache built in epoch 1 / already on disk, wikiart.iterate_batches;
and its uint8 batches alone (the host side of a GPU run). Each loader runs in a fresh process: images/s in epoch
1 and later ("steady"), peak RSS and peak anonymous RSS (the cache's pages are shared page cache: counted in RSS,
not in anonymous RSS). With CUDA (or --device cpu, a dry run): ResNet training images/s from the memmap pipeline
against data resident on the device (the bound). Writes <out>/bench.{json,png}.
"""
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

import config
import plots
import runs
import images
import wikiart

LOADERS = ("course", "project_cold", "project_warm")


def watch_anon_rss(peak, done):  # RssAnon (Linux) into peak[0] every 10 ms until `done`: a lower bound of the peak
    while not done.wait(0.01):
        with open("/proc/self/status") as f:
            peak[0] = max(peak[0], next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:")))


class CourseDataset(torch.utils.data.Dataset):  # the course's: read_image per item, .float(), kept in a dict

    def __init__(self, imgdir):
        from torchvision.io import read_image  # imported before timing, as at the top of the course's file
        self.read_image, self.imgdir, self.cache = read_image, imgdir, {}
        self.indices = [f"{os.path.basename(d)}/{f}" for d, _, files in os.walk(imgdir) for f in sorted(files)]
        self.classes = sorted({key.split("/")[0] for key in self.indices})

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, idx):
        key = self.indices[idx]
        if key not in self.cache:
            self.cache[key] = self.read_image(os.path.join(self.imgdir, key)).float()
        return self.cache[key], self.classes.index(key.split("/")[0])


def time_epochs(epochs, size, batches_of_epoch):  # seconds per epoch of iterating batches_of_epoch(epoch)
    times = []
    for epoch in range(epochs):
        batches = batches_of_epoch(epoch)
        t = time.perf_counter()
        for x, _ in batches:
            assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
        times.append(time.perf_counter() - t)
    return times


def run_course(data, size, epochs, cache_dir=None):  # the course's loader keeps no cache on disk
    loader = torch.utils.data.DataLoader(CourseDataset(data), batch_size=32, shuffle=True)
    return len(loader.dataset), time_epochs(epochs, size, lambda epoch: loader), {}


def run_project(data, size, epochs, cache_dir):
    t = time.perf_counter()
    ds = wikiart.WikiArtDataset(data, size, cache_dir=cache_dir, verbose=False)
    open_s = time.perf_counter() - t

    def batches(epoch):
        order = torch.randperm(len(ds), generator=runs.epoch_generator(0, epoch)).numpy()
        return wikiart.iterate_batches(ds.images, ds.labels, order, 32, torch.device("cpu"))
    times = time_epochs(epochs, size, batches)
    times[0] += open_s  # the first epoch pays for opening (cold: decoding) the data
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).numpy()
    t = time.perf_counter()
    for _, batch in wikiart.uint8_batches(ds.images, order, 32):  # the host side of a GPU run
        torch.from_numpy(batch)
    return len(ds), times, {"open_s": open_s, "host_uint8_batches_img_s": len(order) / (time.perf_counter() - t)}


def child(loader, data, size, epochs, threads, cache_dir):  # one loader's speed and peak memory, in a fresh process
    peak_anon, done = [0], threading.Event()
    threading.Thread(target=watch_anon_rss, args=(peak_anon, done), daemon=True).start()
    torch.set_num_threads(threads)
    n, times, extra = (run_course if loader == "course" else run_project)(data, size, epochs, cache_dir)
    done.set()
    return {"loader": loader, "images": n, "epoch_s": times, "first_epoch_img_s": n / times[0],
            "steady_img_s": n / float(np.mean(times[1:])),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux says KiB
            "peak_anon_rss_bytes": peak_anon[0], **extra}


def train_throughput(images, labels, device, steps, batch_size, resident, width=64, blocks=(2, 2, 2, 2),
                     precision="auto"):
    """Images/s of ResNet training on `device` from the memmap pipeline, or (resident: the bound) device memory."""
    model = wikiart.ResNet(int(labels.max()) + 1, width, list(blocks)).to(device, memory_format=torch.channels_last)
    opt = wikiart.make_optimizer(model, 1e-3, 0.05)
    g = torch.Generator().manual_seed(0)
    if resident:
        images, labels = torch.as_tensor(np.asarray(images)).to(device), labels.to(device)
    warmup = min(5, steps)  # steps before timing: cudnn autotuning, the allocator
    n = (warmup + steps) * batch_size
    order = np.concatenate([torch.randperm(len(labels), generator=g).numpy() for _ in range(n // len(labels) + 1)])
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for i, (idx, u8) in enumerate(wikiart.uint8_batches(images, order[:n], batch_size)):
        if i == warmup:
            sync()
            t = time.perf_counter()
        # the pipeline: wikiart.iterate_batches; resident: only the float conversion, on the device
        x = u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0) if resident else wikiart.to_float(u8, device)
        x = wikiart.augment(x.contiguous(memory_format=torch.channels_last), g)
        with runs.autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), labels[idx].to(device, non_blocking=True))
        runs.optimizer_step(loss, opt)
    sync()
    return steps * batch_size / (time.perf_counter() - t)


def gpu_part(args):
    if args.device == "auto" and not torch.cuda.is_available():
        print("no CUDA device: the GPU training comparison is skipped")
        return None
    device = runs.get_device("cuda" if args.device == "auto" else args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as cache:
        ds = wikiart.WikiArtDataset(args.data, args.gpu_size, cache_dir=cache, verbose=False)
        piped, bound = [train_throughput(ds.images, ds.labels, device, args.gpu_steps, args.gpu_batch, resident,
                                         precision=args.precision) for resident in (False, True)]
    print(f"{device.type.upper()} resnet-18 training at {args.gpu_size}px, batch {args.gpu_batch}: memmap pipeline "
          f"{piped:.0f} img/s, data resident on the device {bound:.0f} img/s, ratio {piped / bound:.2f}")
    return {"image_size": args.gpu_size, "batch_size": args.gpu_batch, "pipeline_img_s": piped,
            "resident_img_s": bound, "ratio": piped / bound, "device": str(device), "precision": args.precision,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def plot(results, path):
    fig, axes = plots.plt().subplots(1, 3, figsize=(12, 3.4))
    for ax, (title, key, unit) in zip(axes, [("first epoch, images/s", "first_epoch_img_s", 1),
                                             ("steady epochs, images/s", "steady_img_s", 1),
                                             ("peak RSS, GiB", "peak_rss_bytes", 2**30)]):
        values = [results[name][key] / unit for name in LOADERS]
        ax.bar(["course", "project (cold)", "project (warm)"], values, color=["tab:gray", "tab:blue", "tab:cyan"])
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{results['images']} images at {results['size']}px, {results['threads']} thread(s)")
    with runs.atomic_file(path) as f:
        plots.save(fig, f)


def main(argv=None):
    ap = config.ArgumentParser(__doc__)
    ap.add_argument("data", help="a folder of <Style>/ folders of images already at --size (see prepare_data.py)")
    ap.add_argument("--size", type=int, default=416, help="image side; the course loader does not resize")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per loader (>= 2: first + steady)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each loader's process")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--gpu-size", type=int, default=128)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-steps", type=int, default=50)
    ap.add_argument("--device", default="auto",
                    help="the training comparison's device: auto (CUDA, skipped without), cuda, cpu (a dry run)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="see config.py")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (first epoch + steady state)")
    for flag in ("size", "threads", "gpu_size", "gpu_batch", "gpu_steps"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    first = next(iter(images.scan_folder(args.data)[0].values()))[0]
    try:
        with Image.open(first) as im:
            size = im.size
    except OSError as e:
        raise config.UserError(f"{first} is not a readable image ({e}): bench.py times a folder of images already "
                               f"at --size (prepare_data.py --size {args.size} makes one)")
    if size != (args.size, args.size):
        raise config.UserError(f"images in {args.data} are {size[0]}x{size[1]}, not {args.size}: "
                               f"make a copy at that size with prepare_data.py --size {args.size}")
    results = {"data": os.path.abspath(args.data), "size": args.size, "epochs": args.epochs,
               "threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as cache:
        for name in LOADERS:
            print(f"running {name} ...", flush=True)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[name] = pool.submit(child, name.split("_")[0], args.data, args.size, args.epochs,
                                            args.threads, cache).result()
    results["images"] = results["course"]["images"]
    c, pc, pw = (results[name] for name in LOADERS)
    results["ratios"] = {
        "first_epoch_speed_cold": pc["first_epoch_img_s"] / c["first_epoch_img_s"],
        "first_epoch_speed_warm": pw["first_epoch_img_s"] / c["first_epoch_img_s"],
        "steady_speed": pc["steady_img_s"] / c["steady_img_s"],
        "steady_speed_host_uint8": pc["host_uint8_batches_img_s"] / c["steady_img_s"],
        "peak_rss": pc["peak_rss_bytes"] / c["peak_rss_bytes"],
        "peak_anon_rss": pc["peak_anon_rss_bytes"] / c["peak_anon_rss_bytes"],
    }
    results["gpu"] = gpu_part(args)
    print(f"\n{results['images']} images at {args.size}px, {args.threads} torch thread(s), {os.cpu_count()} CPUs")
    for name, r in zip(LOADERS, (c, pc, pw)):
        print(f"{name:13s} epoch 1 {r['first_epoch_img_s']:8.0f} img/s, steady {r['steady_img_s']:8.0f} img/s, "
              f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB ({r['peak_anon_rss_bytes'] / 2**30:.2f} GiB anonymous)")
    print(f"project uint8 batches (the host side of a GPU run): {pc['host_uint8_batches_img_s']:.0f} img/s")
    print("ratios project/course: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()))
    runs.atomic_save(results, os.path.join(args.out, "bench.json"))
    plot(results, os.path.join(args.out, "bench.png"))
    print(f"saved {args.out}/bench.json and bench.png")


if __name__ == "__main__":
    runs.cli(main)
