"""Turn a downloaded WikiArt (or any folder of style folders) into the project's layout:
<out>/{train,test}/<Style>/<name>.jpg, every image resized to the same square size.

    python prepare_data.py ~/Downloads/wikiart.zip data/wikiart416           # ArtGAN zip, official split
    python prepare_data.py ~/wikiart data/wikiart416 --csv ~/wikiart_csv     # extracted, CSVs elsewhere
    python prepare_data.py my_paintings/ data/mine --size 256 --fit crop --test-fraction 0.2 --seed 0
    python prepare_data.py ../shared/data/wikiart16 /tmp/w16_416 --size 416  # keeps its train/test split

Sources it understands (a folder or a .zip of one):
  * ArtGAN WikiArt release: wikiart/<Style>/<file>.jpg with style_train.csv / style_val.csv rows
    `path,label_index` and style_class.txt lines `index name`; style_val.csv becomes test/.
    The CSVs are looked for inside the source, or given with --csv (folder or zip). Output styles
    are named after the release's folders (style_class.txt says Art_Nouveau where the folders, the
    course and WikiArt.org say Art_Nouveau_Modern); a label whose files lie in another folder than
    the label's own is reported and skipped. Names are matched as Unicode (NFC), also in zips that
    do not flag their UTF-8 names, so the release's mis-encoded names (grã©goire-...) are found.
  * <src>/train/<Style>/... and <src>/test/<Style>/...: the existing split is kept.
  * <src>/<Style>/... (any nesting below the style folder): a stratified split is made
    (--test-fraction of every style, --seed).
Exact duplicates (same bytes) are kept once, never in both train and test (the train copy wins).
Unreadable images are skipped and listed once at the end. The source is only read.
Each output is written to a temp file and renamed, and outputs already present are kept, so a
re-run with the same arguments writes nothing and an interrupted run continues where it stopped.
Per-style counts are printed and saved with the settings in <out>/prepare_data.json.
"""
import csv
import hashlib
import io
import json
import os
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

MANIFEST = "prepare_data.json"
SPLIT_SETTINGS = ("size", "fit", "test_fraction", "seed")  # outputs made with other values differ


class FolderSource:
    """Files under a folder, by relative '/'-separated path."""

    def __init__(self, root):
        self.root, self.name = root, root
        self.paths = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for f in sorted(filenames):
                if not f.startswith("."):
                    self.paths.append(f if rel == "." else f"{rel}/{f}")

    def signature(self, rel):  # files with different signatures cannot be identical
        try:
            return os.path.getsize(os.path.join(self.root, rel))
        except OSError:
            return None

    def read(self, rel):
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def where(self, rel):
        return os.path.join(self.root, rel)


class ZipSource:
    """Files inside a zip archive (read in place, never extracted)."""

    def __init__(self, path):
        self.name = path
        self.zip = zipfile.ZipFile(path)
        self.info = {}
        for i in self.zip.infolist():
            name = i.filename
            if not i.flag_bits & 0x800:  # names not flagged UTF-8 are decoded as cp437, yet most zip tools
                try:                     # (Info-ZIP on Linux, macOS) write UTF-8 without the flag
                    name = name.encode("cp437").decode("utf-8")
                except UnicodeError:
                    pass
            if not i.is_dir():
                self.info[name] = i
        self.paths = sorted(p for p in self.info if not any(part.startswith(".") or part == "__MACOSX"
                                                           for part in p.split("/")))

    def signature(self, rel):
        return (self.info[rel].file_size, self.info[rel].CRC)

    def read(self, rel):
        return self.zip.read(self.info[rel])

    def where(self, rel):
        return f"{self.name}:{rel}"


def open_source(path, what="source"):
    if os.path.isdir(path):
        return FolderSource(path)
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    if zipfile.is_zipfile(path):
        return ZipSource(path)
    raise UserError(f"{what} '{path}' is neither a folder nor a zip file")


def is_image(rel):
    return rel.lower().endswith(images.IMAGE_EXTENSIONS)


def find_member(sources, basename):
    """(source, path) of the shortest path named `basename` in any of the sources, or None."""
    hits = [(p.count("/"), p, s) for s in sources for p in s.paths if p.rsplit("/", 1)[-1] == basename]
    return (min(hits, key=lambda h: h[:2])[2], min(hits, key=lambda h: h[:2])[1]) if hits else None


def read_text(source, path, problems):
    """A text file of the release: UTF-8 (with or without BOM); anything else (e.g. re-saved by a
    spreadsheet) is read as Latin-1 and reported, since accented names then may not match."""
    data = source.read(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(f"{source.where(path)} is not UTF-8 text: read as Latin-1, accented names may not match")
        return data.decode("latin-1")


def read_csv_rows(source, path, problems):
    text = read_text(source, path, problems)  # csv handles \r\n and \n line ends alike
    return [row for row in csv.reader(io.StringIO(text)) if row and row[0].strip()]


def nfc(name):
    """One spelling per name: file systems (macOS) and tools may hand out decomposed accents."""
    return unicodedata.normalize("NFC", name)


def artgan_style_names(rows, class_names, problems):
    """label -> style name: the folder that label's CSV paths lie in (style_class.txt's name for a
    label without folders). A label spread over several folders is named after most of its files
    (the others are skipped later and reported); two labels in one folder is an error."""
    folders = defaultdict(Counter)
    for *_, rel, label in rows:
        if "/" in rel:
            folders[label][rel.split("/")[-2]] += 1
    style_of, renamed = {}, {}
    for label, name in class_names.items():
        if not folders[label]:
            style_of[label] = name
            continue
        style_of[label] = folders[label].most_common(1)[0][0]
        if len(folders[label]) > 1:
            spread = ", ".join(f"{f}/ ({n})" for f, n in folders[label].most_common())
            problems.append(f"label {label} ({name} in style_class.txt) has files in {len(folders[label])} folders: "
                            f"{spread}; named {style_of[label]}, the files in the other folders are skipped")
        if style_of[label] != name:
            renamed[name] = style_of[label]
    labels_of = defaultdict(list)
    for label, style in style_of.items():
        labels_of[style].append(label)
    clash = {s: ls for s, ls in labels_of.items() if len(ls) > 1}
    if clash:
        raise UserError("the CSV labels and the release's folders disagree: " + "; ".join(
            f"labels {', '.join(map(str, ls))} all lie in {s}/" for s, ls in clash.items())
            + ". Check style_class.txt and the CSVs")
    if renamed:
        print("style folders named after the release's folders; style_class.txt says "
              + ", ".join(f"{a} for {b}" for a, b in renamed.items()))
    return style_of, renamed


def plan_artgan(source, csv_sources, problems):
    """(split, style, path) from the ArtGAN CSVs, and the styles renamed from style_class.txt."""
    found = find_member(csv_sources, "style_class.txt")
    if not found:
        raise UserError("style_train.csv found but no style_class.txt next to it (index -> style name)")
    names = {}
    for line in read_text(*found, problems).splitlines():
        if line.strip():
            idx, name = line.split(maxsplit=1)
            names[int(idx)] = name.strip()
    by_suffix = {}  # the CSV paths are relative to the wikiart/ folder, wherever that sits
    for p in source.paths:
        parts = nfc(p).split("/")
        for k in range(len(parts)):
            by_suffix.setdefault("/".join(parts[k:]), p)
    rows = []
    for split, csv_name in (("train", "style_train.csv"), ("test", "style_val.csv")):
        found = find_member(csv_sources, csv_name)
        if not found:
            raise UserError(f"ArtGAN layout: {csv_name} not found (give its folder or zip with --csv)")
        for i, row in enumerate(read_csv_rows(*found, problems)):
            if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                if i > 0:  # the first row may be a header
                    problems.append(f"{csv_name} line {i + 1}: expected 'path,label_index', got {row}")
                continue
            rows.append((split, f"{csv_name} line {i + 1}", nfc(row[0].strip().replace("\\", "/")), int(row[1])))
    style_of, renamed = artgan_style_names(rows, names, problems)
    items = []
    for split, where, rel, label in rows:
        if label not in names:
            problems.append(f"{where}: label {label} is not in style_class.txt")
        elif "/" in rel and rel.split("/")[-2] != style_of[label]:
            problems.append(f"{where}: {rel} is labelled {label} ({style_of[label]}) but lies in "
                            f"{rel.split('/')[-2]}/: skipped")
        elif rel not in by_suffix:
            problems.append(f"{where}: {rel} is listed but not in {source.name}")
        else:
            items.append((split, style_of[label], by_suffix[rel]))
    return items, renamed


def plan_folders(source, problems):
    """(split, style, path) from <src>/[train|test/]<Style>/**; split None when the source has none."""
    paths = [p for p in source.paths if is_image(p)]
    tops = {p.split("/")[0] for p in paths if "/" in p}
    if isinstance(source, ZipSource) and len(tops) == 1 and all(p.count("/") >= 2 for p in paths):
        strip = len(next(iter(tops))) + 1  # a zip of one folder: look inside it
        paths = [p[strip:] for p in paths]
        tops = {p.split("/")[0] for p in paths if "/" in p}
        restore = {p[strip:]: p for p in source.paths}
    else:
        restore = {p: p for p in source.paths}
    has_split = {"train", "test"} <= tops
    items = []
    for p in paths:
        parts = p.split("/")
        if has_split:
            if parts[0] not in ("train", "test") or len(parts) < 3:
                problems.append(f"{source.where(restore[p])}: not in train/<Style>/ or test/<Style>/, ignored")
                continue
            items.append((parts[0], parts[1], restore[p]))
        elif len(parts) < 2:
            problems.append(f"{source.where(restore[p])}: not inside a <Style>/ folder, ignored")
        else:
            items.append((None, parts[0], restore[p]))
    if isinstance(source, FolderSource):  # style folders that give nothing deserve a word
        used = {(it[0], it[1]) for it in items}
        for split in (("train", "test") if has_split else (None,)):
            parent = os.path.join(source.root, split or "")
            for style in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
                full = os.path.join(parent, style)
                if style.startswith("."):
                    continue
                if os.path.islink(full) and not os.path.exists(full):
                    problems.append(f"{full}: style folder is a dangling symlink, ignored")
                elif os.path.isdir(full) and (split, style) not in used:
                    problems.append(f"{full}: style folder without images, ignored")
    return items, has_split


def remove_duplicates(source, items):
    """Keep the first of each set of byte-identical files (train before test, then by style and path).
    Only files with the same size (zip: size and CRC) are hashed."""
    order = sorted(items, key=lambda it: (it[0] != "train", it[0] or "", it[1], it[2]))
    groups = defaultdict(list)
    for it in order:
        groups[source.signature(it[2])].append(it)
    keep, removed, seen = set(), [], {}
    suspects = [it for sig, g in groups.items() if len(g) > 1 and sig is not None for it in g]
    hashes = {}
    for it in tqdm(suspects, desc="hashing possible duplicates", unit="file", leave=False):
        try:
            hashes[it] = hashlib.sha1(source.read(it[2])).hexdigest()
        except OSError:
            hashes[it] = None
    for it in order:
        h = hashes.get(it)
        if h is not None and h in seen:
            first = seen[h]
            removed.append({"removed": source.where(it[2]), "kept": source.where(first[2]),
                            "split": it[0], "style": it[1], "kept_style": first[1]})
            continue
        if h is not None:
            seen[h] = it
        keep.add(it)
    return [it for it in items if it in keep], removed


def output_names(items):
    """<split>/<Style>/<file stem>.jpg; a short hash of the source path is added where stems clash."""
    def stem(p):
        s = os.path.splitext(nfc(p).rsplit("/", 1)[-1])[0]
        return "".join(c if c.isalnum() or c in "-_.()," else "_" for c in s) or "image"
    count = defaultdict(int)
    for split, style, p in items:
        count[(split, style, stem(p).lower())] += 1
    names = []
    for split, style, p in items:
        s = stem(p)
        if count[(split, style, s.lower())] > 1:
            s += "_" + hashlib.sha1(p.encode()).hexdigest()[:8]
        names.append(f"{split}/{style}/{s}.jpg")
    return names


def is_valid_output(path, size):
    """An output already there and whole: a JPEG header of the right size and the end-of-image marker
    (our writes are atomic; this also catches files cut short by other tools)."""
    try:
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read(2) != b"\xff\xd9":
                return False
        with Image.open(path) as img:
            return img.format == "JPEG" and img.size == (size, size)
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


def print_counts(counts, styles):
    print(f"{'style':30s} {'train':>7s} {'test':>7s}")
    for s in styles:
        print(f"{s:30s} {counts['train'].get(s, 0):7d} {counts['test'].get(s, 0):7d}")
    print(f"{'total':30s} {sum(counts['train'].values()):7d} {sum(counts['test'].values()):7d}")


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
    p.add_argument("--limit", type=int, default=0,
                   help="keep only the first N images of each split after the split (0: all), e.g. for a benchmark")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.size < 8:
        p.error("--size must be at least 8")
    if not 0 <= args.test_fraction < 1:
        p.error("--test-fraction must be in [0, 1)")
    if not 1 <= args.quality <= 100:
        p.error("--quality must be in [1, 100]")
    if args.limit < 0:
        p.error("--limit must be >= 0")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if not os.path.exists(args.source):
        p.error(f"source not found: {args.source}")
    src_real, out_real = os.path.realpath(args.source), os.path.realpath(args.out)
    if out_real == src_real or out_real.startswith(src_real.rstrip(os.sep) + os.sep):
        p.error("the output folder must not be inside the source (the source is never modified)")

    settings = {k: getattr(args, k) for k in SPLIT_SETTINGS}
    manifest_path = os.path.join(args.out, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f).get("settings", {})
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            raise UserError(f"{args.out} was prepared with other settings "
                             f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                             "choose a new output folder or delete it first")

    # ---- what goes where
    source = open_source(args.source)
    csv_sources = [source] + ([open_source(args.csv, "--csv")] if args.csv else [])
    problems, renamed = [], {}
    if find_member(csv_sources, "style_train.csv"):
        layout = "artgan"
        items, renamed = plan_artgan(source, csv_sources, problems)
    else:
        items, has_split = plan_folders(source, problems)
        layout = "split folders" if has_split else "style folders"
    if not items:
        raise UserError(f"no images found in {args.source}. Expected <Style>/<image>.jpg folders, "
                         "train/ and test/ folders of them, or the ArtGAN WikiArt release (see --help)")
    items, duplicates = remove_duplicates(source, items)
    if layout == "style folders":  # no split in the source: a stratified one, after removing duplicates
        items.sort(key=lambda it: (it[1], it[2]))
        styles = sorted({s for _, s, _ in items})
        labels = [styles.index(s) for _, s, _ in items]
        train_idx, test_idx = wikiart.stratified_split(labels, args.test_fraction, args.seed)
        split_of = {int(i): "train" for i in train_idx} | {int(i): "test" for i in test_idx}
        items = [(split_of[i], s, path) for i, (_, s, path) in enumerate(items)]
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

    # ---- decode, resize, write (skipping outputs already there); the settings are recorded first so
    # that a continued run cannot mix outputs made with different ones
    if not os.path.exists(manifest_path):
        runs.atomic_save({"source": os.path.abspath(args.source), "settings": settings,
                             "complete": False}, manifest_path)
    for dirpath, _, filenames in os.walk(args.out):  # temp files of a run that was killed
        for f in filenames:
            if f.endswith(".tmp") and ".jpg." in f:
                os.remove(os.path.join(dirpath, f))

    def work(job):
        (split, style, path), name = job
        dest = os.path.join(args.out, name)
        if is_valid_output(dest, args.size):
            return "present", None
        try:
            array = images.decode_image(io.BytesIO(source.read(path)), args.size, args.fit)
        except (OSError, images.BadImage) as e:
            return "skipped", f"{source.where(path)}: {e}"
        os.makedirs(os.path.dirname(dest), exist_ok=True)  # a style whose images are all unreadable gets no folder
        write_jpeg(array, dest, args.quality)
        return "written", None

    status = defaultdict(int)
    skipped = []
    counts = {"train": defaultdict(int), "test": defaultdict(int)}
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        jobs = list(zip(items, names))
        for (it, _), (state, err) in tqdm(zip(jobs, pool.map(work, jobs)), total=len(jobs),
                                          desc=f"writing {args.out}", unit="img"):
            status[state] += 1
            if err:
                skipped.append(err)
            else:
                counts[it[0]][it[1]] += 1

    styles = sorted({s for _, s, _ in items})
    print_counts(counts, styles)
    print(f"{status['written']} written, {status['present']} already present, {status['skipped']} skipped")
    if skipped or problems:
        print(f"WARNING: {len(skipped)} unreadable image(s) skipped, {len(problems)} other problem(s):\n  "
              + "\n  ".join(skipped + problems), file=sys.stderr)
    report = {"source": os.path.abspath(args.source), "layout": layout, "settings": settings, "complete": True,
              "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
              "written": status["written"], "already_present": status["present"],
              "skipped": skipped, "problems": problems, "duplicates_removed": duplicates,
              "renamed_styles": renamed}
    runs.atomic_save(report, manifest_path)
    return report


if __name__ == "__main__":
    runs.cli(main)
