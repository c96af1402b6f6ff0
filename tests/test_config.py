"""config.py: the schema in code, loading config.json <- -c FILE <- --set, and the mistakes it catches
(the exact words where they are the point: "did you mean", the file, line and column). How a script
shows such a mistake (one line, exit status 2) is test_runs.py's one-line table."""
import glob
import json
import os

import pytest

import config


@pytest.fixture
def edited_config(tmp_path):
    """config.json as a user edited it: edited_config(old, new) writes a copy with `old` replaced."""
    def edit(old, new):
        text = open(config.DEFAULT_CONFIG).read()
        assert old in text
        path = tmp_path / "config.json"
        path.write_text(text.replace(old, new))
        return str(path)
    return edit


def test_config_json_holds_every_key_of_the_schema_at_its_default():
    """config.json is the file users edit: every key shown there, with the value the code defaults to
    (the recommended recipe's settings)."""
    with open(config.DEFAULT_CONFIG) as f:
        shown = config.flatten(json.load(f))
    assert {k: v for k, v in shown.items() if not k.startswith("_")} == config.flatten(config.defaults())


def test_every_key_is_read_by_the_code():
    """No dead keys: a setting whose code path was removed leaves config.py and config.json with it (a
    loss weight w_X is read as the loss term g_X)."""
    code = "".join(open(f).read() for f in glob.glob(os.path.join(os.path.dirname(config.__file__), "*.py"))
                   if not f.endswith("config.py"))
    for key in config.flatten(config.defaults()):
        name = key.rpartition(".")[2]
        read = [f'"{name}"', f"'{name}'"] + ([f'"g_{name[2:]}"'] if name.startswith("w_") else [])
        assert any(r in code for r in read), f"{key} is read nowhere"


def test_later_files_and_set_win(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"epochs": 3, "autoencoder": {"epochs": 4}, "_doc": "ignored"}))
    b.write_text(json.dumps({"epochs": 5}))
    cfg = config.load_config([config.DEFAULT_CONFIG, str(a), str(b)], ["autoencoder.epochs=6", "lr=1", "mode=base"])
    assert cfg["epochs"] == 5 and cfg["autoencoder"]["epochs"] == 6 and cfg["mode"] == "base"
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["autoencoder"]["mode"] == config.defaults()["autoencoder"]["mode"]  # the rest of the section stays


def test_set_parses_json_but_keeps_strings_strings():
    cfg = config.load_config(overrides=["resnet_blocks=[2,2,2,2]", "out_dir=123", "augment=false", "lr=1e-3"])
    assert cfg["resnet_blocks"] == [2, 2, 2, 2] and cfg["out_dir"] == "123" and cfg["augment"] is False
    assert cfg["lr"] == 0.001
    with pytest.raises(config.ConfigError, match="--set expects KEY=VALUE, got 'epochs'"):
        config.load_config(overrides=["epochs"])


def test_a_misspelt_key_says_did_you_mean_and_lists_only_its_sections_keys(edited_config, tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.load_config([edited_config('"epochs": 12', '"epoch": 12')])
    message = str(e.value)
    assert message.startswith(f"{tmp_path}/config.json: unknown config key 'epoch'. did you mean 'epochs'? "
                              "Keys of the top level: seed, device,")
    assert message.split("Keys of the top level: ")[1].split(", ") == list(config.SCHEMA[""])  # not every section's
    with pytest.raises(config.ConfigError) as e:
        config.load_config([edited_config('"train_crop": 32', '"train_crp": 32')])
    assert "unknown config key 'autoencoder.train_crp'. did you mean 'autoencoder.train_crop'? Keys of section " \
           "'autoencoder': mode," in str(e.value) and "seed" not in str(e.value)
    with pytest.raises(config.ConfigError, match=r"unknown config key 'clustr'. did you mean the section 'cluster'\?"):
        config.load_config([edited_config('"cluster": {', '"clustr": {')])
    with pytest.raises(config.ConfigError, match=r"unknown config key 'autoencoder.epoch'. did you mean 'autoencoder.epochs'\?"):
        config.load_config(overrides=["autoencoder.epoch=2"])
    with pytest.raises(config.ConfigError, match=r"unknown config section 'autoencodr'. did you mean 'autoencoder.epochs'"):
        config.load_config(overrides=["autoencodr.epochs=2"])


def test_a_key_missing_from_config_json_falls_back_to_its_default_noted_once(edited_config, monkeypatch, capsys):
    path = edited_config('  "epochs": 12,\n', "")
    monkeypatch.setattr(config, "DEFAULT_CONFIG", path)
    monkeypatch.setattr(config, "_noted_missing", set())
    assert config.load_config([path])["epochs"] == config.SCHEMA[""]["epochs"][0] == 12
    config.load_config([path])
    assert capsys.readouterr().err == "note: config.json has no epochs; using the default (12)\n"  # once per process


def test_a_broken_config_file_names_the_file_line_and_column(edited_config, tmp_path):
    path = edited_config('"epochs": 12,', '"epochs": 12')
    line = next(i for i, text in enumerate(open(path), 1) if '"epochs"' in text) + 1  # where the comma is missed
    with pytest.raises(config.ConfigError, match=rf"config.json, line {line}, column 3: not valid JSON: Expecting ','"):
        config.load_config([path])
    bad = tmp_path / "recipe.json"
    for text, says in [('{"epochs": 3,}', "recipe.json, line 1, column 14: not valid JSON"),
                       ("[1, 2]", 'recipe.json: a config file holds one JSON object {"key": value, ...}, not a list'),
                       ('{"autoencoder": 3}', "'autoencoder' is a section: in a config file it takes an object such as "
                                              '{"mode": ...}; on the command line --set autoencoder.mode=...'),
                       ('{"lr": -0.003}', "recipe.json: config key 'lr' must be > 0, got -0.003")]:
        bad.write_text(text)
        with pytest.raises(config.ConfigError) as e:
            config.load_config([config.DEFAULT_CONFIG, str(bad)])
        assert says in str(e.value), (says, str(e.value))
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load_config([str(tmp_path / "nope.json")])


@pytest.mark.parametrize("item,message", [
    ("epochs=0", "'epochs' must be > 0, got 0"), ("epochs=-1", "'epochs' must be > 0, got -1"),
    ("lr=-0.1", "'lr' must be > 0, got -0.1"), ("batch_size=0", "'batch_size' must be > 0, got 0"),
    ("val_fraction=1.5", r"'val_fraction' must be in \[0, 1\), got 1.5"), ("seed=-1", "'seed' must be >= 0"),
    ("mode=Base", "'mode' must be one of base, bonusA, resnet"), ("resnet_blocks=[1,0]", "'resnet_blocks' must be > 0"),
    ("resnet_blocks=[]", "'resnet_blocks' must not be empty"), ("augment=1", "'augment' must be bool"), ("epochs=2.5", "'epochs' must be int"),
    ("epochs=many", "'epochs' must be int"), ("autoencoder.epochs=-1", "'autoencoder.epochs' must be > 0"),
    ("cluster.k=-2", "'cluster.k' must be >= 0"), ("style_transfer.same_style_fraction=2", r"'style_transfer.same_style_fraction' must be in \[0, 1\]"),
])
def test_values_are_type_and_range_checked(item, message):
    with pytest.raises(config.ConfigError, match="--set: config key " + message):
        config.load_config(overrides=[item])


def test_complete_fills_keys_added_since_an_old_checkpoint():
    old = {"mode": "resnet", "resnet_width": 8, "autoencoder": {"mode": "part2"}}  # no resnet_blocks yet
    cfg = config.complete(old)
    assert cfg["resnet_width"] == 8 and cfg["resnet_blocks"] == config.defaults()["resnet_blocks"]
    assert cfg["autoencoder"]["mode"] == "part2" and cfg["autoencoder"]["width"] == config.defaults()["autoencoder"]["width"]


def test_help_text_lists_every_key_with_default_help_and_choices():
    lines = config.help_text().splitlines()
    keys = [line.split()[0] for line in lines if line.startswith("  ")]
    assert keys == list(config.flatten(config.defaults()))
    assert "[autoencoder]" in lines
    mode = next(line for line in lines if line.split()[0] == "mode")
    assert '"resnet"' in mode and config.SCHEMA[""]["mode"][1] in mode and mode.endswith("(base|bonusA|resnet)")
