"""Registry: YAML specs in the openai/evals layout, from several directories.

    <registry>/evals/*.yaml         base entries (id, description, metrics) and
                                    versioned entries <name>.<split>.<version> (class, args)
    <registry>/data/**.jsonl        samples, resolved relative to <registry>/data/
    <registry>/modelgraded/*.yaml   grader specs for ModelBasedClassify
    <registry>/eval_sets/*.yaml     named lists of evals
    <registry>/completion_fns/*.yaml

glassgpt's built-in registry comes first; every --registry_path is layered on top
(a later directory overrides an entry of the same name).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from glassgpt.errors import closest

from .errors import EvalError, UnsupportedEvalClass

log = logging.getLogger(__name__)

BUILTIN_REGISTRY = Path(__file__).resolve().parent / "registry"
KINDS = ("evals", "modelgraded", "eval_sets", "completion_fns")

# Class paths written in openai/evals registries -> glassgpt's implementations.
CLASS_MAP = {
    "evals.elsuite.basic.match:Match": "glassgpt.evals.elsuite.basic:Match",
    "evals.elsuite.test.match:TestMatch": "glassgpt.evals.elsuite.basic:TestMatch",
    "evals.elsuite.basic.includes:Includes": "glassgpt.evals.elsuite.basic:Includes",
    "evals.elsuite.basic.fuzzy_match:FuzzyMatch": "glassgpt.evals.elsuite.basic:FuzzyMatch",
    "evals.elsuite.basic.json_match:JsonMatch": "glassgpt.evals.elsuite.basic:JsonMatch",
    "evals.elsuite.multiple_choice:MultipleChoice": "glassgpt.evals.elsuite.multiple_choice:MultipleChoice",
    "evals.elsuite.modelgraded.classify:ModelBasedClassify": "glassgpt.evals.elsuite.modelgraded:ModelBasedClassify",
}


@dataclasses.dataclass
class EvalSpec:
    key: str  # the resolved versioned name, e.g. "test-match.s1.simple-v0"
    cls: str
    args: dict
    registry_path: Path
    group: str
    file: Path
    requested: str = ""  # the name the user asked for (may be a base alias)

    @property
    def base_eval(self) -> str:
        return self.key.split(".")[0]

    @property
    def split(self) -> str:
        parts = self.key.split(".")
        return parts[1] if len(parts) > 1 else ""


@dataclasses.dataclass
class ModelGradedSpec:
    prompt: Any
    choice_strings: Any
    input_outputs: dict
    eval_type: Optional[str] = None
    choice_scores: Any = None
    output_template: Optional[str] = None
    key: Optional[str] = None
    group: Optional[str] = None


def resolve_class_path(cls: str) -> str:
    cls = cls.strip()
    if cls in CLASS_MAP:
        return CLASS_MAP[cls]
    if cls.startswith("glassgpt."):
        return cls
    raise UnsupportedEvalClass(f"eval class {cls} is not implemented in glassgpt")


def is_supported_class(cls: str) -> bool:
    try:
        resolve_class_path(cls)
        return True
    except UnsupportedEvalClass:
        return False


def load_class(cls: str):
    path = resolve_class_path(cls)
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise EvalError(f"cannot import eval class {path}: {e}") from None


def _load_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise EvalError(f"{where}: malformed YAML ({problem}); fix the file or drop that --registry_path") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise EvalError(f"{path}: expected a mapping of names to specs, got {type(d).__name__}")
    return d


def env_registry_paths() -> list[Path]:
    raw = os.environ.get("GLASSGPT_EVALS_REGISTRY", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def default_registry_paths(extra: Sequence[os.PathLike] = ()) -> list[Path]:
    """The registries an eval is looked up in after the built-in one, later ones winning: the
    reference registry that `glassgpt eval fetch-registry` unpacked (when it has been run; as
    the reference's own registry is always there for `oaieval`), $GLASSGPT_EVALS_REGISTRY,
    then `extra` (--registry_path). A directory named twice is read once."""
    from .fetch import default_cache_dir

    fetched = default_cache_dir() / "registry"
    paths = ([fetched] if fetched.is_dir() else []) + env_registry_paths() + [Path(p) for p in extra]
    out, seen = [], set()
    for p in paths:
        key = p.resolve() if p.exists() else p
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


class Registry:
    def __init__(self, registry_paths: Sequence[os.PathLike] = (), builtin: bool = True):
        self.paths: list[Path] = ([BUILTIN_REGISTRY] if builtin else []) + [Path(p) for p in registry_paths]
        for p in self.paths:
            if not p.is_dir():
                raise EvalError(f"registry path {p} is not a directory (expected evals/, data/ inside it)")
        self._raw: dict[str, dict[str, dict]] | None = None

    # --- loading ---------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, dict]]:
        if self._raw is not None:
            return self._raw
        raw: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        for reg in self.paths:
            for kind in KINDS:
                d = reg / kind
                if not d.is_dir():
                    continue
                for f in sorted(d.glob("*.yaml")):
                    for name, spec in _load_yaml(f).items():
                        name = str(name)
                        if name in raw[kind] and raw[kind][name]["_registry"] == reg:
                            log.warning("duplicate %s entry %s in %s", kind, name, f)
                        raw[kind][name] = {"_spec": spec, "_file": f, "_registry": reg}
        self._raw = raw
        return raw

    def names(self, kind: str = "evals") -> list[str]:
        return sorted(self._load()[kind])

    def _resolve_alias(self, kind: str, name: str) -> tuple[str, dict]:
        table = self._load()[kind]
        seen = set()
        while True:
            if name not in table:
                raise EvalError(f"unknown {kind[:-1].replace('_', ' ')} '{name}'{closest(name, table)}")
            if name in seen:
                raise EvalError(f"alias loop at {kind} entry '{name}' in {table[name]['_file']}")
            seen.add(name)
            spec = table[name]["_spec"]
            if isinstance(spec, str):
                name = spec
            elif isinstance(spec, dict) and "id" in spec and "class" not in spec:
                name = str(spec["id"])
            else:
                return name, table[name]

    def get_eval(self, name: str) -> EvalSpec:
        key, entry = self._resolve_alias("evals", name)
        spec = entry["_spec"]
        if not isinstance(spec, dict) or "class" not in spec:
            raise EvalError(f"{entry['_file']}: eval entry '{key}' has no 'class'")
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise EvalError(f"{entry['_file']}: 'args' of eval '{key}' must be a mapping")
        if len(key.split(".")) < 2:
            raise EvalError(f"{entry['_file']}: eval name '{key}' must look like <base>.<split>[.<version>]")
        return EvalSpec(key=key, cls=str(spec["class"]).strip(), args=dict(args),
                        registry_path=entry["_registry"], group=entry["_file"].stem,
                        file=entry["_file"], requested=name)

    def get_base_eval(self, name: str) -> dict:
        entry = self._load()["evals"].get(name.split(".")[0])
        spec = entry["_spec"] if entry else None
        return spec if isinstance(spec, dict) else {}

    def get_eval_set(self, name: str) -> list[str]:
        key, entry = self._resolve_alias("eval_sets", name)
        spec = entry["_spec"]
        if not isinstance(spec, dict) or not isinstance(spec.get("evals"), list):
            raise EvalError(f"{entry['_file']}: eval set '{key}' needs an 'evals' list")
        return [str(e) for e in spec["evals"]]

    def get_modelgraded_spec(self, name: str, **overrides) -> ModelGradedSpec:
        key, entry = self._resolve_alias("modelgraded", name)
        spec = dict(entry["_spec"])
        spec.update(overrides)
        spec.setdefault("key", key)
        spec.setdefault("group", entry["_file"].stem)
        known = {f.name for f in dataclasses.fields(ModelGradedSpec)}
        spec = {k: v for k, v in spec.items() if k in known}  # unknown keys are ignored, as in the reference
        try:
            return ModelGradedSpec(**spec)
        except TypeError as e:
            raise EvalError(f"{entry['_file']}: modelgraded spec '{key}': {e}") from None

    def get_completion_fn_spec(self, name: str) -> Optional[dict]:
        table = self._load()["completion_fns"]
        if name not in table:
            return None
        _, entry = self._resolve_alias("completion_fns", name)
        return entry["_spec"]

    def resolve(self, name: str) -> tuple[str, list[str]]:
        """('eval', [name]) or ('set', [eval names]); unknown names get a suggestion."""
        raw = self._load()
        if name in raw["evals"]:
            return "eval", [name]
        if name in raw["eval_sets"]:
            return "set", self.get_eval_set(name)
        from .fetch import default_cache_dir

        hint = "" if (default_cache_dir() / "registry").is_dir() else \
            " (the reference registry is not here yet: `glassgpt eval fetch-registry` gets it)"
        raise EvalError(
            f"unknown eval or eval set '{name}'{closest(name, list(raw['evals']) + list(raw['eval_sets']))}; "
            f"see `glassgpt eval list`{hint}"
        )

    def data_path(self, spec_registry: Path, rel: str) -> Path:
        p = Path(rel)
        if p.is_absolute() or p.is_file():
            return p
        return spec_registry / "data" / rel

    # --- listing ------------------------------------------------------------------
    def listing(self) -> list[dict]:
        """One row per runnable name (base evals and versioned evals without a base)."""
        raw = self._load()["evals"]
        rows = []
        bases_targets = set()
        for name, entry in sorted(raw.items()):
            if "." in name:
                continue
            try:
                spec = self.get_eval(name)
            except EvalError as e:
                rows.append({"name": name, "class": "?", "supported": False, "registry": str(entry["_registry"]),
                             "description": str(e)})
                continue
            bases_targets.add(spec.key)
            base = entry["_spec"] if isinstance(entry["_spec"], dict) else {}
            rows.append({"name": name, "key": spec.key, "class": spec.cls, "supported": is_supported_class(spec.cls),
                         "registry": str(entry["_registry"]), "description": str(base.get("description") or "")})
        for name, entry in sorted(raw.items()):
            if "." in name and name not in bases_targets and isinstance(entry["_spec"], dict) and "class" in entry["_spec"]:
                cls = str(entry["_spec"]["class"]).strip()
                rows.append({"name": name, "key": name, "class": cls, "supported": is_supported_class(cls),
                             "registry": str(entry["_registry"]), "description": ""})
        return rows
