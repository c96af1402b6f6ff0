"""train.py under torchrun (DistributedDataParallel, gloo on CPU) and the helpers of ddp.py; posthoc
calibration under torchrun.

The runs go through a small wrapper that runs train.py's main unchanged and records the sample indices
of every training batch each process used (and the post-hoc tau each chose), so the tests check what
train.py really did.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, run_main, small_config
import config
import ddp
import metrics
import wikiart

RECORD = '''
import json, os, sys
sys.path.insert(0, os.environ["REPO"])
import runs, train, wikiart
rank = os.environ.get("RANK", "0")
batches, original = [], wikiart.iterate_batches
def recording(images, labels, indices, batch_size, device, drop_last=False):
    if drop_last:  # training batches; validation and test.py use drop_last=False
        n = len(indices) - len(indices) % batch_size
        batches.append([[int(i) for i in indices[k:k + batch_size]] for k in range(0, n, batch_size)])
    return original(images, labels, indices, batch_size, device, drop_last)
wikiart.iterate_batches = recording
calibrate = train.calibrate_posthoc
def recording_tau(*args, **kwargs):  # posthoc=true: the tau each process chose
    best = calibrate(*args, **kwargs)
    with open(os.environ["RECORD_TO"] + "_tau_rank" + rank + ".json", "w") as f:
        json.dump(best["posthoc_tau"], f)
    return best
train.calibrate_posthoc = recording_tau
sys.argv = [os.path.join(os.environ["REPO"], "train.py")] + sys.argv[1:]
runs.cli(train.main)  # what `python train.py ...` runs
with open(os.environ["RECORD_TO"] + "_rank" + rank + ".json", "w") as f:
    json.dump(batches, f)
'''

# augment off: a 2-process and a 1-process run then differ only by BatchNorm's batch statistics (8 images
# per process instead of 16) and float summation order
CONFIG = dict(epochs=2, batch_size=16, augment="false")


def torchrun(tmp_path, name, *args, nproc=2):
    """train.py on the tiny sample under torchrun, `nproc` processes (recording each one's batches)."""
    wrapper = tmp_path / "record.py"
    wrapper.write_text(RECORD)
    record_to = str(tmp_path / f"{name}_batches")
    env = dict(os.environ, REPO=ROOT, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", RECORD_TO=record_to)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(wrapper), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p, record_to


def batches(record_to, rank):
    with open(f"{record_to}_rank{rank}.json") as f:
        return json.load(f)


def history(out_dir):
    with open(os.path.join(out_dir, "train_log.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ddp_runs(sample_root, tmp_path_factory):
    """One 2-process run (stopped after epoch 1, then --resume with posthoc=true, which calibrates the
    finished run under torchrun) and the same run in one process (this one), same seed."""
    tmp = tmp_path_factory.mktemp("ddp")
    one_batches, iterate = [], wikiart.iterate_batches

    def recording(images, labels, indices, batch_size, device, drop_last=False):  # as RECORD does
        if drop_last:
            n = len(indices) - len(indices) % batch_size
            one_batches.append([[int(i) for i in indices[k:k + batch_size]] for k in range(0, n, batch_size)])
        return iterate(images, labels, indices, batch_size, device, drop_last)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(wikiart, "iterate_batches", recording)
        run_main("train.py", *small_config(sample_root, tmp / "one", **CONFIG))
    two = small_config(sample_root, tmp / "two", **CONFIG)
    first, first_rec = torchrun(tmp, "two_a", *two, "stop_after=1")
    shutil.copytree(tmp / "two", tmp / "two_after_epoch1")
    resumed, resumed_rec = torchrun(tmp, "two_b", *two, "posthoc=true", "--resume")
    return dict(tmp=tmp, one=tmp / "one", two=tmp / "two", one_batches=one_batches, first_rec=first_rec,
                resumed_rec=resumed_rec, stdout=first.stdout + resumed.stdout)


# ---- helpers, no processes

@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [12, 37, 100])
def test_shard_gives_each_rank_a_disjoint_share_of_every_global_batch(world, n):
    batch = 4 * world
    order = np.random.default_rng(n).permutation(1000)[:n]
    shards = [ddp.shard(order, r, world, batch) for r in range(world)]
    steps = n // batch
    assert all(len(s) == steps * batch // world for s in shards)  # every rank runs the same steps
    assert len(set(np.concatenate(shards).tolist())) == steps * batch  # disjoint
    b = batch // world
    for k in range(steps):  # step k of all ranks together == batch k of one process
        together = np.concatenate([s[k * b:(k + 1) * b] for s in shards])
        assert sorted(together) == sorted(order[k * batch:(k + 1) * batch])
    # without a batch size (validation): disjoint and covering everything, ragged lengths allowed
    parts = [ddp.shard(order, r, world) for r in range(world)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(order.tolist())


def test_shard_of_the_class_balanced_sampler_splits_its_draws():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 5)
    draws = wikiart.balanced_sampler_indices(labels, len(labels), torch.Generator().manual_seed(0))
    shards = [ddp.shard(np.arange(len(draws)), r, 2, 8) for r in range(2)]  # positions of draws
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate([draws[s] for s in shards]).tolist()) == sorted(draws[:56].tolist())
    assert np.bincount(labels[draws].numpy()).min() > 10  # the rare styles are drawn about as often


def test_shard_rejects_a_global_batch_the_processes_cannot_split():
    with pytest.raises(config.UserError, match="divisible"):
        ddp.shard(np.arange(100), 0, 3, 16)


def test_without_torchrun_setup_is_a_no_op(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert ddp.setup_distributed("cpu") == (0, 1, 0, torch.device("cpu"))
    assert not torch.distributed.is_initialized() and ddp.is_main()
    assert ddp.shard([5, 6, 7], 0, 1) == [5, 6, 7]
    assert ddp.all_reduce_sum([1.5, 2], torch.device("cpu")) == [1.5, 2]
    x = torch.arange(6.0).view(3, 2)
    assert ddp.all_gather_shards(x, 1) is x


# ---- torchrun runs (slow: each starts two processes)

@pytest.mark.slow
def test_two_process_run_writes_one_checkpoint_that_test_py_loads(ddp_runs, sample_root):
    out = ddp_runs["two"]
    assert sorted(f for f in os.listdir(out) if f.endswith(".pt")) == ["best.pt", "last.pt"]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the plain model, not the DDP wrapper
    # only rank 0 prints: one summary line per run, one result line per epoch
    assert ddp_runs["stdout"].count("best validation") == 2
    assert ddp_runs["stdout"].count("train_loss") == 2
    p = run_main("test.py", "--checkpoint", str(out / "last.pt"), "--set", "device=cpu")
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["n_images"] == len(wikiart.load_split(
        {"test_dir": f"{sample_root}/test", "image_size": 32, "cache_dir": ""}, "test",
        ckpt["class_to_idx"]))
    assert "accuracy" in p.stdout


@pytest.mark.slow
def test_ranks_train_on_disjoint_shards_that_cover_each_epoch(ddp_runs):
    one = ddp_runs["one_batches"]
    two = [batches(ddp_runs["first_rec"], r) + batches(ddp_runs["resumed_rec"], r) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 2  # epochs (the second one after --resume)
    for epoch in range(2):
        rank0, rank1 = two[0][epoch], two[1][epoch]
        assert len(rank0) == len(rank1) == len(one[epoch])  # same number of steps everywhere
        assert all(len(b) == 8 for b in rank0 + rank1)  # global batch 16 = 2 x 8
        seen0, seen1 = sum(rank0, []), sum(rank1, [])
        assert not set(seen0) & set(seen1)
        assert sorted(seen0 + seen1) == sorted(sum(one[epoch], []))  # the single-process epoch
        for k, batch in enumerate(one[epoch]):  # and step by step the same global batches
            assert sorted(rank0[k] + rank1[k]) == sorted(batch)
    assert sum(one[0], []) != sum(one[1], [])  # a new order each epoch


@pytest.mark.slow
def test_two_processes_reach_the_loss_of_one_process_with_the_same_global_batch(ddp_runs):
    one, two = history(ddp_runs["one"]), history(ddp_runs["two"])
    assert [h["epoch"] for h in two] == [1, 2]
    assert two[0] == history(ddp_runs["tmp"] / "two_after_epoch1")[0]  # --resume kept the first epoch
    # measured: 0.1% apart after epoch 1, 1-2% after epoch 2 (BatchNorm sees 8 images, not 16)
    for a, b, tolerance in zip(one, two, (0.01, 0.05)):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=tolerance)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=tolerance)
        assert b["lr"] == pytest.approx(a["lr"])
    assert two[1]["train_loss"] < two[0]["train_loss"]  # it learned


@pytest.mark.slow
def test_distributed_validation_equals_scoring_the_saved_model_in_one_process(ddp_runs, sample_root):
    """Each process scored half the validation images; gathered, they must give the metrics of the
    checkpoint that rank 0 saved, scored by one process on the whole validation split."""
    ckpt = torch.load(ddp_runs["two"] / "last.pt", map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    data = wikiart.load_split(cfg, "train")
    _, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
    model = wikiart.make_classifier(cfg, len(data.classes))
    model.load_state_dict(ckpt["model"])
    logits = wikiart.predict(model, data.images, val_idx, 256, torch.device("cpu"))
    m = metrics.classification_metrics(data.labels[val_idx].numpy(), logits.argmax(1).numpy(), data.classes)
    last = history(ddp_runs["two"])[-1]
    assert last["val_loss"] == pytest.approx(float(F.cross_entropy(logits, data.labels[val_idx])), abs=1e-5)
    assert last["val_accuracy"] == pytest.approx(m["accuracy"])
    assert last["val_balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])


@pytest.mark.slow
def test_posthoc_under_torchrun_every_rank_scores_the_saved_model(ddp_runs):
    taus = [json.load(open(ddp_runs["resumed_rec"] + f"_tau_rank{r}.json")) for r in range(2)]
    assert taus[0] == taus[1]
    # one process calibrating the saved model chooses the same tau
    import train
    best = torch.load(ddp_runs["two"] / "best.pt", map_location="cpu", weights_only=False)
    assert best["posthoc_tau"] == taus[0]
    cfg = best["config"]
    data = wikiart.WikiArtDataset(cfg["train_dir"], cfg["image_size"])
    _, val_idx = wikiart.stratified_split(data.labels, cfg["val_fraction"], cfg["seed"])
    model = wikiart.make_classifier(cfg, len(data.classes))
    again = train.calibrate_posthoc(best, model, data, val_idx)
    assert again["posthoc_tau"] == taus[0]
