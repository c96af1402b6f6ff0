"""prepare_data.py on files written the way the ArtGAN WikiArt release writes them: style_class.txt
says Art_Nouveau where the folders say Art_Nouveau_Modern, CRLF line ends, non-ASCII and mis-encoded
file names (grã©goire-...), and a zip that does not flag its UTF-8 names."""
import os
import unicodedata
import zipfile

import numpy as np
import pytest
from PIL import Image

import prepare_data
import sample_data
import wikiart
from config import UserError

# label index -> (style_class.txt name, the release's folder); indices as in the release
CLASSES = {3: ("Art_Nouveau", "Art_Nouveau_Modern"), 4: ("Baroque", "Baroque"), 12: ("Impressionism", "Impressionism")}
NAMES = ["grã©goire-michonze_birds.jpg",     # UTF-8 "é" read as Latin-1, then lower-cased: as in the release
         "joaquã\xadn-sorolla_peppers-1903.jpg",  # "í" the same way: an invisible soft hyphen in the name
         "alphonse-mucha_zodiac.jpg", "paul-klee_plain-{k}.jpg"]


def make_release(root, rows_extra=()):
    """root/wikiart/<folder>/<file> and the CSVs as the release writes them (UTF-8, CRLF)."""
    rows = {"train": [], "val": []}
    for label, (_, folder) in CLASSES.items():
        for k in range(6):
            name = NAMES[k] if k < 3 else NAMES[3].format(k=k)
            rel = f"{folder}/{label}-{name}"
            path = root / "wikiart" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(100 * label + k)
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(path)
            rows["val" if k == 5 else "train"].append(f"{rel},{label}")
    rows["train"] += list(rows_extra)
    (root / "style_train.csv").write_bytes("\r\n".join(rows["train"]).encode() + b"\r\n")
    (root / "style_val.csv").write_bytes("\r\n".join(rows["val"]).encode() + b"\r\n")
    (root / "style_class.txt").write_bytes(b"".join(f"{i} {n}\r\n".encode() for i, (n, _) in CLASSES.items()))
    return rows


def outputs(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs if f.endswith(".jpg"))


def test_styles_named_after_the_release_folders_with_crlf_and_mis_encoded_names(tmp_path, capsys):
    make_release(tmp_path / "release")
    report = prepare_data.main([str(tmp_path / "release"), str(tmp_path / "out"), "--size", "16"])
    assert report["layout"] == "artgan" and report["problems"] == [] and report["skipped"] == []
    assert report["renamed_styles"] == {"Art_Nouveau": "Art_Nouveau_Modern"}
    assert "style_class.txt says Art_Nouveau for Art_Nouveau_Modern" in capsys.readouterr().out
    expected = {"Art_Nouveau_Modern": 5, "Baroque": 5, "Impressionism": 5}
    assert report["counts"] == {"train": expected, "test": {s: 1 for s in expected}}  # every mis-encoded name found
    assert sorted(os.listdir(tmp_path / "out" / "train")) == sorted(expected)
    assert set(expected) <= set(sample_data.COURSE_TRAIN_COUNTS)  # the course's names: its test folders fit
    assert "train/Art_Nouveau_Modern/3-gr\u00e3_goire-michonze_birds.jpg" in outputs(tmp_path / "out")
    ds = wikiart.WikiArtDataset(str(tmp_path / "out" / "train"), 16, verbose=False)
    assert ds.classes == sorted(expected)


def test_a_zip_without_the_utf8_flag_and_decomposed_names_give_the_same_result(tmp_path, monkeypatch):
    rows = make_release(tmp_path / "release")
    prepare_data.main([str(tmp_path / "release"), str(tmp_path / "from_folder"), "--size", "16"])
    # Info-ZIP on Linux and macOS write UTF-8 names without setting the flag that says so
    monkeypatch.setattr(zipfile.ZipInfo, "_encodeFilenameFlags",
                        lambda self: (self.filename.encode("utf-8"), self.flag_bits & ~0x800))
    archive = tmp_path / "wikiart.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for d, _, fs in os.walk(tmp_path / "release"):
            for f in fs:
                p = os.path.join(d, f)
                z.write(p, os.path.relpath(p, tmp_path / "release"))
    monkeypatch.undo()
    with zipfile.ZipFile(archive) as z:
        assert not any(n.startswith("wikiart/Art_Nouveau_Modern/3-grã©") for n in z.namelist())  # read as cp437
    report = prepare_data.main([str(archive), str(tmp_path / "from_zip"), "--size", "16"])
    assert report["problems"] == [] and outputs(tmp_path / "from_zip") == outputs(tmp_path / "from_folder")

    # a folder whose file names come back decomposed (macOS): "é" as "e" + combining accent
    decomposed = tmp_path / "nfd"
    make_release(decomposed)
    for rel in rows["train"] + rows["val"]:
        rel = rel.rsplit(",", 1)[0]
        nfd = unicodedata.normalize("NFD", rel)
        if nfd != rel:
            os.rename(decomposed / "wikiart" / rel, decomposed / "wikiart" / nfd)
    report = prepare_data.main([str(decomposed), str(tmp_path / "from_nfd"), "--size", "16"])
    assert report["problems"] == [] and outputs(tmp_path / "from_nfd") == outputs(tmp_path / "from_folder")


def test_labels_and_folders_that_disagree_are_reported(tmp_path, capsys):
    stray = "Baroque/4-stray.jpg"  # lies in Baroque/ but is labelled 3 (Art_Nouveau_Modern)
    make_release(tmp_path / "release", rows_extra=[f"{stray},3"])
    Image.new("RGB", (8, 8)).save(tmp_path / "release" / "wikiart" / stray)
    report = prepare_data.main([str(tmp_path / "release"), str(tmp_path / "out"), "--size", "16"])
    assert report["counts"]["train"] == {"Art_Nouveau_Modern": 5, "Baroque": 5, "Impressionism": 5}  # skipped
    assert any("label 3 (Art_Nouveau in style_class.txt) has files in 2 folders" in p for p in report["problems"])
    assert any(stray in p and "labelled 3 (Art_Nouveau_Modern) but lies in Baroque/: skipped" in p
               for p in report["problems"])
    assert stray in capsys.readouterr().err  # in the WARNING block at the end

    # every Baroque row pointing into the Art Nouveau folder: two labels, one folder -> refused
    release = tmp_path / "bad"
    make_release(release)
    text = (release / "style_train.csv").read_bytes().replace(b"Baroque/", b"Art_Nouveau_Modern/")
    (release / "style_train.csv").write_bytes(text)
    with pytest.raises(UserError, match=r"labels 3, 4 all lie in Art_Nouveau_Modern/"):
        prepare_data.main([str(release), str(tmp_path / "out2"), "--size", "16"])
