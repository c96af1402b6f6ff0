"""Images in, uint8 arrays out: decode any file PIL reads (EXIF orientation, colour profiles, 16-bit,
CMYK, alpha) to RGB at a fixed size, list a <root>/<Style>/<image> folder, cache a decoded folder as a
memory-mapped .npy, and read the images a user names on the command line (--image).
"""
import functools
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

import runs
from config import UserError

try:  # colour management (LittleCMS); without it embedded profiles are ignored
    from PIL import ImageCms
except ImportError:
    ImageCms = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FITS = ("squash", "letterbox", "crop", "keep")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb limit (about 9459 x 9459)
# PIL only warns between 1x and 2x its limit; decode_image skips anything above it, so the warning is
# silenced once here (catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(Exception):
    pass


def _fit(img, size, fit):
    """Resize an RGB image to size x size: squash (stretch), letterbox (pad black) or crop (centre); keep: its
    own aspect ratio, the longer side shrunk to `size`."""
    w, h = img.size
    if fit == "keep":
        scale = min(1.0, size / max(w, h))
        return img if scale == 1 else img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                 Image.BICUBIC, reducing_gap=3.0)
    if fit == "squash":
        return img.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    if fit == "crop":
        s = min(w, h)
        x0, y0 = (w - s) // 2, (h - s) // 2
        return img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + s, y0 + s), reducing_gap=3.0)
    if fit == "letterbox":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0), ((size - nw) // 2, (size - nh) // 2))
        return canvas


@functools.lru_cache(maxsize=64)
def _to_srgb(icc, mode):
    """A transform from an ICC profile (bytes) to sRGB, or None for sRGB itself or a broken or unfitting one."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if (profile.profile.profile_description or "").startswith("sRGB"):
            return None  # the usual camera/web profile: converting would change nothing
        return ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), mode,
                                       "RGBA" if mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a broken profile is ignored rather than making the picture unreadable


def decode_image(path, size, fit="squash"):
    """One file (path or binary file object) as RGB uint8 (size, size, 3), upright (EXIF) and in sRGB; 16-bit,
    CMYK, palette and alpha become 8-bit RGB (transparent: white). Anything unreadable raises BadImage."""
    if fit not in FITS:
        raise ValueError(f"unknown fit '{fit}'; valid: {', '.join(FITS)}")
    try:
        with Image.open(path) as img:
            limit = min(Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS)
            if img.width * img.height > limit:
                raise BadImage(f"{img.width}x{img.height} pixels is over the decompression-bomb "
                               f"limit of {limit} pixels; skipped without decoding")
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            img.load()
            if img.getexif().get(0x0112, 1) in range(2, 9):  # EXIF orientation: phone photos are stored sideways
                ImageOps.exif_transpose(img, in_place=True)
            icc = img.info.get("icc_profile")  # Adobe RGB, Display P3, CMYK, ... to sRGB
            if icc and ImageCms is not None and img.mode in ("RGB", "RGBA", "CMYK", "L"):
                transform = _to_srgb(icc, img.mode)
                if transform is not None:
                    img = transform.apply(img)
            if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit, or 32-bit holding 16- or 8-bit values
                a = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
                img = Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
            elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.split()[3])  # transparent pixels become white
            else:
                img = img.convert("RGB")  # CMYK, YCbCr, L, 1, P without transparency
            return np.asarray(_fit(img, size, fit), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise BadImage(f"{type(e).__name__}: {e}")


def scan_folder(root):
    """List <root>/<Style>/**/<file>. Returns (files_by_style, problems)."""
    if not os.path.isdir(root):
        raise UserError(f"data folder not found: '{root}'. Expected one folder per art style with the images "
                        f"inside: {root}/<Style>/<image>.jpg (e.g. {root}/Impressionism/monet_1.jpg). "
                        "See README 'Using real data' or run prepare_data.py.")
    files_by_style, problems = {}, []
    for style in sorted(s for s in os.listdir(root) if not s.startswith(".")):
        path, files = os.path.join(root, style), []
        if os.path.islink(path) and not os.path.exists(path):
            problems.append(f"{path}: style folder is a dangling symlink")
        elif not os.path.isdir(path):
            problems.append(f"{path}: not a folder (images must be inside <Style>/ folders)")
        else:
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
            if files:
                files_by_style[style] = files
            else:
                problems.append(f"{path}: empty style folder, ignored")
    if not files_by_style:
        raise UserError(f"no style folders with files in '{root}'. Expected {root}/<Style>/<image>.jpg "
                        "(one folder per style with the images inside)")
    return files_by_style, problems


def _cache_key(items, size):
    """Hash of the file list, each file's size, mtime, ctime and inode, the size and the decoder version. A
    write sets a file's ctime, which no tool restores, so a change is seen even with the mtime put back."""
    h = hashlib.sha1(f"v4 size={size}".encode())  # v4: EXIF orientation and ICC profiles applied
    for style, path in items:
        try:
            st = os.stat(path)
            h.update(f"{style}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
                     f"\0{st.st_ino}\n".encode())
        except OSError:
            h.update(f"{style}\0{os.path.abspath(path)}\0missing\n".encode())
    return h.hexdigest()[:16]


def _read_cache(npy, meta, size):
    """The cached (images, kept, skipped), or None if the pair is missing or does not fit together."""
    try:
        with open(meta) as f:
            m = json.load(f)
        images = np.load(npy, mmap_mode="r")
        n = len(m["kept"])
        if images.shape[1:] != (size, size, 3) or images.dtype != np.uint8 or len(images) < n:
            return None
        return images[:n], [tuple(i) for i in m["kept"]], m["skipped"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_images(items, size, cache_dir=None, desc="decoding"):
    """Decode (style, path) items to uint8 (N, size, size, 3), skipping bad files: (images, kept_items, skipped
    'path: reason' lines). With cache_dir the array is written once to a .npy (a temp file renamed when whole,
    so processes building it at once do not collide) and memory-mapped afterwards."""
    items = list(items)
    key = _cache_key(items, size)
    if cache_dir:
        npy, meta = os.path.join(cache_dir, key + ".npy"), os.path.join(cache_dir, key + ".json")
        cached = _read_cache(npy, meta, size)
        if cached is not None:
            return cached

    def work(item):
        try:
            return decode_image(item[1], size), None
        except BadImage as e:
            return None, f"{item[1]}: {e}"

    shape, tmp, out = (len(items), size, size, 3), None, None
    kept, skipped = [], []
    try:
        if cache_dir:  # rows are written with plain file writes: page cache, not this process's memory
            os.makedirs(cache_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp.npy")
            os.close(fd)
            offset = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).offset  # the header
            out = open(tmp, "r+b")
            out.seek(offset)
        else:
            images = np.empty(shape, np.uint8)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for item, (a, err) in tqdm(zip(items, pool.map(work, items)), total=len(items),
                                       desc=desc, unit="img", leave=False):
                if err:
                    skipped.append(err)
                    continue
                if out:
                    out.write(a.tobytes())  # kept images are packed at the front; unused rows stay zero
                else:
                    images[len(kept)] = a
                kept.append(item)
        if out:
            out.close()
            os.replace(tmp, npy)
            runs.atomic_write_text(json.dumps({"kept": kept, "skipped": skipped}), meta)
            images = np.load(npy, mmap_mode="r")
    except OSError as e:  # a full disk or a read-only cache_dir: one line (runs.cli), naming the cache
        if not cache_dir or not e.errno:
            raise
        raise UserError(f"cannot write the image cache {npy}: {os.strerror(e.errno)} (cache_dir=\"\" turns it off)")
    finally:
        if out:
            out.close()
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
    return images[:len(kept)], kept, skipped


def load_image_inputs(paths, size, folder_hint=""):
    """The images of --image PATH... (files, and the files directly inside a folder), squashed to size: (uint8
    images, their paths, skipped 'path: reason' lines, each also said on stderr). None readable: UserError.
    `folder_hint` ends the note about a folder's sub-folders ({folder}: its path)."""
    files, why = [], {}  # why: file -> the reason it was skipped
    for p in paths:
        if os.path.isdir(p):
            names = sorted(f for f in os.listdir(p) if not f.startswith("."))
            files += [os.path.join(p, f) for f in names if os.path.isfile(os.path.join(p, f))]
            subfolders = [f for f in names if os.path.isdir(os.path.join(p, f))]
            if subfolders:
                print(f"note: {p}: {len(subfolders)} sub-folder(s) not read ({', '.join(subfolders[:3])}"
                      f"{', ...' if len(subfolders) > 3 else ''}): --image reads the files directly inside a "
                      f"folder{folder_hint.format(folder=p)}", file=sys.stderr)
        else:
            files.append(p)
            if not os.path.exists(p):
                why[p] = f"{p}: no such file or folder"
    readable = [f for f in files if f not in why]
    images, kept, unreadable = load_images([(None, f) for f in readable], size, desc="decoding")
    kept_paths = {p for _, p in kept}
    why.update(zip([f for f in readable if f not in kept_paths], unreadable))  # both in input order
    skipped = [why[f] for f in files if f in why]
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not kept:
        raise UserError(f"no readable image among --image {' '.join(paths)}"
                        + (f" ({len(skipped)} skipped, see above)" if skipped else " (no files found)"))
    return np.asarray(images), [p for _, p in kept], skipped
