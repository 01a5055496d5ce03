"""The encoder, projector, accounting, preprocessing, image-chat rows and the serve hook."""

import dataclasses

import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from glassgpt.config import ModelConfig, VisionConfig  # noqa: E402
from glassgpt.data import images as I  # noqa: E402
from glassgpt.data.tokenizer import Tokenizer  # noqa: E402
from glassgpt.evals import vision as EV  # noqa: E402
from glassgpt.model import vision as V  # noqa: E402
from glassgpt.model.gpt import build  # noqa: E402
from glassgpt.train import sources as S  # noqa: E402

from conftest import naive_greedy  # noqa: E402

VC = VisionConfig(enabled=True, image_size=32, patch_size=8, width=64, depth=2, head_dim=32, shuffle=2)


@pytest.fixture(scope="module")
def tok():
    text = ["def f(x):\n    return x + 1\n", "Which digit is this? What does the text say? 0 1 2 3 4 5 6 7 8 9"] * 50
    return Tokenizer.train(text, 300)


@pytest.fixture(scope="module")
def model(tok):
    cfg = ModelConfig(depth=2, aspect=32, head_dim=32, seq_len=64, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    m = build(cfg, seed=0)
    V.attach(m, VC, seed=0)
    return m.eval()


def test_shapes_and_token_count(model):
    px = V.preprocess([Image.new("RGB", (100, 20)), Image.new("RGB", (8, 8)), Image.new("L", (3000, 4000))], VC.image_size)
    assert px.shape == (3, 3, 32, 32) and px.min() >= -1 and px.max() <= 1
    out = model.vision(px)
    assert out.shape == (3, VC.n_image_tokens, model.cfg.d_model) == (3, 4, 64)


def test_letterbox_keeps_aspect():
    px = V.preprocess([Image.new("RGB", (64, 16), (255, 255, 255))], 32)[0, 0]
    assert px[16, 5] == 1.0 and px[2, 5] == -1.0  # image band in the middle, black padding above


@pytest.mark.parametrize("stem,projector", [("linear", "linear"), ("conv", "linear"), ("conv", "mlp"), ("conv", "overlap")])
def test_count_matches_modules_and_flop_counter(stem, projector):
    vc = dataclasses.replace(VC, stem=stem, projector=projector)
    enc = V.VisionEncoder(vc, 64)
    enc.init_weights(0)
    c = V.count(vc, 64)
    assert c.params == sum(p.numel() for p in enc.parameters())
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:  # the math kernel is counted
        out = enc(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 4, 64)
    assert fc.get_total_flops() == c.flops_per_image_fwd
    assert c.flops_per_image == 3 * c.flops_per_image_fwd and c.image_tokens == 4


@pytest.mark.parametrize("projector,rows", [("linear", [0]), ("overlap", [0, 1])])
def test_overlap_projector_shares_the_boundary_row(projector, rows):
    """A feature in patch row 1 (the lower row of token row 0's 2×2 groups) reaches only token row 0
    through the pixel shuffle; the overlapping projector's 3×3 window also gives it to token row 1, so
    something that straddles patch rows 1 and 2 is whole in one token."""
    vc = dataclasses.replace(VC, projector=projector)  # 32 px / 8 px patches: a 4×4 grid, shuffle 2
    enc = V.VisionEncoder(vc, 64)
    enc.init_weights(0)
    g, W = vc.grid, vc.width
    feat = torch.zeros(1, g * g, W)
    feat[0, 1 * g + 1] = 1.0  # patch row 1, column 1
    with torch.no_grad():
        out, base = enc.project(feat), enc.project(torch.zeros_like(feat))
    changed = (out - base).abs().sum(-1).view(2, 2).sum(1) > 0  # per token row
    assert [r for r in range(2) if changed[r]] == rows


def test_encode_images_hook(model, tok):
    png = I.to_data_url(Image.new("RGB", (12, 12), (0, 255, 0)))
    emb = V.encode_images(model, [Image.new("RGB", (20, 10)), png])
    assert emb.shape == (2 * VC.n_image_tokens, model.cfg.d_model)
    with pytest.raises(I.ImageError, match="image 2"):
        V.encode_images(model, [Image.new("RGB", (20, 10)), b"garbage"])
    text_only = build(model.cfg, seed=0)
    with pytest.raises(V.VisionError, match="no image input"):
        V.encode_images(text_only, [Image.new("RGB", (20, 10))])
    with pytest.raises(V.VisionError, match="no image input"):
        EV.ask(EV.engine_for(text_only, tok), [Image.new("RGB", (20, 10))], "hi")


def test_ask_and_context_limit(model, tok):
    engine = EV.engine_for(model, tok)
    img = Image.new("RGB", (20, 10))
    ans = EV.ask(engine, [img], "Which digit is this?", max_new_tokens=4)
    # the engine's greedy answer is the model's own greedy decode
    prompt = tok.render_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit is this?"}]}],
                             True, VC.n_image_tokens)
    gen = naive_greedy(model, prompt, 4, image_embeds=V.encode_images(model, [img]))
    end = tok.special["<|assistant_end|>"]
    assert ans == tok.decode(gen[: gen.index(end)] if end in gen else gen).strip()
    with pytest.raises(V.VisionError, match="fewer images"):
        EV.ask(engine, [Image.new("RGB", (8, 8))] * 20, "Which digit is this?")


def test_collate_puts_loss_on_answer_only(tok):
    s = I.digits(0, "heldout", 0)
    x, y, px = S.collate(tok, [s, I.text(0, "train", 1)], VC.n_image_tokens, 64, VC.image_size)
    ids, trained = S.sample_ids(tok, s, VC.n_image_tokens)
    a = trained.index(True)
    assert (x[0] == tok.image_id).sum() == VC.n_image_tokens
    kept = y[0][y[0] != -1].tolist()
    assert kept == ids[a:] and tok.decode(kept[:-1]) == s.answer and kept[-1] == tok.special["<|assistant_end|>"]
    assert px.shape == (2, 3, 32, 32)
    with pytest.raises(V.VisionError, match="context"):
        S.collate(tok, [s], VC.n_image_tokens, 8, VC.image_size)


def test_teacher_forced_exact_match_equals_greedy(model, tok):
    """A greedy decode equals the answer iff every teacher-forced argmax does."""
    s = I.shapes(0, "heldout", 0)
    emb = V.encode_images(model, [s.image])
    prompt = tok.render_chat(s.messages(with_answer=False), True, VC.n_image_tokens)
    gen = naive_greedy(model, prompt, 3, image_embeds=emb)
    end = tok.special["<|assistant_end|>"]
    # make the model's own greedy output the "truth": exact match must say yes
    trick = I.Sample(s.image, s.question, tok.decode(gen[:2]), "shapes")
    ids, trained = S.sample_ids(tok, trick, VC.n_image_tokens)
    a = trained.index(True)
    if ids[a:-1] == gen[:2] and gen[2] == end:
        assert S.token_scores(model, tok, [trick], VC)[0][0] is True
    wrong = I.Sample(s.image, s.question, tok.decode(gen[:2]) + "zz", "shapes")
    assert S.token_scores(model, tok, [wrong], VC)[0][0] is False


def test_mix_is_deterministic():
    m1, m2 = S.Mix("digits:1,text:2", 3), S.Mix("digits:1,text:2", 3)
    a = [m1.sample(k).answer for k in range(20)]
    assert a == [m2.sample(k).answer for k in range(20)]
    tasks = {m1.sample(k).task for k in range(40)}
    assert tasks == {"digits", "text"}


def test_read_text_answers_are_spelled_one_character_a_token(tok):
    for k in range(20):
        s = I.text(0, "train", k)
        ids = S.answer_ids(tok, s)
        assert tok.decode(ids) == s.answer and len(ids) == len(s.answer)
        turn, trained = S.sample_ids(tok, s, VC.n_image_tokens)
        a = trained.index(True)
        assert turn[a : a + len(ids)] == ids and turn[-1] == tok.special["<|assistant_end|>"]
    d = I.digits(0, "train", 0)  # other tasks keep the tokenizer's own encoding
    assert S.answer_ids(tok, d) == tok.encode(d.answer)


def test_question_types_cover_every_procedural_question():
    kinds = {EV.question_type(src(0, "heldout", k)) for src in (I.shapes, I.charts) for k in range(120)}
    assert kinds == {"count", "colour", "shape", "left/right", "above/below", "largest bar", "bar value", "highest point"}
    assert EV.question_type(I.text(0, "heldout", 0)).startswith("text ")
    assert EV.question_type(I.digits(0, "heldout", 0)) == "digits"
