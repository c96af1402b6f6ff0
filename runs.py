"""Run plumbing shared by the scripts: user errors, seeding and devices, atomic files, checkpoints and
resuming, the epoch skeleton of every training loop, and the torchrun helpers.

A script's life: `args, cfg = config.parse_config(...)`, `rank, world, _, device = runs.start(cfg)`,
`runs.lock_out_dir(out_dir)` when it trains (one run per out_dir), a training loop built from
`epoch_order` and `Progress.end_epoch`, and `runs.cli(main)` at the bottom, which turns a UserError
(and a write that failed for want of space or permission) into one line on stderr and exit status 2,
and Ctrl-C, SIGTERM and SIGUSR1 into the saved epoch and the command that continues.
"""
import atexit
import builtins
import contextlib
import csv
import errno
import functools
import io
import json
import os
import pickle
import platform
import random
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
import zipfile

import numpy as np
import threadpoolctl
import torch
from tqdm import tqdm

import config
from config import UserError

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------------------------
# Commands


_entry = []  # (script, argv) of the command runs.cli is running: the command a resume hint repeats


def cli(main):
    """Run main() as a command: a UserError is one line on stderr and exit status 2, no traceback
    (real bugs still trace), and so is a write that fails for want of space or permission; Ctrl-C,
    SIGTERM and SIGUSR1 end it with status 128 + the signal; the project's own warnings are one line
    each; the out_dir locks it took are removed."""
    script = os.path.basename(sys.argv[0])
    default_format = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        if os.path.dirname(os.path.abspath(filename)) != HERE:  # a library's warning: where it came from
            return default_format(message, category, filename, lineno, line)
        return f"{script}: warning: {message}\n"
    warnings.formatwarning = one_line
    _entry[:] = [(script, sys.argv[1:])]
    try:
        with stop_signals():
            main()
    except UserError as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # outside a training loop (those say what was saved): nothing to resume
        why, status = stop_reason(e)
        print(f"\n{script}: {why}", file=sys.stderr)
        sys.exit(status)
    except Exception as e:  # a write the atomic writers did not see (a folder, a library's file): one line too
        error = write_error(e)
        if error is None:
            raise
        print(f"{script}: error: {error.filename or 'a write failed'}: {os.strerror(error.errno)}", file=sys.stderr)
        sys.exit(2)
    finally:
        release_locks()
        warnings.formatwarning = default_format
        _entry.clear()


# SIGTERM is what schedulers (SLURM) and `kill` send before killing a job, SIGUSR1 what clusters send
# when its time is nearly up: both end a run as Ctrl-C does, with what was saved and the command that continues
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGUSR1, raised as a KeyboardInterrupt: every `except KeyboardInterrupt` (the training
    loops' on_interrupt) handles them as it handles Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    for s in STOP_SIGNALS:  # a second one (the scheduler's and torchrun's, or a parent's passing it on)
        signal.signal(s, signal.SIG_IGN)  # must not cut the saving and the last words short
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals():
    """SIGTERM and SIGUSR1 raise Stopped inside the block (one ignored or handled already stays so)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in previous.items():
        if handler == signal.SIG_DFL:
            signal.signal(s, _stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler == signal.SIG_DFL:
                signal.signal(s, handler)


def stop_reason(e):
    """(what ended the run, its exit status) for a KeyboardInterrupt: Ctrl-C is ("interrupted", 130),
    a Stopped SIGTERM ("stopped by SIGTERM", 143): 128 + the signal's number, as a shell reports it."""
    signum = getattr(e, "signum", signal.SIGINT)
    why = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return why, 128 + signum


def command_line(script, argv, add=()):
    """The shell command that runs `script` with these arguments (plus `add`), for hints."""
    argv = list(argv) + [a for a in add if a not in argv]
    return shlex.join(["python", script, *argv])


def config_command(script, argv, sets=()):
    """The command that runs `script` with the config of this command line (its -c files and --set
    values, without flags of its own such as --resume), `sets` (KEY=VALUE) added or replacing: the
    next step that works, e.g. cluster.py on the codes autoencoder.py just wrote."""
    args, _ = config.config_parser(None).parse_known_args(list(argv))
    keys = {item.split("=", 1)[0] for item in sets}
    values = [item for item in args.set if item.split("=", 1)[0] not in keys] + list(sets)
    return shlex.join(["python", script, *[a for path in args.config for a in ("-c", path)],
                       *(["--set", *values] if values else [])])


def fit_batch_size(batch_size, n, what="batch_size", world=1):
    """min(batch_size, n), as a multiple of the processes, with a warning when it had to shrink: a
    small custom dataset trains on one batch of everything there is instead of stopping."""
    if batch_size <= n:
        return batch_size
    smaller = max(world, n // world * world)
    warnings.warn(f"{what} {batch_size} is larger than the {n} training images; using {smaller}")
    return smaller
_time_cap = None  # (start, minutes): set by start() from max_minutes, read by time_is_up()


def start(cfg):
    """Seed everything, set the CPU threads, start the clock of the time cap (max_minutes) and pick
    the device (joining torchrun's process group when launched by torchrun).
    Returns (rank, world_size, local_rank, device)."""
    global _time_cap
    minutes = cfg.get("max_minutes", 0)  # .get: test.py starts from a checkpoint's (maybe older) config
    _time_cap = (time.time(), minutes) if minutes else None
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
        # scikit-learn's OpenMP (t-SNE, KMeans) and numpy's BLAS too: spare threads spinning on a core
        # another job holds slow a run down several times
        threadpoolctl.threadpool_limits(cfg["threads"])
    seed_everything(cfg["seed"])
    rank, world, local_rank, device = setup_distributed(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: cuDNN picks its fastest kernels once
    return rank, world, local_rank, device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available here; use device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for but is not available here; use device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device '{name}': {e}")


def autocast(device, precision="auto"):
    """The config's `precision` for a forward pass: "auto" is bf16 autocast on CUDA (tensor cores) and
    fp32 elsewhere; "bf16" is bf16 autocast on any device (on a CPU: the GPU's numerics, slowly, to
    try a GPU recipe before a GPU is there); "fp32" never casts."""
    kind = device.type if device.type in ("cuda", "cpu", "mps") else "cpu"
    if precision == "bf16" or (precision == "auto" and kind == "cuda"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)


def optimizer_step(loss, optimizer, scheduler=None):
    """Backward pass and one update (old gradients dropped as None, not zeroed), then the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def epoch_row(epoch, loss_sum, count, optimizer, device):
    """The log row of a finished epoch: its mean training loss over all processes, and the learning rate."""
    loss_sum, count = all_reduce_sum([loss_sum, count], device)
    return {"epoch": epoch + 1, "train_loss": loss_sum / count, "lr": optimizer.param_groups[0]["lr"]}


def restart_time_cap():
    """Start the time cap's clock again: a command that trains several runs in turn (style_transfer.py
    --seeds N) gives each its max_minutes."""
    global _time_cap
    _time_cap = _time_cap and (time.time(), _time_cap[1])


def time_is_up(device, epochs_done, epochs):
    """True when the time cap (max_minutes, counted from start()) has passed and epochs remain: the
    training loop then ends after this epoch, which last.pt holds, so --resume continues it. All
    processes agree (rank 0's clock could pass the cap one epoch before another rank's)."""
    up = _time_cap is not None and time.time() - _time_cap[0] > 60 * _time_cap[1] and epochs_done < epochs
    if torch.distributed.is_initialized():
        up = all_reduce_sum([float(up)], device)[0] > 0
    if up:
        print(f"time cap: max_minutes={_time_cap[1]:g} passed; training ends after epoch {epochs_done} of {epochs} "
              f"(last.pt holds it; --resume continues)")
    return up


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device=None):
    """Where a result was made: platform, CPU model, torch's CPU threads, the GPU, library versions."""
    env = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# ----------------------------------------------------------------------------------------------
# Files: written to a unique temp file in the same folder, then renamed (never half a file)

# why a write fails on a shared machine, not in the code: no space, quota, read-only, permission
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def write_atomically(path, write, mode="wb"):
    """write(f) into a unique temp file beside `path`, which then replaces `path` in one rename. Several
    writers of the same path never share a temp file: the last rename wins, each file whole. A write
    that fails for want of space or permission is a UserError naming the file, the reason and, when
    space ran out, how much the write needed; `path` keeps its previous version."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except Exception as e:  # torch.save reports the OSError as a RuntimeError ("unexpected pos"): look behind it
        error = write_error(e)
        if error is None:
            raise
        raise cannot_write(path, error, _size_of(write) if error.errno in (errno.ENOSPC, errno.EDQUOT) else None)
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def write_error(e):
    """The OSError of a failed write (WRITE_ERRORS) that raised `e` or lies behind it, else None."""
    seen = []
    while e is not None and e not in seen:
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
            return e
        seen.append(e)
        e = e.__cause__ or e.__context__
    return None


def cannot_write(path, error, needed=None):
    """The UserError for a write of `path` that failed with `error`: the reason and, for a full disk
    or quota, how much the write needed (and how much the disk has free)."""
    def mb(n):
        return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"
    detail = ""
    if needed is not None and error.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        free = f"; {mb(shutil.disk_usage(folder).free)} free there" if error.errno == errno.ENOSPC else ""
        detail = f" (the write needed {mb(needed)}{free})"
    kept = f"; the previous {os.path.basename(path)} is unchanged" if os.path.exists(path) else ""
    return UserError(f"cannot write {path}: {os.strerror(error.errno)}{detail}{kept}")


class _Counter:
    """A file that only counts the bytes written to it."""
    size = 0

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        self.size += n
        return n

    def flush(self):
        pass


def _size_of(write):
    """How many bytes write(f) writes (run again into a counter: the disk filled before it finished)."""
    counter = _Counter()
    try:
        write(counter)
    except Exception:  # a writer that needs a real file: the size stays unknown
        return None
    return counter.size


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """An in-memory file that replaces `path` (write_atomically) when the block ends without an error:
    never half a file, and a failed write knows how much it needed."""
    buffer = io.BytesIO() if "b" in mode else io.StringIO(newline="")
    yield buffer
    data = buffer.getvalue()
    write_atomically(path, lambda f: f.write(data), mode)


def atomic_save(obj, path):
    """JSON for a .json path, else torch.save (streamed to the file: a checkpoint is not held twice)."""
    if path.endswith(".json"):
        atomic_write_text(json.dumps(obj, indent=2), path)
    else:
        write_atomically(path, functools.partial(torch.save, obj))


def atomic_write_text(text, path):
    write_atomically(path, lambda f: f.write(text), "w")


def save_png(image_u8, path):
    """A uint8 (H, W, 3) image as a PNG, written atomically."""
    from PIL import Image
    with atomic_file(path) as f:
        Image.fromarray(np.asarray(image_u8)).save(f, "PNG")


def write_history(history, out_dir, name="train_log"):
    """Per-epoch log as JSON and CSV."""
    atomic_save(history, os.path.join(out_dir, name + ".json"))
    keys = sorted({k for h in history for k in h}, key=lambda k: (k != "epoch", k))
    with atomic_file(os.path.join(out_dir, name + ".csv"), "w") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(history)


def save_run_config(cfg, out_dir, script, argv):
    """<out_dir>/<script>_config.json: the fully resolved config, the command line that made this
    folder and where it ran (_env). It is a config file itself: `-c` on it reproduces the same config."""
    if is_main():
        name = os.path.splitext(os.path.basename(script))[0]
        env = environment(get_device(cfg["device"]))
        atomic_save({"_command": command_line(script, argv), "_env": env, **cfg},
                    os.path.join(out_dir, f"{name}_config.json"))


# ----------------------------------------------------------------------------------------------
# Checkpoints


def load_checkpoint(path, what, needs=("model",), device="cpu"):
    """A checkpoint dict, or a UserError saying what file was expected there and why this one is not it."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: expected {what} there")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, UnicodeDecodeError, OSError,
            AttributeError, ModuleNotFoundError, ValueError, io.UnsupportedOperation) as e:
        detail = str(e).splitlines()[0].rstrip(",.: ") if str(e) else ""
        raise UserError(f"{path} is not {what} (it cannot be read as a PyTorch checkpoint: "
                        f"{type(e).__name__}{': ' + detail if detail else ''})")
    missing = [k for k in needs if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not {what} (no {', '.join(missing)} in it)")
    return ckpt


def load_weights(module, state_dict, path):
    """module.load_state_dict, or a UserError when the checkpoint's weights do not fit this model
    (another model's checkpoint, or one made by an incompatible version of the code)."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"the weights in {path} do not fit a {type(module).__name__} built from its config "
                        f"(a checkpoint of another script or code version?): "
                        + " ".join(line.strip() for line in str(e).splitlines()[:2])[:200])


def mismatch(ckpt_cfg, cfg, keys, path):
    """Why a checkpoint trained with ckpt_cfg cannot continue under cfg (None if it can): the first
    of `keys` (dotted for sections) whose value differs."""
    for key in keys:
        section, _, name = key.rpartition(".")
        saved = (ckpt_cfg.get(section, {}) if section else ckpt_cfg).get(name)
        now = (cfg[section] if section else cfg)[name]
        if saved is not None and saved != now:
            return (f"{path} was trained with {key}={json.dumps(saved)}; the config says {json.dumps(now)}: "
                    f"change it back, or use another out_dir")
    return None


def training_state(epoch, progress, **objects):
    """What last.pt holds to continue exactly: every object's state_dict, the epoch, the progress and
    the RNG state."""
    return {name: obj.state_dict() for name, obj in objects.items()} | progress.state() | {
        "epoch": epoch, "rng": torch.get_rng_state()}


def resume(path, progress, device, problem=lambda ckpt: None, **objects):
    """--resume: restore every object (model=..., optimizer=...) and the progress from last.pt.
    `problem(ckpt)` says why the checkpoint does not fit this run (or None). Returns the next epoch."""
    if not os.path.exists(path):
        raise UserError(f"--resume: nothing to resume: no {path} (no epoch of a run with this out_dir has "
                        "finished); run without --resume to start")
    ckpt = load_checkpoint(path, "a checkpoint to resume from (last.pt of an earlier run)",
                           needs=("epoch", *objects), device=device)
    why = problem(ckpt)
    if why:
        raise UserError(f"--resume: {why}")
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module):
            load_weights(obj, ckpt[name], path)
        else:
            obj.load_state_dict(ckpt[name])
    torch.set_rng_state(ckpt["rng"].cpu())
    progress.restore(ckpt)
    print(f"resumed from {path} after epoch {ckpt['epoch'] + 1}")
    return ckpt["epoch"] + 1


# ----------------------------------------------------------------------------------------------
# The epoch skeleton every training loop shares


def epoch_generator(seed, epoch):
    """One RNG per epoch for shuffling, sampling, augmentation and dropout: an epoch replays
    exactly whether training ran straight through or was resumed before it."""
    torch.manual_seed(seed * 1000 + epoch)
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_order(indices, seed, epoch, rank=0, world=1, batch_size=None, draw=None):
    """(this process's share of the epoch's order, the epoch's generator). Every process draws the
    same order from (seed, epoch) -- a shuffle, or positions `draw(g)` (a sampler) -- and takes its
    shard; processes other than rank 0 then get their own stream for crops, flips and mixes."""
    g = epoch_generator(seed, epoch)
    positions = draw(g) if draw else torch.randperm(len(indices), generator=g).numpy()
    order = shard(np.asarray(indices)[positions], rank, world, batch_size)
    if rank > 0:
        g = epoch_generator(seed + 1_000_003 * rank, epoch)
    return order, g


def format_row(row):
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


class Progress:
    """What a training loop keeps between epochs -- the per-epoch history and the best score -- and
    the files written after each epoch: best.pt (when the score improves), last.pt, train_log and
    curves.png. Only the writing process (rank 0) writes."""

    def __init__(self, out_dir, curves, title, higher_is_better=True):
        self.out_dir, self.curves, self.title = out_dir, curves, title
        self.sign = 1 if higher_is_better else -1
        self.history, self.best_score = [], None
        self.saved_epoch = 0  # the epoch last.pt holds (0: none yet)

    def state(self):
        return {"history": self.history, "best_score": self.best_score}

    def restore(self, ckpt):
        self.history = ckpt.get("history", [])
        self.best_score = ckpt.get("best_score", ckpt.get("best_mse"))  # best_mse: older autoencoder runs
        self.saved_epoch = ckpt["epoch"] + 1

    @property
    def epochs_done(self):
        return self.history[-1]["epoch"] if self.history else 0

    def end_epoch(self, row, score, checkpoint):
        """Log the row; save best.pt if `score` is the best so far (None: no best.pt), then last.pt,
        the history and the curves. `checkpoint()` builds the dict to save. True if this is the best."""
        from plots import plot_curves
        self.history.append(row)
        print(format_row(row))
        best = score is not None and (self.best_score is None or self.sign * score > self.sign * self.best_score)
        if best:
            self.best_score = score
        if is_main():
            with ctrl_c_held():  # the epoch's files are written whole, whenever Ctrl-C comes
                ckpt = checkpoint()
                if best:
                    atomic_save(ckpt, os.path.join(self.out_dir, "best.pt"))
                atomic_save(ckpt, os.path.join(self.out_dir, "last.pt"))
                self.saved_epoch = row["epoch"]
                write_history(self.history, self.out_dir)
                with atomic_file(os.path.join(self.out_dir, "curves.png")) as f:
                    plot_curves(self.history, self.curves, f, self.title)
        return best


@contextlib.contextmanager
def ctrl_c_held():
    """Hold a Ctrl-C (SIGINT), SIGTERM or SIGUSR1 that comes inside the block and raise it when the
    block ends. Raised mid-block it could cut an import short (matplotlib's first import turns it into
    a RuntimeError) or leave best.pt newer than last.pt."""
    raising = {signal.SIGINT: signal.default_int_handler} | {s: _stop for s in STOP_SIGNALS}
    held = [s for s, handler in raising.items() if signal.getsignal(s) is handler]
    if threading.current_thread() is not threading.main_thread() or not held:
        yield  # signals go to the main thread; an ignored or custom handler stays as it is
        return
    caught = []
    for s in held:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, raising[s])
    if caught:
        raising[caught[0]](caught[0], None)  # raises KeyboardInterrupt, or Stopped


@contextlib.contextmanager
def on_interrupt(progress, script, argv):
    """Ctrl-C (or SIGTERM, SIGUSR1) inside the block: say which epoch was saved and the exact command
    that continues (the command being run, when this loop runs inside another script such as
    compare_balance.py); exit status 128 + the signal."""
    try:
        yield
    except KeyboardInterrupt as e:
        why, status = stop_reason(e)
        if not is_main():
            raise SystemExit(status)
        last = os.path.join(progress.out_dir, "last.pt")
        outer = _entry[0] if _entry and _entry[0][0] != script else None
        again = command_line(*outer) if outer else command_line(script, argv, ["--resume"])
        if progress.saved_epoch:
            print(f"\n{why}: epoch {progress.saved_epoch} is the last finished one, saved in {last}; "
                  f"continue with: {again}", file=sys.stderr)
        else:
            print(f"\n{why} before the first epoch finished: nothing was saved to resume from"
                  + (f"; run it again with: {again}" if outer else ""), file=sys.stderr)
        raise SystemExit(status)


# ----------------------------------------------------------------------------------------------
# One run per out_dir: a lock file holds the running process's PID and host

LOCK = "run.lock"
_locks = []  # (lock file, the folders taking it made) of this process: removed when it ends


def lock_out_dir(out_dir):
    """Take <out_dir>/run.lock for this run until it ends (runs.cli, or at exit). A second run into
    the same out_dir stops here, before any work, with one line naming the running PID; a lock left
    by a process of this machine that is no longer running (killed) is taken over with a note.
    Read-only uses (test.py, --image) take none. Under torchrun rank 0 takes it."""
    shown, me = os.path.join(out_dir, LOCK), (os.getpid(), socket.gethostname())
    path = os.path.abspath(shown)
    if not is_main() or any(p == path for p, _ in _locks):
        return
    made, folder = [], os.path.dirname(path)
    while not os.path.isdir(folder):  # the folders this makes: removed again if the run writes nothing
        made.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            pid, host = lock_holder(path)
            if pid is None and not os.path.exists(path):  # released meanwhile
                continue
            if pid is None or host != me[1] or _running(pid):
                who = (f"process {pid} on {'this machine' if host == me[1] else host}" if pid else "a process")
                gone = "" if host == me[1] else "; if that run has ended, delete the lock file"
                raise UserError(f"{out_dir} is in use by another run ({who}, lock file {shown}): wait for it "
                                f"to end, or use another out_dir{gone}")
            print(f"note: {shown} was left by process {pid}, which is no longer running (killed?); taking it over",
                  file=sys.stderr)
            # (two runs taking over one stale lock in the same instant are not told apart)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    with os.fdopen(fd, "w") as f:
        f.write(f"{me[0]} {me[1]}\n")
    _locks.append((path, made))


def lock_holder(path):
    """(pid, host) of a lock file; (None, None) if it is gone or holds something else."""
    try:
        with open(path) as f:
            pid, host = f.read().split()
        return (int(pid), host) if int(pid) > 0 else (None, None)
    except (OSError, ValueError):
        return None, None


def _running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


@atexit.register
def release_locks():
    """Remove this process's lock files, and the folders lock_out_dir made if they stayed empty."""
    me = (os.getpid(), socket.gethostname())
    while _locks:
        path, made = _locks.pop()
        if lock_holder(path) == me:
            with contextlib.suppress(OSError):
                os.remove(path)
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:  # something was written there
                break


# ----------------------------------------------------------------------------------------------
# Distributed: the same script under torchrun, one process per GPU (DistributedDataParallel).
# Without torchrun every helper here is a no-op for rank 0 of a world of 1: single runs are unchanged.

def setup_distributed(device_name="auto"):
    """(rank, world_size, local_rank, device) from torchrun's RANK, WORLD_SIZE and LOCAL_RANK.

    Under torchrun: joins the process group (nccl on GPUs, gloo on CPU), binds process LOCAL_RANK to
    GPU LOCAL_RANK, and silences print() and tqdm bars on every rank but 0 (as torchvision's
    reference scripts do), so scripts print as usual; warnings and errors still show on all ranks.
    Without torchrun: (0, 1, 0, get_device(device_name)) and nothing else happens."""
    device = get_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, 0, device
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.distributed.is_initialized():  # main() called twice in one process (tests)
        return rank, world, local_rank, device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        torch.distributed.init_process_group("gloo")
    else:
        raise UserError(f"distributed training runs on CUDA (nccl) or CPU (gloo), not on '{device}'")
    if rank != 0:
        builtins.print = lambda *args, **kwargs: None
        tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    return rank, world, local_rank, device


def is_main():
    """True on rank 0 and in every single-process run: the process that writes files."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (decodes and caches the data, generates the sample), the other
    ranks after it, so they read its files instead of all writing the same files at once."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(indices, rank, world, batch_size=None):
    """This rank's share of `indices`: every world-th item from position `rank` (disjoint, covering).

    With batch_size (the global batch) the tail that fills no whole global batch is dropped first, as
    a single process drops it, so every rank runs the same number of steps of batch_size // world
    items, and step k of all ranks together trains on exactly batch k of a single-process run."""
    if batch_size is not None:
        if batch_size % world:
            raise UserError(f"batch_size {batch_size} (the global batch) must be divisible by the "
                            f"{world} processes")
        indices = indices[:len(indices) // batch_size * batch_size]
    return indices[rank::world]


def all_gather_shards(x, world):
    """Undo shard() without batch_size: gather every rank's results for its shard (CPU tensors whose
    first axis follows the shard) and interleave them into the order of the unsharded indices."""
    if world == 1:
        return x
    parts = [None] * world
    torch.distributed.all_gather_object(parts, x)
    shape = next((p.shape[1:] for p in parts if len(p)), x.shape[1:])
    out = x.new_empty((sum(len(p) for p in parts), *shape))
    for r, p in enumerate(parts):
        if len(p):
            out[r::world] = p
    return out


def all_reduce_sum(values, device):
    """A list of numbers summed over all ranks (returned as is without torchrun)."""
    if not torch.distributed.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model):
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP does this before each
    training forward, but each rank then updates its own copy once more, so evaluation with the
    plain module would see slightly different statistics on each rank without it."""
    if torch.distributed.is_initialized():
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)


def wrap_ddp(model, world, device):
    """The model to train with: DDP under torchrun (gradients averaged in backward), else itself.
    Evaluation and checkpoints use the plain model, so test.py loads them unchanged."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def cleanup_distributed():
    """Leave the process group together: a rank that tears gloo down while rank 0 is still writing
    its files can abort at exit ("terminate called without an active exception", seen once in CI)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
