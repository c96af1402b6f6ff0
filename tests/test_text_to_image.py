"""Bonus B: pretrain_base.py and text_to_image.py on tiny pipelines the tests build themselves (no download):
a base pretrained on four styles of the sample, LoRA with the recipe's targets on it, the whole model, the
adapter file, the base's fingerprint, the atomic folder swap, the evaluation on validation and test."""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import config
import pretrain_base
import runs
import t2i_models as t2i
import text_to_image
from conftest import run_main

CPU = torch.device("cpu")
FOUR_STYLES = ("Baroque", "Pop_Art", "Pointillism", "Ukiyo_e")
PROMPTS, SEEDS = ["a Pop Art painting", "a Baroque painting"], [5, 6]


@pytest.fixture(scope="module")
def four_styles(sample_root, tmp_path_factory):
    """The sample's train and test folders with four styles only (quick)."""
    root = tmp_path_factory.mktemp("four")
    for split in ("train", "test"):
        for style in FOUR_STYLES:
            shutil.copytree(f"{sample_root}/{split}/{style}", root / split / style)
    return root


@pytest.fixture(scope="module")
def base(four_styles, tmp_path_factory):
    """pretrain_base.py at a tiny size: every stage one or two epochs of two steps."""
    out = tmp_path_factory.mktemp("base")
    args = ["--set", f"train_dir={four_styles}/train", "image_size=32", "cache_dir=", "device=cpu",
            f"base.out_dir={out}", "base.unet_channels=[32,32]", "base.vae_channels=[16,16]", "base.vae_epochs=1",
            "base.vae_decoder_epochs=1", "base.epochs=2", "base.steps_per_epoch=2", "base.batch_size=8"]
    run_main("pretrain_base.py", *args)
    return SimpleNamespace(out=out, pipeline=str(out / "pipeline"), args=args)


def changed(items, **keys):
    """--set items with some keys changed (a "__" in a name stands for the dot of a section)."""
    keys = {k.replace("__", "."): v for k, v in keys.items()}
    return [i for i in items if i.split("=")[0] not in keys] + [f"{k}={v}" for k, v in keys.items()]


def lora_args(data, out, pretrained, **extra):
    """--set items of text_to_image.py at a tiny size; the method settings are config.json's: the LoRA recipe's."""
    items = [f"train_dir={data}/train", f"test_dir={data}/test", "image_size=32", "cache_dir=", "device=cpu",
             f"text_to_image.pretrained={pretrained}", f"text_to_image.out_dir={out}", "text_to_image.epochs=2",
             "text_to_image.steps_per_epoch=2", "text_to_image.batch_size=8", "text_to_image.steps=2",
             "text_to_image.grid_seeds=2", "text_to_image.eval_images=5"]
    return changed(items, **extra)


@pytest.fixture(scope="module")
def lora(four_styles, base, tmp_path_factory):
    """LoRA trained through the script's own code (the recipe's targets, text encoder too): the pipeline in memory,
    out_dir, the --set items."""
    out = tmp_path_factory.mktemp("lora")
    items = lora_args(four_styles, out, base.pipeline)
    cfg = config.load_config(overrides=items)
    runs.start(cfg)
    pipe = text_to_image.train(cfg, CPU, False, ["--set", *items])
    return SimpleNamespace(pipe=pipe, out=out, items=items, cfg=cfg)


def copy_run(lora, tmp_path):
    """A copy of the LoRA run's out_dir (symlinks kept) and its --set items pointing there."""
    shutil.copytree(lora.out, tmp_path / "run", symlinks=True)
    return tmp_path / "run", changed(lora.items, text_to_image__out_dir=tmp_path / "run")


def epochs(folder):
    return [h["epoch"] for h in json.loads((folder / "train_log.json").read_text())]


def assert_one_line_error(p, says):
    """Exit status 2 and one line of error, the last on stderr (before it only progress bars)."""
    lines = [line for line in p.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert p.returncode == 2 and lines and says in lines[-1] and ": error: " in lines[-1], p.stderr[-2000:]
    assert not [line for line in lines[:-1] if "error" in line.lower() or "warn" in line.lower()], p.stderr[-2000:]


def test_colour_words_name_what_the_pixels_show():
    flat = lambda rgb: np.full((8, 8, 3), rgb, np.uint8)
    stripes = np.zeros((8, 8, 3), np.uint8)
    stripes[::2] = 255
    assert pretrain_base.colour_words([flat((40, 10, 10)), flat((250, 240, 90)), flat((128, 128, 128)),
                                       flat((20, 40, 200)), stripes]) == [
        "dark red flat", "light vivid yellow flat", "grey flat", "dark vivid blue flat", "grey contrasty"]


def test_word_tokenizer_has_one_token_per_prompt_word(tmp_path):
    prompts = ["a Ukiyo-e painting", "a Post Impressionism painting", "a Pop Art painting", "a Baroque painting"]
    tok = pretrain_base.word_tokenizer(prompts, str(tmp_path))
    assert len(tok("a Post Impressionism painting").input_ids) == 2 + 4  # start, a, post, impressionism, painting, end
    assert tok.convert_ids_to_tokens(tok("baroque art").input_ids[1:-1]) == ["baroque</w>", "art</w>"]
    unknown = tok("a zebra").input_ids
    assert tok.unk_token_id not in unknown[1:-1] and len(unknown) > 4  # spelled out letter by letter


def test_the_base_learns_its_captions_not_the_styles_and_the_decoder_stage_keeps_the_encoder(base):
    """Captions from the pixels train their words; the style words stay as built (for LoRA to teach);
    the decoder stage changes the decoder alone, so the latents stay those of the VAE stage."""
    pipe = t2i.load_pipeline(base.pipeline, CPU)
    cfg = config.load_config(overrides=base.args[1:])
    vocabulary = [cfg["base"]["train_prompt"].format(colours=" ".join(pretrain_base.COLOUR_WORDS))] + [
        t2i.make_prompt(s, "a {style} painting") for s in sorted(FOUR_STYLES)]
    built = pretrain_base.build_pipeline(cfg["base"], vocabulary, 32, cfg["seed"])
    ids = lambda text: pipe.tokenizer(text).input_ids[1:-1]
    emb = lambda p: p.text_encoder.get_input_embeddings().weight.detach()
    style_words = [i for s in FOUR_STYLES for i in ids(t2i.style_phrase(s).lower())]
    assert all(w.endswith("</w>") for w in pipe.tokenizer.convert_ids_to_tokens(style_words))  # whole words
    assert torch.equal(emb(pipe)[style_words], emb(built)[style_words]), "style words were trained"
    assert not torch.equal(emb(pipe)[ids("painting")], emb(built)[ids("painting")])
    vae_stage = torch.load(base.out / "vae" / "last.pt", weights_only=False)["model"]
    after = pipe.vae.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], vae_stage[k])}
    assert changed == {"decoder", "post_quant_conv"}, changed
    assert [epochs(base.out / d) for d in ("vae", "vae_decoder", ".")] == [[1], [1], [1, 2]]


def test_pretraining_cut_short_by_the_guard_resumes_at_the_stage_it_reached(base, tmp_path):
    """base.max_minutes ends the run after the epoch in which it passes, loudly, before any pipeline is
    written; --resume continues that stage, then runs the others."""
    args = changed(base.args, base__out_dir=tmp_path, base__vae_epochs=2)
    p = run_main("pretrain_base.py", *args, "base.max_minutes=0.0001")
    assert "VAE CUT SHORT after epoch 1 of 2" in p.stderr and not (tmp_path / "pipeline").exists()
    run_main("pretrain_base.py", "--resume", *args)
    assert [epochs(tmp_path / d) for d in ("vae", "vae_decoder", ".")] == [[1, 2], [1], [1, 2]]
    assert (tmp_path / "pipeline" / "model_index.json").exists()


def test_the_adapter_file_loads_whole_into_a_fresh_pipeline(lora, base, tmp_path):
    """Issue 45: with the recipe's targets (attention, time_emb_proj, add_embedding.proj, the text encoder's
    attention and word embeddings), diffusers' own load_lora_weights on a fresh base gives the trained
    pipeline's images bit for bit, every tensor of the file in place; a file with a tensor that does not
    land is refused in one line."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, safe_open, save_file
    trained = t2i.generate(lora.pipe, 1, PROMPTS, SEEDS, 2, 4.0, 2)
    fresh = StableDiffusionPipeline.from_pretrained(base.pipeline, safety_checker=None, requires_safety_checker=False)
    fresh.load_lora_weights(str(lora.out / "lora"))  # as a user does
    assert np.array_equal(t2i.generate(fresh, 1, PROMPTS, SEEDS, 2, 4.0, 2), trained)
    path = lora.out / "lora" / t2i.LORA_FILE
    saved = load_file(path)
    loaded = {f"{n}.{k}": v for n in ("unet", "text_encoder")
              for k, v in get_peft_model_state_dict(getattr(fresh, n), adapter_name="default_0").items()}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    for target in ("to_k", "to_out.0", "time_emb_proj", "add_embedding.proj", "self_attn.q_proj", "token_embedding"):
        assert any(f".{target}." in k for k in saved), target
    base_images = t2i.generate(t2i.load_pipeline(base.pipeline, CPU), 0, PROMPTS, SEEDS, 2, 4.0, 2)
    assert np.array_equal(t2i.generate(fresh, 0, PROMPTS, SEEDS, 2, 4.0, 2), base_images)  # scale 0: the base
    assert not np.array_equal(trained, base_images)

    run, items = copy_run(lora, tmp_path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    key = next(k for k in saved if ".to_q.lora_A" in k)
    save_file({k.replace(".to_q.", ".to_qq.") if k == key else k: v for k, v in saved.items()},
              str(run / "lora" / t2i.LORA_FILE), metadata)
    assert_one_line_error(run_main("text_to_image.py", "--style", "all", "--set", *items, check=False),
                          "adapter tensors do not load into this pipeline")


def test_adapters_refuse_a_retrained_base(lora, base, tmp_path):
    """Issue 44: the adapters name their base by a hash of its UNet and text-encoder files; once the base
    is retrained, drawing or evaluating with them (or resuming their training) stops in one line."""
    shutil.copytree(base.out / "pipeline", tmp_path / "base", symlinks=False)
    run, items = copy_run(lora, tmp_path)
    items = changed(items, text_to_image__pretrained=tmp_path / "base")
    info = json.loads((run / "lora" / "info.json").read_text())
    assert info["base_fingerprint"] == t2i.fingerprint(str(tmp_path / "base"))  # the same weights, elsewhere
    run_main("text_to_image.py", "--style", "Pop_Art", "--n", "1", "--set", *items)
    pipe = t2i.load_pipeline(str(tmp_path / "base"), CPU)
    with torch.no_grad():
        pipe.unet.conv_out.bias += 0.01  # one more step of pretraining
    t2i.save_folder(str(tmp_path / "base"), pipe.save_pretrained)
    for command in (["--style", "all"], ["--evaluate", "val"]):
        assert_one_line_error(run_main("text_to_image.py", *command, "--set", *items, check=False),
                              "was trained on another base")
    assert_one_line_error(run_main("text_to_image.py", "--resume", "--set", *items, check=False), "another base")


def test_a_replaced_folder_is_never_missing(base, tmp_path, monkeypatch):
    """Issue 44: save_folder replaces a pipeline folder in one rename of a symlink, so at every moment the
    folder holds a whole pipeline (the old or the new); diffusers' from_pretrained follows the link."""
    from diffusers import StableDiffusionPipeline
    pipe, folder = t2i.load_pipeline(base.pipeline, CPU), str(tmp_path / "pipeline")
    t2i.save_folder(folder, pipe.save_pretrained)
    parts = ["model_index.json"] + [f"{m}/config.json" for m in ("unet", "vae", "text_encoder")]
    whole = lambda: all(os.path.isfile(os.path.join(folder, p)) for p in parts)
    seen = []
    for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree"), (shutil, "move")):
        def watched(*a, original=getattr(module, name), **k):
            original(*a, **k)
            seen.append(whole())
        monkeypatch.setattr(module, name, watched)
    for _ in range(3):
        t2i.save_folder(folder, pipe.save_pretrained)
    monkeypatch.undo()
    assert seen and all(seen), seen
    assert len([f for f in os.listdir(tmp_path) if f.startswith(".pipeline.")]) == 2  # this version and the one before
    StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)


def test_the_max_minutes_guard_cuts_loudly_and_resume_finishes_the_same_training(lora, four_styles, base, tmp_path):
    from safetensors.torch import load_file
    items = lora_args(four_styles, tmp_path, base.pipeline)
    p = run_main("text_to_image.py", "--set", *items, "text_to_image.max_minutes=0.0001")
    assert "CUT SHORT after epoch 1 of 2" in p.stderr and "--resume" in p.stderr
    assert json.loads((tmp_path / "train_log.json").read_text())[-1]["cut_short"] is True
    assert json.loads((tmp_path / "lora" / "info.json").read_text())["cut_short"] is True
    run_main("text_to_image.py", "--resume", "--set", *items)
    assert epochs(tmp_path) == [1, 2]
    resumed, straight = (load_file(run / "lora" / t2i.LORA_FILE) for run in (tmp_path, lora.out))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_lora_rank_0_fine_tunes_the_whole_model_at_the_resolution_asked(four_styles, base, tmp_path):
    """The whole-model row: every UNet and text-encoder weight trained, the VAE and the base folder kept;
    text_to_image.resolution 16 on a 32 px base trains and draws at 16 px."""
    items = lora_args(four_styles, tmp_path, base.pipeline, text_to_image__lora_rank=0, text_to_image__resolution=16,
                      text_to_image__epochs=1)
    before = t2i.fingerprint(base.pipeline)
    run_main("text_to_image.py", "--set", *items)
    assert t2i.fingerprint(base.pipeline) == before and not (tmp_path / "lora").exists()
    models, _ = text_to_image.load_trained(config.load_config(overrides=items), CPU, "")
    (untouched, _), (tuned, _) = models["base"], models["fine-tuned"]
    a, b = untouched.components, tuned.components
    changed = {m for m in ("unet", "vae", "text_encoder") if any(
        not torch.equal(p, q) for p, q in zip(a[m].state_dict().values(), b[m].state_dict().values()))}
    assert changed == {"unet", "text_encoder"}
    assert t2i.generate(tuned, 0, PROMPTS, SEEDS, 2, 4.0, 2).shape == (2, 16, 16, 3)


def test_generation_is_seeded_and_independent_of_the_batch(lora):
    a = t2i.generate(lora.pipe, 1, ["a Pop Art painting"] * 3, [0, 1, 2], 2, 4.0, 3)
    alone = t2i.generate(lora.pipe, 1, ["a Pop Art painting"], [1], 2, 4.0, 1)
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 3)
    assert np.array_equal(a[1], alone[0]) and not np.array_equal(a[0], a[1])


def test_drawing_from_the_trained_folder_and_its_slips(lora, tmp_path):
    run, items = copy_run(lora, tmp_path)
    run_main("text_to_image.py", "--style", "pop_art", "--n", "2", "--save-images", "--set", *items)
    assert (run / "grid_Pop_Art.png").exists() and len(os.listdir(run / "images" / "fine-tuned")) == 2
    p = run_main("text_to_image.py", "--style", "Pointilism", "--set", *items, check=False)
    assert_one_line_error(p, "unknown style 'Pointilism'; did you mean 'Pointillism'? The model's styles: Baroque")
    empty = changed(items, text_to_image__out_dir=tmp_path / "none")
    for command in (["--style", "all"], ["--evaluate"]):  # no weights: the command that trains them
        assert_one_line_error(run_main("text_to_image.py", *command, "--set", *empty, check=False),
                              "train them first: python text_to_image.py --set train_dir=")


def test_pipeline_folder_errors_are_one_line(base, tmp_path):
    p = run_main("text_to_image.py", "--set", f"text_to_image.pretrained={tmp_path / 'nope'}",
                 f"text_to_image.out_dir={tmp_path / 'out'}", check=False)
    assert_one_line_error(p, "pretrained pipeline not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(config.UserError, match="no model_index.json"):
        t2i.load_pipeline(str(tmp_path / "empty"), CPU)
    shutil.copytree(base.pipeline, tmp_path / "broken")
    weights = tmp_path / "broken" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated copy
    with pytest.raises(config.UserError, match="cannot load a pipeline from"):
        t2i.load_pipeline(str(tmp_path / "broken"), CPU)


@pytest.mark.slow
def test_evaluate_on_validation_never_reads_the_test_folder_then_on_test(lora, tmp_path):
    """--evaluate val: the real paintings are the training folder's validation split (test_dir may not even
    exist); --evaluate: test paintings. Both score the files in out_dir, base, LoRA and LoRA at scale 0.5."""
    run, items = copy_run(lora, tmp_path)
    gone = changed(items, test_dir=tmp_path / "no_test")
    run_main("text_to_image.py", "--evaluate", "val", "--set", *gone)
    run_main("text_to_image.py", "--evaluate", "--set", *items)
    for name in ("evaluation_val", "evaluation"):
        r = json.loads((run / f"{name}.json").read_text())
        assert r["split"] == ("val" if name.endswith("val") else "test") and r["styles"] == sorted(FOUR_STYLES)
        assert set(r["models"]) == {"base", "fine-tuned", "fine-tuned@0.5", "real"}
        assert r["training"]["epochs"] == 2 and r["training"]["cut_short"] is False
        assert 0 < r["training"]["trainable_parameters"] < r["training"]["unet_parameters"]
        assert r["vae"]["psnr"] > 0 and r["vae"]["chroma_ratio"] > 0
        base, real = r["models"]["base"], r["models"]["real"]
        assert base["lab_gap_closed"] == 0 and base["realism_gap_closed"] == 0  # the base is where gaps start
        for m in r["models"].values():
            assert m["styles_above_chance_raw"] == sum(v > r["chance"] for v in m["raw_hit_per_style"].values())
            assert m["raw_of_ceiling"] == pytest.approx(m["raw_hit_rate"] / real["raw_hit_rate"])
        for m in (r["models"][k] for k in ("base", "fine-tuned", "fine-tuned@0.5")):
            assert 0 <= m["two_sample"]["accuracy"] <= 1 and set(m["lab_gap_closed_per_style"]) <= set(r["styles"])
        for picture in ("evaluation", "nearest", "vae_reconstructions"):
            assert (run / f"{picture}{name[10:]}.png").exists()
