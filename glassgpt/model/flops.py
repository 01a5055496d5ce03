"""Parameter and FLOP accounting, exact per token (attention and LM head included).

Training FLOPs per token = 3 × forward (backward costs two forwards: grads for inputs and
weights). Forward per token: 2 FLOPs per weight of every matmul (all linears, LM head
included; the embedding is a lookup, not a matmul), plus attention's two T×T products:
QKᵀ and AV are 2·T·head_dim each per head. Like the kernels, we count the full T×T
square (SDPA computes it; causal masking does not halve the matmul work on CPU kernels),
so the count matches torch.utils.flop_counter exactly. Norms, RoPE and softmax are
elementwise and left out, as every FLOP-counting convention does.
"""

from __future__ import annotations

from dataclasses import dataclass

from glassgpt.config import ModelConfig


@dataclass(frozen=True)
class Counts:
    params: int  # every parameter
    params_non_embedding: int  # without the token embedding (LM head kept: it is a matmul)
    params_blocks: int  # the transformer blocks only: neither embedding nor LM head (the scaling fits' N)
    matmul_params: int  # weights used in matmuls per token
    flops_per_token_fwd: int
    flops_per_token: int  # training: forward + backward


def count(cfg: ModelConfig, seq_len: int | None = None) -> Counts:
    T = seq_len or cfg.seq_len
    d, L, V = cfg.d_model, cfg.depth, cfg.vocab_size
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attn = d * (q_dim + 2 * kv_dim) + q_dim * d
    mlp = d * cfg.d_hidden * (2 if cfg.mlp == "swiglu" else 1) + cfg.d_hidden * d
    block = attn + mlp
    matmul = L * block + d * V + (cfg.smear_tokens * d * d if cfg.smear else 0)  # LM head, smear map
    params = matmul + V * d  # + embedding
    attn_flops = L * 2 * (2 * T * q_dim)  # QKᵀ and AV, per query token
    fwd = 2 * matmul + attn_flops
    return Counts(params, matmul, L * block, matmul, fwd, 3 * fwd)
