"""Image tasks read from packages that `glassgpt data fetch` caches (glassgpt.data.packaged).

Each task is a source in glassgpt.data.images' sense, `f(seed, split, index) -> Sample`, and
what is held out is a whole slice of the data, never a random sample of it:

- `digits` (images.digits) reads scikit-learn's digits.csv.gz from the cached wheel when it
  is fetched (`sklearn_digits`), the same 1,797 arrays as `sklearn.datasets.load_digits`;
- `emoji`: names and categories of emoji drawn by Apple, Google and Facebook; Twitter's
  drawings are held out whole (the same emoji, another artist);
- `flags`: country flags drawn 4x3 for training, the 1x1 drawing held out; flags that cannot
  be told apart at the encoder's resolution are one answer (`flag_groups`);
- `words`: Latin words of 4-8 letters in 48 font families, 10 of them held out (FONTS_HELDOUT);
- `hanzi`: the 500 most frequent characters of the assistant's Chinese text in Noto Sans CJK,
  two of its seven weights held out (CJK_HELDOUT).

A task whose package is not cached says which `glassgpt data fetch NAME` to run.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path

from glassgpt.data import packaged
from glassgpt.data.imagefile import RENDER, Sample, _pil, _rng, load_image, to_rgb
from glassgpt.errors import DataError

EMOJI_TRAIN = ("apple", "google", "facebook")
EMOJI_HELDOUT = "twitter"
# Chinese for emoji.json's categories (CLDR's names)
EMOJI_CATEGORY_ZH = {"Smileys & Emotion": "笑脸和情感", "People & Body": "人物和身体", "Animals & Nature": "动物和自然",
                     "Food & Drink": "食物和饮料", "Travel & Places": "旅行和地点", "Activities": "活动",
                     "Objects": "物品", "Symbols": "符号", "Flags": "旗帜"}
# Held-out families: print and handwriting alike, so neither style is only seen in training.
FONTS_HELDOUT = ("lato", "merriweather", "fira-sans", "eb-garamond", "roboto-mono", "arvo",
                 "kalam", "satisfy", "handlee", "schoolbell")
CJK_HELDOUT = ("light", "bold")
HANZI_COUNT = 500
FLAG_SAME = 6.0  # mean absolute difference (0-255) under which two rendered flags are one
CACHE_DIR = None  # tests point this at their own cache


def _files(name: str) -> dict[str, Path]:
    """{path inside the package(s): cached file} of a fetched source, verified by its manifest."""
    m = packaged.manifest(name, CACHE_DIR)
    if m is None:
        raise DataError(f"image source {name} is not fetched; run `glassgpt data fetch {name}`")
    root = packaged._cache(CACHE_DIR) / name / "files"
    return {f["path"]: root / f["path"] for f in m["files"]}


def _open_image(path: Path):
    return load_image(path.read_bytes(), name=str(path))


# --- scikit-learn digits -----------------------------------------------------------------------
def read_digits_csv(path: Path):
    """(images [N, 8, 8] float, targets [N] int) from digits.csv.gz: 64 pixel values (0-16) and
    the label on each line, as sklearn.datasets.load_digits reads it."""
    import numpy as np

    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a readable digits.csv.gz ({type(e).__name__}); "
                        "run `glassgpt data fetch sklearn-digits --force`") from None
    if data.ndim != 2 or data.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns (64 pixels and a label), found {data.shape}")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def sklearn_digits():
    """The digits from the fetched wheel, or None when sklearn-digits is not fetched."""
    if packaged.manifest("sklearn-digits", CACHE_DIR) is None:
        return None
    return read_digits_csv(_files("sklearn-digits")["sklearn/datasets/data/digits.csv.gz"])


# --- emoji ---------------------------------------------------------------------------------------
def _chars(unified: str) -> str:
    return "".join(chr(int(h, 16)) for h in unified.split("-"))


def _clean_name(s: str) -> str:
    return s.strip(":").replace("_", " ").strip()


@lru_cache(maxsize=4)
def emoji_items() -> tuple[dict, ...]:
    """Every emoji with a picture: {image, name, name_zh, category, vendors}. Names come from the
    emoji package's CLDR data (English and Chinese), keyed by the character; emoji.json's own
    upper-case name where the package lacks one."""
    names = {}
    zh = {}
    z = _files("emoji-zh")
    try:
        en_data = json.loads(z["emoji/unicode_codes/emoji.json"].read_text(encoding="utf-8"))
        zh_data = json.loads(z["emoji/unicode_codes/emoji_zh.json"].read_text(encoding="utf-8"))
    except (KeyError, json.JSONDecodeError) as e:
        raise DataError(f"emoji-zh: unreadable name data ({e}); run `glassgpt data fetch emoji-zh --force`") from None
    for ch, v in en_data.items():
        if isinstance(v, dict) and v.get("en"):
            names[ch] = _clean_name(v["en"])
    for ch, v in zh_data.items():
        zh[ch] = _clean_name(v)
    items: dict[str, dict] = {}
    for vendor in (*EMOJI_TRAIN, EMOJI_HELDOUT):
        if packaged.manifest(f"emoji-{vendor}", CACHE_DIR) is None:
            continue
        files = _files(f"emoji-{vendor}")
        try:
            table = json.loads(files["package/emoji.json"].read_text(encoding="utf-8"))
        except (KeyError, json.JSONDecodeError):
            raise DataError(f"emoji-{vendor}: package/emoji.json is missing or not JSON; "
                            f"run `glassgpt data fetch emoji-{vendor} --force`") from None
        for e in table:
            if e.get("category") not in EMOJI_CATEGORY_ZH or not e.get(f"has_img_{vendor}"):
                continue
            path = files.get(f"package/img/{vendor}/64/{e['image']}")
            if path is None:
                continue
            forms = [_chars(e["unified"])] + ([_chars(e["non_qualified"])] if e.get("non_qualified") else [])
            forms += [f.replace("\ufe0f", "") for f in forms]
            en = next((names[f] for f in forms if f in names), e.get("name", "").lower())
            cn = next((zh[f] for f in forms if f in zh), "")
            if not en or not cn:
                continue
            it = items.setdefault(e["unified"], {"id": e["unified"], "name": en, "name_zh": cn,
                                                 "category": e["category"], "images": {}})
            it["images"][vendor] = path
    if not items:
        raise DataError("no emoji images are fetched; run `glassgpt data fetch emoji-apple emoji-google "
                        "emoji-facebook emoji-twitter emoji-zh`")
    return tuple(items[k] for k in sorted(items))


def emoji(seed: int, split: str, index: int) -> Sample:
    items = emoji_items()
    if split == "train":
        rng = _rng(seed, "emoji", index)
        pool = [it for it in items if any(v in it["images"] for v in EMOJI_TRAIN)]
        if not pool:
            raise DataError("no training emoji: fetch emoji-apple, emoji-google or emoji-facebook")
        it = rng.choice(pool)
        vendor = rng.choice([v for v in EMOJI_TRAIN if v in it["images"]])
        kind = rng.choice(("name", "category"))
    else:
        pool = [it for it in items if EMOJI_HELDOUT in it["images"]]
        if not pool:
            raise DataError(f"no held-out emoji: run `glassgpt data fetch emoji-{EMOJI_HELDOUT}`")
        order = random.Random(zlib.crc32(b"emoji-heldout")).sample(range(len(pool)), len(pool))
        it, vendor = pool[order[index % len(pool)]], EMOJI_HELDOUT
        kind = ("name", "category")[(index // len(pool) + index) % 2]
    facts = {"name": (it["name"], it["name_zh"]),
             "category": (it["category"], EMOJI_CATEGORY_ZH[it["category"]])}
    q = "What is this emoji called?" if kind == "name" else "Which category is this emoji in?"
    return Sample(_open_image(it["images"][vendor]), q, facts[kind][0], "emoji", kind, {}, facts)


# --- flags ---------------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def country_names() -> dict[str, tuple[list[str], list[str]]]:
    """{iso2 lower: ([English names], [Chinese names])} from i18n-iso-countries: the first name
    is the answer trained on, any of them counts."""
    f = _files("iso-countries")
    out: dict[str, tuple[list[str], list[str]]] = {}
    langs = []
    for lang in ("en", "zh"):
        try:
            data = json.loads(f[f"package/langs/{lang}.json"].read_text(encoding="utf-8"))["countries"]
        except (KeyError, json.JSONDecodeError, TypeError):
            raise DataError(f"iso-countries: package/langs/{lang}.json is missing or changed; "
                            "run `glassgpt data fetch iso-countries --force`") from None
        langs.append({k.lower(): ([v] if isinstance(v, str) else list(v)) for k, v in data.items()})
    for code in langs[0]:
        if code in langs[1]:
            out[code] = (langs[0][code], langs[1][code])
    return out


def render_svg(path: Path, width: int, height: int):
    try:
        import resvg_py
    except ImportError:
        raise DataError("the flags task renders SVG with resvg-py: pip install 'glassgpt[vision]'") from None
    try:
        png = resvg_py.svg_to_bytes(svg_path=str(path), width=width, height=height)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot render this SVG ({str(e).splitlines()[0][:80]}); "
                        "run `glassgpt data fetch flag-icons --force`") from None
    return to_rgb(_pil().open(io.BytesIO(bytes(png))))


@lru_cache(maxsize=4)
def flag_images(aspect: str, size: int = RENDER) -> dict:
    """{iso2: RGB image} of every country flag in the 4x3 or 1x1 drawing, rendered once; a 4x3
    flag is size wide and 3/4 of it high."""
    files = _files("flag-icons")
    names = country_names()
    w, h = (size, size * 3 // 4) if aspect == "4x3" else (size, size)
    out = {}
    for code in sorted(names):
        p = files.get(f"package/flags/{aspect}/{code}.svg")
        if p is not None:
            out[code] = render_svg(p, w, h)
    if not out:
        raise DataError("flag-icons has no country flags under flags/4x3 and flags/1x1; "
                        "run `glassgpt data fetch flag-icons --force`")
    return out


def _letterbox(im, side: int):
    """The image as the encoder sees it: letterboxed onto side x side (model.vision.preprocess)."""
    Image = _pil()
    s = side / max(im.size)
    small = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
    out = Image.new("RGB", (side, side), (0, 0, 0))
    out.paste(small, ((side - small.size[0]) // 2, (side - small.size[1]) // 2))
    return out


@lru_cache(maxsize=4)
def flag_groups(side: int = RENDER) -> dict[str, str]:
    """{iso2: the group's first code}: flags whose 1x1 renderings at the encoder's resolution
    differ by less than FLAG_SAME (mean absolute, 0-255) are one group (France and the French
    territories that fly its flag, Norway and Svalbard), scored as one answer. Chad and Romania
    differ by 18.7 here and Monaco and Indonesia by 11.2: different blues and reds in these drawings."""
    import numpy as np

    parent: dict[str, str] = {}

    def find(c):
        while parent.setdefault(c, c) != c:
            c = parent[c]
        return c

    ims = flag_images("1x1")  # the drawing that is scored
    codes = sorted(ims)
    arr = np.stack([np.asarray(_letterbox(ims[c], side), dtype=np.float32) for c in codes])
    for i, a in enumerate(codes):
        find(a)
        d = np.abs(arr[i + 1:] - arr[i]).mean(axis=(1, 2, 3))
        for j in np.nonzero(d < FLAG_SAME)[0]:
            ra, rb = find(a), find(codes[i + 1 + j])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {c: find(c) for c in parent}


def look_alike_flags(side: int = RENDER) -> list[list[str]]:
    """The groups of more than one flag (for the docs and the report)."""
    groups: dict[str, list[str]] = {}
    for c, root in flag_groups(side).items():
        groups.setdefault(root, []).append(c)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def flag_answers(code: str) -> tuple[list[str], list[str]]:
    """Every English and Chinese name that counts for this flag (its group's names)."""
    names = country_names()
    group = flag_groups()
    root = group.get(code, code)
    en, zh = list(names[code][0]), list(names[code][1])
    for c, r in sorted(group.items()):
        if r == root and c != code:
            en += names[c][0]
            zh += names[c][1]
    return en, zh


def flags(seed: int, split: str, index: int) -> Sample:
    if split == "train":
        ims = flag_images("4x3")
        rng = _rng(seed, "flags", index)
        code = rng.choice(sorted(ims))
        im = ims[code]
        # a little scale and shift: the 1x1 drawings crop and re-centre the same design
        s = rng.uniform(0.8, 1.0)
        Image = _pil()
        w, h = im.size
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        small = im.resize((max(4, round(w * s)), max(3, round(h * s))), Image.BILINEAR)
        canvas.paste(small, (rng.randint(0, w - small.size[0]), rng.randint(0, h - small.size[1])))
        im = canvas
    else:
        ims = flag_images("1x1")
        codes = sorted(ims)
        code = codes[index % len(codes)]
        im = ims[code]
    en, zh = country_names()[code]
    accept = flag_answers(code) if split != "train" else (en, zh)
    return Sample(im, "Which country's flag is this?", en[0], "flags", "country", {}, {"country": (en[0], zh[0])},
                  {"country": accept})


# --- reading in real fonts ---------------------------------------------------------------------
def latin_fonts() -> dict[str, Path]:
    """{family: .woff file} of the fetched Latin families."""
    files = _files("fonts-latin")
    out = {}
    for rel, p in files.items():
        m = re.search(r"/package/files/([a-z0-9-]+)-latin-400-normal\.woff$", rel)
        if m:
            out[m.group(1)] = p
    if not out:
        raise DataError("fonts-latin holds no *-latin-400-normal.woff files; run `glassgpt data fetch fonts-latin --force`")
    return dict(sorted(out.items()))


@lru_cache(maxsize=1)
def common_words(n: int = 3000) -> tuple[str, ...]:
    """The n most frequent lower-case words of 4-8 letters in the assistant's English text (the
    Brown corpus, else WordNet's glosses)."""
    counts: Counter = Counter()
    for name in ("brown", "wordnet"):
        if packaged.manifest(name, CACHE_DIR) is None:
            continue
        for doc in packaged.documents(name, CACHE_DIR):
            counts.update(w for w in re.findall(r"\b[a-z]{4,8}\b", doc.text))
        break
    if not counts:
        raise DataError("the words task takes its words from the English text: run `glassgpt data fetch brown`")
    return tuple(w for w, _ in counts.most_common(n))


@lru_cache(maxsize=256)
def _truetype(path: str, size: int):
    """A font at a size, loaded once (a CJK font is 16 MB: loading it per sample was most of a sample's time)."""
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _render_glyphs(text: str, font_path: Path, rng: random.Random, max_size: int, min_size: int = 10):
    """Dark text centred on a light square with a slight rotation and noise (as images.text)."""
    import numpy as np

    Image = _pil()
    from PIL import ImageDraw

    light, dark = rng.randint(200, 255), rng.randint(0, 60)
    size = rng.randint(min_size + 4, max_size)
    try:
        while True:
            font = _truetype(str(font_path), size)
            x0, y0, x1, y1 = font.getbbox(text)
            if (x1 - x0 <= RENDER - 6 and y1 - y0 <= RENDER - 6) or size <= min_size:
                break
            size -= 1
    except OSError as e:
        raise DataError(f"{font_path}: FreeType cannot read this font ({e}); "
                        "run `glassgpt data fetch` for its source with --force") from None
    im = Image.new("L", (RENDER, RENDER), light)
    d = ImageDraw.Draw(im)
    d.text(((RENDER - (x1 - x0)) / 2 - x0, (RENDER - (y1 - y0)) / 2 - y0), text, fill=dark, font=font)
    im = im.rotate(rng.uniform(-6, 6), resample=Image.BILINEAR, fillcolor=light)
    a = np.asarray(im, dtype=np.float32) + np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(0, 15), im.size[::-1])
    return Image.fromarray(a.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")


def words(seed: int, split: str, index: int) -> Sample:
    fonts = latin_fonts()
    held = split != "train"
    fams = [f for f in fonts if (f in FONTS_HELDOUT) == held]
    if not fams:
        raise DataError(f"no {'held-out' if held else 'training'} font families are fetched")
    rng = _rng(seed, "words", split, index)
    fam = rng.choice(fams)
    w = rng.choice(common_words())
    im = _render_glyphs(w, fonts[fam], rng, 22)
    return Sample(im, "What word is written here?", w, "words", "read", {"font": fam},
                  {"read": (w, w), "length": (str(len(w)), str(len(w)))})


def cjk_fonts() -> dict[str, Path]:
    """{weight: .otf file} of the fetched Noto Sans CJK weights."""
    out = {}
    for rel, p in _files("fonts-cjk").items():
        m = re.search(r"NotoSansCJK\w*-(\w+)\.otf$", rel)
        if m:
            out[m.group(1).lower()] = p
    if not out:
        raise DataError("fonts-cjk holds no NotoSansCJK*.otf files; run `glassgpt data fetch fonts-cjk --force`")
    return dict(sorted(out.items()))


@lru_cache(maxsize=1)
def common_hanzi(n: int = HANZI_COUNT, per_source_chars: int = 3_000_000) -> tuple[str, ...]:
    """The n most frequent CJK characters of the assistant's Chinese text (the pretrain-zh
    sources that are fetched), ties broken by the character."""
    counts: Counter = Counter()
    for src in packaged.SOURCES.values():
        if src.kind != "pretrain-zh" or packaged.manifest(src.name, CACHE_DIR) is None:
            continue
        seen = 0
        for doc in packaged.documents(src.name, CACHE_DIR):
            counts.update(ch for ch in doc.text if "\u4e00" <= ch <= "\u9fff")
            seen += len(doc.text)
            if seen >= per_source_chars:
                break
    if len(counts) < n:
        raise DataError(f"the hanzi task needs {n} distinct characters from the Chinese text and found {len(counts)}; "
                        "run `glassgpt data fetch chinese-poetry fortunes-zh cccedict`")
    return tuple(ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def hanzi(seed: int, split: str, index: int) -> Sample:
    fonts = cjk_fonts()
    held = split != "train"
    weights = [w for w in fonts if (w in CJK_HELDOUT) == held]
    if not weights:
        raise DataError(f"no {'held-out' if held else 'training'} Noto Sans CJK weights are fetched")
    rng = _rng(seed, "hanzi", split, index)
    chars = common_hanzi()
    ch = chars[index % len(chars)] if held else rng.choice(chars)
    im = _render_glyphs(ch, fonts[rng.choice(weights)], rng, 48, 24)
    return Sample(im, "What character is this?", ch, "hanzi", "read", {}, {"read": (ch, ch)})


TASKS = {"emoji": emoji, "flags": flags, "words": words, "hanzi": hanzi}
NEEDS = {"emoji": ("emoji-zh", *(f"emoji-{v}" for v in (*EMOJI_TRAIN, EMOJI_HELDOUT))),
         "flags": ("flag-icons", "iso-countries"), "words": ("fonts-latin",), "hanzi": ("fonts-cjk",)}


def check_fetched(task: str) -> None:
    """Before any work: a task whose packages are not all fetched is one line naming the fetch."""
    missing = [n for n in NEEDS.get(task, ()) if packaged.manifest(n, CACHE_DIR) is None]
    if missing:
        raise DataError(f"image task {task} needs packages that are not fetched; run "
                        f"`glassgpt data fetch {' '.join(missing)}`")
