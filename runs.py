"""Run plumbing the scripts share (docs/operations.md): one-line errors, stop signals, seeds, devices, atomic files,
--resume, every training loop's epoch files, one run per out_dir. A script: parse_config, `runs.start(cfg)`, a loop of
`epoch_order` and `Progress.end_epoch` in `on_interrupt`, `lock_out_dir` before writing, `runs.cli(main)` at the end."""
import contextlib
import csv
import io
import json
import os
import pickle
import platform
import random
import shlex
import signal
import sys
import tempfile
import threading
import time
import warnings
import zipfile

import filelock
import numpy as np
import threadpoolctl
import torch

import config
import ddp
from config import UserError

_entry = []  # (script, argv) of the command runs.cli runs: the command a resume hint repeats
_locks = []  # the out_dir locks this process holds
_time_cap = None  # (start, minutes) from max_minutes
UMASK = os.umask(0)  # read once at import: setting it back and forth races between threads
os.umask(UMASK)
# SIGTERM: `kill`, a scheduler's stop; SIGUSR1: a cluster's "time is nearly up". Both end a run as Ctrl-C does
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def cli(main):
    """main() as a command: a UserError or failed write is one line on stderr, status 2; a stop signal: 128 + it."""
    script = os.path.basename(sys.argv[0])
    default_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: (  # ours: one line each
        f"{script}: warning: {message}\n" if os.path.dirname(os.path.abspath(filename)) == config.HERE
        else default_format(message, category, filename, lineno, line))
    _entry[:] = [(script, sys.argv[1:])]
    try:
        with stop_signals():
            main()
    except (UserError, OSError) as e:  # an OSError: a folder or a library's file not written, in the OS's words
        if isinstance(e, OSError) and (e.errno is None or e.filename is None):
            raise
        what = e if isinstance(e, UserError) else f"{e.filename}: {e.strerror}"
        print(f"{script}: error: {what}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # outside a training loop (those say what was saved): nothing to resume
        why, status = stop_reason(e)
        print(f"\n{script}: {why}", file=sys.stderr)
        sys.exit(status)
    finally:
        while _locks:
            _locks.pop().release()
        warnings.formatwarning = default_format
        _entry.clear()


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 as a KeyboardInterrupt: every handler of Ctrl-C handles them too."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    # a 2nd signal (a scheduler's, torchrun's) must not cut the saving short; not SIG_IGN: children would inherit it
    for s in STOP_SIGNALS:
        signal.signal(s, lambda *_: None)
    raise Stopped(signum)


def _handlers(handlers):
    """These {signal: handler} inside the block, the previous ones after it (outside the main thread: none)."""
    restore = contextlib.ExitStack()
    if threading.current_thread() is threading.main_thread():
        for s, handler in handlers.items():
            restore.callback(signal.signal, s, signal.signal(s, handler))
    return restore


def stop_signals():
    """SIGTERM and SIGUSR1 raise Stopped inside the block (a signal its parent ignores stays ignored)."""
    return _handlers({s: signal.SIG_IGN if signal.getsignal(s) == signal.SIG_IGN else _stop for s in STOP_SIGNALS})


def stop_reason(e):
    """(what ended the run, exit status 128 + signal) for a KeyboardInterrupt: Ctrl-C or a Stopped."""
    signum = getattr(e, "signum", signal.SIGINT)
    return ("interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"), 128 + signum


@contextlib.contextmanager
def ctrl_c_held():
    """A stop signal inside the block is raised when it ends: an epoch's files are written whole and together."""
    raising = {signal.SIGINT: signal.default_int_handler} | {s: _stop for s in STOP_SIGNALS}
    caught = []
    with _handlers({s: lambda signum, frame: caught.append(signum)
                    for s, handler in raising.items() if signal.getsignal(s) is handler}):
        yield
    if caught:
        raising[caught[0]](caught[0], None)


def command_line(script, argv, add=()):
    return shlex.join(["python", script, *argv, *[a for a in add if a not in argv]])


def config_command(script, argv, sets=()):
    """The next step that works: `script` with argv's -c files and --set values, `sets` (KEY=VALUE) added/replacing."""
    args, _ = config.config_parser(None).parse_known_args(list(argv))
    keys = {item.split("=", 1)[0] for item in sets}
    values = [item for item in args.set if item.split("=", 1)[0] not in keys] + list(sets)
    configs = [a for path in args.config for a in ("-c", path)]
    return command_line(script, [*configs, *(["--set", *values] if values else [])])


def start(cfg):
    """Seed, CPU threads, the max_minutes clock, the device (torchrun: its group): (rank, world, local_rank, device)."""
    global _time_cap
    _time_cap = (time.time(), cfg["max_minutes"]) if cfg.get("max_minutes") else None
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
        threadpoolctl.threadpool_limits(cfg["threads"])  # numpy's BLAS and scikit-learn's OpenMP too
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    torch.manual_seed(cfg["seed"])
    rank, world, local_rank, device = ddp.setup_distributed(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: cuDNN picks its fastest kernels once
    return rank, world, local_rank, device


def get_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if (name.startswith("cuda") and not torch.cuda.is_available()
            or name == "mps" and not torch.backends.mps.is_available()):
        raise UserError(f"device '{name}' was asked for but is not available here; use device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device '{name}': {e}")


def autocast(device, precision="auto"):
    """bf16 autocast on CUDA (auto) or anywhere (bf16: a GPU recipe's numerics tried on a CPU); fp32 else."""
    kind = device.type if device.type in ("cuda", "cpu", "mps") else "cpu"
    enabled = precision == "bf16" or (precision == "auto" and kind == "cuda")
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=enabled)


def optimizer_step(loss, optimizer, scheduler=None):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def epoch_row(epoch, loss_sum, count, optimizer, device):
    """A finished epoch's log row: its mean training loss over all processes, and the learning rate."""
    loss_sum, count = ddp.all_reduce_sum([loss_sum, count], device)
    return {"epoch": epoch + 1, "train_loss": loss_sum / count, "lr": optimizer.param_groups[0]["lr"]}


def restart_time_cap():
    """A command that trains several runs in turn (--seeds N) gives each its max_minutes."""
    global _time_cap
    _time_cap = _time_cap and (time.time(), _time_cap[1])


def time_is_up(device, epochs_done, epochs):
    """max_minutes passed with epochs left: the loop ends after this epoch (last.pt holds it; --resume goes on)."""
    up = _time_cap is not None and time.time() - _time_cap[0] > 60 * _time_cap[1] and epochs_done < epochs
    if torch.distributed.is_initialized():
        up = ddp.all_reduce_sum([float(up)], device)[0] > 0  # every rank agrees
    if up:
        print(f"TIME CAP: max_minutes={_time_cap[1]:g} passed; training cut short after epoch {epochs_done} of "
              f"{epochs} (--resume continues)")
    return up


def environment(device=None):
    """Where a result was made: platform, CPU model, torch's threads, the GPU, versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    env = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_atomically(path, write, mode="wb"):
    """write(f) to a temp file renamed over `path`: never half a file; a failed write: a UserError, `path` as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except Exception as e:  # torch.save reports a full disk as a RuntimeError: the OSError is behind it
        error = e
        while error is not None and not (isinstance(error, OSError) and error.errno):
            error = error.__cause__ or error.__context__
        if error is None:
            raise
        kept = f"; the previous {os.path.basename(path)} is unchanged" if os.path.exists(path) else ""
        raise UserError(f"cannot write {path}: {os.strerror(error.errno)}{kept}") from e
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """An in-memory file that replaces `path` (write_atomically) when the block ends without an error."""
    buffer = io.BytesIO() if "b" in mode else io.StringIO(newline="")
    yield buffer
    write_atomically(path, lambda f: f.write(buffer.getvalue()), mode)


def atomic_save(obj, path):
    """JSON for a .json path, else torch.save."""
    if path.endswith(".json"):
        atomic_write_text(json.dumps(obj, indent=2), path)
    else:
        write_atomically(path, lambda f: torch.save(obj, f))


def atomic_write_text(text, path):
    write_atomically(path, lambda f: f.write(text), "w")


def save_png(image_u8, path):
    from PIL import Image
    with atomic_file(path) as f:
        Image.fromarray(np.asarray(image_u8)).save(f, "PNG")


def save_run_config(cfg, out_dir, script, argv):
    """<out_dir>/<script>_config.json: the resolved config, the command and where it ran; a valid -c file."""
    if ddp.is_main():
        name = os.path.splitext(os.path.basename(script))[0]
        atomic_save({"_command": command_line(script, argv), "_env": environment(get_device(cfg["device"])), **cfg},
                    os.path.join(out_dir, f"{name}_config.json"))


def lock_out_dir(out_dir):
    """One run per out_dir: rank 0 holds an flock on <out_dir>/run.lock until it ends (a killed run's frees itself)."""
    path = os.path.abspath(os.path.join(out_dir, "run.lock"))
    if not ddp.is_main() or any(lock.lock_file == path for lock in _locks):
        return
    os.makedirs(out_dir, exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise UserError(f"{out_dir} is in use by another run (lock file {lock.lock_file}): wait for it to end, "
                        "or use another out_dir")
    _locks.append(lock)


def load_checkpoint(path, what, needs=("model",), device="cpu"):
    """A checkpoint dict, or a UserError saying what was expected at `path` and why this file is not it."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: expected {what} there")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, AttributeError,
            ModuleNotFoundError) as e:
        detail = (str(e).splitlines() or [""])[0].rstrip(",.: ")
        raise UserError(f"{path} is not {what} (it cannot be read as a PyTorch checkpoint: "
                        f"{type(e).__name__}{': ' + detail if detail else ''})")
    if missing := [k for k in needs if not isinstance(ckpt, dict) or k not in ckpt]:
        raise UserError(f"{path} is not {what} (no {', '.join(missing)} in it)")
    return ckpt


def load_weights(module, state_dict, path):
    """module.load_state_dict, or a UserError when the weights do not fit the model built from the config."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"the weights in {path} do not fit a {type(module).__name__} built from its config "
                        "(a checkpoint of another script or code version?): "
                        + " ".join(line.strip() for line in str(e).splitlines()[:2])[:200])


def mismatch(ckpt_cfg, cfg, keys, path):
    """Why a checkpoint trained with ckpt_cfg cannot continue under cfg (None if it can)."""
    saved, now = config.flatten(ckpt_cfg), config.flatten(cfg)
    for key in keys:
        if saved.get(key) is not None and saved[key] != now[key]:
            return (f"{path} was trained with {key}={json.dumps(saved[key])}; the config says {json.dumps(now[key])}: "
                    "change it back, or use another out_dir")
    return None


def training_state(epoch, progress, **objects):
    """What last.pt holds to continue exactly: each object's state_dict, the epoch, the history, the RNG."""
    return {name: obj.state_dict() for name, obj in objects.items()} | {
        "history": progress.history, "best_score": progress.best_score, "epoch": epoch, "rng": torch.get_rng_state()}


def resume(path, progress, device, problem=lambda ckpt: None, **objects):
    """--resume: objects and progress from last.pt (`problem(ckpt)`: why it does not fit, or None); the next epoch."""
    if not os.path.exists(path):
        raise UserError(f"--resume: nothing to resume: no {path} (no epoch of a run with this out_dir has "
                        "finished); run without --resume to start")
    ckpt = load_checkpoint(path, "a checkpoint to resume from (last.pt of an earlier run)", ("epoch", *objects), device)
    if why := problem(ckpt):
        raise UserError(f"--resume: {why}")
    for name, obj in objects.items():
        load_weights(obj, ckpt[name], path) if isinstance(obj, torch.nn.Module) else obj.load_state_dict(ckpt[name])
    torch.set_rng_state(ckpt["rng"].cpu())
    progress.history, progress.best_score = ckpt.get("history", []), ckpt.get("best_score")
    progress.saved_epoch = ckpt["epoch"] + 1
    print(f"resumed from {path} after epoch {progress.saved_epoch}")
    return progress.saved_epoch


def epoch_generator(seed, epoch):
    """One RNG per epoch (shuffling, sampling, augmentation, dropout): an epoch replays exactly, resumed or not."""
    torch.manual_seed(seed * 1000 + epoch)
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_order(indices, seed, epoch, rank=0, world=1, batch_size=None, draw=None):
    """(this rank's shard of the epoch's order: a shuffle or a sampler's `draw(g)`; the generator of its augmenting)."""
    g = epoch_generator(seed, epoch)
    positions = draw(g) if draw else torch.randperm(len(indices), generator=g).numpy()
    order = ddp.shard(np.asarray(indices)[positions], rank, world, batch_size)
    return order, (epoch_generator(seed + 1_000_003 * rank, epoch) if rank > 0 else g)


class Progress:
    """A training loop's history, best score and epoch files: best.pt, last.pt, train_log.{json,csv}, curves.png."""

    def __init__(self, out_dir, curves, title, higher_is_better=True):
        self.out_dir, self.curves, self.title = out_dir, curves, title
        self.sign = 1 if higher_is_better else -1
        self.history, self.best_score, self.saved_epoch = [], None, 0

    @property
    def epochs_done(self):
        return self.history[-1]["epoch"] if self.history else 0

    def end_epoch(self, row, score, checkpoint):
        """Log the row and save `checkpoint()` (best.pt if `score` is the best so far; None: never); True if it is."""
        from plots import plot_curves
        self.history.append(row)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        best = score is not None and (self.best_score is None or self.sign * score > self.sign * self.best_score)
        self.best_score = score if best else self.best_score
        if ddp.is_main():
            with ctrl_c_held():
                ckpt = checkpoint()
                if best:
                    atomic_save(ckpt, os.path.join(self.out_dir, "best.pt"))
                atomic_save(ckpt, os.path.join(self.out_dir, "last.pt"))
                self.saved_epoch = row["epoch"]
                atomic_save(self.history, os.path.join(self.out_dir, "train_log.json"))
                keys = sorted({k for h in self.history for k in h}, key=lambda k: (k != "epoch", k))
                with atomic_file(os.path.join(self.out_dir, "train_log.csv"), "w") as f:
                    csv.writer(f).writerows([keys] + [[h.get(k, "") for k in keys] for h in self.history])
                with atomic_file(os.path.join(self.out_dir, "curves.png")) as f:
                    plot_curves(self.history, self.curves, f, self.title)
        return best


@contextlib.contextmanager
def on_interrupt(progress, script, argv):
    """Ctrl-C or a stop signal in the block: say which epoch was saved and the command that continues; exit 128 + it."""
    try:
        yield
    except KeyboardInterrupt as e:
        why, status = stop_reason(e)
        outer = _entry[0] if _entry and _entry[0][0] != script else None  # inside another script: compare_balance.py
        again = command_line(*outer) if outer else command_line(script, argv, ["--resume"])
        if ddp.is_main() and progress.saved_epoch:
            print(f"\n{why}: epoch {progress.saved_epoch} is the last finished one, saved in "
                  f"{os.path.join(progress.out_dir, 'last.pt')}; continue with: {again}", file=sys.stderr)
        elif ddp.is_main():
            print(f"\n{why} before the first epoch finished: nothing was saved to resume from"
                  + (f"; run it again with: {again}" if outer else ""), file=sys.stderr)
        raise SystemExit(status)


def fit_batch_size(batch_size, n, what="batch_size", world=1):
    """min(batch_size, n) as a multiple of the processes, with a warning when it had to shrink."""
    if batch_size <= n:
        return batch_size
    smaller = max(world, n // world * world)
    warnings.warn(f"{what} {batch_size} is larger than the {n} training images; using {smaller}")
    return smaller
