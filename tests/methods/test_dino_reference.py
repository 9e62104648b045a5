"""DINO + iBOT + KoLeo's composed training loss against an independent re-implementation of the official
formulas (DINO: cross-entropy of each teacher global view against every other student view, centred and sharpened
teacher or Sinkhorn-Knopp; iBOT: masked patch tokens of the same view, a per-image mean over its masked tokens;
KoLeo per global crop on the backbone's CLS token), on the same weights, masks and inputs: the view ordering, the
masked student, the separate heads and the order of the centre update are what the pure-loss tests do not see."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import geomed_ssl.methods.dino as dino_module
from geomed_ssl.config import MethodConfig
from geomed_ssl.methods import build_method
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=3, img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=4)
B, LOCALS, STEP = 3, 3, 7


def sinkhorn(t: torch.Tensor, temp: float, iters: int = 3) -> torch.Tensor:
    """The official SwAV / DINOv2 Sinkhorn-Knopp on (n, K) teacher logits: rows sum to 1."""
    q = torch.exp(t / temp).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


def koleo(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, eps=1e-8, dim=-1)
    d = x @ x.t()
    d.view(-1)[:: x.shape[0] + 1].fill_(-1)
    return -torch.log(F.pairwise_distance(x, x[d.argmax(1)], 2, eps=1e-8) + 1e-8).mean()


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_the_composed_loss_is_the_official_one(centering: str, monkeypatch) -> None:
    torch.manual_seed(0)
    drawn = {}
    draw = dino_module.ibot_masks
    monkeypatch.setattr(dino_module, "ibot_masks", lambda *a, **k: drawn.setdefault("masks", draw(*a, **k)))
    cfg = MethodConfig(name="dino", out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16, ibot_loss_weight=1.0,
                       ibot_mask_prob=1.0, koleo_loss_weight=0.1, centering=centering, ibot_separate_head=True,
                       ibot_out_dim=48)
    m = build_method(cfg, ENC, max_steps=100)
    with torch.no_grad():  # student unlike its teacher, centres away from 0: every term matters
        for p in [*m.student.parameters(), *m.student_head.parameters(), *m.student_patch_head.parameters(),
                  m.mask_token]:
            p.add_(0.05 * torch.randn_like(p))
        m.dino_loss.center.normal_()
        m.ibot_loss.center.normal_()
    c_cls, c_patch = m.dino_loss.center.clone(), m.ibot_loss.center.clone()
    g = [torch.randn(B, 3, 16, 16) for _ in range(2)]
    local = [torch.randn(B, 3, 8, 8) for _ in range(LOCALS)]
    m.train()
    out = m.training_loss({"views": {"global": g, "local": local}, "index": torch.arange(B)}, STEP,
                          torch.Generator().manual_seed(1))
    masks = drawn["masks"].reshape(2 * B, -1)
    s = m.settings
    temp = torch.linspace(s.warmup_teacher_temp, s.teacher_temp, 30)[STEP].item()  # warmup: 30 % of max_steps
    assert float(out.logs["teacher_temp"]) == pytest.approx(temp)
    x = torch.cat(g)
    with torch.no_grad():
        t_tokens = m.teacher(x)
        t_cls, t_patch = m.teacher_head(t_tokens[:, 0]), m.teacher_patch_head(t_tokens[:, 1:])
    st = m.student
    tok, grid = st.embed(x)
    tok = torch.where(masks[..., None], m.mask_token + st.pos_embed_for(grid, tok), tok)  # iBOT's masked student
    s_tokens, _ = st.run_blocks(st.add_cls(tok))
    views = (torch.cat([m.student_head(s_tokens[:, 0]), m.student_head(st(torch.cat(local))[:, 0])])
             / s.student_temp).chunk(2 + LOCALS)
    teacher = (F.softmax((t_cls - c_cls) / temp, -1) if centering == "ema" else sinkhorn(t_cls, temp)).chunk(2)
    pairs = [(q, v) for iq, q in enumerate(teacher) for iv, v in enumerate(views) if iv != iq]
    dino = sum(torch.sum(-q * F.log_softmax(v, -1), -1).mean() for q, v in pairs) / len(pairs)
    if centering == "ema":
        t_p = F.softmax((t_patch - c_patch) / temp, -1)
    else:
        t_p = torch.zeros_like(t_patch)
        t_p[masks] = sinkhorn(t_patch[masks], temp)
    ce = torch.sum(-t_p * F.log_softmax(m.student_patch_head(s_tokens[:, 1:]) / s.student_temp, -1), -1)
    ibot = ((ce * masks).sum(-1) / masks.sum(-1).clamp(min=1)).mean()
    ko = sum(koleo(c) for c in s_tokens[:, 0].chunk(2))
    for key, want in (("dino_loss", dino), ("ibot_loss", ibot), ("koleo", ko), ("loss", dino + ibot + 0.1 * ko)):
        assert float(out.logs[key]) == pytest.approx(float(want.detach()), abs=2e-5, rel=1e-5), key
    if centering == "ema":  # updated after the loss: EMA 0.9 of the teacher's raw mean (the masked tokens: DINOv2)
        torch.testing.assert_close(m.dino_loss.center, 0.9 * c_cls + 0.1 * t_cls.mean(0, keepdim=True))
        torch.testing.assert_close(m.ibot_loss.center, 0.9 * c_patch + 0.1 * t_patch[masks].mean(0, keepdim=True))
    m.zero_grad()
    out.loss.backward()
    assert not [n for n, p in m.named_parameters() if n.startswith("teacher") and p.grad is not None]
    assert m.student.cls_token.grad is not None and m.mask_token.grad is not None
