"""Issue 13: misuse gets one clear line on stderr and exit status 2, never a traceback, and leaves the
disk as it was. One test per item of the issue (items 1-11), then issue 31's (SIGTERM and SIGUSR1 with
item 7; a full disk or read-only folder, 12; two runs into one out_dir, 13), then the other scripts'
slips. The table of what each case prints is docs/misuse.md; keep the two in step.

The scripts run in-process through runs.cli, exactly as `python script ...` runs them (run_main);
a subprocess only where the process itself matters (the exit status of a real run, Ctrl-C, a second
run into a locked out_dir)."""
import ast
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import config
import runs
import wikiart
from conftest import ROOT, ae_args, assert_same_training, run_main, run_script, small_config

SCRIPTS = ["train.py", "test.py", "autoencoder.py", "cluster.py", "style_transfer.py", "compare_balance.py",
           "bench.py", "prepare_data.py", "sample_data.py"]
CONFIG_SCRIPTS = SCRIPTS[:6]


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
    progress bars) holding every phrase."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"{script}: error: "), p.stderr[-2000:]
    assert not [line for line in lines[:-1] if "error" in line.lower()], p.stderr[-2000:]
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, lines[-1])
    return lines[-1]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A clean current folder for a user's command: default outputs (out/, data/sample, cache/) land
    here, so 'nothing written' is: it is still empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def edited_config(tmp_path, monkeypatch):
    """config.json as a user edited it: edited_config(old, new) writes a copy with `old` replaced
    and makes the scripts read it instead of the repository's."""
    original = config.DEFAULT_CONFIG

    def edit(old, new):
        text = open(original).read()
        assert old in text
        path = tmp_path / "edited" / "config.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text.replace(old, new))
        monkeypatch.setattr(config, "DEFAULT_CONFIG", str(path))
        monkeypatch.setattr(config, "_noted_missing", set())
        return path
    return edit


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst, snapshot(dst)


def small_folder(sample_root, root, styles=("Impressionism", "Realism", "Expressionism"), n=18, test_n=None):
    """<root>/{train,test}/<Style>/ with n training images per style (and test_n test images) taken
    from the tiny sample."""
    for split, count in (("train", n), ("test", test_n)):
        for style in styles if count else ():
            os.makedirs(root / split / style, exist_ok=True)
            for name in sorted(os.listdir(f"{sample_root}/{split}/{style}"))[:count]:
                shutil.copy(f"{sample_root}/{split}/{style}/{name}", root / split / style / name)
    return root


# ---- issue 13, items 1-11

def test_1_misspelt_key_in_config_json_says_did_you_mean(edited_config, user_dir):
    edited_config('"epochs": 12', '"epoch": 12')
    p = run_main("train.py", check=False)
    line = assert_user_error(p, "train.py", "config.json: unknown config key 'epoch'. did you mean 'epochs'?")
    listed = line.split("Keys of the top level: ")[1].split(", ")
    assert "epochs" in listed and "epoch" not in listed  # the schema is in code: the typo is not a key
    assert listed == list(config.SCHEMA[""]) and len(listed) < 40  # that section's keys, not all ~90
    edited_config('"num_show": 6', '"num_shw": 6')  # a key of a section
    p = run_main("autoencoder.py", check=False)
    line = assert_user_error(p, "autoencoder.py", "unknown config key 'autoencoder.num_shw'. "
                             "did you mean 'autoencoder.num_show'?", "Keys of section 'autoencoder': mode,")
    assert "seed" not in line and "tsne_points" not in line
    edited_config('"cluster": {', '"clustr": {')  # a misspelt section
    p = run_main("cluster.py", check=False)
    assert_user_error(p, "cluster.py", "unknown config key 'clustr'. did you mean the section 'cluster'?")
    assert snapshot(user_dir) == {}


def test_1_key_missing_from_config_json_falls_back_to_its_default_noted_once(edited_config, user_dir):
    path = edited_config('  "epochs": 12,\n', "")
    note = "note: config.json has no epochs; using the default (12)"
    first = run_main("train.py", "--set", "train_dir=missing", check=False)
    assert first.stderr.count(note) == 1
    assert_user_error(first, "train.py", "data folder not found: 'missing'")
    second = run_main("train.py", "--set", "train_dir=missing", check=False)
    assert note not in second.stderr  # once per process
    assert config.load_config([str(path)])["epochs"] == config.SCHEMA[""]["epochs"][0] == 12
    assert snapshot(user_dir) == {}


def test_2_json_syntax_error_names_the_file_line_and_column(edited_config, user_dir, tmp_path):
    path = edited_config('"epochs": 12,', '"epochs": 12')
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as e:
        where = f"config.json, line {e.lineno}, column {e.colno}: not valid JSON: Expecting ',' delimiter"
    p = run_main("train.py", check=False)
    assert_user_error(p, "train.py", where)
    edited_config("{", "{")  # config.json mended; now the same slips in a -c file
    bad = tmp_path / "recipe.json"
    bad.write_text('{"epochs": 3,}')
    assert_user_error(run_main("train.py", "-c", str(bad), check=False), "train.py",
                      "recipe.json, line 1, column 14: not valid JSON")
    bad.write_text("[1, 2]")
    assert_user_error(run_main("train.py", "-c", str(bad), check=False), "train.py",
                      'a config file holds one JSON object {"key": value, ...}, not a list')
    bad.write_text('{"autoencoder": 3}')
    assert_user_error(run_main("train.py", "-c", str(bad), check=False), "train.py",
                      "'autoencoder' is a section", '{"mode": ...}')
    assert_user_error(run_main("train.py", "-c", str(tmp_path / "nope.json"), check=False), "train.py",
                      "config file not found")
    assert snapshot(user_dir) == {}


def test_3_resume_after_changing_what_the_model_depends_on_says_why(sample_root, tiny_classifier, tmp_path, user_dir):
    run, before = copy_run(tiny_classifier.out, tmp_path / "run")
    args = small_config(sample_root, run)
    last = f"{run}/last.pt"
    for change, says in [("mode=base", 'was trained with mode="resnet"; the config says "base"'),
                         ("image_size=16", "was trained with image_size=32; the config says 16"),
                         ("resnet_width=16", "was trained with resnet_width=8; the config says 16"),
                         ("resnet_blocks=[1,1,1,2]", "was trained with resnet_blocks=[1, 1, 1, 1]; the config says [1, 1, 1, 2]")]:
        p = run_main("train.py", "--resume", *args, change, check=False)
        assert_user_error(p, "train.py", f"--resume: {last} {says}", "change it back, or use another out_dir")
    few = small_folder(sample_root, tmp_path / "few", styles=("Baroque", "Cubism"), n=10)
    p = run_main("train.py", "--resume", *args, f"train_dir={few}/train", check=False)
    assert_user_error(p, "train.py", f"--resume: {last} was trained on the styles Abstract_Expressionism,",
                      "holds Baroque, Cubism: use another out_dir")
    assert snapshot(run) == before
    fresh = tmp_path / "fresh"
    p = run_main("train.py", "--resume", *small_config(sample_root, fresh), check=False)
    assert_user_error(p, "train.py", f"--resume: nothing to resume: no {fresh}/last.pt", "run without --resume")
    assert not fresh.exists() and snapshot(user_dir) == {}


def test_4_a_file_that_is_not_a_checkpoint_says_what_was_expected(sample_root, tiny_classifier, tmp_path, user_dir):
    expected = "is not a train.py checkpoint (out_dir/best.pt or last.pt)"
    files = tmp_path / "files"
    files.mkdir()
    (files / "notes.pt").write_text("hello")
    shutil.copy(next((tiny_classifier.out).glob("*.png")), files / "picture.pt")
    torch.save({"a": 1}, files / "dict.pt")
    ae = wikiart.make_autoencoder(config.defaults()["autoencoder"], 32)  # what autoencoder.py saves
    torch.save({"model": ae.state_dict(), "config": config.defaults(), "class_to_idx": {"Cubism": 0}, "epoch": 0},
               files / "autoencoder_best.pt")
    before = snapshot(files)
    for name, says in [("notes.pt", "cannot be read as a PyTorch checkpoint: UnpicklingError"),
                       ("picture.pt", "cannot be read as a PyTorch checkpoint"), ("dict.pt", "(no model, config,"),
                       ("autoencoder_best.pt", "(no label_counts in it)"), ("", "IsADirectoryError")]:
        p = run_main("test.py", "--checkpoint", str(files / name), check=False)
        assert_user_error(p, "test.py", f"{files / name} {expected}", says)
    # a checkpoint whose weights do not fit the model its config describes
    ckpt = torch.load(tiny_classifier.out / "best.pt", weights_only=False)
    ckpt["config"]["resnet_width"] = 16
    torch.save(ckpt, files / "edited.pt")
    p = run_main("test.py", "--checkpoint", str(files / "edited.pt"), check=False)
    assert_user_error(p, "test.py", f"the weights in {files / 'edited.pt'} do not fit a ResNet built from its config")
    p = run_main("test.py", "--checkpoint", str(files / "missing.pt"), check=False)
    assert_user_error(p, "test.py", f"no checkpoint at {files / 'missing.pt'}: train one first (python train.py)")
    files_after = snapshot(files)
    files_after.pop("edited.pt")
    assert files_after == before and snapshot(user_dir) == {}


def test_5_a_test_style_the_model_never_saw(sample_root, tiny_classifier, tmp_path, user_dir):
    run, before = copy_run(tiny_classifier.out, tmp_path / "run")
    shutil.copytree(f"{sample_root}/test/Cubism", tmp_path / "mine" / "Vaporwave")
    shutil.copytree(f"{sample_root}/test/Baroque", tmp_path / "mine" / "Baroque")
    p = run_main("test.py", "--set", f"out_dir={run}", f"test_dir={tmp_path / 'mine'}", check=False)
    assert_user_error(p, "test.py", f"style(s) Vaporwave in '{tmp_path / 'mine'}' were not in the training set",
                      "The model knows: Abstract_Expressionism, Action_painting")
    assert snapshot(run) == before and snapshot(user_dir) == {}  # no test_metrics.json, no figures


@pytest.mark.parametrize("change,says", [
    ("epochs=-1", "'epochs' must be > 0, got -1"), ("epochs=0", "'epochs' must be > 0, got 0"),
    ("lr=-0.1", "'lr' must be > 0, got -0.1"), ("batch_size=0", "'batch_size' must be > 0, got 0"),
    ("val_fraction=1.5", "'val_fraction' must be in [0, 1), got 1.5"),
    ("autoencoder.epochs=-1", "'autoencoder.epochs' must be > 0")])
def test_6_out_of_range_values_stop_before_anything_is_written(change, says, sample_root, tmp_path, user_dir):
    p = run_main("train.py", *small_config(sample_root, tmp_path / "run", **dict([change.split("=")])),
                 check=False)
    assert_user_error(p, "train.py", f"--set: config key {says}")
    assert not (tmp_path / "run").exists() and snapshot(user_dir) == {}


def test_6_out_of_range_value_in_config_json(edited_config, user_dir):
    edited_config('"lr": 0.003', '"lr": -0.003')
    assert_user_error(run_main("train.py", check=False), "train.py", "config.json: config key 'lr' must be > 0, got -0.003")
    assert snapshot(user_dir) == {}


def interrupt_at(monkeypatch, epoch):
    """Ctrl-C right after `epoch` has been saved (epoch 0: in the first training step)."""
    if epoch == 0:
        def first_step(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(wikiart, "augment", first_step)
        return
    end_epoch = runs.Progress.end_epoch

    def then_interrupt(self, row, score, checkpoint):
        best = end_epoch(self, row, score, checkpoint)
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
        return best
    monkeypatch.setattr(runs.Progress, "end_epoch", then_interrupt)


def continue_command(stderr):
    """The argv of the 'continue with: python X ...' an interrupted run printed."""
    words = shlex.split(stderr.split("continue with: ", 1)[1].splitlines()[0])
    assert words[0] == "python"
    return words[1], words[2:]


def test_7_ctrl_c_says_what_was_saved_and_how_to_continue(sample_root, tmp_path, monkeypatch):
    data = small_folder(sample_root, tmp_path / "mine", n=18)  # 48 training images: 3 steps an epoch
    out = tmp_path / "run"
    args = small_config(sample_root, out, epochs=3, train_dir=data / "train")
    with monkeypatch.context() as m:
        interrupt_at(m, 0)
        p = run_main("train.py", *args, check=False)
    assert p.returncode == 130 and "Traceback" not in p.stderr
    assert "interrupted before the first epoch finished: nothing was saved" in p.stderr
    assert not (out / "last.pt").exists()
    with monkeypatch.context() as m:
        interrupt_at(m, 1)
        p = run_main("train.py", *args, check=False)
    assert p.returncode == 130 and "Traceback" not in p.stderr
    assert f"interrupted: epoch 1 is the last finished one, saved in {out}/last.pt" in p.stderr
    script, again = continue_command(p.stderr)
    assert (script, again) == ("train.py", [*args, "--resume"])
    with monkeypatch.context() as m:  # the resumed run is interrupted after its first epoch, epoch 2
        interrupt_at(m, 2)
        p = run_main(script, *again, check=False)
    assert "resumed from" in p.stdout and "after epoch 1" in p.stdout
    assert "interrupted: epoch 2 is the last finished one" in p.stderr
    p = run_main(script, *again)
    assert "after epoch 2" in p.stdout
    assert [h["epoch"] for h in json.loads((out / "train_log.json").read_text())] == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=["SIGINT", "SIGTERM", "SIGUSR1"])
def test_7_ctrl_c_while_an_epoch_is_written_waits_for_the_files(sig, tmp_path):
    """A Ctrl-C (or SIGTERM, SIGUSR1: issue 31) that comes while best.pt/last.pt/curves are written is
    raised once they are all written, with its exit status."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the runner set
    done = []
    try:
        with runs.stop_signals(), pytest.raises(KeyboardInterrupt) as e:  # stop_signals: as runs.cli runs main
            with runs.ctrl_c_held():
                signal.raise_signal(sig)  # delivered now, in this thread (os.kill may land later)
                runs.atomic_write_text("whole", str(tmp_path / "f.txt"))
                done.append(True)
        assert runs.stop_reason(e.value)[1] == 128 + sig
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # runs.cli leaves the process as it found it
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done and (tmp_path / "f.txt").read_text() == "whole"


@pytest.mark.slow
@pytest.mark.parametrize("sig, says", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_7_ctrl_c_of_a_real_run(sig, says, sample_root, tmp_path):
    """SIGINT (SIGTERM: `kill`, a scheduler) to `python train.py` once epoch 1 is in last.pt: exit
    status 130 (143), no traceback, the epoch and the command that continues; that command resumes
    after epoch 1."""
    out = tmp_path / "run"
    args = small_config(sample_root, out, epochs=50, batch_size=64)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    # a shell's background job inherits SIGINT ignored (and Python then never raises KeyboardInterrupt):
    # give the child the default disposition, as a terminal's Ctrl-C meets it
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and "Traceback" not in stderr, stderr[-2000:]
    saved = torch.load(out / "last.pt", weights_only=False)["epoch"] + 1  # usually 1; later if the signal came late
    assert f"{says}: epoch {saved} is the last finished one, saved in {out}/last.pt" in stderr
    assert not (out / runs.LOCK).exists()
    script, again = continue_command(stderr)
    assert (script, again) == ("train.py", [*args, "--resume"])
    p = run_main(script, *again[:-1], "stop_after=1", "--resume")  # that command, for one more epoch
    assert f"after epoch {saved}" in p.stdout


@pytest.mark.slow
def test_7_ctrl_c_inside_compare_balance_gives_the_command_that_continues(sample_root, tmp_path, monkeypatch):
    args = ["--options", "none", *small_config(sample_root, tmp_path / "cmp", batch_size=64)]
    with monkeypatch.context() as m:
        interrupt_at(m, 1)
        p = run_main("compare_balance.py", *args, check=False)
    assert p.returncode == 130 and "Traceback" not in p.stderr
    assert "interrupted: epoch 1 is the last finished one" in p.stderr
    assert continue_command(p.stderr) == ("compare_balance.py", args)  # re-running it continues
    p = run_main("compare_balance.py", *args)
    assert "after epoch 1" in p.stdout and (tmp_path / "cmp" / "balance_comparison.md").exists()


def test_7_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(sample_root, tiny_classifier, tmp_path,
                                                                     monkeypatch):
    """Issue 31: SIGTERM (`kill`, a scheduler's "stop now"), sent from another thread in the third step
    of epoch 2, ends the run as Ctrl-C does: status 143, the saved epoch and the command that continues,
    the lock gone. That command ends bit-identical to the same epochs run straight through."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    out = tmp_path / "run"
    args = small_config(sample_root, out, **tiny_classifier.keys)
    optimizer_step, steps = runs.optimizer_step, []

    def step_then_sigterm(*a, **kw):
        optimizer_step(*a, **kw)
        steps.append((out / "last.pt").exists())
        if sum(steps) == 3:  # the third step after epoch 1 was saved
            kill = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            kill.start()
            kill.join()
    with monkeypatch.context() as m:
        m.setattr(runs, "optimizer_step", step_then_sigterm)
        p = run_main("train.py", *args, check=False)
    assert p.returncode == 143 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"stopped by SIGTERM: epoch 1 is the last finished one, saved in {out}/last.pt" in p.stderr
    assert sum(steps) == 3 and not (out / runs.LOCK).exists()  # stopped at once, mid-epoch
    script, again = continue_command(p.stderr)
    assert (script, again) == ("train.py", [*args, "--resume"])
    p = run_main(script, *again)
    assert "after epoch 1" in p.stdout
    assert_same_training(tiny_classifier.out / "last.pt", out / "last.pt", tiny_classifier.keys["epochs"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_7_sigterm_or_sigusr1_before_the_first_epoch_finished(sig, sample_root, tmp_path, monkeypatch):
    """SIGUSR1 (a cluster's "time is nearly up") too: status 128 + the signal, what was saved (nothing)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    monkeypatch.setattr(wikiart, "augment", lambda *a, **kw: signal.raise_signal(sig))  # in the first step
    p = run_main("train.py", *small_config(sample_root, tmp_path / "run"), check=False)
    assert p.returncode == 128 + sig and "Traceback" not in p.stderr
    name = signal.Signals(sig).name
    assert f"stopped by {name} before the first epoch finished: nothing was saved" in p.stderr


def test_8_next_step_commands_repeat_the_users_config(sample_root, tmp_path, user_dir):
    argv = ["-c", "recipe.json", "--set", "autoencoder.out_dir=out/ae_mini", "image_size=32", "--resume"]
    assert runs.config_command("cluster.py", argv) == \
        "python cluster.py -c recipe.json --set autoencoder.out_dir=out/ae_mini image_size=32"
    assert runs.config_command("cluster.py", argv, ["image_size=64", "cluster.codes_dir=x"]) == \
        "python cluster.py -c recipe.json --set autoencoder.out_dir=out/ae_mini image_size=64 cluster.codes_dir=x"
    assert runs.config_command("test.py", ["--resume"]) == "python test.py"
    # 'run X first' messages give the command that writes what is missing, with the user's settings
    data = [f"train_dir={sample_root}/train", f"test_dir={sample_root}/test", "image_size=32", "cache_dir="]
    p = run_main("cluster.py", "--set", *data, "cluster.codes_dir=out/ae_mini", check=False)
    assert_user_error(p, "cluster.py", "no codes at out/ae_mini/codes_test.npz; run autoencoder.py first "
                      f"(python autoencoder.py --set {' '.join(data)} cluster.codes_dir=out/ae_mini "
                      "autoencoder.out_dir=out/ae_mini)")
    p = run_main("test.py", "--set", "out_dir=out/mine", check=False)
    assert_user_error(p, "test.py", "no checkpoint at out/mine/best.pt: train one first (python train.py --set out_dir=out/mine)")
    assert snapshot(user_dir) == {}
    # (that autoencoder.py's printed `next:` command runs cluster.py as printed: test_scripts.py)


def test_9_a_54_image_training_folder_trains_with_a_smaller_batch(sample_root, tmp_path, user_dir):
    data = small_folder(sample_root, tmp_path / "mine", n=18)  # 54 training images, 48 after validation
    small_folder(sample_root, tmp_path / "mine", styles=["Impressionism"], n=0, test_n=1)  # and one test image
    where = [f"train_dir={data}/train", f"test_dir={data}/test", "image_size=32", "cache_dir=", "device=cpu"]
    with pytest.warns(UserWarning, match="batch_size 64 is larger than the 48 training images; using 48"):
        run_main("train.py", "--set", *where, f"out_dir={tmp_path / 'run'}", "batch_size=64", "epochs=1",
                 "resnet_width=8")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 0
    with pytest.warns(UserWarning, match="autoencoder.batch_size 64 is larger than the 48 training images; using 48"):
        run_main("autoencoder.py", "--set", *where, f"autoencoder.out_dir={tmp_path / 'ae'}",
                 "autoencoder.batch_size=64", "autoencoder.epochs=1", "autoencoder.width=8",
                 "autoencoder.train_crop=0")
    assert np.load(tmp_path / "ae" / "codes_test.npz")["codes"].shape[0] == 1
    # one test image: too few to cluster, said so
    p = run_main("cluster.py", "--set", *where, f"cluster.codes_dir={tmp_path / 'ae'}",
                 f"cluster.out_dir={tmp_path / 'cl'}", check=False)
    assert_user_error(p, "cluster.py", "codes_test.npz holds 1 image(s): clustering into k=1 groups needs more than 2")
    assert not (tmp_path / "cl").exists() and snapshot(user_dir) == {}


@pytest.mark.parametrize("script,args,says", [
    ("train.py", ["--set", "train_dir=missing"], "data folder not found: 'missing'"),
    ("autoencoder.py", ["--set", "train_dir=missing", "test_dir=missing"], "data folder not found"),
    ("cluster.py", [], "no codes at out/autoencoder/codes_test.npz"),
    ("test.py", [], "no checkpoint at out/classifier/best.pt"),
    ("compare_balance.py", ["--options", "none", "--set", "train_dir=missing"], "data folder not found"),
    ("bench.py", ["missing", "--size", "32"], "data folder not found"),
    ("bench.py", ["src", "--size", "32", "--threads", "0"], "--threads must be at least 1"),
    ("prepare_data.py", ["src", "out/prepared", "--workers", "0"], "--workers must be at least 1"),
])
def test_10_failed_runs_leave_no_folders(script, args, says, user_dir):
    (user_dir / "src" / "Cubism").mkdir(parents=True)
    (user_dir / "src" / "Cubism" / "a.png").write_bytes(b"")
    before = snapshot(user_dir)
    assert_user_error(run_main(script, *args, check=False), script, says)
    assert snapshot(user_dir) == before  # no out/..., no data/sample, no cache/


@pytest.mark.parametrize("script", SCRIPTS)
def test_11_help_shows_the_docstring_as_written(script):
    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, script)).read()), clean=False)
    p = run_main(script, "-h", check=False)
    assert p.returncode == 0
    text = "\n".join(line.rstrip() for line in doc.strip("\n").splitlines())
    assert text in "\n".join(line.rstrip() for line in p.stdout.splitlines())  # every line, aligned, in order
    if script in CONFIG_SCRIPTS:
        p = run_main(script, "--help-config", check=False)
        assert p.returncode == 0 and "autoencoder.out_dir" in p.stdout and "[style_transfer]" in p.stdout


# ---- issue 31: a full disk or a read-only folder (item 12), two runs into one out_dir (item 13)


class FullDisk:
    """The temp file of runs.write_atomically on a disk with `free` bytes left: a write beyond them
    fails as a full disk's (or quota's) does."""

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
    """Every file runs.write_atomically opens from now on fails: after `free` bytes for a full disk or
    quota, at once for a read-only folder or a missing permission."""
    fdopen = os.fdopen

    def opened(fd, *args, **kwargs):
        if code in (errno.ENOSPC, errno.EDQUOT):
            return FullDisk(fdopen(fd, *args, **kwargs), free, code)
        os.close(fd)
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fdopen", opened)


def test_12_a_full_disk_mid_training_keeps_last_pt_and_says_what_the_write_needed(sample_root, tmp_path,
                                                                                 monkeypatch):
    """Issue 31: the disk fills after epoch 1: one line naming the file, the reason and the size the
    write needed, exit status 2; last.pt (and best.pt) of epoch 1 stay whole and loadable, no temp file."""
    out = tmp_path / "run"
    end_epoch = runs.Progress.end_epoch

    def then_disk_full(self, row, score, checkpoint):
        best = end_epoch(self, row, score, checkpoint)
        disk_full(monkeypatch)
        return best
    with monkeypatch.context() as m:
        m.setattr(runs.Progress, "end_epoch", then_disk_full)
        p = run_main("train.py", *small_config(sample_root, out, epochs=3), check=False)
    line = assert_user_error(p, "train.py", f"cannot write {out}/", ".pt: No space left on device (the write needed ",
                             "free there); the previous ")
    number, unit = re.search(r"needed ([\d.]+) (MB|bytes)", line).groups()
    assert abs(float(number) * (1e6 if unit == "MB" else 1) / os.path.getsize(out / "last.pt") - 1) < 0.05
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 0
    assert torch.load(out / "best.pt", weights_only=False)["epoch"] == 0
    assert sorted(os.listdir(out)) == ["best.pt", "curves.png", "last.pt", "train_config.json", "train_log.csv",
                                       "train_log.json"]  # no temp file, no lock


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM],
                         ids=lambda code: errno.errorcode[code])
@pytest.mark.parametrize("name", ["last.pt", "metrics.json", "grid.png", "predictions.csv"])
def test_12_every_kind_of_output_fails_in_one_line_and_keeps_its_previous_version(name, code, tmp_path,
                                                                                  monkeypatch):
    path = str(tmp_path / name)

    def write_csv():
        with runs.atomic_file(path, "w") as f:
            f.write("path,style_1\r\na.jpg,Baroque\r\n")
    write = {"last.pt": lambda: runs.atomic_save({"model": torch.zeros(100)}, path),
             "metrics.json": lambda: runs.atomic_save({"accuracy": 0.5}, path),
             "grid.png": lambda: runs.save_png(np.zeros((8, 8, 3), np.uint8), path),
             "predictions.csv": write_csv}[name]
    write()
    before = open(path, "rb").read()
    with monkeypatch.context() as m:
        disk_full(m, free=10, code=code)
        with pytest.raises(config.UserError) as e:
            write()
    needed = f" (the write needed {len(before)} bytes" if code in (errno.ENOSPC, errno.EDQUOT) else ""
    assert str(e.value).startswith(f"cannot write {path}: {os.strerror(code)}{needed}"), str(e.value)
    assert str(e.value).endswith(f"; the previous {name} is unchanged") and "\n" not in str(e.value)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == [name]  # no temp file left


def test_12_a_read_only_out_dir_is_one_line(sample_root, tmp_path, monkeypatch):
    """out_dir cannot be made: one line, whichever write meets it first (outside the atomic writers:
    runs.cli says it)."""
    makedirs = os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, "makedirs", read_only)
    p = run_main("train.py", *small_config(sample_root, tmp_path / "ro" / "run"), check=False)
    assert_user_error(p, "train.py", f"{tmp_path}/ro/run", ": Read-only file system")


def test_13_a_second_run_into_a_locked_out_dir_stops_at_once(sample_root, tmp_path):
    """Issue 31: while one run (this process) holds out_dir, `python train.py` into it stops before any
    work with one line naming the running PID and the out_dir; the first run's lock goes when it ends."""
    out = tmp_path / "run"
    runs.lock_out_dir(str(out))
    try:
        assert os.listdir(out) == [runs.LOCK]
        p = run_script("train.py", *small_config(sample_root, out, epochs=1), cwd=tmp_path, check=False)
        assert os.listdir(out) == [runs.LOCK]  # the second run wrote nothing
    finally:
        runs.release_locks()
    assert_user_error(p, "train.py", f"{out} is in use by another run (process {os.getpid()} on this machine, "
                                     f"lock file {out}/{runs.LOCK}): wait for it to end, or use another out_dir")
    assert p.stdout == ""  # before the data was read
    assert not out.exists()  # the lock made the folder and nothing else was written: it goes too


def test_13_a_stale_lock_is_taken_over_and_read_only_uses_take_none(sample_root, tmp_path):
    """A lock left by a process that is no longer running (killed) is taken over with a note; test.py
    only reads a locked out_dir; a lock of a live process of another machine cannot be checked: it stops."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.LOCK).write_text(f"{dead.pid} {socket.gethostname()}\n")
    p = run_main("train.py", *small_config(sample_root, out, epochs=1, threads=1))
    assert f"note: {out}/{runs.LOCK} was left by process {dead.pid}, which is no longer running" in p.stderr
    assert (out / "last.pt").exists() and not (out / runs.LOCK).exists()
    (out / runs.LOCK).write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live run
    run_main("test.py", "--set", f"out_dir={out}")
    (out / runs.LOCK).write_text(f"{dead.pid} gpu-node-7\n")
    p = run_main("train.py", *small_config(sample_root, out, epochs=1, threads=1), check=False)
    assert_user_error(p, "train.py", f"(process {dead.pid} on gpu-node-7, lock file",
                      "if that run has ended, delete the lock file")


# ---- the other scripts' slips (and the existing checks of train.py's)

def test_train_py_config_and_device_errors(sample_root, tmp_path, user_dir):
    p = run_main("train.py", "--set", "lerning_rate=0.1", check=False)
    assert_user_error(p, "train.py", "lerning_rate", "lr")
    p = run_main("train.py", "--set", "epoch=3", check=False)
    assert_user_error(p, "train.py", "unknown config key 'epoch'", "epochs", "batch_size")
    p = run_main("train.py", "--set", "epochs=three", check=False)
    assert_user_error(p, "train.py", "'epochs' must be int")
    cfg = tmp_path / "my.json"
    cfg.write_text(json.dumps({"autoencoder": {"epoch": 2}}))
    p = run_main("train.py", "-c", str(cfg), check=False)
    assert_user_error(p, "train.py", "autoencoder.epoch'", "autoencoder.epochs")
    if not torch.cuda.is_available():
        p = run_main("train.py", *small_config(sample_root, tmp_path, device="cuda:7"), check=False)
        assert_user_error(p, "train.py", "CUDA is not available")
    p = run_main("train.py", "--set", f"train_dir={tmp_path}/missing", check=False)
    assert_user_error(p, "train.py", "<Style>/<image>")
    p = run_main("train.py", *small_config(sample_root, tmp_path, balance="posthoc"), check=False)
    assert_user_error(p, "train.py", "must be one of none, weights1")
    p = run_main("train.py", *small_config(sample_root, tmp_path / "ph", posthoc="true", val_fraction=0), check=False)
    assert_user_error(p, "train.py", "posthoc=true chooses tau on the validation split", "leaves no validation images")
    p = run_main("train.py", "--sett", "epochs=3", check=False)
    assert_user_error(p, "train.py", "unrecognized arguments: --sett epochs=3 (see train.py -h)")
    assert not (tmp_path / "ph").exists() and snapshot(user_dir) == {}


def test_autoencoder_py_bad_crop_and_size(sample_root, tmp_path, user_dir):
    p = run_main("autoencoder.py", *ae_args(sample_root, tmp_path / "v", **{
        "autoencoder.bottleneck": "vector", "autoencoder.train_crop": 16}), check=False)
    assert_user_error(p, "autoencoder.py", "spatial bottleneck")
    p = run_main("autoencoder.py", *ae_args(sample_root, tmp_path / "v", image_size=30), check=False)
    assert_user_error(p, "autoencoder.py", "divisible")
    assert not (tmp_path / "v").exists() and snapshot(user_dir) == {}


def test_cluster_py_bad_options_unreadable_and_too_few_codes(sample_root, tmp_path, user_dir):
    where = ["--set", f"train_dir={sample_root}/train", f"test_dir={sample_root}/test", "image_size=32",
             "cache_dir=", f"cluster.out_dir={tmp_path / 'out'}"]
    p = run_main("cluster.py", *where, "cluster.method=dbscan", check=False)
    assert_user_error(p, "cluster.py", "must be one of kmeans")
    p = run_main("cluster.py", *where, f"cluster.codes_dir={tmp_path / 'nowhere'}", check=False)
    assert_user_error(p, "cluster.py", "run autoencoder.py first")
    codes = tmp_path / "codes"
    codes.mkdir()
    (codes / "codes_test.npz").write_text("not an npz")
    p = run_main("cluster.py", *where, f"cluster.codes_dir={codes}", check=False)
    assert_user_error(p, "cluster.py", "codes_test.npz is not a codes file written by autoencoder.py")
    np.savez(codes / "codes_test.npz", codes=np.zeros((3, 4), np.float32))  # no labels, stats, ...
    assert_user_error(run_main("cluster.py", *where, f"cluster.codes_dir={codes}", check=False), "cluster.py",
                      "is not a codes file written by autoencoder.py (KeyError")
    np.savez(codes / "codes_test.npz", codes=np.zeros((3, 4), np.float32), stats=np.zeros((3, 2), np.float32),
             labels=np.array([0, 1, 2]), classes=np.array(["a", "b", "c"]), paths=np.array(["x", "y", "z"]))
    p = run_main("cluster.py", *where, f"cluster.codes_dir={codes}", check=False)
    assert_user_error(p, "cluster.py", "holds 3 image(s): clustering into k=3 groups needs more than 3")
    assert not (tmp_path / "out").exists() and snapshot(user_dir) == {}


def test_compare_balance_py_unknown_option(user_dir):
    p = run_main("compare_balance.py", "--options", "none", "bogus", check=False)
    assert_user_error(p, "compare_balance.py", "argument --options: invalid choice: 'bogus'")
    assert snapshot(user_dir) == {}


def test_prepare_data_py_slips(tmp_path, user_dir):
    src = tmp_path / "src"
    (src / "Minimalism").mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (12, 10), (200, 30, 30)).save(src / "Minimalism" / "w.png")
    p = run_main("prepare_data.py", str(src), str(src / "out"), check=False)
    assert_user_error(p, "prepare_data.py", "must not be inside the source")
    p = run_main("prepare_data.py", str(tmp_path / "nothing"), str(tmp_path / "o"), check=False)
    assert_user_error(p, "prepare_data.py", "source not found")
    p = run_main("prepare_data.py", str(src), str(tmp_path / "o"), "--csv", str(tmp_path / "nocsv"), check=False)
    assert_user_error(p, "prepare_data.py", f"--csv not found: {tmp_path / 'nocsv'}")
    for flags, says in [(["--size", "4"], "--size must be at least 8"), (["--quality", "0"], "--quality must be in"),
                        (["--test-fraction", "1"], "--test-fraction must be in [0, 1)"), (["--fit", "stretch"], "invalid choice")]:
        assert_user_error(run_main("prepare_data.py", str(src), str(tmp_path / "o"), *flags, check=False),
                          "prepare_data.py", says)
    p = run_main("prepare_data.py", str(src), check=False)
    assert_user_error(p, "prepare_data.py", "the following arguments are required: out")
    assert not (tmp_path / "o").exists() and snapshot(user_dir) == {}


def test_bench_py_slips(sample_root, tmp_path, user_dir):
    p = run_main("bench.py", f"{sample_root}/train", "--size", "64", check=False)
    assert_user_error(p, "bench.py", "are 32x32, not 64: make a copy at that size with prepare_data.py --size 64")
    (tmp_path / "txt" / "Cubism").mkdir(parents=True)
    (tmp_path / "txt" / "Cubism" / "a.txt").write_text("hi")
    p = run_main("bench.py", str(tmp_path / "txt"), "--size", "32", check=False)
    assert_user_error(p, "bench.py", "a.txt is not a readable image")
    p = run_main("bench.py", f"{sample_root}/train", "--size", "32", "--epochs", "1", check=False)
    assert_user_error(p, "bench.py", "--epochs must be at least 2")
    assert snapshot(user_dir) == {}


def test_sample_data_py_slips(user_dir):
    assert_user_error(run_main("sample_data.py", "--size", "2", check=False), "sample_data.py", "--size must be at least 8")
    assert_user_error(run_main("sample_data.py", "--scale", "0", check=False), "sample_data.py", "--scale must be > 0")
    assert snapshot(user_dir) == {}


def test_every_script_runs_main_through_runs_cli():
    """The __main__ block is `runs.cli(main)` (sample_data.py: argparse only, no runs import)."""
    for script in SCRIPTS:
        tree = ast.parse(open(os.path.join(ROOT, script)).read())
        block = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert len(block) == 1, script
        expected = "main()" if script == "sample_data.py" else "runs.cli(main)"
        assert ast.unparse(block[0].body[0]) == expected, script


def test_the_modules_import_one_another_without_cycles():
    """Imports anywhere in a module (a lazy import inside a function counts too) form no cycle."""
    modules = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    imports = {}
    for m in modules:
        nodes = list(ast.walk(ast.parse(open(os.path.join(ROOT, m + ".py")).read())))
        names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        imports[m] = {name.split(".")[0] for name in names} & modules
    assert "wikiart" in imports["train"] and "runs" in imports["wikiart"]  # the walk sees the imports

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in imports[start])
    assert [m for m in sorted(modules) if reaches(m, m)] == []


@pytest.mark.slow  # a process of its own (torch imported again)
def test_a_real_command_line_slip_is_one_line_and_status_2(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--set", "epoch=3"], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("train.py: error: --set: unknown config key 'epoch'. did you mean 'epochs'?")
    assert p.stderr.count("\n") == 1 and os.listdir(tmp_path) == []
