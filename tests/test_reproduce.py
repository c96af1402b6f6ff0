"""Issue 15: reproduce.py (profiles, skipping and resuming, generated tables), the time cap and bf16 on CPU."""
import json
import os
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

import config
import reproduce
import runs
import tables
import wikiart
from conftest import ROOT, run_script, small_config


def table(text, name):
    """The text between a table's markers."""
    return re.search(rf"<!-- table:{re.escape(name)} -->\n(.*?)<!-- /table -->", text, re.S).group(1)


def outside_tables(text):
    return tables.MARKER.sub("<table>", text)


# ---- the recipes themselves

def test_every_recipe_of_every_profile_resolves_and_writes_into_its_own_folder():
    for name in reproduce.PROFILES:
        for scale_down in (False, True):
            prof = reproduce.settings(name, scale_down)
            for recipe in prof["recipes"]:
                for command in reproduce.RECIPES[recipe]["commands"]:
                    script, argv, cfg = reproduce.expand(recipe, command, prof, "out/results/x", [])
                    assert os.path.exists(os.path.join(ROOT, script)), script
                    if cfg:
                        assert config.flatten(cfg)[reproduce.OUT_KEY[script]].startswith(f"out/results/x/{recipe}")
                        data = ["out/results/x/sample"] if name == "smoke" else [reproduce.W16, "data/sample"]
                        assert cfg["train_dir"] in [d + "/train" for d in data], cfg["train_dir"]  # moved once
    used = {c for r in reproduce.RECIPES.values() for cmd in r["commands"] for c in re.findall(r"configs/\S+", cmd)}
    overlays = {c for p in [*reproduce.PROFILES.values(), reproduce.SCALE_DOWN] for c in p.get("configs", [])}
    for path in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        assert f"configs/{path}" in used | overlays, f"configs/{path} is no recipe's"
        assert config.read_json(os.path.join(ROOT, "configs", path)).get("_doc"), f"configs/{path} has no _doc"
    families = {r["family"] for r in reproduce.RECIPES.values()} - {None}
    assert families <= {f for _, fams in tables.TABLES.values() for f in fams}


def test_a_recipe_with_more_threads_than_its_share_of_the_cores_runs_alone(tmp_path, monkeypatch):
    prof = reproduce.settings("cpu")
    plans = {n: [reproduce.expand(n, c, prof, "out/r", []) for c in reproduce.RECIPES[n]["commands"]]
             for n in prof["recipes"]}
    assert reproduce.wide(plans, 2, 2) == ["style_transfer_w16_128"]  # 2 threads
    assert reproduce.wide(plans, 1, 2) == [] and reproduce.wide(plans, 2, 4) == []
    running, seen = set(), []

    def fake_run(name, *args):  # records what runs beside each recipe
        running.add(name)
        seen.append(set(running))
        time.sleep(0.05)
        running.discard(name)
        return "done"
    monkeypatch.setattr(reproduce, "run_recipe", fake_run)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    reproduce.main(["cpu", "-q", "--only", "classifier_w16_64", "style_transfer_w16_128", "classifier_w16_64_base",
                    "classifier_w16_64_bonusA", "--out", str(tmp_path / "out"), "--results", str(tmp_path),
                    "--markdown", str(tmp_path / "R.md")])
    assert {"classifier_w16_64", "classifier_w16_64_base"} in seen  # two at once...
    assert all(s == {"style_transfer_w16_128"} for s in seen if "style_transfer_w16_128" in s)  # ...but not it


def test_a_recipe_that_writes_outside_its_folder_is_refused():
    with pytest.raises(config.UserError, match="must write under out/other/"):
        reproduce.expand("other", "train.py -c configs/classifier_w16_64.json", reproduce.PROFILES["cpu"], "out/r", [])


def test_results_md_has_a_marker_for_every_table_of_every_profile():
    text = open(os.path.join(ROOT, "RESULTS.md")).read()
    markers = set(re.findall(r"<!-- table:([\w.-]+/[\w.+-]+) -->", text))
    for profile in ("cpu", "gpu", "smoke"):
        families = {reproduce.RECIPES[r]["family"] for r in reproduce.PROFILES[profile]["recipes"]}
        for name, (_, fams) in tables.TABLES.items():
            if fams[0] in families:
                recipes = [r for r in reproduce.PROFILES[profile]["recipes"] if reproduce.RECIPES[r]["family"] in fams]
                whole = f"{profile}/{name}" in markers
                assert whole or all(f"{profile}/{r}" in markers for r in recipes), (profile, name)


# ---- tables

def fake_classifier_entry(accuracy):
    return {"family": "classifier", "commit": "abc1234", "date": "2026-01-01 00:00 UTC", "wall_s": 75.0,
            "env": {"cpu": "Some CPU", "threads": 2, "cpu_count": 2, "torch": "2.x"},
            "steps": [{"command": "python train.py", "wall_s": 70.0, "finished": "", "config": {"mode": "resnet"}}],
            "outputs": {"train_log.json": [{"epoch": 1}, {"epoch": 2, "time_cap": True}],
                        "test_metrics.json": {"accuracy": accuracy, "balanced_accuracy": 0.25, "macro_f1": 0.2,
                                              "majority_class_rate": 0.226, "n_images": 1964,
                                              "per_class": {str(i): {} for i in range(16)}}}}


def test_table_rewriting_keeps_the_prose_and_replaces_only_between_markers():
    text = ("# Results\n\nProse before, with a | pipe.\n\n<!-- table:cpu/classifier -->\nold table\n<!-- /table -->\n\n"
            "Prose between.\n\n<!-- table:gpu/classifier -->\nthe GPU's old table\n<!-- /table -->\n"
            "<!-- table:cpu/bench -->\nno bench results yet\n<!-- /table -->\nProse after.\n")
    results = {"recipes": {"classifier_w16_64": fake_classifier_entry(0.3714)}}
    new, rebuilt = tables.rewrite_tables(text, "cpu", results)
    assert rebuilt == ["classifier"]
    assert outside_tables(new) == outside_tables(text)
    assert table(new, "gpu/classifier") == "the GPU's old table\n"  # another profile's table
    assert table(new, "cpu/bench") == "no bench results yet\n"  # nothing to fill it with
    cpu = table(new, "cpu/classifier")
    assert "old table" not in cpu and "| 37.1 | 25.0 | 20.0 |" in cpu and "| 22.6 | 6.2 |" in cpu
    assert "2 of 12 (time cap)" in cpu  # 2 epochs logged, 12 planned (the default)
    assert "abc1234" in cpu and "Some CPU, 2 threads" in cpu and "1 min 15 s" in cpu
    again, _ = tables.rewrite_tables(new, "cpu", {"recipes": {"classifier_w16_64": fake_classifier_entry(0.5)}})
    assert "| 50.0 |" in table(again, "cpu/classifier") and outside_tables(again) == outside_tables(text)


def test_style_transfer_table_takes_whatever_metrics_evaluation_json_has():
    entry = {"family": "style_transfer", "commit": "c", "date": "d", "wall_s": 1, "env": {"cpu": "x", "threads": 1,
             "torch": "t"}, "steps": [{"config": {}}], "outputs": {"evaluation.json": {
                 "n_outputs": 960, "n_images": 64, "chance": 1 / 16, "seeds": [0, 1, 2],
                 "residual": {"mean": {"robust_hit_rate": 0.2, "artefact_ratio": 1.13, "new_metric": 7.0},
                           "std": {"robust_hit_rate": 0.01}},
                 "identity": {"robust_hit_rate": 0.05}}}}
    text = tables.style_transfer_table([("st", entry)])
    assert "| `residual` | 20.0 ± 1.0 | 1.130 | 7.000 |" in text and "| `identity` | 5.0 | – | – |" in text
    assert "new_metric" in text and "seeds [0, 1, 2]" in text


def test_the_lora_table_puts_base_lora_and_the_whole_model_side_by_side():
    def model(hit, **extra):
        return {"robust_hit_rate": hit, "raw_hit_rate": hit / 2, "robust_of_ceiling": hit / 0.2,
                "robust_hit_per_style": {"A": hit, "B": 0.0}, "raw_hit_per_style": {"A": hit / 2, "B": 0.0}} | extra
    ev = lambda models, training: {"styles": ["A", "B"], "image_size": 64, "images_per_style": 24, "steps": 30,
                                   "guidance": 4.0, "chance": 0.5, "models": models, "training": training}
    entry = lambda family, outputs: {"family": family, "outputs": outputs}
    lora = ev({"base": model(0.1), "fine-tuned@0.5": model(0.2), "fine-tuned": model(0.3, two_sample_accuracy=0.8,
                                                                                         lab_gap_closed=0.55),
               "real": model(0.2)}, {"trainable_parameters": 2e4, "unet_parameters": 1e6, "adapter_file_bytes": 9e4})
    whole = ev({"base": model(0.1), "fine-tuned": model(0.25), "real": model(0.2)},
               {"trainable_parameters": 2e6, "unet_parameters": 1e6})
    minutes = lambda m: [{"seconds": 60 * m}]
    entries = [("pre", entry("text_to_image_pretrain", {"train_log.json": minutes(60), "vae/train_log.json": minutes(25)})),
               ("lora", entry("text_to_image", {"evaluation.json": lora, "train_log.json": minutes(10)})),
               ("whole", entry("text_to_image", {"evaluation.json": whole, "train_log.json": minutes(23),
                                                 "vae/train_log.json": minutes(7)})),
               ("other_size", entry("text_to_image", {"evaluation.json": ev({}, None) | {"image_size": 32}}))]
    text, used = tables.text_to_image_lora_table(entries)
    assert used == ["pre", "lora", "whole"]
    assert "| `lora` base (before LoRA) | 10.0 (0.50x) |" in text and "85 min pretraining" in text
    assert "| base + LoRA, scale 1 | 30.0 (1.50x) | 15.0 (–x) | – / – | 80.0 | 55.0 |" in text
    assert "0.02M (2.0% of the UNet) | 0.09 MB | 10 min (1 epochs)" in text and "base + LoRA, scale 0.5" in text
    assert "| `whole`: whole model | 25.0 (1.25x) |" in text and "2.00M (UNet and text encoder)" in text and "30 min (VAE 7, diffusion 1 epochs)" in text
    assert "other_size" not in text and "| A | 10.0 / 5.0 | 30.0 / 15.0 | 25.0 / 12.5 | – |" in text
    assert tables.text_to_image_lora_table(entries[2:]) is None  # no LoRA recipe: no table


def test_a_row_made_by_an_earlier_version_of_its_recipe_says_what_changed():
    prof, root = reproduce.PROFILES["cpu"], "out/results/cpu"
    current = {n: [reproduce.config_diff(cfg) for _, _, cfg in (reproduce.expand(n, c, prof, root, [])
                                                                for c in reproduce.RECIPES[n]["commands"])]
               for n in ("classifier_w16_64", "classifier_w16_64_base")}
    entry = {"family": "classifier", "commit": "c", "date": "d", "wall_s": 1, "outputs": {},
             "env": {"cpu": "x", "threads": 1, "torch": "t"}}
    train, test = current["classifier_w16_64_base"]
    results = {"recipes": {"classifier_w16_64": dict(entry, steps=[{"config": c} for c in current["classifier_w16_64"]]),
                           "classifier_w16_64_base": dict(entry, steps=[{"config": dict(train, epochs=3)},
                                                                        {"config": test}])}}
    marked = reproduce.with_recipe_changes(results, prof, root)["recipes"]
    assert "recipe_changed" not in marked["classifier_w16_64"]
    assert marked["classifier_w16_64_base"]["recipe_changed"] == ["epochs 3 -> 12"]
    text = tables.footer(list(marked.items()), "cpu")
    assert text.count("earlier version of its recipe") == 1 and "(epochs 3 -> 12)" in text


def test_a_profile_with_pictures_copies_them_beside_its_json_and_the_table_shows_the_grid(tmp_path):
    root, name = str(tmp_path / "out"), "style_transfer_w16_64"
    folder = tmp_path / "out" / name
    (folder / "residual").mkdir(parents=True)
    Image.new("RGB", (3000, 60), (200, 30, 40)).save(folder / "residual" / "grid.png")
    evaluation = {"n_outputs": 2, "residual": {"robust_hit_rate": 0.5}}
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    step = {"command": "python style_transfer.py", "status": "done", "wall_s": 3.0, "finished": "today",
            "config": {}, "commit": "abc", "env": {"cpu": "x", "threads": 1, "torch": "t"}}
    runs.atomic_save({"recipe": name, "steps": [step]}, str(folder / "reproduce.json"))
    results_path = str(tmp_path / "results" / "cpu.json")
    for pictures in (False, True):
        prof = {"recipes": [name], "about": "test", "pictures": pictures}
        results = reproduce.publish(prof, "cpu", root, {"recipes": {}}, results_path, None)
    copied = tmp_path / "results" / "cpu" / name / "residual_grid.jpg"
    with Image.open(copied) as im:  # a JPEG, its longer side capped, the colours kept
        assert im.format == "JPEG" and im.size == (2400, 48)
        assert np.abs(np.asarray(im, float).mean((0, 1)) - (200, 30, 40)).max() < 3
    assert results["recipes"][name]["pictures"] == [os.path.relpath(copied, ROOT)]
    text = tables.build_table(name, results, "cpu")
    assert f"![{name}: test images (rows) in every style (columns)]({os.path.relpath(copied, ROOT)})" in text
    assert f"Pictures: [residual_grid.jpg]({os.path.relpath(copied, ROOT)})" in text  # naive's grid: not made


def test_a_dry_run_prints_the_commands_and_leaves_nothing_behind(tmp_path, capsys):
    reproduce.main(["cpu", "--dry-run", "--only", "classifier_w16_64", "--out", str(tmp_path / "out"),
                    "--results", str(tmp_path / "results"), "--markdown", str(tmp_path / "RESULTS.md")])
    assert "running: python train.py -c configs/classifier_w16_64.json" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


# ---- skipping and resuming

def test_an_interrupted_step_resumes_from_its_own_checkpoint_only(tmp_path, capsys):
    root = str(tmp_path / "out")
    steps = [reproduce.expand("classifier_w16_64", c, reproduce.PROFILES["cpu"], root, [])
             for c in reproduce.RECIPES["classifier_w16_64"]["commands"]]
    folder = os.path.join(root, "classifier_w16_64")
    os.makedirs(folder)
    last = os.path.join(folder, "last.pt")
    open(last, "w").close()
    prints = [reproduce.fingerprint(*s) for s in steps]
    started = {"fingerprint": prints[0], "status": "started", "started_at": time.time() - 60}
    runs.atomic_save({"recipe": "classifier_w16_64", "steps": [started]}, os.path.join(folder, "reproduce.json"))
    status = reproduce.run_recipe("classifier_w16_64", steps, prints, folder, [], False, True, True)
    out = capsys.readouterr().out
    assert status == "resumed" or "resuming: python train.py" in out
    assert "--resume" in out.splitlines()[0] and "--resume" not in out.splitlines()[1]  # test.py runs plainly
    os.utime(last, (time.time() - 3600, time.time() - 3600))  # a checkpoint older than this attempt: not its own
    reproduce.run_recipe("classifier_w16_64", steps, prints, folder, [], False, True, True)
    assert "--resume" not in capsys.readouterr().out


def test_a_recipe_whose_input_changed_runs_again(tmp_path, capsys):
    """Issue 32: style_transfer_w16_64 reads autoencoder_w16_64's best.pt, so a changed autoencoder recipe
    reruns it too (its own config is unchanged); a recipe's --pretrained folder counts as an input too."""
    names, out = ["autoencoder_w16_64", "style_transfer_w16_64"], tmp_path / "out"
    prof, root = reproduce.PROFILES["cpu"], str(out / "cpu")
    plans = {n: [reproduce.expand(n, c, prof, root, []) for c in reproduce.RECIPES[n]["commands"]]
             for n in prof["recipes"]}
    prints = reproduce.fingerprints(plans, root)
    for n in names:  # both finished with the recipes as they are
        runs.atomic_save({"recipe": n, "steps": [{"fingerprint": f, "status": "done"} for f in prints[n]]},
                         os.path.join(root, n, "reproduce.json"))
        for m in reproduce.RECIPES[n]["makes"]:
            runs.atomic_write_text("{}", reproduce.move(m, root))

    def dry_run(*extra):
        reproduce.main(["cpu", "--dry-run", "--only", *names, "--out", str(out), "--results", str(tmp_path),
                        "--markdown", str(tmp_path / "R.md"), *extra])
        return capsys.readouterr().out
    assert dry_run().count("finished with the same config, skipped") == 2
    changed = dry_run("--set", "autoencoder.epochs=99")  # a section style_transfer.py does not read
    assert "running: python autoencoder.py" in changed and "running: python style_transfer.py" in changed
    assert "skipped" not in changed
    assert "text_to_image_pretrain_w16" in reproduce.needs("text_to_image_full_w16", plans["text_to_image_full_w16"],
                                                           root)  # its config's pretrained folder
    script, argv, cfg = plans["text_to_image_full_w16"][0]
    step = (script, ["--pretrained", f"{root}/text_to_image_sample/pipeline", *argv], cfg)
    assert "text_to_image_sample" in reproduce.needs("text_to_image_full_w16", [step], root)


# ---- what the GPU recipes need, on the CPU

def test_bf16_autocast_runs_a_classifier_training_step_on_cpu():
    cfg = config.defaults() | {"resnet_width": 8}
    model = wikiart.make_classifier(cfg, 5).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3])
    cpu = torch.device("cpu")
    with runs.autocast(cpu, "bf16"):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for precision in ("auto", "fp32"):  # on a CPU both stay in fp32
        with runs.autocast(cpu, precision):
            assert model(x).dtype == torch.float32


@pytest.mark.slow
def test_time_cap_ends_training_after_an_epoch_and_resume_finishes(sample_root, tmp_path):
    out = tmp_path / "run"
    capped = small_config(sample_root, out, epochs=3, batch_size=256, precision="bf16", max_minutes=0.0001)
    p = run_script("train.py", *capped)
    assert "time cap: max_minutes=0.0001 passed; training ends after epoch 1 of 3" in p.stdout
    assert [h["epoch"] for h in json.loads((out / "train_log.json").read_text())] == [1]
    run_script("test.py", "--set", f"out_dir={out}")  # a capped run is a usable model
    run_script("train.py", *small_config(sample_root, out, epochs=3, batch_size=256, precision="bf16"), "--resume")
    assert [h["epoch"] for h in json.loads((out / "train_log.json").read_text())] == [1, 2, 3]
    env = json.loads((out / "train_config.json").read_text())["_env"]
    assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["cpu"]


@pytest.mark.slow
def test_compare_balance_reuses_a_run_its_time_cap_ended(sample_root, tmp_path):
    args = small_config(sample_root, tmp_path / "cmp", epochs=3, max_minutes=0.0001)
    p = run_script("compare_balance.py", "--options", "none", "none+posthoc", *args)
    assert p.stdout.count("time cap: max_minutes") == 1  # none+posthoc calibrates none's run, not a new one
    assert "balance=none: reusing the finished run" in p.stdout
    rows = json.loads((tmp_path / "cmp" / "balance_comparison.json").read_text())["rows"]
    assert [r["balance"] for r in rows] == ["none", "none+posthoc"] and rows[1]["posthoc_tau"] is not None


def test_every_reproduce_command_in_results_md_names_recipes_of_its_profile():
    text = " ".join(open(os.path.join(ROOT, "RESULTS.md")).read().split())  # commands may wrap
    commands = re.findall(r"python reproduce\.py (\w+) --only ([\w ]+)`", text)
    assert len(commands) >= 10
    for profile, names in commands:
        for name in names.split():
            assert name in reproduce.PROFILES[profile]["recipes"], (profile, name)
    for path in set(re.findall(r"configs/[\w.]+\.json", text)):
        assert os.path.exists(os.path.join(ROOT, path)), path


def test_fingerprint_ignores_sections_the_script_does_not_read():
    cfg = {"epochs": 3, "autoencoder": {"epochs": 2}, "style_transfer": {"w_cls": 1.0}}
    other = {**cfg, "style_transfer": {"w_cls": 3.0, "new_key": 1}}
    assert reproduce.fingerprint("train.py", [], cfg) == reproduce.fingerprint("train.py", [], other)
    assert reproduce.fingerprint("autoencoder.py", [], cfg) == reproduce.fingerprint("autoencoder.py", [], other)
    assert reproduce.fingerprint("style_transfer.py", [], cfg) != reproduce.fingerprint("style_transfer.py", [], other)
    assert reproduce.fingerprint("train.py", [], cfg) != reproduce.fingerprint("train.py", [], {**cfg, "epochs": 4})
