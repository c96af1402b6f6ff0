"""Issue 2 (foundation) and issue 3 (class imbalance): dataset, config, classifiers, train/test scripts."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import config
import sample_data
import wikiart
from conftest import assert_real_picture, run_script, small_config


# ---- dataset and style map

def test_style_map_sorted_and_shared_with_a_test_folder_missing_styles(sample_root, tmp_path):
    test_root = tmp_path / "test"
    shutil.copytree(f"{sample_root}/test", test_root)
    shutil.rmtree(test_root / "Baroque")  # a test folder that lacks a style
    train = wikiart.WikiArtDataset(f"{sample_root}/train", 32)
    test = wikiart.WikiArtDataset(str(test_root), 32, class_to_idx=train.class_to_idx)
    assert train.classes == sorted(train.classes) == sorted(sample_data.COURSE_TRAIN_COUNTS)
    assert list(train.class_to_idx.values()) == list(range(27))
    assert test.class_to_idx == train.class_to_idx  # labels mean the same style in both
    assert "Baroque" not in {test.classes[i] for i in test.labels.tolist()}
    for path, label in zip(test.paths, test.labels.tolist()):  # every label names its folder's style
        assert os.path.basename(os.path.dirname(path)) == train.classes[label]
    # built without the training map, the same folder would have shifted every label after Baroque
    alone = wikiart.WikiArtDataset(str(test_root), 32)
    assert alone.class_to_idx != train.class_to_idx


def test_unknown_test_style_is_a_clear_error(sample_root, tmp_path):
    shutil.copytree(f"{sample_root}/test/Cubism", tmp_path / "test" / "Vaporwave")
    train = wikiart.WikiArtDataset(f"{sample_root}/train", 32)
    with pytest.raises(config.UserError, match="Vaporwave"):
        wikiart.WikiArtDataset(str(tmp_path / "test"), 32, class_to_idx=train.class_to_idx)


def test_label_counts_match_the_files(sample_root):
    data = wikiart.WikiArtDataset(f"{sample_root}/train", 32)
    expected = {s: len(os.listdir(f"{sample_root}/train/{s}")) for s in os.listdir(f"{sample_root}/train")}
    assert data.label_counts == expected
    assert torch.bincount(data.labels).tolist() == [expected[c] for c in data.classes]
    assert data.images.dtype == np.uint8 and data.images.shape == (len(data), 32, 32, 3)


def test_missing_folder_explains_the_layout(tmp_path):
    with pytest.raises(config.UserError, match=r"<Style>/<image>"):
        wikiart.WikiArtDataset(str(tmp_path / "nowhere"), 32)


def test_unreadable_images_are_skipped_and_listed(sample_root, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(f"{sample_root}/train/Cubism", root / "Cubism")
    (root / "Cubism" / "notes.jpg").write_text("not an image")
    (root / "Cubism" / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="2 unreadable") as record:
        data = wikiart.WikiArtDataset(str(root), 32)
    message = str(record[0].message)
    assert "notes.jpg" in message and "empty.png" in message
    assert len(data) == len(os.listdir(root / "Cubism")) - 2


def test_sample_is_deterministic_and_proportional(tmp_path):
    a = sample_data.render_sample_image("Pointillism", 7, 32)
    assert np.array_equal(a, sample_data.render_sample_image("Pointillism", 7, 32))
    assert not np.array_equal(a, sample_data.render_sample_image("Pointillism", 8, 32))
    counts = sample_data.sample_counts(0.15)
    assert counts["Impressionism"][0] == round(2269 * 0.15)
    assert counts["Impressionism"][0] > counts["Romanticism"][0] > counts["Pointillism"][0]
    assert min(t for t, _ in counts.values()) >= 6


def test_stratified_split_is_seeded_and_keeps_every_style():
    labels = np.repeat(np.arange(4), [50, 20, 5, 2])
    tr, va = wikiart.stratified_split(labels, 0.2, seed=3)
    tr2, va2 = wikiart.stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(va, va2) and len(set(tr) & set(va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va], minlength=4).tolist() == [10, 4, 1, 0]
    assert not np.array_equal(va, wikiart.stratified_split(labels, 0.2, seed=4)[1])


# ---- config

def test_config_overrides_and_errors(tmp_path):
    cfg = config.load_config(overrides=["epochs=3", "mode=base", "lr=1", "autoencoder.epochs=2"])
    assert cfg["epochs"] == 3 and cfg["mode"] == "base" and cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["autoencoder"]["epochs"] == 2
    with pytest.raises(config.ConfigError, match=r"unknown config key 'epoch'. did you mean 'epochs'\?"):
        config.load_config(overrides=["epoch=3"])
    with pytest.raises(config.ConfigError, match="'epochs' must be int"):
        config.load_config(overrides=["epochs=many"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batchsize": 8}))
    with pytest.raises(config.ConfigError, match="bad.json: unknown config key 'batchsize'. did you mean 'batch_size'"):
        config.load_config([config.DEFAULT_CONFIG, str(bad)])


def test_train_script_reports_config_errors(sample_root, tmp_path):
    p = run_script("train.py", "--set", "lerning_rate=0.1", check=False)
    assert p.returncode != 0 and "lerning_rate" in p.stderr and "lr" in p.stderr
    p = run_script("train.py", *small_config(sample_root, tmp_path, device="cuda:7"), check=False)
    if not torch.cuda.is_available():
        assert p.returncode != 0 and "CUDA is not available" in p.stderr
    p = run_script("train.py", "--set", f"train_dir={tmp_path}/missing", check=False)
    assert p.returncode != 0 and "<Style>/<image>" in p.stderr
    p = run_script("train.py", *small_config(sample_root, tmp_path, balance="posthoc"), check=False)
    assert p.returncode == 2 and "must be one of none, weights1" in p.stderr and "Traceback" not in p.stderr


# ---- models

@pytest.mark.parametrize("mode", wikiart.MODES)
@pytest.mark.parametrize("size", [32, 64])
def test_classifier_shapes(mode, size):
    cfg = config.load_config(overrides=[f"mode={mode}", f"image_size={size}", "resnet_width=8"])
    model = wikiart.make_classifier(cfg, 27).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 27)


def test_base_model_matches_the_course_sizes():
    model = wikiart.BaseClassifier(27, 416)
    assert model.batchnorm1d.num_features == 105 * 105 and model.linear1.out_features == 300
    assert isinstance(model.softmax, torch.nn.LogSoftmax)
    bonus = wikiart.BonusAClassifier(27, 416)
    assert bonus.linear1.in_features == 50 * 50 and isinstance(bonus.sigmoid, torch.nn.Sigmoid)


@pytest.mark.parametrize("mode", wikiart.MODES)
def test_each_mode_learns_a_few_steps(mode, sample_root):
    torch.manual_seed(0)
    data = wikiart.WikiArtDataset(f"{sample_root}/train", 32)
    cfg = config.load_config(overrides=[f"mode={mode}", "image_size=32", "resnet_width=8"])
    model = wikiart.make_classifier(cfg, len(data.classes))
    opt = wikiart.make_optimizer(model, "adamw", 3e-3, 0.0)
    x, y = next(wikiart.iterate_batches(data.images, data.labels, np.arange(0, len(data), 4)[:64], 64,
                                        torch.device("cpu")))
    losses = []
    model.train()
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_augment_keeps_shape_and_is_seeded():
    x = torch.rand(4, 3, 32, 32)
    a = wikiart.augment(x, torch.Generator().manual_seed(1))
    b = wikiart.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)


# ---- train.py / test.py end to end

def test_train_then_test_is_deterministic(sample_root, tmp_path):
    args = small_config(sample_root, tmp_path / "run")
    run_script("train.py", *args)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert len(log) == 2 and all("val_balanced_accuracy" in row for row in log)
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert ckpt["class_to_idx"] == {s: i for i, s in enumerate(sorted(sample_data.COURSE_TRAIN_COUNTS))}
    run_script("test.py", *args)
    first = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    run_script("test.py", *args)
    second = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert first == second
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class"):
        assert key in first
    assert set(first["per_class"]) == set(ckpt["class_to_idx"])
    assert sum(m["support"] for m in first["per_class"].values()) == first["n_images"]
    from PIL import Image
    for png in ("confusion.png", "per_class_recall.png", "curves.png"):
        img = np.asarray(Image.open(tmp_path / "run" / png).convert("L"))
        assert img.shape[0] > 200 and img.std() > 10  # a real figure, not a blank canvas


def test_resume_continues_with_identical_state(sample_root, tmp_path):
    full = tmp_path / "full"
    run_script("train.py", *small_config(sample_root, full, epochs=3))
    part = tmp_path / "part"
    run_script("train.py", *small_config(sample_root, part, epochs=3, stop_after=1))
    assert json.loads((part / "train_log.json").read_text())[-1]["epoch"] == 1
    run_script("train.py", *small_config(sample_root, part, epochs=3), "--resume")
    a = torch.load(full / "last.pt", weights_only=False)
    b = torch.load(part / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [round(h["train_loss"], 6) for h in a["history"]] == [round(h["train_loss"], 6) for h in b["history"]]


# ---- Part 1: class imbalance

def test_weight_formulas_on_known_counts():
    counts = [100, 10, 1]  # N = 111, C = 3
    assert torch.allclose(wikiart.class_weights(counts, "weights1"), torch.tensor([111 / 300, 111 / 30, 111 / 3]))
    assert torch.allclose(wikiart.class_weights(counts, "weights2"), torch.tensor([1.11, 11.1, 111.0]))
    assert torch.allclose(wikiart.class_weights(counts, "weights3"), torch.tensor([0.01, 0.1, 1.0]))
    eff = wikiart.class_weights(counts, "effective", beta=0.9)
    raw = torch.tensor([(1 - 0.9) / (1 - 0.9 ** n) for n in counts])
    assert torch.allclose(eff, raw * 3 / raw.sum()) and eff[2] > eff[1] > eff[0]


def test_balanced_sampler_draws_styles_about_equally():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    idx = wikiart.balanced_sampler_indices(labels, 30000, torch.Generator().manual_seed(0))
    hist = torch.bincount(labels[idx], minlength=3).float() / len(idx)
    assert len(idx) == 30000 and torch.allclose(hist, torch.full((3,), 1 / 3), atol=0.02)


def test_logit_adjustment_favours_rare_styles_at_equal_logits():
    adjust = wikiart.logit_adjustment([900, 90, 10], tau=1.0)
    logits = torch.zeros(1, 3) + adjust  # what the loss sees for a model that outputs equal logits
    losses = [torch.nn.functional.cross_entropy(logits, torch.tensor([c])).item() for c in range(3)]
    assert losses[2] > losses[1] > losses[0]  # rare styles are penalised most -> pushed up in training
    # post-hoc form: subtracting the adjustment from equal logits predicts the rarest style
    assert int((torch.zeros(3) - adjust).argmax()) == 2


def test_logit_adjust_training_raises_rare_recall_on_the_sample(sample_root, tmp_path):
    results = {}
    for balance in ("none", "logit_adjust"):
        args = small_config(sample_root, tmp_path / balance, epochs=3, balance=balance, resnet_width=8)
        run_script("train.py", *args)
        run_script("test.py", *args)
        m = json.loads((tmp_path / balance / "test_metrics.json").read_text())
        counts = torch.load(tmp_path / balance / "best.pt", weights_only=False)["label_counts"]
        rare = [s for s, n in counts.items() if n <= 8]
        # how many test images of rare styles are predicted as something rare: the adjustment shifts predictions
        results[balance] = sum(m["confusion_matrix"][i][j] for i, s in enumerate(m["classes"]) if s in rare
                               for j, t in enumerate(m["classes"]))
        results[balance + "_pred_rare"] = sum(sum(m["confusion_matrix"][i][j] for i in range(len(m["classes"])))
                                              for j, t in enumerate(m["classes"]) if t in rare)
    assert results["logit_adjust_pred_rare"] > results["none_pred_rare"]


def test_compare_balance_runs_every_option(sample_root, tmp_path):
    args = small_config(sample_root, tmp_path / "cmp", epochs=1)
    run_script("compare_balance.py", *args, timeout=900)
    table = (tmp_path / "cmp" / "balance_comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| balance")]
    assert [r.split("|")[1].strip() for r in rows] == [*wikiart.BALANCE_OPTIONS, "none+posthoc", "sampler+posthoc"]
    data = json.loads((tmp_path / "cmp" / "balance_comparison.json").read_text())
    assert all(0 <= r["worst_recall"] <= r["balanced_accuracy"] <= 1 for r in data["rows"])
    for r in data["rows"]:  # the per-style recalls are the ones the balanced accuracy averages
        assert np.mean(list(r["recall_per_style"].values())) == pytest.approx(r["balanced_accuracy"])
    for name in ("balance_comparison.png", "balance_per_style.png"):
        assert_real_picture(tmp_path / "cmp" / name)


def test_posthoc_tau_is_chosen_on_validation_within_the_accuracy_budget():
    counts = [80, 15, 5]
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 3, generator=g) * 0.3
    logits[torch.arange(100), labels] += 0.4          # a weak signal for every class ...
    logits[:, 0] += 0.6                               # ... swamped by a bias toward the frequent class
    tau, rows = wikiart.choose_posthoc_tau(logits, labels, counts, ["a", "b", "c"], max_drop=0.02)
    by_tau = {t: (a, b) for t, a, b in rows}
    best_accuracy = max(a for t, a, b in rows)
    assert tau > 0 and by_tau[tau][1] > by_tau[0.0][1]            # rare styles recovered
    assert by_tau[tau][0] >= best_accuracy - 0.02                  # at most 2 points of accuracy lost
    assert by_tau[tau][1] == max(b for t, a, b in rows if a >= best_accuracy - 0.02)


def test_posthoc_adds_the_prior_back_to_a_model_trained_balanced():
    """A model that ignores the prior (as after balanced sampling) loses accuracy on imbalanced data;
    the post-hoc search then picks tau < 0, which restores the accuracy."""
    counts = [80, 15, 5]
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    logits = torch.randn(100, 3, generator=torch.Generator().manual_seed(1)) * 0.5
    logits[torch.arange(100), labels] += 0.5          # no bias toward the frequent class at all
    tau, rows = wikiart.choose_posthoc_tau(logits, labels, counts, ["a", "b", "c"], max_drop=0.02)
    by_tau = {t: (a, b) for t, a, b in rows}
    assert tau < 0 and by_tau[tau][0] > by_tau[0.0][0]


def test_posthoc_stores_a_bias_that_test_py_applies(sample_root, tmp_path):
    args = small_config(sample_root, tmp_path / "ph", balance="sampler", posthoc="true")
    p = run_script("train.py", *args)
    assert "post-hoc logit adjustment: tau" in p.stdout
    ckpt = torch.load(tmp_path / "ph" / "best.pt", weights_only=False)
    counts = torch.bincount(torch.tensor([ckpt["class_to_idx"][s] for s, n in ckpt["label_counts"].items()
                                          for _ in range(n)]))
    tau = ckpt["posthoc_tau"]
    assert ckpt["logit_bias"].shape == (27,) and ckpt["config"]["posthoc"]
    rare, frequent = int(counts.argmin()), int(counts.argmax())
    assert torch.sign(ckpt["logit_bias"][rare] - ckpt["logit_bias"][frequent]) == np.sign(tau)
    run_script("test.py", *args)
    metrics = json.loads((tmp_path / "ph" / "test_metrics.json").read_text())
    assert metrics["balance"] == "sampler" and metrics["posthoc_tau"] == tau
    # test.py's figures are those of argmax(logits + bias), recomputed here
    data = wikiart.WikiArtDataset(f"{sample_root}/test", 32, ckpt["class_to_idx"], verbose=False)
    model = wikiart.make_classifier(ckpt["config"], 27)
    model.load_state_dict(ckpt["model"])
    logits = wikiart.predict(model, data.images, list(range(len(data))), 64, torch.device("cpu"))
    accuracy = float(((logits + ckpt["logit_bias"]).argmax(1) == data.labels).float().mean())
    assert accuracy == pytest.approx(metrics["accuracy"])


def test_a_finished_run_can_be_calibrated_afterwards(sample_root, tmp_path):
    args = small_config(sample_root, tmp_path / "run", balance="sampler")
    run_script("train.py", *args)
    before = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert "logit_bias" not in before
    p = run_script("train.py", "--resume", *args, "posthoc=true")
    assert "epoch 1 " not in p.stdout and "post-hoc logit adjustment: tau" in p.stdout  # nothing retrained
    after = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert after["logit_bias"].shape == (27,) and after["config"]["posthoc"]


def test_the_three_inverse_frequency_weightings_give_the_same_loss():
    """weights1/2/3 differ by a constant factor that the weighted mean divides out (README, Part 1)."""
    counts = [300, 40, 7]
    logits, y = torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), torch.randint(0, 3, (32,))
    losses = [torch.nn.functional.cross_entropy(logits, y, weight=wikiart.class_weights(counts, k),
                                                label_smoothing=0.1) for k in ("weights1", "weights2", "weights3")]
    assert torch.allclose(losses[0], losses[1]) and torch.allclose(losses[0], losses[2])
    assert not torch.allclose(losses[0], torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))
