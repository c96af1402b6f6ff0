"""Turn a downloaded WikiArt (or any folder of style folders) into <out>/{train,test}/<Style>/<name>.jpg squares.

    python prepare_data.py ~/Downloads/wikiart.zip data/wikiart416           # ArtGAN zip, official split
    python prepare_data.py ~/wikiart data/wikiart416 --csv ~/wikiart_csv     # extracted, CSVs elsewhere
    python prepare_data.py my_paintings/ data/mine --size 256 --fit crop --test-fraction 0.2 --seed 0
    python prepare_data.py ../shared/data/wikiart16 /tmp/w16_416 --size 416  # keeps its train/test split

Sources (a folder or a zip): the ArtGAN release (wikiart/<Style>/, style_train.csv, style_val.csv -> test/,
style_class.txt; the CSVs in the source or given with --csv), <src>/train|test/<Style>/ (the split is kept) or
<src>/<Style>/** (a stratified split). Exact duplicates are kept once (the train copy wins). The source is only
read; outputs already there are kept (an interrupted run continues). Counts: <out>/prepare_data.json.
"""
import contextlib
import csv
import hashlib
import io
import json
import os
import pathlib
import sys
import unicodedata
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

import config
import runs
import images
import wikiart
from config import UserError


class Source:  # the files of a folder or of a zip archive (read in place, never extracted), by '/'-separated path

    def __init__(self, path, what="source"):
        self.name, self.zip, self.info, self.paths = path, None, {}, []
        if os.path.isdir(path):
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, path).replace(os.sep, "/")
                self.paths += [f if rel == "." else f"{rel}/{f}" for f in sorted(filenames) if not f.startswith(".")]
            return
        if not os.path.exists(path):
            raise UserError(f"{what} not found: {path}")
        if not zipfile.is_zipfile(path):
            raise UserError(f"{what} '{path}' is neither a folder nor a zip file")
        self.zip = zipfile.ZipFile(path)
        for i in self.zip.infolist():
            name = i.filename
            if not i.flag_bits & 0x800:  # unflagged names are decoded as cp437, yet Info-ZIP and macOS write UTF-8
                with contextlib.suppress(UnicodeError):
                    name = name.encode("cp437").decode("utf-8")
            if not i.is_dir():
                self.info[name] = i
        self.paths = sorted(p for p in self.info if not any(part.startswith(".") or part == "__MACOSX"
                                                           for part in p.split("/")))

    def signature(self, rel):  # files with different signatures cannot be identical
        if self.zip:
            return self.info[rel].file_size, self.info[rel].CRC
        with contextlib.suppress(OSError):
            return os.path.getsize(self.where(rel))

    def read(self, rel):
        return self.zip.read(self.info[rel]) if self.zip else pathlib.Path(self.where(rel)).read_bytes()

    def where(self, rel):
        return f"{self.name}:{rel}" if self.zip else os.path.join(self.name, rel)


def find_member(sources, basename):  # (source, path) of the shortest path named `basename` in any source, or None
    hits = [(p.count("/"), p, s) for s in sources for p in s.paths if p.rsplit("/", 1)[-1] == basename]
    best = min(hits, key=lambda h: h[:2], default=None)
    return (best[2], best[1]) if best else None


def read_text(source, path, problems):  # UTF-8 (with or without BOM), else (re-saved by a spreadsheet?) Latin-1
    data = source.read(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(f"{source.where(path)} is not UTF-8 text: read as Latin-1, accented names may not match")
        return data.decode("latin-1")


def plan_artgan(source, csv_sources, problems):
    """(split, style, path) from the CSVs, and the renamed styles: a label's is its folder with most files."""
    found = find_member(csv_sources, "style_class.txt")
    if not found:
        raise UserError("style_train.csv found but no style_class.txt next to it (index -> style name)")
    lines = [line.split(maxsplit=1) for line in read_text(*found, problems).splitlines() if line.strip()]
    names = {int(idx): name.strip() for idx, name in lines}
    rows, folders = [], defaultdict(Counter)
    for split, csv_name in (("train", "style_train.csv"), ("test", "style_val.csv")):
        found = find_member(csv_sources, csv_name)
        if not found:
            raise UserError(f"ArtGAN layout: {csv_name} not found (give its folder or zip with --csv)")
        csv_rows = [row for row in csv.reader(io.StringIO(read_text(*found, problems))) if row and row[0].strip()]
        for i, row in enumerate(csv_rows):
            if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                if i > 0:  # the first row may be a header
                    problems.append(f"{csv_name} line {i + 1}: expected 'path,label_index', got {row}")
                continue
            rel, label = unicodedata.normalize("NFC", row[0].strip().replace("\\", "/")), int(row[1])
            folder = rel.split("/")[-2] if "/" in rel else None
            rows.append((split, f"{csv_name} line {i + 1}", rel, label, folder))
            if folder is not None:
                folders[label][folder] += 1
    style_of = {label: folders[label].most_common(1)[0][0] if folders[label] else name for label, name in names.items()}
    for label, name in names.items():
        if len(folders[label]) > 1:
            spread = ", ".join(f"{f}/ ({n})" for f, n in folders[label].most_common())
            problems.append(f"label {label} ({name} in style_class.txt) has files in {len(folders[label])} folders: "
                            f"{spread}; named {style_of[label]}, the files in the other folders are skipped")
    clash = [style for style, n in Counter(style_of.values()).items() if n > 1]
    if clash:
        raise UserError("the CSV labels and the release's folders disagree: " + "; ".join(
            f"labels {', '.join(str(label) for label in style_of if style_of[label] == s)} all lie in {s}/"
            for s in clash) + ". Check style_class.txt and the CSVs")
    renamed = {name: style_of[label] for label, name in names.items() if style_of[label] != name}
    if renamed:
        print("style folders named after the release's folders; style_class.txt says "
              + ", ".join(f"{a} for {b}" for a, b in renamed.items()))
    by_suffix = {}  # the CSV paths are relative to the wikiart/ folder, wherever that sits; names compared as NFC
    for p in source.paths:  # (file systems (macOS) and tools may hand out decomposed accents)
        parts = unicodedata.normalize("NFC", p).split("/")
        for k in range(len(parts)):
            by_suffix.setdefault("/".join(parts[k:]), p)
    items = []
    for split, where, rel, label, folder in rows:
        if label not in names:
            problems.append(f"{where}: label {label} is not in style_class.txt")
        elif folder is not None and folder != style_of[label]:
            problems.append(f"{where}: {rel} is labelled {label} ({style_of[label]}) but lies in {folder}/: skipped")
        elif rel not in by_suffix:
            problems.append(f"{where}: {rel} is listed but not in {source.name}")
        else:
            items.append((split, style_of[label], by_suffix[rel]))
    return items, renamed


def plan_folders(source, problems):
    """(split, style, path) from <src>/[train|test/]<Style>/** (split None when the source has none), the layout."""
    paths = [p for p in source.paths if p.lower().endswith(images.IMAGE_EXTENSIONS)]
    tops, skip = {p.split("/")[0] for p in paths if "/" in p}, 0
    if source.zip and len(tops) == 1 and all(p.count("/") >= 2 for p in paths):
        skip = 1  # a zip of one folder: look inside it
        tops = {p.split("/")[1] for p in paths}
    has_split = {"train", "test"} <= tops
    items = []
    for p in paths:
        parts = p.split("/")[skip:]
        if has_split and (parts[0] not in ("train", "test") or len(parts) < 3):
            problems.append(f"{source.where(p)}: not in train/<Style>/ or test/<Style>/, ignored")
        elif len(parts) < 2:
            problems.append(f"{source.where(p)}: not inside a <Style>/ folder, ignored")
        else:
            items.append((parts[0], parts[1], p) if has_split else (None, parts[0], p))
    if not source.zip:  # style folders that give nothing deserve a word
        used = {(split, style) for split, style, _ in items}
        for split in ("train", "test") if has_split else (None,):
            parent = os.path.join(source.name, split or "")
            for style in sorted(s for s in os.listdir(parent) if not s.startswith(".")):
                full = os.path.join(parent, style)
                if os.path.islink(full) and not os.path.exists(full):
                    problems.append(f"{full}: style folder is a dangling symlink, ignored")
                elif os.path.isdir(full) and (split, style) not in used:
                    problems.append(f"{full}: style folder without images, ignored")
    return items, "split folders" if has_split else "style folders"


def remove_duplicates(source, items):
    """The first of each set of byte-identical files (train first); only those sharing a size (and CRC) are hashed."""
    order = sorted(items, key=lambda it: (it[0] != "train", it[0] or "", it[1], it[2]))
    signatures = [source.signature(it[2]) for it in order]
    shared = Counter(signatures)
    suspects = [it for it, sig in zip(order, signatures) if sig is not None and shared[sig] > 1]
    hashes = {}
    for it in tqdm(suspects, desc="hashing possible duplicates", unit="file", leave=False):
        with contextlib.suppress(OSError):
            hashes[it] = hashlib.sha1(source.read(it[2])).hexdigest()
    keep, removed, first = set(), [], {}
    for it in order:
        h = hashes.get(it)
        if h in first:
            removed.append({"removed": source.where(it[2]), "kept": source.where(first[h][2]),
                            "split": it[0], "style": it[1], "kept_style": first[h][1]})
            continue
        keep.add(it)
        if h is not None:
            first[h] = it
    return [it for it in items if it in keep], removed


def output_names(items):  # <split>/<Style>/<file stem>.jpg; with a short hash of the source path where stems clash
    stems = [os.path.splitext(unicodedata.normalize("NFC", p).rsplit("/", 1)[-1])[0] for _, _, p in items]
    stems = ["".join(c if c.isalnum() or c in "-_.()," else "_" for c in s) or "image" for s in stems]
    count = Counter((split, style, s.lower()) for (split, style, _), s in zip(items, stems))
    names = []
    for (split, style, p), s in zip(items, stems):
        if count[(split, style, s.lower())] > 1:
            s += "_" + hashlib.sha1(p.encode()).hexdigest()[:8]
        names.append(f"{split}/{style}/{s}.jpg")
    return names


def is_valid_output(path, size):  # an output already there and whole: a JPEG of this size ending in its end marker
    try:
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            whole = f.read(2) == b"\xff\xd9"
        with Image.open(path) as img:
            return whole and img.format == "JPEG" and img.size == (size, size)
    except (OSError, ValueError, SyntaxError):
        return False


def write_jpeg(array, path, quality):
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        Image.fromarray(array).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)  # the output appears whole or not at all
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    p = config.ArgumentParser(__doc__)
    p.add_argument("source", help="folder or .zip: ArtGAN WikiArt release, or <Style>/ folders")
    p.add_argument("out", help="output folder: <out>/{train,test}/<Style>/*.jpg")
    p.add_argument("--csv", help="folder or zip holding style_train.csv, style_val.csv, style_class.txt")
    p.add_argument("--size", type=int, default=416, help="output side in pixels (default 416, the course's)")
    p.add_argument("--fit", choices=images.FITS, default="squash",
                   help="squash (stretch to square), letterbox (pad black) or crop (centre square)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of every style put in test/ when the source has no split")
    p.add_argument("--seed", type=int, default=0, help="seed of that split")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the outputs")
    p.add_argument("--limit", type=int, default=0, help="keep only N evenly spread images of each split (0: all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    src_real, out_real = os.path.realpath(args.source), os.path.realpath(args.out)
    for wrong, message in ((args.size < 8, "--size must be at least 8"),
                           (not 0 <= args.test_fraction < 1, "--test-fraction must be in [0, 1)"),
                           (not 1 <= args.quality <= 100, "--quality must be in [1, 100]"),
                           (args.limit < 0, "--limit must be >= 0"),
                           (args.workers < 1, "--workers must be at least 1"),
                           (not os.path.exists(args.source), f"source not found: {args.source}"),
                           (out_real == src_real or out_real.startswith(src_real.rstrip(os.sep) + os.sep),
                            "the output folder must not be inside the source (the source is never modified)")):
        if wrong:
            p.error(message)
    settings = {k: getattr(args, k) for k in ("size", "fit", "test_fraction", "seed")}  # outputs depend on them
    manifest_path = os.path.join(args.out, "prepare_data.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f).get("settings", {})
        changed = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
        if changed:
            raise UserError(f"{args.out} was prepared with other settings ({changed}); "
                            "choose a new output folder or delete it first")

    # ---- what goes where
    source = Source(args.source)
    csv_sources = [source] + ([Source(args.csv, "--csv")] if args.csv else [])
    problems, renamed = [], {}
    if find_member(csv_sources, "style_train.csv"):
        layout, (items, renamed) = "artgan", plan_artgan(source, csv_sources, problems)
    else:
        items, layout = plan_folders(source, problems)
    if not items:
        raise UserError(f"no images found in {args.source}. Expected <Style>/<image>.jpg folders, "
                        "train/ and test/ folders of them, or the ArtGAN WikiArt release (see --help)")
    items, duplicates = remove_duplicates(source, items)
    if layout == "style folders":  # no split in the source: a stratified one, after removing duplicates
        items.sort(key=lambda it: (it[1], it[2]))
        styles = sorted({s for _, s, _ in items})
        _, test_idx = wikiart.stratified_split([styles.index(s) for _, s, _ in items], args.test_fraction, args.seed)
        test = {int(i) for i in test_idx}
        items = [("test" if i in test else "train", s, path) for i, (_, s, path) in enumerate(items)]
    items.sort(key=lambda it: (it[0], it[1], it[2]))
    if args.limit:  # an evenly spread subset of each split (every k-th), so all styles stay in it
        subset = []
        for split in ("train", "test"):
            part = [it for it in items if it[0] == split]
            step = max(1, len(part) / args.limit)
            subset += [part[int(k * step)] for k in range(min(args.limit, len(part)))]
        items = subset
    names = output_names(items)
    print(f"{source.name}: {layout} layout, {len(items)} images to prepare at {args.size}px ({args.fit}), "
          f"{len(duplicates)} duplicate(s) removed")

    # ---- decode, resize, write (outputs there are kept); settings first: a continued run cannot mix them
    if not os.path.exists(manifest_path):
        runs.atomic_save({"source": os.path.abspath(args.source), "settings": settings, "complete": False},
                         manifest_path)
    for dirpath, _, filenames in os.walk(args.out):  # temp files of a run that was killed
        for f in filenames:
            if f.endswith(".tmp") and ".jpg." in f:
                os.remove(os.path.join(dirpath, f))

    def work(item, name):
        dest = os.path.join(args.out, name)
        if is_valid_output(dest, args.size):
            return "present", None
        try:
            array = images.decode_image(io.BytesIO(source.read(item[2])), args.size, args.fit)
        except (OSError, images.BadImage) as e:
            return "skipped", f"{source.where(item[2])}: {e}"
        os.makedirs(os.path.dirname(dest), exist_ok=True)  # a style whose images are all unreadable gets no folder
        write_jpeg(array, dest, args.quality)
        return "written", None

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        done = list(tqdm(pool.map(work, items, names), total=len(items), desc=f"writing {args.out}", unit="img"))
    status, skipped = Counter(state for state, _ in done), [err for _, err in done if err]
    counts = {"train": Counter(), "test": Counter()}
    for (split, style, _), (_, err) in zip(items, done):
        if not err:
            counts[split][style] += 1
    print(f"{'style':30s} {'train':>7s} {'test':>7s}")
    for s in sorted({s for _, s, _ in items}):
        print(f"{s:30s} {counts['train'][s]:7d} {counts['test'][s]:7d}")
    print(f"{'total':30s} {sum(counts['train'].values()):7d} {sum(counts['test'].values()):7d}")
    print(f"{status['written']} written, {status['present']} already present, {status['skipped']} skipped")
    if skipped or problems:
        print(f"WARNING: {len(skipped)} unreadable image(s) skipped, {len(problems)} other problem(s):\n  "
              + "\n  ".join(skipped + problems), file=sys.stderr)
    report = {"source": os.path.abspath(args.source), "layout": layout, "settings": settings, "complete": True,
              "counts": {k: dict(sorted(v.items())) for k, v in counts.items()}, "written": status["written"],
              "already_present": status["present"], "skipped": skipped, "problems": problems,
              "duplicates_removed": duplicates, "renamed_styles": renamed}
    runs.atomic_save(report, manifest_path)
    return report


if __name__ == "__main__":
    runs.cli(main)
