"""Image data: decoding and validation of user images, and image-text sources.

Sources yield `Sample(image, question, answer, task)`: one chat turn with one image.
- `digits`: scikit-learn's bundled handwritten digits (1,797 labelled 8×8 images, shipped
  inside the PyPI package: no network). A fixed, seeded 300-image held-out split.
- `photos`: scikit-learn's two sample photographs (random crops, captioned).
- `shapes`, `scenes`, `text`, `charts`: procedural, unlimited, deterministic by (seed, split, index),
  rendered with Pillow. Held-out and train samples are disjoint by construction: each
  sample's content key is hashed, and a hash bucket decides which split may use it.
  `scenes` captions the shapes scenes ("red circle, blue square", left to right).
- `folder`: a folder of images with a JSONL of captions or question/answer pairs.

`load_image` (glassgpt.data.imagefile, re-exported here) turns user bytes (API, chat, folders)
into an RGB image or raises one `ImageError` with a one-line message: corrupt, truncated,
empty, tiny, huge, animated, CMYK, 16-bit and non-image inputs are refused, never crashed on.
The tasks read from fetched packages (emoji, flags, words, hanzi) are glassgpt.data.image_packs.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from glassgpt.data import image_packs
from glassgpt.data.imagefile import (  # noqa: F401  (re-exported: the public names of image input)
    FORMATS, MAX_PIXELS, MAX_SIDE, MIN_SIDE, RENDER, ImageError, Sample, _pil, _rng, decode_data_url, load_image,
    to_data_url, to_rgb)
from glassgpt.errors import DataError

log = logging.getLogger(__name__)

HELDOUT_BUCKETS = 10  # 1 in 10 content hashes is held out for procedural tasks
DIGITS_HELDOUT = 300


# --- samples and splits --------------------------------------------------------------------
def is_heldout_key(key: str) -> bool:
    return zlib.crc32(key.encode()) % HELDOUT_BUCKETS == 0


def _draw_split(make: Callable[[random.Random], tuple], seed: int, task: str, split: str, index: int) -> Sample:
    """Draw from make(rng) until the content key lands in the wanted split."""
    want_heldout = split != "train"
    for attempt in range(1000):
        rng = _rng(seed, task, split, index, attempt)
        key, builder = make(rng)
        if is_heldout_key(f"{task}:{key}") == want_heldout:
            return builder()
    raise DataError(f"could not draw a {split} sample for {task}")


# --- real images: scikit-learn -------------------------------------------------------------
@lru_cache(maxsize=1)
def _digits():
    """The 1,797 digits from the fetched scikit-learn wheel (`glassgpt data fetch sklearn-digits`),
    else from the installed scikit-learn: the same file, so the same arrays and split."""
    import numpy as np

    got = image_packs.sklearn_digits()
    if got is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("the digits source needs `glassgpt data fetch sklearn-digits` "
                            "(or scikit-learn installed)") from None
        d = load_digits()
        got = d.images, d.target
    images, target = got
    order = np.random.default_rng(0).permutation(len(target))  # the split is fixed, whatever the run seed
    held, train = order[:DIGITS_HELDOUT], order[DIGITS_HELDOUT:]
    return images, target, train, held


def _digit_image(pixels, shift=(0, 0)):
    import numpy as np

    Image = _pil()
    a = (np.asarray(pixels) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    if shift != (0, 0):
        a = np.roll(a, shift, axis=(0, 1))
    return Image.fromarray(a, mode="L").convert("RGB")


@lru_cache(maxsize=8)
def _digits_epoch_order(seed: int, epoch: int) -> tuple:
    """The training digits' order in one epoch (a shuffle of 1,497 indices: cached, it was
    a fifth of a vision step's data time when drawn again for every sample)."""
    train = _digits()[2]
    return tuple(random.Random(zlib.crc32(repr((seed, "digits-epoch", epoch)).encode())).sample(list(train), len(train)))


def digits(seed: int, split: str, index: int) -> Sample:
    images, target, train, held = _digits()
    if split == "train":
        rng = _rng(seed, "digits", index)
        epoch, pos = divmod(index, len(train))
        i = int(_digits_epoch_order(seed, epoch)[pos])
        shift = (rng.choice([-1, 0, 0, 1]), rng.choice([-1, 0, 0, 1]))  # small translations: augmentation
        img = _digit_image(images[i], shift)
    else:
        if not 0 <= index < len(held):  # no wrap-around: a repeated image would count twice
            raise DataError(f"digits has {len(held)} held-out images; index {index} does not exist")
        i = int(held[index])
        img = _digit_image(images[i])
    d = int(target[i])
    return Sample(img, "Which digit is this?", str(d), "digits", "digit",
                  facts={"digit": (str(d), str(d)), "parity": (("even", "偶数"), ("odd", "奇数"))[d % 2]})


@lru_cache(maxsize=1)
def _photos():
    from sklearn.datasets import load_sample_images

    d = load_sample_images()
    Image = _pil()
    names = {"china.jpg": "a temple", "flower.jpg": "a flower"}
    return [(Image.fromarray(im), names.get(Path(f).name, Path(f).stem)) for im, f in zip(d.images, d.filenames)]


def photos(seed: int, split: str, index: int) -> Sample:
    """Random crops of sklearn's two sample photographs (there is no real held-out photo)."""
    ph = _photos()
    rng = _rng(seed, "photos", split, index)
    im, label = ph[rng.randrange(len(ph))]
    w, h = im.size
    s = rng.randint(min(w, h) // 3, min(w, h))
    x, y = rng.randint(0, w - s), rng.randint(0, h - s)
    return Sample(im.crop((x, y, x + s, y + s)), "What is in this picture?", label, "photos")


# --- procedural: shapes --------------------------------------------------------------------
# Chinese for the words the shapes task answers with (colours, shapes, directions).
ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
      "circle": "圆形", "square": "正方形", "triangle": "三角形",
      "further left": "更靠左", "further right": "更靠右", "higher": "更高", "lower": "更低"}


def zh_words(text: str) -> str:
    """'red circle' -> '红色圆形'; words ZH does not know stay as they are."""
    if text in ZH:
        return ZH[text]
    return "".join(ZH.get(w, w) for w in text.split())


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
           "yellow": (235, 200, 20), "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")


def _draw_shape(draw, shape, colour, cx, cy, r):
    rgb = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)


RADII = (5, 8)  # held-out scenes
# Training scenes add large objects. With radii 5 and 8 only, the preset never learnt to read an
# object's colour, even alone in the scene (23%, chance 17%), though a linear probe read it from the
# encoder; trained on radii 8 and 11 it read one-object colour at 95% on the held-out radii 5 and 8.
TRAIN_RADII = (5, 8, 11)


def _scene(rng: random.Random, n: int, radii: tuple[int, ...] = RADII):
    """n non-overlapping shapes; placement by rejection, bounded (a crowded layout can leave
    no room for the next shape: start the scene over rather than loop forever)."""
    for _ in range(100):
        objs = []
        for _ in range(200):
            if len(objs) == n:
                break
            r = rng.choice(radii)
            cx, cy = rng.randint(r + 1, RENDER - r - 2), rng.randint(r + 1, RENDER - r - 2)
            if all(abs(cx - o[2]) > r + o[4] + 2 or abs(cy - o[3]) > r + o[4] + 2 for o in objs):
                objs.append((rng.choice(SHAPES), rng.choice(list(COLOURS)), cx, cy, r))
        if len(objs) == n:
            return objs
    raise DataError(f"could not place {n} shapes on a {RENDER}×{RENDER} canvas")


def _render_scene(objs):
    Image = _pil()
    from PIL import ImageDraw

    im = Image.new("RGB", (RENDER, RENDER), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for o in objs:
        _draw_shape(d, *o)
    return im


def _shapes_make(rng: random.Random, radii: tuple[int, ...] = RADII):
    kind = rng.choice(("count", "colour", "shape", "relation", "relation"))
    if kind == "count":
        objs = _scene(rng, rng.randint(1, 6), radii)
        q, a = "How many shapes are there?", str(len(objs))
        slots = {}
    elif kind in ("colour", "shape"):
        objs = _scene(rng, rng.randint(1, 4), radii)
        shapes = [o[0] for o in objs]
        cols = [o[1] for o in objs]
        if kind == "colour":
            uniq = [o for o in objs if shapes.count(o[0]) == 1]
            if not uniq:
                objs, uniq = objs[:1], objs[:1]
            o = rng.choice(uniq)
            q, a = f"What colour is the {o[0]}?", o[1]
            slots = {"shape": o[0]}
        else:
            uniq = [o for o in objs if cols.count(o[1]) == 1]
            if not uniq:
                objs, uniq = objs[:1], objs[:1]
            o = rng.choice(uniq)
            q, a = f"What shape is the {o[1]} one?", o[0]
            slots = {"colour": o[1]}
    else:
        while True:
            objs = _scene(rng, 2, radii)
            (s1, c1, x1, y1, _), (s2, c2, x2, y2, _) = objs
            if (s1, c1) != (s2, c2):
                break
        # "Which is further left, the A or the B?" → the one that is. The earlier form, "Is A left or
        # right of B?", stayed at chance (48-59%), even when the answer first listed both objects in
        # order (right 92%): the 2-layer LM sees which object is further left, but could not then
        # compare that name with the question's. This form: chance with the default seed, 84-87%
        # with seed 1 (docs/devlog.md, 2026-11-29: relations, answer tokens, row groups).
        if rng.random() < 0.5 and abs(x1 - x2) > 4 or abs(y1 - y2) <= 4:
            word = rng.choice(("further left", "further right"))
            first = (x1 < x2) == (word == "further left")
        else:
            word = rng.choice(("higher", "lower"))
            first = (y1 < y2) == (word == "higher")  # image y grows downwards
        q = f"Which is {word}, the {c1} {s1} or the {c2} {s2}?"
        a = f"{c1} {s1}" if first else f"{c2} {s2}"
        slots = {"dir": word, "a": f"{c1} {s1}", "b": f"{c2} {s2}"}
    key = f"{objs}|{q}"
    return key, lambda: Sample(_render_scene(objs), q, a, "shapes", kind, slots, {kind: (a, zh_words(a))})


def shapes(seed: int, split: str, index: int) -> Sample:
    radii = TRAIN_RADII if split == "train" else RADII
    return _draw_split(lambda rng: _shapes_make(rng, radii), seed, "shapes", split, index)


def _scenes_make(rng: random.Random, radii: tuple[int, ...] = RADII):
    """A dense caption of a shapes scene: every object's colour and shape, left to right. One
    answer trains every object's binding at once (and the order, left/right); the VQA answers
    name one object each."""
    objs = sorted(_scene(rng, rng.randint(1, 6), radii), key=lambda o: (o[2], o[3]))
    a = ", ".join(f"{o[1]} {o[0]}" for o in objs)
    return f"{objs}|caption", lambda: Sample(_render_scene(objs), "Describe the image.", a, "scenes")


def scenes(seed: int, split: str, index: int) -> Sample:
    radii = TRAIN_RADII if split == "train" else RADII
    return _draw_split(lambda rng: _scenes_make(rng, radii), seed, "scenes", split, index)


# --- procedural: rendered text -------------------------------------------------------------
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: they are ambiguous in many fonts
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/System/Library/Fonts", "C:/Windows/Fonts")


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """Sans/mono TrueType fonts found on this machine (sorted: deterministic per machine);
    empty means only Pillow's built-in font is used."""
    found = []
    for d in FONT_DIRS:
        p = Path(d)
        if p.is_dir():
            found += [str(f) for f in p.rglob("*.ttf") if any(k in f.name for k in ("Sans", "Mono", "Serif"))
                      and "ExtraLight" not in f.name]
    return tuple(sorted(found)[:12])


@lru_cache(maxsize=64)
def _font(path: str | None, size: int):
    from PIL import ImageFont

    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size)


def _text_make(rng: random.Random, lengths: tuple[int, int] = (4, 8)):
    n = rng.randint(*lengths)
    text = "".join(rng.choice(ALPHABET) for _ in range(n))
    fonts = (None,) + font_files()
    font_path = rng.choice(fonts)
    angle = rng.uniform(-8, 8)
    noise = rng.uniform(0, 25)
    dark = rng.randint(0, 60)
    light = rng.randint(200, 255)
    nseed = rng.randrange(1 << 30)

    def build():
        import numpy as np

        Image = _pil()
        from PIL import ImageDraw

        size = 18
        font = _font(font_path, size)
        while size > 7:
            font = _font(font_path, size)
            x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
            if x1 - x0 <= RENDER - 6:
                break
            size -= 1
        im = Image.new("L", (RENDER, RENDER), light)
        d = ImageDraw.Draw(im)
        x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font)
        d.text(((RENDER - (x1 - x0)) / 2 - x0, (RENDER - (y1 - y0)) / 2 - y0), text, fill=dark, font=font)
        im = im.rotate(angle, resample=Image.BILINEAR, fillcolor=light)
        a = np.asarray(im, dtype=np.float32) + np.random.default_rng(nseed).normal(0, noise, im.size[::-1])
        return Sample(Image.fromarray(a.clip(0, 255).astype(np.uint8), mode="L").convert("RGB"),
                      "What does the text say?", text, "text", "read",
                      facts={"read": (text, text), "length": (str(len(text)), str(len(text)))})

    return text, build


def text(seed: int, split: str, index: int) -> Sample:
    return _draw_split(_text_make, seed, "text", split, index)


def glyphs(seed: int, split: str, index: int) -> Sample:
    """Strings of 1-3 characters, the same renderer and question as `text`, always at its largest
    font size (18 px): few glyphs to find, to learn the characters beside whole lines (training mix
    only; the reading goal is scored on `text`, 4-8 characters)."""
    return _draw_split(lambda rng: _text_make(rng, (1, 3)), seed, "glyphs", split, index)


# --- procedural: charts --------------------------------------------------------------------
BAR_LABELS = "ABCDE"


def _charts_make(rng: random.Random):
    n = rng.randint(3, 5)
    values = rng.sample(range(1, 10), n)  # distinct: "the largest" is unambiguous
    line = rng.random() < 0.25
    labels = BAR_LABELS[:n]
    slots = {}
    if line:
        q, kind = "Which point is highest?", "highest"
        a = labels[values.index(max(values))]
    elif rng.random() < 0.5:
        q, a, kind = "Which bar is largest?", labels[values.index(max(values))], "largest"
    else:
        j = rng.randrange(n)
        q, a, kind = f"What is the value of bar {labels[j]}?", str(values[j]), "value"
        slots = {"bar": labels[j]}
    colour = rng.choice(list(COLOURS))

    def build():
        Image = _pil()
        from PIL import ImageDraw

        im = Image.new("RGB", (RENDER, RENDER), (255, 255, 255))
        d = ImageDraw.Draw(im)
        font = _font(None, 9)
        base, top, left = RENDER - 11, 10, 3
        slot = (RENDER - 2 * left) // n
        d.line((left, base, RENDER - left, base), fill=(0, 0, 0))
        pts = []
        for i, (v, lab) in enumerate(zip(values, labels)):
            x = left + i * slot + slot // 2
            h = round((base - top) * v / 9)
            if line:
                pts.append((x, base - h))
            else:
                d.rectangle((x - slot // 3, base - h, x + slot // 3, base), fill=COLOURS[colour])
                d.text((x, base - h - 1), str(v), fill=(0, 0, 0), font=font, anchor="md")
            d.text((x, base + 1), lab, fill=(0, 0, 0), font=font, anchor="ma")
        if line:
            d.line(pts, fill=COLOURS[colour], width=2)
            for p in pts:
                d.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=(0, 0, 0))
        return Sample(im, q, a, "charts", kind, slots, {kind: (a, a)})

    return f"{values}|{line}|{q}", build


def charts(seed: int, split: str, index: int) -> Sample:
    return _draw_split(_charts_make, seed, "charts", split, index)


# --- user data: a folder with a JSONL --------------------------------------------------------
class Folder:
    """A folder of images and `data.jsonl` (or the given JSONL): one object a line,
    {"image": "cat.png", "caption": "..."} or {"image": ..., "question": ..., "answer": ...}.
    Bad lines and bad images are skipped with a count (logged), never a crash. 1 in 10
    images (by a hash of the file name) is held out."""

    def __init__(self, root, jsonl: str | None = None):
        self.root = Path(root)
        path = Path(jsonl) if jsonl else self.root / "data.jsonl"
        if not path.is_file():
            raise DataError(f"image folder {self.root}: {path.name} not found (one JSON object a line: "
                            '{"image": "file.png", "caption": "..."})')
        self.items: dict[str, list[tuple]] = {"train": [], "heldout": []}
        self.skipped = 0
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                img = obj["image"]
                if "caption" in obj:
                    qa = ("Describe the image.", str(obj["caption"]))
                else:
                    qa = (str(obj["question"]), str(obj["answer"]))
            except (ValueError, KeyError, TypeError):
                self.skipped += 1
                log.warning("%s line %d: not {image, caption} or {image, question, answer}; skipped", path.name, n)
                continue
            split = "heldout" if is_heldout_key(f"folder:{img}") else "train"
            self.items[split].append((img, *qa))
        if not self.items["train"] and not self.items["heldout"]:
            raise DataError(f"image folder {self.root}: no usable lines in {path.name}")

    def __call__(self, seed: int, split: str, index: int) -> Sample:
        items = self.items["train" if split == "train" else "heldout"] or self.items["train"]
        for k in range(len(items)):
            img, q, a = items[(index + k) % len(items)]
            try:
                return Sample(load_image(self.root / img, name=img), q, a, "folder")
            except ImageError as e:
                self.skipped += 1
                log.warning("skipped %s", e)
        raise DataError(f"image folder {self.root}: no readable images")


SOURCES: dict[str, Callable[[int, str, int], Sample]] = {
    "digits": digits, "shapes": shapes, "scenes": scenes, "text": text, "glyphs": glyphs, "charts": charts,
    "photos": photos,
}


def get_source(name: str) -> Callable[[int, str, int], Sample]:
    """A source by name, or `folder:PATH` for a user folder."""
    if name.startswith("folder:"):
        return Folder(name[len("folder:"):])
    if name in image_packs.TASKS:  # the tasks read from fetched packages
        return image_packs.TASKS[name]
    if name not in SOURCES:
        from glassgpt.errors import closest

        known = {**SOURCES, **image_packs.TASKS}
        raise DataError(f"unknown image source '{name}'{closest(name, known)}; known: {', '.join(known)}, folder:PATH")
    return SOURCES[name]


# Part of the corpus cache key when data.tokenizer_extra is set: bump it when a source's questions or
# answers change, so a tokenizer learnt from the old texts is not reused.
TASK_TEXTS_VERSION = 3  # 2: answers on their own line; 3: "Which is further left, the A or the B?"


def heldout_size(task: str) -> int | None:
    """How many held-out samples a task has (None: unlimited, procedurally drawn)."""
    if task == "digits":
        return DIGITS_HELDOUT
    if task == "flags":
        return len(image_packs.flag_images("1x1"))
    return None


def heldout_samples(task: str, n: int, seed: int) -> list[Sample]:
    """The first n held-out samples of a task: the one held-out sampler (training evals, the
    vision eval commands and the registry evals). Asking for more than a task has gives all
    of them and a warning; the length of the list is the n to report."""
    have = heldout_size(task)
    if have is not None and n > have:
        log.warning("%s has %d held-out samples; scoring those %d, not %d", task, have, have, n)
        n = have
    src = get_source(task)
    return [src(seed, "heldout", i) for i in range(n)]


def task_texts(mix: str, per_source: int = 4000, seed: int = 0) -> Iterator[str]:
    """The questions and answers of the first `per_source` training samples of each source in
    `mix` (vision.mix syntax; weights ignored), each on its own line: text for the tokenizer
    (data.tokenizer_extra). Training split only. The answer starts a line because in a chat row
    it starts the assistant's turn, with no space before it: "purple" must become a token as
    well as " purple" (version 1 joined them with a space, and answers were 'p' 'ur' 'ple')."""
    for name, _ in parse_mix(mix):
        src = get_source(name)
        yield "".join(f"{s.question}\n{s.answer}\n" for s in (src(seed, "train", k) for k in range(per_source)))


def parse_mix(mix: str) -> list[tuple[str, float]]:
    """'digits:1,shapes:2' → [('digits', 1.0), ('shapes', 2.0)]."""
    out = []
    for part in filter(None, (p.strip() for p in mix.split(","))):
        name, _, w = part.rpartition(":")
        try:
            weight = float(w)
        except ValueError:  # no weight given ('digits', 'folder:/data/pics')
            name, weight = part, 1.0
        if weight < 0:
            raise DataError(f"bad image mix entry '{part}': weight must be non-negative")
        out.append((name, weight))
    if not out or sum(w for _, w in out) <= 0:
        raise DataError(f"image mix '{mix}' has no positive weight")
    return out
