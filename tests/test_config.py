"""config.py: the schema in code, loading config.json <- -c FILE <- --set, and the errors it gives.
(How the scripts report those errors -- one line, exit status 2 -- is in test_misuse.py.)"""
import json

import pytest

import config


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


def test_config_json_holds_every_key_of_the_schema_at_its_default():
    """config.json is the file users edit: every key shown there, with the value the code defaults to."""
    with open(config.DEFAULT_CONFIG) as f:
        shown = config._flatten(json.load(f))
    assert shown == config._flatten(config.defaults())


def test_later_files_and_set_win(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"epochs": 3, "autoencoder": {"epochs": 4}, "_doc": "ignored"}))
    b.write_text(json.dumps({"epochs": 5}))
    cfg = config.load_config([config.DEFAULT_CONFIG, str(a), str(b)], ["autoencoder.epochs=6"])
    assert cfg["epochs"] == 5 and cfg["autoencoder"]["epochs"] == 6
    assert cfg["autoencoder"]["mode"] == config.defaults()["autoencoder"]["mode"]  # the rest of the section stays


def test_unknown_keys_suggest_within_their_section_only():
    with pytest.raises(config.ConfigError) as e:
        config.load_config(overrides=["autoencoder.epoch=2"])
    message = str(e.value)
    assert "did you mean 'autoencoder.epochs'?" in message and "Keys of section 'autoencoder': mode," in message
    assert "seed" not in message and "cluster" not in message  # not the ~90 keys of every section
    with pytest.raises(config.ConfigError, match=r"unknown config section 'autoencodr'. did you mean 'autoencoder.epochs'"):
        config.load_config(overrides=["autoencodr.epochs=2"])
    with pytest.raises(config.ConfigError, match=r"'autoencoder' is a section: .*--set autoencoder.mode="):
        config.load_config(overrides=["autoencoder=2"])


@pytest.mark.parametrize("item,message", [
    ("epochs=0", "'epochs' must be > 0, got 0"), ("epochs=-1", "'epochs' must be > 0, got -1"),
    ("lr=-0.1", "'lr' must be > 0"), ("batch_size=0", "'batch_size' must be > 0"),
    ("val_fraction=1.5", r"'val_fraction' must be in \[0, 1\), got 1.5"), ("seed=-1", "must be >= 0"),
    ("mode=Base", "'mode' must be one of base, bonusA, resnet"), ("resnet_blocks=[1,0]", "must be > 0"),
    ("resnet_blocks=[]", "must not be empty"), ("augment=1", "must be bool"), ("epochs=2.5", "must be int"),
    ("cluster.k=-2", "'cluster.k' must be >= 0"), ("style_transfer.same_style_fraction=2", r"in \[0, 1\]"),
])
def test_values_are_range_checked(item, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load_config(overrides=[item])


def test_set_parses_json_but_keeps_strings_strings():
    cfg = config.load_config(overrides=["resnet_blocks=[2,2,2,2]", "out_dir=123", "augment=false", "lr=1e-3"])
    assert cfg["resnet_blocks"] == [2, 2, 2, 2] and cfg["out_dir"] == "123" and cfg["augment"] is False
    assert cfg["lr"] == 0.001
    with pytest.raises(config.ConfigError, match="--set expects KEY=VALUE, got 'epochs'"):
        config.load_config(overrides=["epochs"])


def test_complete_fills_keys_added_since_an_old_checkpoint():
    old = {"mode": "resnet", "resnet_width": 8, "autoencoder": {"mode": "part2"}}  # no resnet_blocks yet
    cfg = config.complete(old)
    assert cfg["resnet_width"] == 8 and cfg["resnet_blocks"] == config.defaults()["resnet_blocks"]
    assert cfg["autoencoder"]["mode"] == "part2" and cfg["autoencoder"]["width"] == config.defaults()["autoencoder"]["width"]


def test_help_text_lists_every_key_with_default_and_help():
    text = config.help_text()
    for key, value in config._flatten(config.defaults()).items():
        assert key in text
    assert "[autoencoder]" in text and '"resnet"' in text and "(base|bonusA|resnet)" in text


def test_every_style_transfer_key_is_read_by_the_code():
    """No dead keys: a setting whose code path was removed leaves config.py and config.json with it (a
    loss weight w_X is read as the loss term g_X)."""
    code = "".join(open(f).read() for f in ("style_transfer.py", "wikiart.py", "reproduce.py"))
    for key in config.SCHEMA["style_transfer"]:
        read = f'"g_{key[2:]}"' if key.startswith("w_") else f'"{key}"'
        assert read in code, f"style_transfer.{key} is read nowhere"
    assert "w_cycle" not in config.SCHEMA["style_transfer"] and "d_patch" not in config.SCHEMA["style_transfer"]
