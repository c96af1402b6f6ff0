"""Shared fixtures: a small synthetic dataset in a temp folder, and a way to run the scripts."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sample_data  # noqa: E402
import wikiart  # noqa: E402

WIKIART16 = os.path.join(ROOT, "..", "shared", "data", "wikiart16")


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


def small_config(sample_root, out_dir, **extra):
    """--set arguments for a fast CPU run on the tiny sample."""
    keys = dict(train_dir=f"{sample_root}/train", test_dir=f"{sample_root}/test", image_size=32,
                cache_dir="", out_dir=str(out_dir), epochs=2, batch_size=16, resnet_width=8,
                device="cpu")
    keys.update(extra)
    return ["--set"] + [f"{k}={v}" for k, v in keys.items()]


def assert_real_picture(path, min_side=200):
    """The PNG exists, is a reasonable size and is not blank (many distinct colours, visible contrast)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    assert min(img.shape[:2]) >= min_side, f"{path} is only {img.shape}"
    assert img.std() > 10, f"{path} looks blank"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{path} has almost no colours"
