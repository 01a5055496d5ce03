"""Image decoding/validation and the image sources (no model, no training)."""

import io
import json
import struct
import zlib

import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from glassgpt.data import images as I  # noqa: E402
from glassgpt.data.images import ImageError  # noqa: E402


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _encode(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_with_size(w: int, h: int) -> bytes:
    """A small valid PNG whose IHDR claims w×h (the header is all a size check needs)."""
    data = bytearray(_png(Image.new("RGB", (8, 8), (1, 2, 3))))
    ihdr = bytearray(data[12:29])  # b'IHDR' + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_good_images_load_as_rgb(fmt):
    im = Image.new("RGB", (40, 30), (200, 10, 10))
    out = I.load_image(_encode(im, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_rgba_and_palette_are_flattened():
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert I.load_image(_png(im)).getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    assert I.load_image(_png(Image.new("P", (10, 10)))).mode == "RGB"


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"def f():\n    return 1\n" * 20, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
])
def test_non_images_are_refused(data, words):
    with pytest.raises(ImageError, match=words):
        I.load_image(data, name="x.png")


def test_truncated_and_corrupt():
    good = _png(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageError, match="truncated|corrupt"):
        I.load_image(good[: len(good) // 2])
    jpg = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="truncated|corrupt"):
        I.load_image(jpg[: len(jpg) // 3])
    bad = bytearray(good)
    bad[60:80] = b"\xff" * 20  # scribble over compressed data
    with pytest.raises(ImageError):
        I.load_image(bytes(bad))


def test_sizes():
    with pytest.raises(ImageError, match="1×1"):
        I.load_image(_png(Image.new("RGB", (1, 1))))
    with pytest.raises(ImageError, match="too large"):
        I.load_image(_png_with_size(20_000, 20_000))
    with pytest.raises(ImageError):
        I.load_image(_png_with_size(0, 8))


def test_animated_gif_cmyk_16bit():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="animated"):
        I.load_image(buf.getvalue())
    first = I.load_image(buf.getvalue(), animated="first")
    assert first.getpixel((0, 0))[0] > 200
    with pytest.raises(ImageError, match="CMYK"):
        I.load_image(_encode(Image.new("CMYK", (16, 16)), "JPEG"))
    with pytest.raises(ImageError, match="16-bit"):
        I.load_image(_png(Image.new("I;16", (16, 16))))


def test_paths_and_data_urls(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(_png(Image.new("RGB", (8, 8))))
    assert I.load_image(p).size == (8, 8)
    with pytest.raises(ImageError, match="not found"):
        I.load_image(tmp_path / "missing.png")
    url = I.to_data_url(Image.new("RGB", (9, 9)))
    assert I.decode_data_url(url).size == (9, 9)
    with pytest.raises(ImageError, match="base64"):
        I.decode_data_url("data:image/png;base64,@@@")


@pytest.mark.parametrize("task", ["digits", "shapes", "text", "glyphs", "charts"])
def test_sources_are_deterministic(task):
    src = I.get_source(task)
    for split in ("train", "heldout"):
        a, b = src(7, split, 3), src(7, split, 3)
        assert (a.question, a.answer) == (b.question, b.answer)
        assert a.image.tobytes() == b.image.tobytes()
        assert a.answer and a.question.endswith("?")


def test_heldout_is_never_trained_on():
    images, target, train, held = I._digits()
    assert not set(train.tolist()) & set(held.tolist()) and len(held) == I.DIGITS_HELDOUT
    heldout_digits = {I._digit_image(images[i]).tobytes() for i in held}
    assert heldout_digits.isdisjoint(I.digits(0, "train", k).image.tobytes() for k in range(300))
    for task in ("text", "charts", "scenes"):
        src = I.get_source(task)
        tr = {(s.question, s.answer, s.image.tobytes()) for s in (src(0, "train", k) for k in range(150))}
        ho = {(s.question, s.answer, s.image.tobytes()) for s in (src(0, "heldout", k) for k in range(60))}
        assert not tr & ho
    tr_text = {I.text(0, "train", k).answer for k in range(300)}
    assert all(I.is_heldout_key(f"text:{a}") is False for a in tr_text)
    assert all(I.is_heldout_key(f"text:{I.text(0, 'heldout', k).answer}") for k in range(30))


def test_one_heldout_sampler_never_wraps(caplog):
    """Digits has 300 held-out images: asking for more scores those 300 and says so (it once
    wrapped around and counted images twice); an index past the end is an error."""
    with pytest.raises(I.DataError, match="300 held-out"):
        I.digits(0, "heldout", I.DIGITS_HELDOUT)
    with caplog.at_level("WARNING"):
        got = I.heldout_samples("digits", 350, 0)
    assert len(got) == I.DIGITS_HELDOUT and "scoring those 300, not 350" in caplog.text
    assert len({s.image.tobytes() + s.answer.encode() for s in got}) > 250  # distinct images, not a wrap
    assert [s.answer for s in I.heldout_samples("shapes", 5, 0)] == [I.shapes(0, "heldout", k).answer for k in range(5)]


def test_task_contents():
    texts = [I.text(1, "train", k).answer for k in range(50)]
    assert all(4 <= len(t) <= 8 for t in texts)
    short = [I.glyphs(1, "train", k) for k in range(50)]  # the same task (spelt a character a token), shorter
    assert {len(s.answer) for s in short} == {1, 2, 3} and {s.task for s in short} == {"text"}
    assert {s.question for s in short} == {I.text(1, "train", 0).question}
    counts = {I.shapes(1, "train", k).answer for k in range(200) if I.shapes(1, "train", k).question.startswith("How many")}
    assert counts <= {str(n) for n in range(1, 7)} and len(counts) >= 4
    qs = " ".join(I.charts(1, "train", k).question for k in range(60))
    assert "largest" in qs and "value of bar" in qs


def test_scene_captions_name_every_object_left_to_right(monkeypatch):
    drawn = []
    monkeypatch.setattr(I, "_render_scene", lambda objs: drawn.append(objs) or Image.new("RGB", (4, 4)))
    for k in range(40):
        s = I.scenes(2, "train", k)
        objs = drawn[-1]
        assert s.question == "Describe the image." and s.task == "scenes"
        assert s.answer == ", ".join(f"{c} {sh}" for sh, c, *_ in objs) and 1 <= len(objs) <= 6
        assert [o[2] for o in objs] == sorted(o[2] for o in objs)


def test_relation_questions_ask_which_of_two_objects(monkeypatch):
    drawn = []
    monkeypatch.setattr(I, "_render_scene", lambda objs: drawn.append(objs) or Image.new("RGB", (4, 4)))
    seen = set()
    for k in range(200):
        s = I.shapes(3, "train", k)
        if not s.question.startswith("Which is "):
            continue
        (s1, c1, x1, y1, _), (s2, c2, x2, y2, _) = drawn[-1]
        word = s.question[len("Which is "):].split(",")[0]
        assert s.question == f"Which is {word}, the {c1} {s1} or the {c2} {s2}?"
        key = {"further left": x1, "further right": -x1, "higher": y1, "lower": -y1}[word]
        other = {"further left": x2, "further right": -x2, "higher": y2, "lower": -y2}[word]
        assert s.answer == (f"{c1} {s1}" if key < other else f"{c2} {s2}") and abs(key - other) > 4
        seen.add(word)
    assert seen == {"further left", "further right", "higher", "lower"}


def test_folder_source(tmp_path):
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    lines = [{"image": "blue.png", "caption": "a blue square"}, {"image": "broken.png", "caption": "x"}, "not json", {"nope": 1}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    src = I.get_source(f"folder:{tmp_path}")
    s = src(0, "train", 0)
    assert s.answer in ("a blue square",) and s.image.size == (20, 20)
    assert src.skipped >= 2
    with pytest.raises(I.DataError, match="data.jsonl"):
        I.Folder(tmp_path / "nothing")


def test_mix_parsing():
    assert I.parse_mix("digits:2, shapes ,folder:/a/b:3") == [("digits", 2.0), ("shapes", 1.0), ("folder:/a/b", 3.0)]
    with pytest.raises(I.DataError):
        I.parse_mix("digits:0")
    with pytest.raises(I.DataError, match="did you mean 'digits'"):
        I.get_source("digit")


def test_crowded_scenes_terminate():
    """Regression: rejection placement once looped forever when 6 shapes left no room."""
    import random

    for s in range(400):
        objs = I._scene(random.Random(s), 6)
        assert len(objs) == 6
    from glassgpt.train.sources import Mix

    mix = Mix("digits:1,shapes:1.5,text:1.5,charts:1", 1337)
    for k in range(202 * 32 + 16, 202 * 32 + 24):  # from the step (203) that hung the first vision run
        mix.sample(k)


def test_digit_epoch_order_is_the_seeded_shuffle():
    import random
    import zlib

    train = I._digits()[2]
    for seed, epoch in ((0, 0), (1337, 3)):
        want = random.Random(zlib.crc32(repr((seed, "digits-epoch", epoch)).encode())).sample(list(train), len(train))
        assert list(I._digits_epoch_order(seed, epoch)) == want
    assert sorted(I._digits_epoch_order(5, 1)) == sorted(train.tolist())


def test_training_scenes_add_large_objects_held_out_scenes_do_not(monkeypatch):
    drawn = []
    real = I._scene

    def spy(rng, n, radii=I.RADII):
        objs = real(rng, n, radii)
        drawn.append({o[4] for o in objs})
        return objs

    monkeypatch.setattr(I, "_scene", spy)
    for k in range(200):
        I.shapes(0, "heldout", k)
    assert set().union(*drawn) == set(I.RADII)
    drawn.clear()
    for k in range(200):
        I.shapes(0, "train", k)
    assert set().union(*drawn) == set(I.TRAIN_RADII) and max(I.TRAIN_RADII) > max(I.RADII)
