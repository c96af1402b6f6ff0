"""Part 1, class imbalance: the class weights, the balanced sampler, the logit adjustment and the
post-hoc prior correction (formulas, on known numbers), then the options trained end to end (slow)."""
import json

import numpy as np
import pytest
import torch

import wikiart
from conftest import assert_real_picture, run_main, small_config


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


def test_the_three_inverse_frequency_weightings_give_the_same_loss():
    """weights1/2/3 differ by a constant factor that the weighted mean divides out (README, Part 1)."""
    counts = [300, 40, 7]
    logits, y = torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), torch.randint(0, 3, (32,))
    losses = [torch.nn.functional.cross_entropy(logits, y, weight=wikiart.class_weights(counts, k),
                                                label_smoothing=0.1) for k in ("weights1", "weights2", "weights3")]
    assert torch.allclose(losses[0], losses[1]) and torch.allclose(losses[0], losses[2])
    assert not torch.allclose(losses[0], torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


# ---- end to end (train.py, test.py, compare_balance.py on the tiny sample)

@pytest.mark.slow
def test_logit_adjust_training_raises_rare_recall_on_the_sample(sample_root, tmp_path):
    results = {}
    for balance in ("none", "logit_adjust"):
        args = small_config(sample_root, tmp_path / balance, epochs=3, balance=balance, resnet_width=8,
                            cache_dir=tmp_path / "cache")
        run_main("train.py", *args)
        run_main("test.py", *args)
        m = json.loads((tmp_path / balance / "test_metrics.json").read_text())
        counts = torch.load(tmp_path / balance / "best.pt", weights_only=False)["label_counts"]
        rare = [s for s, n in counts.items() if n <= 8]
        # how many test images of rare styles are predicted as something rare: the adjustment shifts predictions
        results[balance] = sum(m["confusion_matrix"][i][j] for i, s in enumerate(m["classes"]) if s in rare
                               for j, t in enumerate(m["classes"]))
        results[balance + "_pred_rare"] = sum(sum(m["confusion_matrix"][i][j] for i in range(len(m["classes"])))
                                              for j, t in enumerate(m["classes"]) if t in rare)
    assert results["logit_adjust_pred_rare"] > results["none_pred_rare"]


@pytest.mark.slow
def test_compare_balance_runs_every_option(sample_root, tmp_path):
    args = small_config(sample_root, tmp_path / "cmp", epochs=1, cache_dir=tmp_path / "cache")  # decoded once
    run_main("compare_balance.py", *args)
    table = (tmp_path / "cmp" / "balance_comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| balance")]
    assert [r.split("|")[1].strip() for r in rows] == [*wikiart.BALANCE_OPTIONS, "none+posthoc", "sampler+posthoc"]
    data = json.loads((tmp_path / "cmp" / "balance_comparison.json").read_text())
    assert all(0 <= r["worst_recall"] <= r["balanced_accuracy"] <= 1 for r in data["rows"])
    for r in data["rows"]:  # the per-style recalls are the ones the balanced accuracy averages
        assert np.mean(list(r["recall_per_style"].values())) == pytest.approx(r["balanced_accuracy"])
    for name in ("balance_comparison.png", "balance_per_style.png"):
        assert_real_picture(tmp_path / "cmp" / name)


@pytest.mark.slow
def test_posthoc_calibrates_a_finished_run_and_test_py_applies_the_bias(sample_root, tmp_path):
    """A sampler run finished without posthoc, then `--resume --set posthoc=true`: nothing is retrained,
    best.pt gets logit_bias = -tau * log prior (tau chosen on validation), and test.py applies it."""
    args = small_config(sample_root, tmp_path / "run", balance="sampler")
    run_main("train.py", *args)
    before = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert "logit_bias" not in before
    p = run_main("train.py", "--resume", *args, "posthoc=true")
    assert "epoch 1 " not in p.stdout and "post-hoc logit adjustment: tau" in p.stdout  # nothing retrained
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert all(torch.equal(before["model"][k], ckpt["model"][k]) for k in before["model"])
    counts = torch.bincount(torch.tensor([ckpt["class_to_idx"][s] for s, n in ckpt["label_counts"].items()
                                          for _ in range(n)]))
    tau = ckpt["posthoc_tau"]
    assert ckpt["logit_bias"].shape == (27,) and ckpt["config"]["posthoc"]
    rare, frequent = int(counts.argmin()), int(counts.argmax())
    assert torch.sign(ckpt["logit_bias"][rare] - ckpt["logit_bias"][frequent]) == np.sign(tau)
    run_main("test.py", *args)
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["balance"] == "sampler" and metrics["posthoc_tau"] == tau
    # test.py's figures are those of argmax(logits + bias), recomputed here
    data = wikiart.WikiArtDataset(f"{sample_root}/test", 32, ckpt["class_to_idx"], verbose=False)
    model = wikiart.make_classifier(ckpt["config"], 27)
    model.load_state_dict(ckpt["model"])
    logits = wikiart.predict(model, data.images, list(range(len(data))), 64, torch.device("cpu"))
    accuracy = float(((logits + ckpt["logit_bias"]).argmax(1) == data.labels).float().mean())
    assert accuracy == pytest.approx(metrics["accuracy"])
