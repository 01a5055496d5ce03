"""Optimizers, schedules and the learning-rate transfer rule.

Two optimizers:
- `muon`: Muon (momentum, then Newton-Schulz orthogonalisation) for the hidden 2-D
  matrices, AdamW for the embedding and LM head (as in modded-nanogpt / nanochat).
- `adamw`: AdamW for everything.

Learning rates transfer across widths by one rule (written once, used by the ladder):
AdamW rates scale as (d/768)^-1/2 (nanochat's rule); Muon's update is scale-free by
construction (orthogonalised, shape-corrected), so its rate stays fixed.
"""

from __future__ import annotations

import math

import torch

from glassgpt.config import Config


def lr_scale(d_model: int) -> float:
    return (d_model / 768) ** -0.5


def param_groups(model, cfg: Config) -> tuple[list[dict], list[dict]]:
    """(adamw_groups, muon_groups) with learning rates from the transfer rule."""
    t, s = cfg.train, lr_scale(cfg.model.d_model) * cfg.train.adam_lr_mult
    emb = [model.wte.weight]
    head = [model.lm_head.weight]
    hidden = [p for n, p in model.named_parameters() if n.startswith(("blocks.", "smear."))]
    if t.optimizer == "muon":
        adam = [
            {"params": emb, "lr": 0.2 * s, "weight_decay": 0.0},
            {"params": head, "lr": 0.004 * s, "weight_decay": 0.0},
        ]
        return adam, [{"params": hidden, "lr": t.muon_lr, "weight_decay": t.weight_decay}]
    base = t.lr or 0.003 * s
    return [
        {"params": emb, "lr": t.lr or 0.2 * s, "weight_decay": 0.0},
        {"params": head, "lr": t.lr or 0.004 * s, "weight_decay": 0.0},
        {"params": hidden, "lr": base, "weight_decay": t.weight_decay},
    ], []


# Newton-Schulz coefficient schedules, one (a, b, c) per iteration of x <- a x + b (x xᵀ) x + c (x xᵀ)² x.
# "jordan": Keller Jordan's fixed quintic, 5 times. "minimaxN": N iterations, each the odd quintic that
# best maps the singular values left by the one before towards 1 (least worst-case |1 - p(σ)| on [lo, hi],
# then [lo, hi] <- [min p, max p]; the greedy construction of Polar Express, Amsel et al. 2025), from
# σ ∈ [l, 1] after the Frobenius normalisation: l = 1e-3 (5), 3e-3 (4), 1e-2 (3). Fitted by
# `python bench/ns_coefficients.py`, which also prints each schedule's band and its error on real updates.
NS_SCHEDULES = {
    "jordan": ((3.4445, -4.7750, 2.0315),) * 5,
    "minimax5": ((8.4703, -25.1081, 18.6293), (4.1828, -3.1087, 0.5806), (3.9619, -2.9541, 0.5630),
                 (3.2866, -2.4647, 0.5074), (2.2738, -1.6447, 0.4162)),
    "minimax4": ((8.3837, -24.7659, 18.3571), (4.0434, -3.0114, 0.5695), (3.5056, -2.6267, 0.5257),
                 (2.4901, -1.8343, 0.4368)),
    "minimax3": ((8.0934, -23.6204, 17.4462), (3.6366, -2.7219, 0.5365), (2.6613, -1.9772, 0.4526)),
}


def zeropower_newton_schulz(g: torch.Tensor, schedule: str = "jordan", bf16: bool = False,
                            gram: bool = False, block: int = 0) -> torch.Tensor:
    """Approximately orthogonalise g (U Vᵀ of its SVD), or each matrix of a stack [..., m, n], with a
    quintic Newton-Schulz iteration whose coefficients (NS_SCHEDULES) push singular values towards 1 fast.
    gram=True (fp32 only): the same polynomials iterated on the small m×m Gram matrix, for wide matrices.
    block=b > 0: the short side cut into blocks of b, each b×n block orthogonalised on its own (MuonBP's
    block step, Khaled et al. 2025): the cost goes from ~m²n to ~m·b·n, the RMS of the update stays the same
    (each block keeps b unit singular values), only the directions between blocks are left unorthogonalised."""
    if not block or min(g.shape[-2:]) <= block:
        return _zeropower(g, schedule, bf16, gram)
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    m, n = x.shape[-2:]
    if m % block:
        raise ValueError(f"Newton-Schulz block of {block} rows does not divide a matrix's short side {m}")
    y = _zeropower(x.reshape(-1, block, n), schedule, bf16, gram).reshape(x.shape)  # one 3-D stack of blocks
    return y.mT if tall else y


def _zeropower(g: torch.Tensor, schedule: str, bf16: bool, gram: bool) -> torch.Tensor:
    coefs = NS_SCHEDULES[schedule]
    # bf16 on GPU, as in Keller Jordan's Muon: for the gpu preset's 97M model the iteration is ~1.6e12
    # FLOPs a step, ~30 ms at fp32 rates beside a ~130 ms step. On a CPU only when the run is bf16
    # (native bf16: AMX runs these matmuls ~2x faster than fp32); an fp32 run keeps fp32 here, so its
    # numbers do not move.
    x = g.bfloat16() if g.is_cuda or bf16 else g.float()
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    if x.dtype == torch.bfloat16:
        # Contiguous (a transposed view made every product strided: 2.7x slower on CPU) and each update one
        # fused GEMM, β·C + α·A@B: half the bf16 time at the 20M shape (docs/performance.md).
        x = x.contiguous()
        gemm = torch.baddbmm if x.dim() == 3 else torch.addmm
        for a, b, c in coefs:
            A = x @ x.mT
            x = gemm(x, gemm(A, A, A, beta=b, alpha=c), x, beta=a)
    elif gram and x.size(-1) >= 2 * x.size(-2):
        x = _newton_schulz_gram(x.contiguous(), coefs)
    else:  # fp32: the original arithmetic, so fp32 runs reproduce to the bit
        for a, b, c in coefs:
            A = x @ x.mT
            x = a * x + (b * A + c * A @ A) @ x
    return (x.mT if transposed else x).to(g.dtype)


def _newton_schulz_gram(x: torch.Tensor, coefs: tuple) -> torch.Tensor:
    """Newton-Schulz on the Gram matrix: every iterate is X_k = Q_k X_0 with Q_k a polynomial in
    G = X_0 X_0ᵀ, so the loop runs on m×m matrices only and X_0 (m×n) is touched twice, not 2·steps
    times. A_k = X_k X_kᵀ and P_k = aI + bA_k + cA_k² commute, so A_{k+1} = P_k² A_k, Q_{k+1} = Q_k P_k.
    FLOPs 4m²n + 34m³ against 20m²n + 10m³: 0.56x for the MLP's 4:1 matrices (bench/muon_step.py: the
    20M model's step 1.66x faster in fp32, its update within ~1e-5 of the plain one's largest entry). Exact
    in exact arithmetic; in fp32 the squared condition of G costs nothing visible, in bf16 it would (so bf16
    keeps the plain iteration)."""
    A = x @ x.mT
    eye = torch.eye(A.size(-1), dtype=A.dtype, device=A.device).expand_as(A)
    Q = None
    for k, (a, b, c) in enumerate(coefs):
        P = torch.add(eye, A, alpha=b / a).mul_(a).add_(A @ A, alpha=c)
        Q = P if Q is None else Q @ P
        if k < len(coefs) - 1:
            A = P @ (P @ A)
    return Q @ x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights (conv filters flattened to 2-D). Runs identically on every DDP rank
    (grads already averaged)."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0, ns_schedule="jordan", ns_bf16=False,
                 ns_gram=False, ns_block=0, ns_full_every=1):
        if ns_schedule not in NS_SCHEDULES:
            raise ValueError(f"unknown Newton-Schulz schedule '{ns_schedule}'; choose one of: {', '.join(NS_SCHEDULES)}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.ns_schedule = ns_schedule  # on the optimizer, not its groups: a resumed run's saved groups replace those
        self.ns_bf16 = ns_bf16
        self.ns_gram = ns_gram  # fp32 Newton-Schulz on the Gram matrix for wide matrices (set by the trainer)
        # Block-periodic (MuonBP): whole matrices orthogonalised every ns_full_every-th step (0: never), blocks
        # of ns_block rows of the short side on the others. The step count lives in the groups (it is saved).
        self.ns_block, self.ns_full_every = ns_block, ns_full_every

    def _block_now(self, group) -> int:
        """The block size this step uses (0: whole matrices), and count the step (plain Muon keeps no count)."""
        if not self.ns_block:
            return 0
        step = group.get("ns_step", 0)
        group["ns_step"] = step + 1
        return 0 if self.ns_full_every and step % self.ns_full_every == 0 else self.ns_block

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            block = self._block_now(group)
            same_shape = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p.grad)
                buf = state["momentum"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                g = g.flatten(1)  # a conv filter bank [out, in, k, k] as the matrix [out, in·k·k]
                same_shape.setdefault(g.shape, []).append((p, g))
            # same-shaped matrices orthogonalised as one stack: small ones are overhead-bound (bench/vision_step.py)
            for (rows, cols), items in same_shape.items():
                updates = zeropower_newton_schulz(torch.stack([g for _, g in items]), self.ns_schedule, self.ns_bf16,
                                                  self.ns_gram, block)
                scale = max(1.0, rows / cols) ** 0.5  # tall matrices: same RMS step
                for (p, _), update in zip(items, updates):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update.view_as(p), alpha=-group["lr"] * scale)


def build_optimizers(model, cfg: Config, precision: str = "fp32") -> list[torch.optim.Optimizer]:
    """precision: the run's resolved precision; 'bf16' runs Muon's Newton-Schulz in bf16. Once the
    step's compile is known, fast_newton_schulz says which fp32 iteration Muon takes."""
    adam_groups, muon_groups = param_groups(model, cfg)
    opts = [torch.optim.AdamW(adam_groups, betas=cfg.train.betas, eps=1e-10, fused=False)]
    if muon_groups:
        t = cfg.train
        opts.append(Muon(muon_groups, ns_schedule=t.newton_schulz, ns_bf16=precision == "bf16", ns_block=t.ns_block,
                         ns_full_every=t.ns_full_every))
    for opt in opts:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return opts


def fast_newton_schulz(opts, precision: str, compiled: bool) -> None:
    """An fp32 run whose step is compiled takes the Gram-matrix Newton-Schulz (fewer FLOPs, the same
    update to ~1e-5); an fp32 eager run keeps the original arithmetic, so `--train.precision=fp32
    --train.compile=off` reproduces earlier runs to the bit. bf16 runs keep their own path."""
    for opt in opts:
        if isinstance(opt, Muon):
            opt.ns_gram = compiled and precision != "bf16"


def lr_multiplier(step: int, total: int, schedule: str, warmup_frac: float, cooldown_frac: float) -> float:
    """Warmup-stable-decay (linear cooldown to 0 over the last cooldown_frac) or cosine
    (to 10% of the peak). `step` counts from 0."""
    warmup = max(1, int(round(warmup_frac * total)))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        cooldown = int(round(cooldown_frac * total))
        if cooldown and step >= total - cooldown:
            return max(0.0, (total - step) / cooldown)
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(opts, mult: float) -> None:
    for opt in opts:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
