"""prepare_data.py on a tiny fake ArtGAN WikiArt release (folder, zip, CSVs), on plain style folders, and
on files written the way the real release writes them: style_class.txt says Art_Nouveau where the
folders say Art_Nouveau_Modern, CRLF line ends, non-ASCII and mis-encoded file names (grã©goire-...),
and a zip that does not flag its UTF-8 names. (Its usage mistakes: test_runs.py's one-line table.)"""
import hashlib
import os
import shutil
import unicodedata
import zipfile

import numpy as np
import pytest
from PIL import Image

import prepare_data
import sample_data
import wikiart
from config import UserError

STYLES = ["Baroque", "Cubism", "Ukiyo_e"]


def picture(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))


def make_artgan(root):
    """root/wikiart/<Style>/*.jpg, root/csv/style_{train,val}.csv and style_class.txt."""
    rows = {"train": [], "val": []}
    for label, style in enumerate(STYLES):
        for k in range(6 + 2 * label):
            rel = f"{style}/artist_{style.lower()}-{k}.jpg"
            path = root / "wikiart" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            picture(100 * label + k).save(path, quality=90)
            rows["val" if k % 3 == 2 else "train"].append(f"{rel},{label}")
    # an exact duplicate listed in val of a picture listed in train: it must stay in train only
    shutil.copy(root / "wikiart/Cubism/artist_cubism-0.jpg", root / "wikiart/Cubism/copy_of_0.jpg")
    rows["val"].append("Cubism/copy_of_0.jpg,1")
    (root / "wikiart/Cubism/broken.jpg").write_bytes(b"")  # a bad file listed in train
    rows["train"].append("Cubism/broken.jpg,1")
    rows["train"].append("Cubism/not_there.jpg,1")  # listed but missing
    (root / "csv").mkdir()
    (root / "csv/style_train.csv").write_text("\n".join(rows["train"]) + "\n")
    (root / "csv/style_val.csv").write_text("\n".join(rows["val"]) + "\n")
    (root / "csv/style_class.txt").write_text("".join(f"{i} {s}\n" for i, s in enumerate(STYLES)))
    return rows


def snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha1(open(p, "rb").read()).hexdigest())
    return out


def outputs(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                  if f.endswith(".jpg"))


@pytest.fixture
def artgan(tmp_path):
    rows = make_artgan(tmp_path / "release")
    return tmp_path / "release", rows


def test_artgan_folder_official_split_dedup_and_counts(artgan, tmp_path, capsys):
    src, rows = artgan
    before = snapshot(src)
    report = prepare_data.main([str(src / "wikiart"), str(tmp_path / "out"), "--csv", str(src / "csv"),
                                "--size", "24"])
    assert snapshot(src) == before  # the source is only read
    files = outputs(tmp_path / "out")
    assert "train/Cubism/artist_cubism-0.jpg" in files
    assert not any("copy_of_0" in f for f in files)  # duplicate removed from test, kept in train
    assert report["duplicates_removed"][0]["split"] == "test"
    n_train = {s: sum(r.startswith(s + "/") for r in rows["train"]) for s in STYLES}
    n_val = {s: sum(r.startswith(s + "/") for r in rows["val"]) for s in STYLES}
    n_train["Cubism"] -= 2  # broken.jpg and not_there.jpg
    n_val["Cubism"] -= 1  # the duplicate
    assert report["counts"] == {"train": n_train, "test": n_val}
    for f in files:
        with Image.open(tmp_path / "out" / f) as im:
            assert im.size == (24, 24) and im.mode == "RGB"
    assert len(report["skipped"]) == 1 and "broken.jpg" in report["skipped"][0]
    assert any("not_there.jpg" in p for p in report["problems"])
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "broken.jpg" in err and "not_there.jpg" in err
    # the output is what the project loads
    ds = wikiart.WikiArtDataset(str(tmp_path / "out" / "train"), 24, verbose=False)
    assert ds.classes == STYLES and ds.label_counts == n_train


def test_artgan_zip_gives_the_same_result(artgan, tmp_path):
    src, _ = artgan
    archive = tmp_path / "wikiart.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for d, _, fs in os.walk(src):
            for f in fs:
                p = os.path.join(d, f)
                z.write(p, os.path.relpath(p, src))  # wikiart/... and csv/... in one zip
    prepare_data.main([str(src / "wikiart"), str(tmp_path / "a"), "--csv", str(src / "csv"), "--size", "24"])
    report = prepare_data.main([str(archive), str(tmp_path / "b"), "--size", "24"])
    assert report["layout"] == "artgan"
    files = outputs(tmp_path / "a")
    assert files == outputs(tmp_path / "b") and files
    for f in files:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / f)), np.asarray(Image.open(tmp_path / "b" / f)))


def test_rerun_writes_nothing_and_interrupted_run_continues(artgan, tmp_path, monkeypatch):
    src, _ = artgan
    argv = [str(src / "wikiart"), str(tmp_path / "out"), "--csv", str(src / "csv"), "--size", "24", "--workers", "1"]
    real, calls = prepare_data.write_jpeg, []

    def dies_on_sixth(array, path, quality):
        calls.append(path)
        if len(calls) == 6:  # half a file written, then the process is interrupted
            open(f"{path}.{os.getpid()}.tmp", "wb").write(b"\xff\xd8 half")
            raise KeyboardInterrupt
        real(array, path, quality)
    monkeypatch.setattr(prepare_data, "write_jpeg", dies_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        prepare_data.main(argv)
    partial = outputs(tmp_path / "out")
    assert 5 <= len(partial) < 25  # a job already started by the pool may still finish
    for f in partial:  # everything already written is whole
        assert prepare_data.is_valid_output(str(tmp_path / "out" / f), 24)
    monkeypatch.setattr(prepare_data, "write_jpeg", real)
    report = prepare_data.main(argv)
    total = sum(sum(c.values()) for c in report["counts"].values())
    assert report["already_present"] == len(partial) and report["written"] == total - len(partial)
    assert not [f for _, _, fs in os.walk(tmp_path / "out") for f in fs if f.endswith(".tmp")]
    before = snapshot(tmp_path / "out")
    report = prepare_data.main(argv)
    assert report["written"] == 0 and report["already_present"] == total
    after = snapshot(tmp_path / "out")
    assert {k: v for k, v in after.items() if k.endswith(".jpg")} == {k: v for k, v in before.items() if k.endswith(".jpg")}
    # a cut-short output (e.g. copied by another tool) is rewritten, not trusted
    victim = tmp_path / "out" / partial[0]
    victim.write_bytes(victim.read_bytes()[:100])
    assert prepare_data.main(argv)["written"] == 1


def test_other_settings_refused_on_an_existing_output(artgan, tmp_path):
    src, _ = artgan
    argv = [str(src / "wikiart"), str(tmp_path / "out"), "--csv", str(src / "csv"), "--size", "24"]
    prepare_data.main(argv)
    with pytest.raises(UserError, match="size: 24 -> 32"):
        prepare_data.main(argv[:-1] + ["32"])


def test_style_folders_any_depth_stratified_split(tmp_path):
    src = tmp_path / "mine"
    for s, n in (("Fauvism", 10), ("Pop_Art", 20)):
        for k in range(n):
            p = src / s / ("a/b" if k % 2 else "c") / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            picture((500 if s == "Pop_Art" else 0) + k, (50, 20)).save(p)
    shutil.copy(src / "Pop_Art/c/0.png", src / "Pop_Art/c/again.png")  # exact duplicate
    (src / "Empty").mkdir()
    os.symlink(tmp_path / "gone", src / "Dangling")
    a = prepare_data.main([str(src), str(tmp_path / "a"), "--size", "16", "--test-fraction", "0.3", "--seed", "1"])
    assert a["layout"] == "style folders"
    assert a["counts"] == {"train": {"Fauvism": 7, "Pop_Art": 14}, "test": {"Fauvism": 3, "Pop_Art": 6}}
    assert len(a["duplicates_removed"]) == 1
    assert any("Empty: style folder without images" in p for p in a["problems"])
    assert any("Dangling: style folder is a dangling symlink" in p for p in a["problems"])
    for folder, seed in (("b", "1"), ("c", "2")):
        prepare_data.main([str(src), str(tmp_path / folder), "--size", "16", "--test-fraction", "0.3", "--seed", seed])
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b") != outputs(tmp_path / "c")  # the seed decides
    train = {f.split("/", 1)[1] for f in outputs(tmp_path / "a") if f.startswith("train")}
    test = {f.split("/", 1)[1] for f in outputs(tmp_path / "a") if f.startswith("test")}
    assert not train & test


def test_fit_modes(tmp_path):
    src = tmp_path / "src"
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255
    (src / "Minimalism").mkdir(parents=True)
    Image.fromarray(wide).save(src / "Minimalism/w.png")
    for fit, corner in (("crop", 255), ("letterbox", 0), ("squash", 0)):
        prepare_data.main([str(src), str(tmp_path / fit), "--size", "12", "--fit", fit, "--test-fraction", "0"])
        img = np.asarray(Image.open(tmp_path / fit / "train/Minimalism/w.jpg"))
        assert abs(int(img[6, 0, 0]) - corner) < 40 and img[6, 6, 0] > 200
    letter = np.asarray(Image.open(tmp_path / "letterbox/train/Minimalism/w.jpg"))
    assert letter[0, 6, 0] < 40  # bar above the picture
    # (an output folder inside the source, a missing source: test_runs.py)


# ---- the ArtGAN release as it is really written

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
