"""The plumbing every script shares (runs.py, config's command line), tested once, here: a user's slip is
one line on stderr and exit status 2 with nothing written (one table of every script's slips: the rows of
docs/misuse.md); Ctrl-C, SIGTERM and SIGUSR1 save the epoch and print the command that resumes it
bit-identically; a failed write names the file and keeps the old one, and the data is on disk before the
rename; one run per out_dir; -h and --help-config."""
import ast
import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import filelock
import numpy as np
import pytest
import torch

import config
import runs
import sample_data
import wikiart
from conftest import (ROOT, assert_same_training, assert_user_error, run_main, small_config, small_folder,
                      snapshot)

SCRIPTS = ["train.py", "test.py", "autoencoder.py", "cluster.py", "compare_balance.py", "bench.py",
           "prepare_data.py", "sample_data.py", "realism.py"]
CONFIG_SCRIPTS = SCRIPTS[:5]
DATA = "train_dir={sample}/train test_dir={sample}/test image_size=32 cache_dir= device=cpu"


@pytest.fixture(scope="module")
def few(sample_root, tmp_path_factory):
    """Three styles of 18 training images of the tiny sample: 48 to train on, 3 steps of 16 an epoch."""
    return small_folder(sample_root, tmp_path_factory.mktemp("few"), n=18, test_n=2)


def main_thread_only():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")


# ---- every slip: one line, status 2, nothing written

def classifier_checkpoint(path, sample_root, **changes):
    """What train.py saves, untrained: a tiny ResNet for the sample's styles (config `changes` applied
    after the weights were made: a checkpoint whose weights do not fit its config)."""
    cfg = config.load_config(overrides=[f"train_dir={sample_root}/train", f"test_dir={sample_root}/test",
                                        "image_size=32", "cache_dir=", "resnet_width=8"])
    styles = sorted(sample_data.COURSE_TRAIN_COUNTS)
    model = wikiart.make_classifier(cfg, len(styles))
    torch.save({"model": model.state_dict(), "config": cfg | changes, "epoch": 0,
                "class_to_idx": {s: i for i, s in enumerate(styles)}, "label_counts": {s: 5 for s in styles}}, path)


def user_files(folder, sample_root):
    """The files the slips below are made with, in the user's current folder."""
    (folder / "recipe.json").write_text('{"epochs": 3,}')
    for path, text in (("src/Cubism/a.png", ""), ("txt/Cubism/a.txt", "hi"), ("notes.pt", "hello"),
                       ("notes.txt", "shopping list"), ("codes_text/codes_test.npz", "not an npz")):
        os.makedirs(os.path.dirname(folder / path) or folder, exist_ok=True)
        (folder / path).write_text(text)
    (folder / "ckpts").mkdir()
    shutil.copy(f"{sample_root}/test/Cubism/{sorted(os.listdir(f'{sample_root}/test/Cubism'))[0]}", folder / "picture.pt")
    torch.save({"a": 1}, folder / "dict.pt")
    autoencoder = wikiart.make_autoencoder(config.defaults()["autoencoder"], 32)
    torch.save({"model": autoencoder.state_dict(), "config": config.defaults(), "class_to_idx": {"Cubism": 0},
                "epoch": 0}, folder / "autoencoder.pt")
    os.makedirs(folder / "run")
    classifier_checkpoint(folder / "run" / "best.pt", sample_root)
    classifier_checkpoint(folder / "edited.pt", sample_root, resnet_width=16)
    for style, source in (("Vaporwave", "Cubism"), ("Baroque", "Baroque")):  # a style the model never saw
        os.makedirs(folder / "mine" / style)
        first = sorted(os.listdir(f"{sample_root}/test/{source}"))[0]
        shutil.copy(f"{sample_root}/test/{source}/{first}", folder / "mine" / style / first)
    os.makedirs(folder / "codes_keys")
    np.savez(folder / "codes_keys" / "codes_test.npz", codes=np.zeros((3, 4), np.float32))  # no labels, stats...
    os.makedirs(folder / "codes_three")
    np.savez(folder / "codes_three" / "codes_test.npz", codes=np.zeros((3, 4), np.float32),
             stats=np.zeros((3, 2), np.float32), labels=np.array([0, 1, 2]), classes=np.array(["a", "b", "c"]),
             paths=np.array(["x", "y", "z"]))


# (script, its arguments, what its one line says: a phrase, or several); {sample}: the tiny sample, {data}: DATA.
# The full wording is pinned only where it is the point: "did you mean", the expected folder layout, a command.
SLIPS = {
    # config
    "misspelt key": ("train.py", "--set epoch=3", "--set: unknown config key 'epoch'. did you mean 'epochs'?"),
    "unknown key": ("train.py", "--set lerning_rate=0.1", "unknown config key 'lerning_rate'"),
    "section as a value": ("autoencoder.py", "--set autoencoder=3", ("'autoencoder' is a section",
                                                                     "--set autoencoder.mode=...")),
    "not an int": ("train.py", "--set epochs=three", "'epochs' must be int"),
    "out of range": ("train.py", "--set epochs=-1", "'epochs' must be > 0"),
    "not a choice": ("train.py", "--set balance=posthoc", "'balance' must be one of none,"),
    "json syntax": ("train.py", "-c recipe.json", "recipe.json, line 1, column 14: not valid JSON"),
    "no config file": ("cluster.py", "-c nope.json", "config file not found: nope.json"),
    "unknown flag": ("train.py", "--sett epochs=3", "unrecognized arguments: --sett epochs=3"),
    "no such device": ("train.py", "--set device=cuda:7", "'cuda:7'"),
    # data folders
    "no data folder": ("train.py", "--set train_dir=mine/train", "data folder not found: 'mine/train'. Expected one folder "
                       "per art style with the images inside: mine/train/<Style>/<image>.jpg"),
    "no data folder (autoencoder)": ("autoencoder.py", "--set train_dir=missing test_dir=missing", "data folder not found"),
    "no data folder (compare_balance)": ("compare_balance.py", "--options none --set train_dir=missing", "data folder not found"),
    # train.py
    "posthoc without validation": ("train.py", "--set {data} out_dir=out/ph posthoc=true val_fraction=0",
                                   "val_fraction=0.0 leaves no validation images"),
    "nothing to resume": ("train.py", "--resume --set {data} out_dir=out/x",
                          ("--resume: nothing to resume: no out/x/last.pt", "run without --resume")),
    # test.py: no checkpoint, or one that is not what was expected
    "no checkpoint": ("test.py", "", "no checkpoint at out/classifier/best.pt: train one first (python train.py)"),
    "no checkpoint, own settings": ("test.py", "--set out_dir=out/mine", "no checkpoint at out/mine/best.pt: train one "
                                    "first (python train.py --set out_dir=out/mine)"),
    "topk 0": ("test.py", "--topk 0", "--topk must be at least 1"),
    "text as checkpoint": ("test.py", "--checkpoint notes.pt", ("notes.pt is not a train.py checkpoint", "UnpicklingError")),
    "picture as checkpoint": ("test.py", "--checkpoint picture.pt", "picture.pt is not a train.py checkpoint"),
    "folder as checkpoint": ("test.py", "--checkpoint ckpts", ("ckpts is not a train.py checkpoint", "IsADirectoryError")),
    "dict as checkpoint": ("test.py", "--checkpoint dict.pt", "(no model, config, class_to_idx, label_counts in it)"),
    "autoencoder as classifier": ("test.py", "--checkpoint autoencoder.pt", "(no label_counts in it)"),
    "weights that do not fit": ("test.py", "--checkpoint edited.pt", "the weights in edited.pt do not fit a ResNet"),
    "a style never trained": ("test.py", "--checkpoint run/best.pt --set test_dir=mine",
                              ("Vaporwave in 'mine' were not in the training set", "knows: Abstract_Expressionism,")),
    "no readable image": ("test.py", "--checkpoint run/best.pt --image notes.txt missing.png",
                          "no readable image among --image notes.txt missing.png"),
    # autoencoder.py, cluster.py
    "crop with a vector code": ("autoencoder.py", "--set {data} autoencoder.bottleneck=vector autoencoder.train_crop=16",
                                "autoencoder.train_crop=16 needs a spatial bottleneck"),
    "size not divisible": ("autoencoder.py", "--set {data} image_size=30 autoencoder.train_crop=0", "divisible"),
    "nothing to resume (autoencoder)": ("autoencoder.py", "--resume --set {data} autoencoder.out_dir=out/ae",
                                        "nothing to resume: no out/ae/last.pt"),
    "no autoencoder for --image": ("autoencoder.py", "--image notes.txt --set image_size=32",
                                   "no trained autoencoder at out/autoencoder/best.pt: train one first with: "
                                   "python autoencoder.py --set image_size=32"),
    "no codes": ("cluster.py", "--set cluster.codes_dir=out/ae_mini image_size=32", "no codes at "
                 "out/ae_mini/codes_test.npz; run autoencoder.py first (python autoencoder.py --set "
                 "cluster.codes_dir=out/ae_mini image_size=32 autoencoder.out_dir=out/ae_mini)"),
    "unknown method": ("cluster.py", "--set cluster.method=dbscan", "'cluster.method' must be one of kmeans,"),
    "not a codes file": ("cluster.py", "--set cluster.codes_dir=codes_text", "codes_text/codes_test.npz is not a codes "
                         "file written by autoencoder.py"),
    "codes without labels": ("cluster.py", "--set cluster.codes_dir=codes_keys", "(KeyError"),
    "too few codes": ("cluster.py", "--set cluster.codes_dir=codes_three", ("holds 3 image(s)", "needs more than 3")),
    # compare_balance.py, prepare_data.py, bench.py, sample_data.py, realism.py
    "unknown option": ("compare_balance.py", "--options none bogus", "invalid choice: 'bogus'"),
    "output inside the source": ("prepare_data.py", "src src/out", "must not be inside the source"),
    "no source": ("prepare_data.py", "nothing o", "source not found: nothing"),
    "no csv": ("prepare_data.py", "src o --csv nocsv", "--csv not found: nocsv"),
    "size 4": ("prepare_data.py", "src o --size 4", "--size must be at least 8"),
    "quality 0": ("prepare_data.py", "src o --quality 0", "--quality must be in"),
    "test fraction 1": ("prepare_data.py", "src o --test-fraction 1", "--test-fraction must be in"),
    "unknown fit": ("prepare_data.py", "src o --fit stretch", "invalid choice: 'stretch'"),
    "workers 0": ("prepare_data.py", "src o --workers 0", "--workers must be at least 1"),
    "no output": ("prepare_data.py", "src", "the following arguments are required: out"),
    "bench: other size": ("bench.py", "{sample}/train --size 64", ("are 32x32, not 64", "prepare_data.py --size 64")),
    "bench: not an image": ("bench.py", "txt --size 32", "a.txt is not a readable image"),
    "bench: no data folder": ("bench.py", "missing --size 32", "data folder not found"),
    "bench: epochs 1": ("bench.py", "src --size 32 --epochs 1", "--epochs must be at least 2"),
    "bench: threads 0": ("bench.py", "src --size 32 --threads 0", "--threads must be at least 1"),
    "sample: size 2": ("sample_data.py", "--size 2", "--size must be at least 8"),
    "sample: scale 0": ("sample_data.py", "--scale 0", "--scale must be > 0"),
    "realism: too few images": ("realism.py", "{sample}/test --n 1000 --cache-dir ''", "--n 1000 needs 2000 images"),
}


@pytest.mark.parametrize("slip", list(SLIPS))
def test_a_slip_is_one_line_on_stderr_status_2_and_writes_nothing(slip, sample_root, user_dir):
    script, args, says = SLIPS[slip]
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is here")
    user_files(user_dir, sample_root)
    before = snapshot(user_dir)
    p = run_main(script, *shlex.split(args.format(data=DATA.format(sample=sample_root), sample=sample_root)), check=False)
    assert_user_error(p, script, *([says] if isinstance(says, str) else says))
    assert snapshot(user_dir) == before  # no out/..., no data/sample, no cache/, no results beside a checkpoint


def test_an_out_dir_that_cannot_be_made_is_one_line(few, tmp_path, monkeypatch):
    """A folder the OS refuses (read-only disk) outside the atomic writers: runs.cli says it in the OS's words."""
    makedirs = os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, "makedirs", read_only)
    p = run_main("train.py", *small_config(few, tmp_path / "ro" / "run"), check=False)
    assert_user_error(p, "train.py", f"{tmp_path}/ro/run: Read-only file system")


def test_every_script_runs_main_through_runs_cli():
    """The __main__ block is `runs.cli(main)` (what run_main runs; sample_data.py: argparse only)."""
    for script in SCRIPTS:
        tree = ast.parse(open(os.path.join(ROOT, script)).read())
        block = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert len(block) == 1, script
        assert ast.unparse(block[0].body[0]) == ("main()" if script == "sample_data.py" else "runs.cli(main)"), script


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_docstring_as_written_and_help_config_every_key(script):
    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, script)).read()), clean=False)
    p = run_main(script, "-h", check=False)
    assert p.returncode == 0
    text = "\n".join(line.rstrip() for line in doc.strip("\n").splitlines())
    assert text in "\n".join(line.rstrip() for line in p.stdout.splitlines())  # every line, aligned, in order
    if script in CONFIG_SCRIPTS:
        p = run_main(script, "--help-config", check=False)
        assert p.returncode == 0 and p.stdout == config.help_text() + "\n"  # every key (test_config.py)


def test_the_modules_import_one_another_without_cycles():
    """The imports a module runs when it is imported (its top level) form no cycle."""
    modules = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    imports = {}
    for m in modules:
        nodes = ast.parse(open(os.path.join(ROOT, m + ".py")).read()).body
        names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        imports[m] = {name.split(".")[0] for name in names} & modules
    assert "wikiart" in imports["train"] and "ddp" in imports["runs"]  # the walk sees the imports

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in imports[start])
    assert [m for m in sorted(modules) if reaches(m, m)] == []


def test_next_step_commands_repeat_the_users_config():
    argv = ["-c", "recipe.json", "--set", "autoencoder.out_dir=out/ae_mini", "image_size=32", "--resume"]
    assert runs.config_command("cluster.py", argv) == \
        "python cluster.py -c recipe.json --set autoencoder.out_dir=out/ae_mini image_size=32"
    assert runs.config_command("cluster.py", argv, ["image_size=64", "cluster.codes_dir=x"]) == \
        "python cluster.py -c recipe.json --set autoencoder.out_dir=out/ae_mini image_size=64 cluster.codes_dir=x"
    assert runs.config_command("test.py", ["--resume"]) == "python test.py"
    assert runs.command_line("train.py", ["--set", "out_dir=my run"], ["--resume"]) == \
        "python train.py --set 'out_dir=my run' --resume"


# ---- stop signals: Ctrl-C (SIGINT), SIGTERM, SIGUSR1

STOPPED_MID_EPOCH = """
import os, sys, time
sys.path.insert(0, {root!r})
import runs, train
steps, step = [], runs.optimizer_step
def step_then_wait(*args, **kwargs):  # in the third step of epoch 2, say so and wait there for the signal
    step(*args, **kwargs)
    steps.append(os.path.exists({last!r}))
    if sum(steps) == 3:
        open({ready!r}, "w").close()
        time.sleep(300)
runs.optimizer_step = step_then_wait
sys.argv = ["train.py"] + sys.argv[1:]
runs.cli(train.main)  # what `python train.py ...` runs
"""


def continue_command(stderr):
    """The argv of the 'continue with: python X ...' an interrupted run printed: (script, args)."""
    words = shlex.split(stderr.split("continue with: ", 1)[1].splitlines()[0])
    assert words[0] == "python"
    return words[1], words[2:]


@pytest.mark.slow  # a process of its own
def test_sigterm_mid_epoch_saves_the_last_epoch_and_its_resume_command_ends_bit_identical(sample_root, tiny_classifier,
                                                                                          tmp_path):
    """SIGTERM (`kill`, a scheduler's "stop now") to a real `python train.py` in the middle of epoch 2: status
    143, no traceback, the saved epoch and the command that continues; that command ends with the weights
    of the same epochs run straight through (the shared tiny classifier): the abandoned half epoch leaves
    no trace, and the same seed gives the same weights. Every training loop ends through the same
    runs.Progress / on_interrupt."""
    out = tmp_path / "run"
    args = small_config(sample_root, out, **tiny_classifier.keys)
    script = tmp_path / "train_then_wait.py"
    script.write_text(STOPPED_MID_EPOCH.format(root=ROOT, last=str(out / "last.pt"), ready=str(tmp_path / "ready")))
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 300
    while not (tmp_path / "ready").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    assert f"stopped by SIGTERM: epoch 1 is the last finished one, saved in {out}/last.pt" in stderr
    script, again = continue_command(stderr)
    assert (script, again) == ("train.py", [*args, "--resume"])
    p = run_main(script, *again)
    assert f"resumed from {out}/last.pt after epoch 1" in p.stdout
    assert_same_training(tiny_classifier.out / "last.pt", out / "last.pt", tiny_classifier.keys["epochs"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_stop_signal_before_the_first_epoch_ended_says_nothing_was_saved(sig, few, tmp_path, monkeypatch):
    """Ctrl-C, SIGTERM, SIGUSR1 (a cluster's "time is nearly up"): status 130, 143, 138 (128 + the signal)."""
    main_thread_only()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the runner set
    try:
        monkeypatch.setattr(wikiart, "augment", lambda *a, **kw: signal.raise_signal(sig))  # in the first step
        p = run_main("train.py", *small_config(few, tmp_path / "run"), check=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert p.returncode == 128 + sig and "Traceback" not in p.stderr
    why = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
    assert f"{why} before the first epoch finished: nothing was saved to resume from" in p.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_stop_signal_while_an_epoch_is_written_waits_for_the_files(sig, tmp_path):
    main_thread_only()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with runs.stop_signals(), pytest.raises(KeyboardInterrupt) as e:  # stop_signals: as runs.cli runs main
            with runs.ctrl_c_held():
                signal.raise_signal(sig)  # delivered now, in this thread
                runs.atomic_write_text("whole", str(tmp_path / "f.txt"))
                done.append(True)
        assert runs.stop_reason(e.value)[1] == 128 + sig
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # runs.cli leaves the process as it found it
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done and (tmp_path / "f.txt").read_text() == "whole"


def test_after_a_first_sigterm_a_second_is_swallowed_and_a_new_child_can_still_be_stopped():
    """Issue 44: a second SIGTERM (a scheduler's, torchrun's) must not cut the saving short, yet a process
    started then (reproduce.py's next step) must meet SIGTERM at its default, not inherit it ignored."""
    main_thread_only()
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("this test process does not have the default SIGTERM")
    disposition = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGTERM).name)"]
    with runs.stop_signals():
        with pytest.raises(runs.Stopped):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the second: nothing happens here
        child = subprocess.run(disposition, capture_output=True, text=True, check=True).stdout.strip()
    assert child == "SIG_DFL"  # not SIG_IGN


# ---- files: a failed write, fsync before the rename

class FullDisk:
    """The temp file of runs.write_atomically on a disk with `free` bytes left: a write beyond them
    fails as a full disk's does."""

    def __init__(self, f, free, code):
        self.f, self.free, self.code = f, free, code

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if n > self.free:
            raise OSError(self.code, os.strerror(self.code))
        self.free -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def disk_full(monkeypatch, free=1000, code=errno.ENOSPC):
    """Every file runs.write_atomically opens from now on fails: after `free` bytes for a full disk,
    at once for a missing permission."""
    fdopen = os.fdopen

    def opened(fd, *args, **kwargs):
        if code == errno.ENOSPC:
            return FullDisk(fdopen(fd, *args, **kwargs), free, code)
        os.close(fd)
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fdopen", opened)


WRITERS = {"last.pt": lambda path: runs.atomic_save({"model": torch.zeros(1000)}, path),  # torch.save hides the OSError
           "metrics.json": lambda path: runs.atomic_save({"accuracy": 0.5, "rows": list(range(500))}, path),
           "grid.png": lambda path: runs.save_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8), path),
           "predictions.csv": lambda path: runs.atomic_write_text("path,style_1\r\n" * 100, path)}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES], ids=errno.errorcode.get)
@pytest.mark.parametrize("name", list(WRITERS))
def test_a_failed_write_names_the_file_and_the_reason_and_keeps_the_old_file(name, code, tmp_path, monkeypatch):
    path = str(tmp_path / name)
    WRITERS[name](path)
    before = open(path, "rb").read()
    with monkeypatch.context() as m:
        disk_full(m, code=code)
        with pytest.raises(config.UserError) as e:
            WRITERS[name](path)
    message = str(e.value)  # the file, the OS's reason, and that the old file is still there, in one line
    assert path in message and os.strerror(code) in message and f"previous {name} is unchanged" in message
    assert "\n" not in message
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == [name]  # no temp file left


def test_a_full_disk_mid_training_is_one_line_and_keeps_the_last_epoch(few, tmp_path, monkeypatch):
    out = tmp_path / "run"
    end_epoch = runs.Progress.end_epoch

    def then_disk_full(self, row, score, checkpoint):
        best = end_epoch(self, row, score, checkpoint)
        disk_full(monkeypatch)
        return best
    monkeypatch.setattr(runs.Progress, "end_epoch", then_disk_full)
    p = run_main("train.py", *small_config(few, out, epochs=2), check=False)
    assert_user_error(p, "train.py", f"cannot write {out}/", ".pt: No space left on device; the previous ")
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 0
    assert torch.load(out / "best.pt", weights_only=False)["epoch"] == 0
    assert sorted(os.listdir(out)) == ["best.pt", "curves.png", "last.pt", "run.lock", "train_config.json",
                                       "train_log.csv", "train_log.json"]  # no temp file


def test_the_data_is_on_disk_before_the_name_points_at_it(tmp_path, monkeypatch):
    """Issue 44: the atomic writer fsyncs the temp file before renaming it over the old one (else a
    power cut after the rename can leave an empty file under the name)."""
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append(("rename", os.stat(src).st_ino, str(dst)))
                        or replace(src, dst))
    for name, write in WRITERS.items():
        path = str(tmp_path / name)
        write(path)
        write(path)  # over an old file
        renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == path]
        assert len(renames) == 2, name
        for i in renames:
            assert ("fsync", events[i][1]) in events[:i], name  # this very file was flushed to disk first


# ---- one run per out_dir

def test_a_second_run_into_a_busy_out_dir_stops_with_one_line_and_readers_go_on(tiny_classifier, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier.out, run)
    busy = filelock.FileLock(str(run / "run.lock"))  # a run in progress holds it
    busy.acquire(timeout=0)
    try:
        before = snapshot(run)
        args = [a.replace(f"out_dir={tiny_classifier.out}", f"out_dir={run}") for a in tiny_classifier.args]
        p = run_main("train.py", *args, check=False)
        assert_user_error(p, "train.py", f"{run} is in use by another run (lock file {run}/run.lock): wait for it to "
                                         "end, or use another out_dir")
        assert snapshot(run) == before
        run_main("test.py", "--set", f"out_dir={run}")  # reading takes no lock
        assert (run / "test_metrics.json").exists()
    finally:
        busy.release()


RUN_FOR_THE_LOCK = """
import os, sys, time
sys.path.insert(0, {root!r})
import runs
from config import UserError
kill = os.kill
def slow_liveness_check(pid, sig):  # a loaded machine: time between looking at a lock and taking it over
    if sig == 0:
        time.sleep(0.5)
    return kill(pid, sig)
os.kill = slow_liveness_check
print("ready", flush=True)
while sys.argv[1] != "holder" and not os.path.exists({go!r}):
    time.sleep(0.005)
try:
    runs.lock_out_dir({out!r})
except UserError:
    print("lost", flush=True)
    sys.exit(0)
print("won", flush=True)
time.sleep(300 if sys.argv[1] == "holder" else 2)
"""


@pytest.mark.slow  # three processes
def test_a_killed_runs_lock_frees_itself_and_of_two_runs_racing_for_it_one_wins(tmp_path):
    """Issue 44: a run killed with SIGKILL (no chance to clean up) leaves no lock in the way; two runs
    starting together into that out_dir: exactly one takes it (the old lock file was taken over by both)."""
    script = tmp_path / "lock.py"
    script.write_text(RUN_FOR_THE_LOCK.format(root=ROOT, go=str(tmp_path / "go"), out=str(tmp_path / "run")))
    start = lambda name: subprocess.Popen([sys.executable, str(script), name], stdout=subprocess.PIPE, text=True,
                                          env=dict(os.environ, PYTHONPATH=ROOT))
    procs = [start("holder"), start("racer"), start("racer")]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
        assert procs[0].stdout.readline().strip() == "won"
        procs[0].kill()
        procs[0].wait()
        (tmp_path / "go").touch()
        results = sorted(p.communicate(timeout=60)[0].strip() for p in procs[1:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert results == ["lost", "won"]
