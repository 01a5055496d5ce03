"""Alignment stages as batch sources of the one trainer (glassgpt.train.trainer): each defines
`loss(fwd, raw, index)`, its objective for micro-batch `index` (a pure function of the seed, the
index and the weights, so a resumed run takes the same steps), and the trainer does the rest:
optimizers, schedule, checkpoints, exact resume, metrics.jsonl and progress lines.

    rm          PairSource   reward model: the SFT model + a scalar head, Bradley-Terry loss
    dpo         PairSource   DPO against the frozen SFT model (the parent run)
    classifier  LabelSource  the RBR proposition classifier: one logit per proposition
    grpo, ppo   RLSource     rollouts through the serving Engine, reward = RM + RBR + facts - β·KL

Every stage starts from a chat SFT run with --init-from; the parent's weights are also the frozen
reference policy of DPO and RL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glassgpt.align import evals as evals_mod
from glassgpt.align import facts as facts_mod
from glassgpt.align import heads, prefs, rbr
from glassgpt.config import Config
from glassgpt.data import chat, sft
from glassgpt.errors import ConfigError, DataError, TrainingError
from glassgpt.train.sources import Source

log = logging.getLogger(__name__)


def conversations(cfg: Config) -> tuple[list, list]:
    """(train, held-out) SFT conversations: align.conversations (a JSONL) or the built sources."""
    a = cfg.align
    if a.conversations:
        return sft.load_jsonl(a.conversations, "train"), sft.load_jsonl(a.conversations, "heldout")
    names = a.sources or None
    return sft.build("train", names)[0], sft.build("heldout", names)[0]


def uncensored(cache_dir=None) -> dict[str, dict[str, str]]:
    """uncensorbench's complying answers by conversation id: real disallowed responses, the rejected
    side of its refusal pairs. Empty when not fetched."""
    from glassgpt.data import packaged

    try:
        files = packaged.cached_files("uncensorbench", cache_dir)
    except DataError:
        return {}
    p = next((f for f in files if f.name == "prompts.json"), None)
    out = {}
    for row in (json.loads(p.read_text(encoding="utf-8")).get("prompts", []) if p else []):
        text = (row.get("uncensored_response") or "").strip() if isinstance(row, dict) else ""
        if text and row.get("id"):
            out[f"uncensorbench/{row['id']}"] = {"comply_harmful": text}
    return out


def build_sources(cfg: Config, corpus, d, autocast) -> list[Source]:
    """The stage's objective, then the pretraining text at align.text_weight (0: evaluated only)."""
    from glassgpt.train.sources import TextSource

    text = TextSource(cfg, corpus, d, autocast)
    text.weight = cfg.align.text_weight
    return [build(cfg, corpus.tokenizer, d, autocast), text]


def build(cfg: Config, tok, d, autocast) -> Source:
    if d.world > 1:
        raise ConfigError(f"align.stage={cfg.align.stage} runs in one process (no torchrun yet)")
    stage = cfg.align.stage
    if stage in ("rm", "dpo"):
        return PairSource(cfg, tok, d.device, autocast)
    if stage == "classifier":
        return LabelSource(cfg, tok, d.device, autocast)
    return RLSource(cfg, tok, d.device, autocast)


def frozen_parent(cfg: Config, lineage: dict | None, device):
    """The parent run's model, frozen: DPO's and RL's reference policy."""
    from glassgpt.model.gpt import build as build_model
    from glassgpt.train import checkpoint

    if not lineage or lineage.get("kind") != "init":
        raise ConfigError(f"align.stage={cfg.align.stage} starts from a chat SFT run: pass --init-from RUN "
                          "(its weights are also the frozen reference)")
    _, state = checkpoint.read_weights(Path(lineage["checkpoint"]))
    ref = build_model(cfg.model, device=device, seed=None)
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith(("head.", "vision."))})
    ref.eval().requires_grad_(False)
    return ref


def token_logprobs(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y_t) per position [B, L] (0 where y is -1)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp * (y != -1)


def rows_of(tok, seqs: list[tuple[list[int], int]], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L], y [B, L] for (ids, n_prompt) sequences: targets only on the response tokens."""
    L = max(len(s) for s, _ in seqs) - 1
    x = torch.full((len(seqs), L), tok.pad_id, dtype=torch.long)
    y = torch.full((len(seqs), L), -1, dtype=torch.long)
    for i, (s, n) in enumerate(seqs):
        x[i, : len(s) - 1] = torch.tensor(s[:-1])
        y[i, n - 1 : len(s) - 1] = torch.tensor(s[n:])
    return x, y


class _Align(Source):
    """What the alignment sources share: the conversations, a deterministic pick of a micro-batch,
    the held-out safety/factuality evals (for policy stages) and a head's optimizer."""

    def __init__(self, cfg: Config, tok, device, autocast):
        self.cfg, self.a, self.tok, self.device, self.autocast = cfg, cfg.align, tok, device, autocast
        self.T = cfg.model.seq_len
        self.train_convs, self.held_convs = conversations(cfg)
        self.raw = None
        self.step_metrics: dict = {}
        self.real_data = not self.a.conversations  # packaged extras only with the packaged sources

    def pick(self, index: int, n_items: int) -> list[int]:
        """Item indices of micro-batch `index`: consecutive slices of per-epoch seeded permutations."""
        B = self.a.batch_size
        out = []
        for k in range(index * B, (index + 1) * B):
            epoch = k // n_items
            perm = np.random.default_rng([self.cfg.train.seed, 13, epoch]).permutation(n_items)
            out.append(int(perm[k % n_items]))
        return out

    def head_optimizer(self) -> list[torch.optim.Optimizer]:
        head = getattr(self.raw, "head", None)
        if head is None:
            return []
        t = self.cfg.train
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3 * t.adam_lr_mult, betas=t.betas, weight_decay=0.0)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return [opt]

    def optimizers(self):
        return self.head_optimizer()

    def policy_evals(self, model) -> dict:
        qs = facts_mod.from_conversations(self.held_convs)
        if self.real_data:
            qs += facts_mod.from_packages()
        sets = evals_mod.heldout_sets(self.held_convs, qs, self.a.eval_samples)
        return evals_mod.run(evals_mod.local_answerer(model, self.tok, self.a.max_new_tokens), sets)

    def summary(self, result: dict) -> str:
        parts = [f"{k} {v:.0%}" for k, v in (result.get("headline") or {}).items() if isinstance(v, float)]
        parts += [f"pairs {k} {v:.0%}" for k, v in (result.get("pair_accuracy") or {}).items() if v is not None]
        return ", ".join(parts)

    def report(self, result: dict | None) -> dict:
        return {"align": {"stage": self.a.stage, "eval": result}}


# --- preference pairs: reward model and DPO -------------------------------------------------------
class PairSource(_Align):
    name, eval_key = "pairs", "align_eval"

    def __init__(self, cfg, tok, device, autocast):
        super().__init__(cfg, tok, device, autocast)
        extra = uncensored() if self.real_data else {}
        pairs = prefs.build(self.train_convs + self.held_convs, extra, per_kind=self.a.per_kind,
                            packaged_facts=self.real_data)
        self.train = [p for p in pairs if p.split == "train"]
        self.heldout = [p for p in pairs if p.split == "heldout"]
        if not self.train:
            raise DataError("no preference pairs could be built (no harmful, benign, sensitive or fact "
                            "conversations); fetch the SFT sources (`glassgpt data fetch`)")
        self.ref = None

    def attach(self, raw) -> None:
        self.raw = raw
        if self.a.stage == "rm":
            heads.attach_head(raw, 1, seed=self.cfg.train.seed)

    def ready(self, raw, lineage) -> None:
        if self.a.stage == "dpo":
            self.ref = frozen_parent(self.cfg, lineage, self.device)

    def _seqs(self, pairs):
        return ([heads.encode(self.tok, p.messages, p.chosen, self.T) for p in pairs]
                + [heads.encode(self.tok, p.messages, p.rejected, self.T) for p in pairs])

    def margins(self, fwd, raw, pairs, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per pair, chosen minus rejected: the RM's rewards, or DPO's β-scaled implicit rewards; with
        DPO also the chosen answers' mean token NLL (for align.dpo_nll; None for the RM)."""
        seqs = self._seqs(pairs)
        B = len(pairs)
        with torch.set_grad_enabled(grad):
            if self.a.stage == "rm":
                x, last = heads.batch(self.tok, [s for s, _ in seqs])
                r = heads.head_at_last(fwd, raw, x.to(self.device), last)[:, 0]
                return r[:B] - r[B:], None
            x, y = rows_of(self.tok, seqs, self.T)
            x, y = x.to(self.device), y.to(self.device)
            lp = token_logprobs(fwd(x), y).sum(1)
        with torch.no_grad():
            ref = token_logprobs(self.ref(x), y).sum(1)
        d = lp - ref
        return self.a.beta * (d[:B] - d[B:]), -(lp[:B] / (y[:B] != -1).sum(1).clamp(min=1)).mean()

    def loss(self, fwd, raw, index):
        pairs = [self.train[i] for i in self.pick(index, len(self.train))]
        m, chosen_nll = self.margins(fwd, raw, pairs)
        md = m.detach()
        self.step_metrics = {"pair_acc": round(float((md > 0).float().mean()), 4), "margin": round(float(md.mean()), 4)}
        loss = -F.logsigmoid(m).mean()
        if self.a.stage == "dpo" and self.a.dpo_nll:
            self.step_metrics["chosen_nll"] = round(float(chosen_nll.detach()), 4)
            loss = loss + self.a.dpo_nll * chosen_nll
        return loss

    @torch.no_grad()
    def evaluate(self, model=None) -> dict:
        raw = self.raw
        was = raw.training
        raw.eval()
        hits: dict[str, list[bool]] = {}
        for i in range(0, len(self.heldout), 16):
            chunk = self.heldout[i : i + 16]
            m, _ = self.margins(raw, raw, chunk, grad=False)
            for p, v in zip(chunk, m.tolist()):
                hits.setdefault(p.kind, []).append(v > 0)
        raw.train(was)
        acc = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
        allh = [h for v in hits.values() for h in v]
        out = {"pair_accuracy": {"all": sum(allh) / len(allh) if allh else None, **acc}, "heldout_pairs": len(allh)}
        if self.a.stage == "dpo":
            out.update(self.policy_evals(raw))
        return out


# --- the RBR proposition classifier --------------------------------------------------------------
class LabelSource(_Align):
    name, eval_key = "labels", "classifier_eval"

    def __init__(self, cfg, tok, device, autocast):
        super().__init__(cfg, tok, device, autocast)
        self.rubric = rbr.load_rubric(self.a.rubric or None)
        extra = uncensored() if self.real_data else {}
        data = rbr.labelled(self.rubric, self.train_convs + self.held_convs, per_category=10**9, extra=extra)
        self.train = [x for x in data if x.split == "train"]
        self.heldout = [x for x in data if x.split == "heldout"]
        if not self.train:
            raise DataError("no labelled completions could be built (no harmful, sensitive or benign conversations)")
        self.pyrit = rbr.pyrit_rows() if self.real_data else []

    def attach(self, raw) -> None:
        self.raw = raw
        heads.attach_head(raw, len(self.rubric.names), seed=self.cfg.train.seed)

    def _xy(self, rows):
        seqs = [heads.encode(self.tok, [{"role": "user", "content": r.item.prompt}], r.item.response, self.T)[0]
                for r in rows]
        x, last = heads.batch(self.tok, seqs)
        return x.to(self.device), last

    def loss(self, fwd, raw, index):
        rows = [self.train[i] for i in self.pick(index, len(self.train))]
        x, last = self._xy(rows)
        logits = heads.head_at_last(fwd, raw, x, last)
        target = torch.tensor([[float(r.labels[n]) for n in self.rubric.names] for r in rows], device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target)

    @torch.no_grad()
    def evaluate(self, model=None) -> dict:
        raw = self.raw
        was = raw.training
        raw.eval()

        class _Live(rbr.Grader):  # the classifier as it is now, as a grader
            name = "classifier"

            def grade(inner, items):
                out = []
                for i in range(0, len(items), 32):
                    rows = [rbr.Labelled(it, {}, "", "", "", "") for it in items[i : i + 32]]
                    x, last = self._xy(rows)
                    out.append(torch.sigmoid(heads.head_at_last(raw, raw, x, last).float()).cpu().numpy())
                return np.concatenate(out) if out else np.zeros((0, len(self.rubric.names)))

        rep = rbr.grader_report(_Live(self.rubric), self.heldout, self.pyrit)
        raw.train(was)
        return rep

    def summary(self, result: dict) -> str:
        return ", ".join(f"{k} P {v['precision']:.2f} R {v['recall']:.2f}" for k, v in result.get("heldout", {}).items()
                         if v["precision"] is not None and v["recall"] is not None)

    def report(self, result: dict | None) -> dict:
        return {"classifier": {"propositions": self.rubric.names, "train": len(self.train),
                               "heldout": len(self.heldout), "eval": result}}


# --- RL: GRPO and PPO ------------------------------------------------------------------------------
# statements to check, true and false alike: one kind of RL prompt
FACTCHECK = ("false_premise", "misconception", "false_claim", "true_premise", "true_claim")


class RLSource(_Align):
    """Each step: `batch_size` prompts, `group` samples each through the serving Engine (temperature
    `align.temperature`, seeds from (train.seed, step, prompt): a resumed run samples the same), the
    reward of each sample, then one policy-gradient step:

      reward = rm_weight·RM + rbr_weight·RBR (harmful / sensitive / benign) + fact_weight·facts
               - kl_coef·KL(policy ‖ SFT), the KL summed over the sample's tokens;
      GRPO: advantage = (reward - group mean) / group std (align.adv_norm=mean: not divided), no
            value model;
      PPO:  a value head on the policy; per-token rewards (-kl_coef·KL per token, the rest at the
            end), GAE advantages, clipped ratio and a value loss (one optimisation epoch per batch).

    A NaN reward skips the step (counted in metrics.jsonl); three in a row stop the run."""

    name, eval_key = "rl", "align_eval"

    def __init__(self, cfg, tok, device, autocast):
        super().__init__(cfg, tok, device, autocast)
        room = self.T - self.a.max_new_tokens
        self.prompts = [p for p in self._prompts(self.train_convs) if len(self._render(p["messages"])) <= room]
        if not self.prompts:
            raise DataError(f"no RL prompts fit the {self.T}-token context with align.max_new_tokens="
                            f"{self.a.max_new_tokens} answer tokens")
        # prompts by kind, taken in turn: thousands of fact questions must not drown a few hundred
        # harmful ones
        self.kinds: dict[str, list[dict]] = {}
        for p in self.prompts:
            kind = "factcheck" if p["category"] in FACTCHECK else p["category"]
            self.kinds.setdefault(kind, []).append(p)
        self.rubric = rbr.load_rubric(self.a.rubric or None)
        self.rules = rbr.RuleGrader(self.rubric)
        self.ref = self.rm = self.rbr = self.engine = None
        self.nan_streak = 0
        self.nan_skipped = 0
        self.rbr_fit: dict = {}

    def pick_prompts(self, index: int) -> list[dict]:
        """The prompts of micro-batch `index`: kinds in turn, each kind through seeded permutations."""
        kinds = sorted(self.kinds)
        out = []
        for k in range(index * self.a.batch_size, (index + 1) * self.a.batch_size):
            kind = kinds[k % len(kinds)]
            items, j = self.kinds[kind], k // len(kinds)
            perm = np.random.default_rng([self.cfg.train.seed, 17, sft._h(kind) % 2**31, j // len(items)]).permutation(len(items))
            out.append(items[int(perm[j % len(items)])])
        return out

    def _render(self, msgs):
        return chat.render(self.tok, chat.with_system(msgs))

    def _prompts(self, convs) -> list[dict]:
        out = []
        for c in convs:
            if c.category in rbr.CATEGORIES and (c.category != "sensitive" or c.expect == sft.SUPPORT_EXPECT):
                last = max(i for i, m in enumerate(c.messages) if m["role"] == "assistant")
                user = next(m["content"] for m in reversed(c.messages[:last]) if m["role"] == "user")
                out.append({"id": c.id, "messages": c.messages[:last], "prompt": user, "category": c.category,
                            "language": c.language, "q": None})
        qs = facts_mod.from_conversations(convs)
        if self.real_data:
            qs += facts_mod.from_packages()
        # the true twins too: rewarded only for denying false statements, the policy learnt to deny
        # everything (affirmed 56% -> 25%). They share the false ones' kind, so the harmful prompts keep
        # their share of each batch (as a kind of their own, one seed let 31% of harmful requests through).
        qs += facts_mod.twins([q for q in qs if q.split == "train"])
        for q in qs:
            if q.split == "train":
                out.append({"id": q.id, "messages": q.messages(), "prompt": q.prompt, "category": q.kind,
                            "language": q.language, "q": q})
        return out

    def attach(self, raw) -> None:
        self.raw = raw
        if self.a.stage == "ppo":
            heads.attach_head(raw, 1, seed=self.cfg.train.seed)

    def ready(self, raw, lineage) -> None:
        self.ref = frozen_parent(self.cfg, lineage, self.device)
        if self.a.reward_model and self.a.rm_weight:
            self.rm = heads.Scorer.load(self.a.reward_model, str(self.device))
        if self.a.rbr_weight:
            grader = rbr.make_grader(self.a.grader, self.rubric, self.a.grader_base_url or None, str(self.device))
            weights = json.loads(Path(self.a.rbr_weights).read_text()) if self.a.rbr_weights else None
            self.rbr, self.rbr_fit = rbr.build_rbr(self.rubric, grader, self.train_convs, weights)

    def rewards(self, items: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        """Each term of the reward per sample (before the KL penalty)."""
        n = len(texts)
        out = {"rm": np.zeros(n), "rbr": np.zeros(n), "fact": np.zeros(n)}
        if self.rm is not None:
            out["rm"] = self.rm([(it["messages"], t) for it, t in zip(items, texts)])[:, 0]
        if self.rbr is not None:
            out["rbr"] = self.rbr.rewards([rbr.Item(it["prompt"], t, it["category"], it["language"])
                                           for it, t in zip(items, texts)])
        out["fact"] = np.array([facts_mod.reward(it["q"], t) if it["q"] is not None else 0.0
                                for it, t in zip(items, texts)])
        return out

    def rollouts(self, raw, items: list[dict], index: int):
        from glassgpt.serve.engine import Engine, SamplingParams

        G = self.a.group
        was = raw.training  # the engine puts the model in eval mode
        if self.engine is None:
            self.engine = Engine(raw, self.tok, device=str(self.device), max_batch=len(items) * G,
                                 max_queue=len(items) + 1, max_prefill_per_step=len(items))
        prompts = [self._render(it["messages"]) for it in items]
        params = [SamplingParams(max_tokens=self.a.max_new_tokens, temperature=self.a.temperature, n=G,
                                 seed=(self.cfg.train.seed * 1_000_003 + index * 1009 + k) % (2**31))
                  for k in range(len(items))]
        try:
            res = self.engine.generate_batch(prompts, params)
        finally:
            raw.train(was)
        end = self.tok.special["<|assistant_end|>"]
        seqs, texts = [], []
        for p, choices in zip(prompts, res):
            for c in choices:
                acts = [t.id for t in c["tokens"]] + ([end] if c["finish_reason"] == "stop" else [])
                seqs.append((p + (acts or [end]), len(p)))
                texts.append(c["text"])
        return seqs, texts

    def loss(self, fwd, raw, index):
        a, G = self.a, self.a.group
        items = self.pick_prompts(index)
        seqs, texts = self.rollouts(raw, items, index)
        rep = [it for it in items for _ in range(G)]
        terms = self.rewards(rep, texts)
        score = a.rm_weight * terms["rm"] + a.rbr_weight * terms["rbr"] + a.fact_weight * terms["fact"]
        if not np.all(np.isfinite(score)):
            self.nan_streak += 1
            self.nan_skipped += 1
            self.step_metrics = {"nan_skipped": self.nan_skipped}
            log.warning("step %d: a reward is NaN; step skipped (%d in a row)", index + 1, self.nan_streak)
            if self.nan_streak >= 3:
                raise TrainingError(f"rewards were NaN in 3 steps in a row (up to step {index + 1}); stopped. The last "
                                    "checkpoint is intact; check the reward model and the grader")
            return None
        self.nan_streak = 0
        x, y = rows_of(self.tok, seqs, self.T)
        x, y = x.to(self.device), y.to(self.device)
        mask = (y != -1).float()
        h = fwd(x, hidden=True)
        lp = token_logprobs(raw.lm_head(h), y)
        with torch.no_grad():
            ref_lp = token_logprobs(self.ref(x), y)
        kl_tok = (lp.detach() - ref_lp) * mask
        kl = kl_tok.sum(1)
        score_t = torch.tensor(score, dtype=torch.float32, device=lp.device)
        ratio = torch.exp(lp - lp.detach())  # one epoch per batch: 1, with the policy's gradient
        n_tok = mask.sum(1).clamp(min=1)
        if a.stage == "grpo":
            adv = group_advantages(score_t - a.kl_coef * kl, G, a.adv_norm).view(-1, 1)
            pg = -torch.min(ratio * adv, ratio.clamp(1 - a.clip, 1 + a.clip) * adv)
            loss = ((pg * mask).sum(1) / n_tok).mean()
        else:
            values = raw.head(h.float())[..., 0]
            rew = -a.kl_coef * kl_tok
            last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & (mask > 0)  # each row's last action
            rew = rew + last.float() * score_t[:, None]
            adv, ret = gae(rew, values.detach(), mask, a.gae_lambda)
            m = mask.bool()
            adv = (adv - adv[m].mean()) / (adv[m].std() + 1e-4)
            pg = -torch.min(ratio * adv, ratio.clamp(1 - a.clip, 1 + a.clip) * adv)
            vloss = 0.5 * (values - ret) ** 2
            loss = ((pg * mask).sum() + a.vf_coef * (vloss * mask).sum()) / mask.sum().clamp(min=1)
        self.step_metrics = self._batch_metrics(rep, texts, terms, score, kl)
        return loss

    def _batch_metrics(self, rep, texts, terms, score, kl) -> dict:
        def rate(cat):
            xs = [self.rules.props(t)["inability"] for it, t in zip(rep, texts) if it["category"] == cat]
            return round(sum(xs) / len(xs), 4) if xs else None

        m = {"reward": round(float(score.mean()), 4), "kl": round(float(kl.mean()), 4),
             "reward_rm": round(float(terms["rm"].mean()), 4), "reward_rbr": round(float(terms["rbr"].mean()), 4),
             "reward_fact": round(float(terms["fact"].mean()), 4),
             "refused_harmful": rate("harmful"), "refused_benign": rate("benign"), "nan_skipped": self.nan_skipped}
        return {k: v for k, v in m.items() if v is not None}

    @torch.no_grad()
    def evaluate(self, model=None) -> dict:
        out = self.policy_evals(self.raw)
        out["rbr_fit"] = self.rbr_fit
        return out


def group_advantages(r: torch.Tensor, group: int, norm: str = "std") -> torch.Tensor:
    """GRPO's advantages of rewards r [N·group] (each prompt's samples adjacent): the group mean
    subtracted, then divided by the group's std ("std") or not ("mean", Dr. GRPO)."""
    r = r.view(-1, group)
    adv = r - r.mean(1, keepdim=True)
    if norm == "std":
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def gae(rew: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, lam: float, gamma: float = 1.0):
    """Generalised advantage estimates over each row's action positions (mask 1), the value after the
    last action 0: (advantages, returns), both [B, L]."""
    B, L = rew.shape
    adv = torch.zeros_like(rew)
    nxt_v = torch.zeros(B, device=rew.device)
    run = torch.zeros(B, device=rew.device)
    for t in range(L - 1, -1, -1):
        m = mask[:, t]
        delta = rew[:, t] + gamma * nxt_v - values[:, t]
        run = torch.where(m > 0, delta + gamma * lam * run, run)
        adv[:, t] = run * m
        nxt_v = torch.where(m > 0, values[:, t], nxt_v)
    return adv, adv + values

