"""reproduce.py: recipes resolve into their own folders, the one "already done, skip it" (fingerprints), resuming,
a stop signal, and RESULTS.md's generated tables."""
import json
import os
import re

import pytest

import config
import reproduce
import runs
import tables
from conftest import ROOT


def table(text, name):
    """The text between a table's markers."""
    return re.search(rf"<!-- table:{re.escape(name)} -->\n(.*?)<!-- /table -->", text, re.S).group(1)


def plans_of(profile, root):
    prof = reproduce.PROFILES[profile]
    return {n: [reproduce.expand(n, c, prof, root, []) for c in reproduce.RECIPES[n]["commands"]] for n in prof["recipes"]}


def test_every_recipe_of_every_profile_resolves_into_its_own_folder_and_every_config_is_a_recipes():
    for name, prof in reproduce.PROFILES.items():
        for recipe, steps in plans_of(name, "out/results/x").items():
            for script, argv, cfg in steps:
                assert os.path.exists(os.path.join(ROOT, script)), script
                if cfg:
                    assert (config.flatten(cfg)[reproduce.OUT_KEY[script]] + "/").startswith(f"out/results/x/{recipe}/")
    used = {c for r in reproduce.RECIPES.values() for cmd in r["commands"] for c in re.findall(r"configs/[\w.]+", cmd)}
    overlays = {c for p in [*reproduce.PROFILES.values(), reproduce.SCALE_DOWN] for c in p.get("configs", [])}
    for path in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        assert f"configs/{path}" in used | overlays, f"configs/{path} is no recipe's"
        assert config.read_json(os.path.join(ROOT, "configs", path)).get("_doc"), f"configs/{path} has no _doc"
    families = {r["family"] for r in reproduce.RECIPES.values()} - {None}
    assert families <= {f for _, fams in tables.TABLES.values() for f in fams}


def test_a_recipe_that_writes_outside_its_folder_is_refused():
    with pytest.raises(config.UserError, match="must write under out/classifier_w16_64/"):
        reproduce.expand("classifier_w16_64", "train.py -c configs/classifier_w16_64.json --set out_dir=out/elsewhere",
                         reproduce.PROFILES["cpu"], "out/r", [])


def test_results_md_has_a_marker_for_every_table_of_the_cpu_profile():
    text = open(os.path.join(ROOT, "RESULTS.md")).read()
    families = {reproduce.RECIPES[n]["family"] for n in reproduce.PROFILES["cpu"]["recipes"]}
    for name, (_, fams) in tables.TABLES.items():
        if fams[0] in families:
            assert f"<!-- table:cpu/{name} -->" in text, name


def test_a_dry_run_prints_the_commands_and_leaves_nothing_behind(tmp_path, capsys):
    reproduce.main(["cpu", "--dry-run", "--only", "classifier_w16_64", "--out", str(tmp_path / "out"),
                    "--results", str(tmp_path / "results"), "--markdown", str(tmp_path / "RESULTS.md")])
    assert "running: python train.py -c configs/classifier_w16_64.json" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_an_interrupted_training_step_resumes_and_the_steps_after_it_run_plainly(tmp_path, capsys):
    root = str(tmp_path / "out")
    steps = plans_of("cpu", root)["classifier_w16_64"]
    folder = os.path.join(root, "classifier_w16_64")
    prints = [reproduce.fingerprint(*s, None) for s in steps]
    runs.atomic_save({"steps": [{"fingerprint": prints[0], "status": "started"}]}, os.path.join(folder, "reproduce.json"))
    reproduce.run_recipe("classifier_w16_64", steps, prints, folder, [], False, True, True)
    assert "--resume" not in capsys.readouterr().out  # no checkpoint of this attempt yet: it starts again
    open(os.path.join(folder, "last.pt"), "w").close()
    reproduce.run_recipe("classifier_w16_64", steps, prints, folder, [], False, True, True)
    lines = capsys.readouterr().out.splitlines()
    assert "resuming: python train.py" in lines[0] and lines[0].endswith("--resume") and "--resume" not in lines[1]


def test_a_recipe_reruns_when_its_config_or_an_input_it_reads_changes(tmp_path, capsys):
    names, out = ["autoencoder_w16_64", "style_transfer_w16_64"], tmp_path / "out"
    root = str(out / "cpu")
    prints = reproduce.fingerprints(plans_of("cpu", root), root)
    for n in names:  # both finished with the recipes as they are
        runs.atomic_save({"steps": [{"fingerprint": f, "status": "done"} for f in prints[n]]},
                         os.path.join(root, n, "reproduce.json"))
        for m in reproduce.RECIPES[n]["makes"]:
            runs.atomic_write_text("{}", reproduce.move(m, root))

    def dry_run(*extra):
        reproduce.main(["cpu", "--dry-run", "--only", *names, "--out", str(out), "--results", str(tmp_path),
                        "--markdown", str(tmp_path / "R.md"), *extra])
        return capsys.readouterr().out
    assert dry_run().count("finished with the same config") == 2
    changed = dry_run("--set", "autoencoder.epochs=99")  # a section style_transfer.py does not read: its input changed
    assert "running: python autoencoder.py" in changed and "running: python style_transfer.py" in changed
    assert "skipped" not in changed
    unread = dry_run("--set", "cluster.k=5")  # read by neither
    assert unread.count("finished with the same config") == 2


def test_a_stop_signal_lets_the_running_step_finish_its_epoch_and_starts_no_new_step(tmp_path, monkeypatch):
    steps = plans_of("cpu", str(tmp_path))["classifier_w16_64"]
    started = []

    def step(script, argv, log, quiet):
        started.append(script)
        reproduce._stopping.set()  # a SIGTERM came while the first step ran
        return 0, 1.0
    monkeypatch.setattr(reproduce, "run_step", step)
    try:
        status = reproduce.run_recipe("classifier_w16_64", steps, ["a", "b"], str(tmp_path), [], False, False, True)
    finally:
        reproduce._stopping.clear()
    assert started == ["train.py"] and status == "stopped"


def test_publish_keeps_only_entries_of_the_current_recipes_and_rewrites_only_between_markers(tmp_path, monkeypatch):
    prof, root = reproduce.PROFILES["cpu"], str(tmp_path / "out")
    prints = reproduce.fingerprints(plans_of("cpu", root), root)
    metrics = {"accuracy": 0.5, "balanced_accuracy": 0.25, "macro_f1": 0.2, "majority_class_rate": 0.2,
               "per_class": {"a": {}, "b": {}}, "n_images": 10}
    entry = lambda fp: {"family": "classifier", "fingerprints": fp, "commands": ["python train.py"], "commit": "abc",
                        "date": "today", "env": {"cpu": "CPU", "threads": 1, "torch": "2"}, "wall_s": 60,
                        "steps": [{"config": {"mode": "base"}}], "outputs": {"test_metrics.json": metrics,
                                                                             "train_log.json": [{}] * 12}}
    results = tmp_path / "cpu.json"
    runs.atomic_save({"recipes": {"classifier_w16_64_base": entry(prints["classifier_w16_64_base"]),
                                  "classifier_w16_64": entry(["an", "old", "recipe"])}}, str(results))
    md = tmp_path / "R.md"
    md.write_text("prose\n<!-- table:cpu/classifier -->\nold\n<!-- /table -->\nmore prose\n")
    kept = reproduce.publish(prof, "cpu", root, prints, str(results), str(md))["recipes"]
    assert list(kept) == ["classifier_w16_64_base"]  # the entry of an earlier recipe version is gone
    text = md.read_text()
    assert text.startswith("prose\n") and text.endswith("more prose\n") and "old" not in text
    assert "| 50.0 | 25.0 | 20.0 | `classifier_w16_64_base` |" in table(text, "cpu/classifier")
    assert "Generated by `python reproduce.py cpu`" in text


@pytest.mark.slow
def test_a_profile_runs_end_to_end_and_a_second_run_skips_what_finished(tmp_path):
    args = ["smoke", "--only", "sample", "classifier_w16_64_base", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path), "--markdown", str(tmp_path / "R.md")]
    (tmp_path / "R.md").write_text("<!-- table:smoke/classifier -->\n<!-- /table -->\n")
    reproduce.main(args)
    entry = json.loads((tmp_path / "smoke.json").read_text())["recipes"]["classifier_w16_64_base"]
    assert entry["outputs"]["test_metrics.json"]["n_images"] > 0 and entry["env"]["threads"] == 1
    assert "`classifier_w16_64_base`" in (tmp_path / "R.md").read_text()
    folder = tmp_path / "out" / "smoke" / "classifier_w16_64_base"
    assert sorted(f for f in os.listdir(folder) if f.endswith(".log")) == ["1_train.log", "2_test.log"]
    mtime = os.path.getmtime(folder / "best.pt")
    reproduce.main(args)
    assert os.path.getmtime(folder / "best.pt") == mtime
