"""The cases of issue 13's misuse list that concern style_transfer.py (the rest lives beside what it
tests: the one-line table in test_runs.py, config slips in test_config.py, the scripts' own in their tests).
"""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import assert_user_error, run_main, snapshot


@pytest.mark.slow
def test_9_style_transfer_evaluates_one_test_image(style_transfer_run, sample_root, tmp_path):
    """--evaluate with a single test image: the gap measures are nan (no gap to close), no
    ZeroDivisionError; the trained models are reused from a copy of the run."""
    one = tmp_path / "one" / "Impressionism"
    one.mkdir(parents=True)
    first = sorted(os.listdir(f"{sample_root}/test/Impressionism"))[0]
    shutil.copy(f"{sample_root}/test/Impressionism/{first}", one)
    copy = tmp_path / "st"
    shutil.copytree(style_transfer_run.out, copy)
    args = [a.replace(f"style_transfer.out_dir={style_transfer_run.out}", f"style_transfer.out_dir={copy}")
            .replace(f"test_dir={sample_root}/test", f"test_dir={one.parent}") for a in style_transfer_run.args]
    p = run_main("style_transfer.py", *args)
    assert "residual: reusing" in p.stdout and "judge: reusing" in p.stdout
    ev = json.load(open(copy / "evaluation.json"))
    assert ev["n_images"] == 1 and ev["n_outputs"] == ev["styles"] - 1
    assert np.isnan(ev["residual"]["texture_gap_closed"]) and np.isnan(ev["identity"]["colour_gap_closed"])
    assert ev["identity"]["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_style_transfer_py_bad_mode_and_nothing_to_resume(tmp_path, user_dir):
    p = run_main("style_transfer.py", "--set", "style_transfer.mode=fancy", check=False)
    assert_user_error(p, "style_transfer.py", "must be one of residual, naive")
    p = run_main("style_transfer.py", "--resume", "--set", "style_transfer.mode=naive",
                 f"style_transfer.out_dir={tmp_path / 'st'}", check=False)
    assert_user_error(p, "style_transfer.py", f"--resume: nothing to resume: no {tmp_path}/st/naive/last.pt")
    assert not (tmp_path / "st").exists() and snapshot(user_dir) == {}
