"""Using what you trained on your own images: test.py --image (top-k styles), labelled folders other than
the run's own, autoencoder.py --image, and real-world inputs in decode_image (EXIF orientation, ICC colour
profiles, any size, unreadable files among good ones). (Their slips: test_runs.py's one-line table.)"""
import csv
import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import autoencoder
import config
import metrics
import test as classify  # the project's test.py (tests/conftest.py puts the project first on sys.path)
import images
import wikiart
from conftest import assert_real_picture

BIG_STYLES = ("Impressionism", "Realism", "Romanticism")  # the sample's largest styles: learnt first


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    """best.pt of the shared tiny ResNet (conftest.py): 4 epochs without augmentation on the 32 px
    sample, enough to rank the big styles of their own training images first."""
    return tiny_classifier.out / "best.pt"


def training_images(sample_root, styles):
    """{style: path of its first image in the training split (not the validation split)}."""
    data = wikiart.WikiArtDataset(f"{sample_root}/train", 32, verbose=False)
    train_idx, _ = wikiart.stratified_split(data.labels, config.defaults()["val_fraction"], config.defaults()["seed"])
    first = {}
    for i in train_idx:
        first.setdefault(data.classes[int(data.labels[i])], data.paths[i])
    return {s: first[s] for s in styles}


def classify_images(checkpoint, *paths, extra=()):
    classify.main(["--checkpoint", str(checkpoint), "--image", *map(str, paths), *extra, "--set", "threads=1"])


def predictions(folder):
    with open(folder / "predictions.json") as f:
        return json.load(f)


# ---- test.py --image: top-k styles

def test_topk_probabilities_sorted_sum_to_one_and_known_style_first(classifier, sample_root, tmp_path):
    known = training_images(sample_root, BIG_STYLES)
    copies = []
    for style, path in known.items():  # renamed, so that nothing but the pixels can give the style away
        copies.append(tmp_path / f"{len(copies)}{os.path.splitext(path)[1]}")
        shutil.copy(path, copies[-1])
    classify_images(classifier, *copies, extra=["--topk", "4"])
    out = classifier.parent / "predictions"
    result = predictions(out)
    assert result["checkpoint"] == str(classifier) and result["topk"] == 4 and result["image_size"] == 32
    assert result["inputs"] == list(map(str, copies)) and "--image" in result["command"]
    model, ckpt = classify.load_classifier(str(classifier), torch.device("cpu"))
    for row, style, path in zip(result["predictions"], known, copies):
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True)
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["top"][0]["style"] == style, (style, row["top"])
        assert all(row["probabilities"][t["style"]] == t["probability"] for t in row["top"])
        # the same numbers computed here: softmax of the model's logits on the decoded image
        with torch.no_grad():
            x = wikiart.to_float(np.array(images.decode_image(str(path), 32)[None]), torch.device("cpu"))
            expected = torch.softmax(model(x), 1)[0]
        got = torch.tensor([row["probabilities"][c] for c in sorted(ckpt["class_to_idx"], key=ckpt["class_to_idx"].get)])
        assert torch.allclose(got, expected, atol=1e-4)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == list(map(str, copies))
    assert [r["style_1"] for r in rows] == list(known)
    assert float(rows[0]["probability_2"]) == pytest.approx(result["predictions"][0]["top"][1]["probability"], abs=1e-6)
    assert json.loads((out / "test_config.json").read_text())["image_size"] == 32  # what made the folder
    assert_real_picture(out / "predictions.png")


def test_posthoc_bias_of_the_checkpoint_is_applied(classifier, sample_root, tmp_path):
    ckpt = torch.load(classifier, weights_only=False)
    bias = torch.zeros(len(ckpt["class_to_idx"]))
    bias[ckpt["class_to_idx"]["Pointillism"]] = 30.0  # a prior correction that overrules everything
    torch.save(ckpt | {"logit_bias": bias, "posthoc_tau": 9.5}, tmp_path / "biased.pt")
    images = list(training_images(sample_root, BIG_STYLES).values())
    classify_images(tmp_path / "biased.pt", *images)
    result = predictions(tmp_path / "predictions")
    assert result["posthoc_tau"] == 9.5
    assert all(row["top"][0]["style"] == "Pointillism" and row["top"][0]["probability"] > 0.99
               for row in result["predictions"])


def photo_folder(sample_root, root):
    """A folder as users have them: a wide JPEG, a greyscale PNG, an RGBA PNG, a text file, an empty
    .jpg and a sub-folder."""
    root.mkdir()
    picture = Image.open(training_images(sample_root, ["Impressionism"])["Impressionism"]).convert("RGB")
    picture.resize((300, 40)).save(root / "wide.jpg")
    picture.convert("L").resize((50, 90)).save(root / "grey.png")
    picture.convert("RGBA").save(root / "alpha.png")
    (root / "notes.txt").write_text("shopping list")
    (root / "empty.jpg").write_bytes(b"")
    (root / "holiday").mkdir()
    return root


def test_folder_without_style_subfolders_and_unreadable_files(classifier, sample_root, tmp_path, capsys):
    folder = photo_folder(sample_root, tmp_path / "photos")
    classify_images(classifier, folder, extra=["--topk", "2"])  # returns: exit status 0 under runs.cli
    out, err = capsys.readouterr()
    for name in ("notes.txt", "empty.jpg"):  # one line each, naming the file; the others are classified
        assert sum(line.startswith("skipped ") and name in line for line in err.splitlines()) == 1
    assert "sub-folder(s) not read (holiday)" in err
    result = predictions(classifier.parent / f"predictions_{tmp_path.name}_photos")  # named after the folder
    assert [os.path.basename(r["path"]) for r in result["predictions"]] == ["alpha.png", "grey.png", "wide.jpg"]
    assert len(result["skipped"]) == 2 and all(len(r["top"]) == 2 for r in result["predictions"])
    for r in result["predictions"]:  # the printed table has one line per image with its top style
        assert any(os.path.basename(r["path"]) in line and r["top"][0]["style"] in line for line in out.splitlines())


def test_exif_rotated_jpeg_is_classified_upright(classifier, sample_root, tmp_path):
    upright = Image.open(training_images(sample_root, ["Realism"])["Realism"]).convert("RGB").resize((64, 48))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a phone stores a photo taken sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with the EXIF orientation that says: rotate 90 degrees clockwise to view
    keep = dict(quality=100, subsampling=0)  # near-lossless, so that only the orientation differs
    upright.save(tmp_path / "upright.jpg", **keep)
    stored.save(tmp_path / "phone.jpg", exif=exif, **keep)
    stored.save(tmp_path / "sideways.jpg", **keep)  # the same pixels without the tag
    a, b, c = (images.decode_image(str(tmp_path / n), 32).astype(int) for n in ("upright.jpg", "phone.jpg", "sideways.jpg"))
    assert np.abs(a - b).max() <= 3 and np.abs(a - c).mean() > 10
    classify_images(classifier, tmp_path / "upright.jpg", tmp_path / "phone.jpg", tmp_path / "sideways.jpg",
                    extra=["--out", str(tmp_path / "exif")])  # an absolute --out is used as is
    up, phone, side = (np.array(list(r["probabilities"].values())) for r in predictions(tmp_path / "exif")["predictions"])
    assert np.abs(up - phone).max() < 0.01
    assert np.abs(up - side).max() > 3 * np.abs(up - phone).max()  # orientation does matter to the model


# ---- decode_image: colour profiles, sizes

def icc_profile(red, green, blue, gamma=2.2, name="test primaries"):
    """A minimal ICC v2 RGB display profile (matrix/TRC): the primaries' XYZ (D50) and one gamma."""
    s15 = lambda v: struct.pack(">i", round(v * 65536))
    text = name.encode() + b"\0"
    xyz = lambda v: b"XYZ " + bytes(4) + b"".join(s15(c) for c in v)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(78)),
            (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)),
            (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(28) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


SRGB_D50 = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)  # R, G, B primaries


def test_embedded_colour_profiles_are_converted_to_srgb(tmp_path):
    red, green, blue = SRGB_D50
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[..., 0] = 220
    img = Image.fromarray(pixels)
    img.save(tmp_path / "plain.jpg", quality=95)
    img.save(tmp_path / "swapped.jpg", quality=95, icc_profile=icc_profile(blue, green, red))  # R and B swapped
    img.save(tmp_path / "near_srgb.png", icc_profile=icc_profile(red, green, blue))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.save(tmp_path / "srgb.png", icc_profile=srgb)
    img.save(tmp_path / "broken.png", icc_profile=b"not a profile at all")
    decoded = {n: images.decode_image(str(tmp_path / n), 16)[8, 8].astype(int)
               for n in ("plain.jpg", "swapped.jpg", "near_srgb.png", "srgb.png", "broken.png")}
    assert decoded["plain.jpg"][0] > 200 and decoded["plain.jpg"][2] < 20
    assert decoded["swapped.jpg"][2] > 200 and decoded["swapped.jpg"][0] < 20  # what the file means: blue
    for n in ("near_srgb.png", "srgb.png", "broken.png"):  # sRGB-like, sRGB itself, unreadable profile: as is
        assert np.abs(decoded[n] - [220, 0, 0]).max() <= 3, n


@pytest.mark.parametrize("size", [(1, 1), (3000, 7), (5, 900), (333, 333)])
def test_any_size_and_aspect_ratio_decodes_to_the_square(size, tmp_path):
    Image.new("RGB", size, (10, 200, 30)).save(tmp_path / "x.png")
    out = images.decode_image(str(tmp_path / "x.png"), 32)
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - [10, 200, 30]).max() <= 1


# ---- labelled folders other than the run's own test folder

def test_evaluating_two_folders_leaves_two_result_files(classifier, sample_root, tmp_path):
    out = classifier.parent
    classify.main(["--checkpoint", str(classifier), "--set", "threads=1"])  # the run's own test folder
    own = (out / "test_metrics.json").read_bytes()
    other = tmp_path / "museum"
    for style in BIG_STYLES:
        shutil.copytree(f"{sample_root}/test/{style}", other / style)
    classify.main(["--checkpoint", str(classifier), "--set", "threads=1", f"test_dir={other}"])
    assert (out / "test_metrics.json").read_bytes() == own  # the first evaluation is untouched
    second_dir = out / f"eval_{tmp_path.name}_museum"
    second = json.loads((second_dir / "test_metrics.json").read_text())
    n_other = sum(len(os.listdir(other / s)) for s in BIG_STYLES)
    assert second["test_dir"] == str(other) and second["checkpoint"] == str(classifier)
    assert second["n_images"] == n_other != json.loads(own)["n_images"]
    assert second["image_size"] == 32 and f"test_dir={other}" in second["command"]
    assert json.loads((second_dir / "test_config.json").read_text())["test_dir"] == str(other)
    for png in ("confusion.png", "per_class_recall.png"):
        assert (second_dir / png).exists()


# ---- autoencoder.py --image

def test_autoencoder_image_on_a_folder_with_bad_files_writes_psnr_and_a_figure(tiny_autoencoder, sample_root, tmp_path):
    ae_out = tmp_path / "ae"
    shutil.copytree(tiny_autoencoder.out, ae_out)
    args = [a.replace(f"autoencoder.out_dir={tiny_autoencoder.out}", f"autoencoder.out_dir={ae_out}")
            for a in tiny_autoencoder.args]
    folder = photo_folder(sample_root, tmp_path / "photos")
    autoencoder.main(["--image", str(folder)] + args)
    result = json.loads((ae_out / "reconstruct" / "reconstructions.json").read_text())
    assert [os.path.basename(r["path"]) for r in result["images"]] == ["alpha.png", "grey.png", "wide.jpg"]
    assert sorted(os.path.basename(r.split(":")[0]) for r in result["skipped"]) == ["empty.jpg", "notes.txt"]
    model, _ = wikiart.load_autoencoder(str(ae_out / "best.pt"), torch.device("cpu"))
    for r in result["images"]:  # PSNR of this image's reconstruction, computed here
        x = (wikiart.to_float(np.array(images.decode_image(r["path"], 32)[None]), torch.device("cpu")) + 1) / 2
        with torch.no_grad():
            mse = float(((model(x) - x) ** 2).mean())
        assert r["psnr"] == pytest.approx(metrics.psnr(mse), abs=1e-3)
    assert result["checkpoint"] == str(ae_out / "best.pt") and "--image" in result["command"]
    assert (ae_out / "reconstruct" / "autoencoder_config.json").exists()
    assert_real_picture(ae_out / "reconstruct" / "reconstructions.png")
