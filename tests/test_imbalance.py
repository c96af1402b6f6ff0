"""Part 1, class imbalance: the class weights, the balanced sampler, the logit adjustment and the
post-hoc prior correction (formulas, on known numbers), the loss each option trains with, then
compare_balance.py end to end (slow)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runs
import train
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


def test_each_balance_option_trains_with_its_loss():
    """train.make_loss: none and sampler (which balances the batches instead) are plain cross-entropy,
    the weightings weigh each style, drw only from 60% of the epochs, logit_adjust adds the log prior."""
    counts = torch.tensor([80, 15, 5])
    logits, y = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 4)
    ce = lambda z, weight=None: F.cross_entropy(z, y, weight=weight, label_smoothing=train.LABEL_SMOOTHING)
    loss = lambda balance, epoch=9: train.make_loss({"balance": balance, "epochs": 10}, counts, "cpu")(logits, y, epoch)
    for balance in ("none", "sampler"):
        assert loss(balance) == ce(logits)
    for balance in ("weights1", "weights2", "weights3", "effective"):
        assert torch.allclose(loss(balance), ce(logits, wikiart.class_weights(counts, balance)))
    assert loss("drw", epoch=5) == ce(logits)
    assert torch.allclose(loss("drw", epoch=6), ce(logits, wikiart.class_weights(counts, "drw")))
    assert torch.allclose(loss("logit_adjust"), ce(logits + wikiart.logit_adjustment(counts)))
    assert set(wikiart.BALANCE_OPTIONS) == {"none", "sampler", "weights1", "weights2", "weights3", "effective", "drw",
                                            "logit_adjust"}  # every option is one of the above


# ---- end to end (compare_balance.py runs train.py and test.py)

@pytest.mark.slow
def test_compare_balance_continues_when_run_again_and_calibrates_posthoc_without_retraining(sample_root, tmp_path,
                                                                                           monkeypatch):
    """Ctrl-C inside compare_balance.py names the command that continues: compare_balance.py itself, which
    resumes that option's run. X+posthoc is X's best model with the prior correction chosen on validation,
    and test.py applies it."""
    out = tmp_path / "cmp"
    args = ["--options", "none", "sampler+posthoc", *small_config(sample_root, out, epochs=2, threads=1)]
    end_epoch = runs.Progress.end_epoch

    def then_interrupt(self, row, score, checkpoint):  # Ctrl-C once epoch 1 of the first option is saved
        best = end_epoch(self, row, score, checkpoint)
        if row["epoch"] == 1:
            raise KeyboardInterrupt
        return best
    with monkeypatch.context() as m:
        m.setattr(runs.Progress, "end_epoch", then_interrupt)
        p = run_main("compare_balance.py", *args, check=False)
    assert p.returncode == 130 and "Traceback" not in p.stderr
    assert (f"interrupted: epoch 1 is the last finished one, saved in {out}/none/last.pt; continue with: "
            f"{runs.command_line('compare_balance.py', args)}") in p.stderr
    p = run_main("compare_balance.py", *args)
    assert f"resumed from {out}/none/last.pt after epoch 1" in p.stdout

    table = (out / "balance_comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| balance")]
    assert [r.split("|")[1].strip() for r in rows] == ["none", "sampler+posthoc"]
    data = json.loads((out / "balance_comparison.json").read_text())
    for r in data["rows"]:  # the per-style recalls are the ones the balanced accuracy averages
        assert 0 <= r["worst_recall"] <= r["balanced_accuracy"] <= 1 and r["epochs"] == 2
        assert np.mean(list(r["recall_per_style"].values())) == pytest.approx(r["balanced_accuracy"])
    for name in ("balance_comparison.png", "balance_per_style.png"):
        assert_real_picture(out / name)

    plain = torch.load(out / "sampler" / "best.pt", weights_only=False)
    ckpt = torch.load(out / "sampler+posthoc" / "best.pt", weights_only=False)
    assert "logit_bias" not in plain and all(torch.equal(plain["model"][k], ckpt["model"][k]) for k in plain["model"])
    tau = ckpt["posthoc_tau"]
    assert tau == data["rows"][1]["posthoc_tau"] and ckpt["config"]["posthoc"]
    counts = torch.tensor([ckpt["label_counts"][s] for s in sorted(ckpt["class_to_idx"], key=ckpt["class_to_idx"].get)])
    rare, frequent = int(counts.argmin()), int(counts.argmax())
    assert torch.sign(ckpt["logit_bias"][rare] - ckpt["logit_bias"][frequent]) == np.sign(tau)
    # test.py's numbers are those of argmax(logits + bias), recomputed here
    result = json.loads((out / "sampler+posthoc" / "test_metrics.json").read_text())
    test = wikiart.WikiArtDataset(f"{sample_root}/test", 32, ckpt["class_to_idx"], verbose=False)
    model = wikiart.make_classifier(ckpt["config"], len(counts))
    model.load_state_dict(ckpt["model"])
    logits = wikiart.predict(model, test.images, list(range(len(test))), 64, torch.device("cpu"))
    assert result["posthoc_tau"] == tau
    assert float(((logits + ckpt["logit_bias"]).argmax(1) == test.labels).float().mean()) == pytest.approx(result["accuracy"])
