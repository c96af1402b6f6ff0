"""Shared fixtures and helpers: the tiny synthetic dataset, ways to run the scripts (as a subprocess, or
in-process through runs.cli as the command line would), what a user's slip must look like (one line,
status 2, nothing written), and the tiny trained models the tests share: one classifier, one autoencoder
(with its codes) and one style-transfer run."""
import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import runs  # noqa: E402
import sample_data  # noqa: E402

WIKIART16 = os.path.join(ROOT, "..", "shared", "data", "wikiart16")

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: N workers share the cores, one thread each
    os.environ["OMP_NUM_THREADS"] = "1"  # (and so do the scripts they start)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Scripts run in-process with threads=1 (bit-identical results on any machine) set torch's thread
    count for the whole process: give every test the count it started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """A tiny version of the built-in sample: 27 styles, 32 px, about 200 train / 60 test images."""
    root = str(tmp_path_factory.mktemp("sample") / "sample")
    sample_data.make_sample(root, size=32, scale=0.03)
    return root


def run_script(script, *args, cwd=None, check=True, timeout=600):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd or ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def run_main(script, *args, check=True):
    """Run a script in the test process, exactly as `python script args` would (runs.cli(main): a user
    error is one line on stderr and exit status 2), without starting Python and torch again.
    Returns (returncode, stdout, stderr) like a CompletedProcess."""
    module = importlib.import_module(script[:-3])
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, [script, *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if script == "sample_data.py":  # no runs.cli: it only has usage errors (argparse)
                module.main()
            else:
                runs.cli(module.main)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    p = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({code}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def small_config(sample_root, out_dir, **extra):
    """--set arguments for a fast CPU run on the tiny sample."""
    keys = dict(train_dir=f"{sample_root}/train", test_dir=f"{sample_root}/test", image_size=32,
                cache_dir="", out_dir=str(out_dir), epochs=2, batch_size=16, resnet_width=8,
                device="cpu")
    keys.update(extra)
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


def ae_args(sample_root, out_dir, **extra):
    """--set arguments for a fast autoencoder run on the tiny 32 px sample."""
    keys = {"train_dir": f"{sample_root}/train", "test_dir": f"{sample_root}/test", "image_size": 32,
            "cache_dir": "", "device": "cpu", "autoencoder.out_dir": str(out_dir), "autoencoder.epochs": 3,
            "autoencoder.batch_size": 16, "autoencoder.width": 8, "autoencoder.train_crop": 0}
    keys.update(extra)
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


def snapshot(root):
    """Every file and folder under root (empty folders too) with size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns) if name in filenames else "dir"
    return found


def assert_user_error(p, script, *phrases):
    """Exit status 2, no traceback, and the error is one line (the last on stderr; before it only
    progress bars and notes) holding every phrase. Returns that line."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"{script}: error: "), p.stderr[-2000:]
    assert not [line for line in lines[:-1] if ": error:" in line], p.stderr[-2000:]  # one error, said once
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, lines[-1])
    return lines[-1]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A clean current folder for a user's command: default outputs (out/, data/sample, cache/) land
    here, so 'nothing written' is: it is as it was."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def small_folder(sample_root, root, styles=("Impressionism", "Realism", "Expressionism"), n=18, test_n=None):
    """<root>/{train,test}/<Style>/ with the first n training images of each style (and test_n test
    images) of the tiny sample."""
    for split, count in (("train", n), ("test", test_n)):
        for style in styles if count else ():
            os.makedirs(root / split / style, exist_ok=True)
            for name in sorted(os.listdir(f"{sample_root}/{split}/{style}"))[:count]:
                shutil.copy(f"{sample_root}/{split}/{style}/{name}", root / split / style / name)
    return root


def assert_same_training(straight, resumed, epochs):
    """Two train.py last.pt files hold the same training: the last epoch, every weight, the loss history
    (an interrupted run, resumed, equals one that ran straight through)."""
    a, b = (torch.load(p, weights_only=False) for p in (straight, resumed))
    assert a["epoch"] == b["epoch"] == epochs - 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [round(h["train_loss"], 6) for h in a["history"]] == [round(h["train_loss"], 6) for h in b["history"]]


def assert_real_picture(path, min_side=200):
    """The PNG exists, is a reasonable size and is not blank (many distinct colours, visible contrast)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    assert min(img.shape[:2]) >= min_side, f"{path} is only {img.shape}"
    assert img.std() > 10, f"{path} looks blank"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{path} has almost no colours"


@pytest.fixture(scope="session")
def tiny_classifier(sample_root, tmp_path_factory):
    """train.py on the tiny sample: small_config with `keys` (4 epochs without augmentation, one
    thread: bit-identical anywhere, and enough to rank the big styles of their own training images
    first). Tests add files to its folder (test.py's results); copy it before changing what is there."""
    out = tmp_path_factory.mktemp("classifier") / "run"
    keys = dict(epochs=4, augment="false", threads=1)
    threads = torch.get_num_threads()
    p = run_main("train.py", *small_config(sample_root, out, **keys))
    torch.set_num_threads(threads)
    return SimpleNamespace(out=out, keys=keys, args=small_config(sample_root, out, **keys), stdout=p.stdout)


@pytest.fixture(scope="session")
def tiny_autoencoder(sample_root, tmp_path_factory):
    """autoencoder.py for one epoch on the tiny sample (ae_args): its codes feed cluster.py, its encoder
    style_transfer.py. Copy the folder before changing it."""
    out = tmp_path_factory.mktemp("autoencoder") / "ae"
    args = ae_args(sample_root, out, **{"autoencoder.epochs": 1})
    p = run_main("autoencoder.py", *args)
    return SimpleNamespace(out=out, args=args, stdout=p.stdout)
