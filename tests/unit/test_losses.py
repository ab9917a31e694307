"""DINO, iBOT and KoLeo against the DINOv2 formulas, written out here the plain way, on fixed tensors.

The references follow DINOv2's loss files (``dinov2/loss/*.py``) and meta-architecture: DINO as
the pairwise loop over (student crop, other teacher crop) with the teacher's two global crops
swapped for the global-global terms, iBOT as ``forward_masked`` with per-image mask weights, the
Sinkhorn-Knopp iterations as written in the paper, KoLeo with ``nn.PairwiseDistance``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mxr0.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, sinkhorn_knopp

K = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _scores(seed: int, *shape: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def ref_dino(student: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """DINOv2: local crops against both teacher crops, global crops against the *other* teacher
    crop (teacher chunks swapped), everything divided by the number of terms."""
    n_global, n_local = 2, len(student) - 2
    terms = (n_global - 1) * n_global + n_local * n_global
    total = 0.0
    for s in student[2:]:
        lsm = F.log_softmax(s / student_temp, dim=-1)
        for t in teacher_probs:
            total = total - (t * lsm).sum(-1).mean()
    swapped = [teacher_probs[1], teacher_probs[0]]
    for s, t in zip(student[:2], swapped):
        total = total - (t * F.log_softmax(s / student_temp, dim=-1)).sum(-1).mean()
    return total / terms


def ref_sinkhorn(scores: torch.Tensor, temp: float, iters: int) -> torch.Tensor:
    q = torch.exp(scores / temp).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def ref_ibot_masked(s_masked, t_masked, masks, student_temp):
    """DINOv2 ``forward_masked`` with ``masks_weight`` from the collate function."""
    loss = torch.sum(t_masked * F.log_softmax(s_masked / student_temp, dim=-1), dim=-1)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return -(loss * weights).sum() / masks.shape[0]


def ref_ibot_full(s_full, t_full, masks, student_temp):
    """DINOv2 ``forward`` on full patch maps."""
    loss = torch.sum(t_full * F.log_softmax(s_full / student_temp, dim=-1), dim=-1)
    loss = torch.sum(loss * masks.float(), dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
    return -loss.mean()


def ref_koleo(x, eps=1e-8):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = x @ x.t()
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    idx = dots.argmax(dim=1)
    d = torch.nn.PairwiseDistance(2, eps=eps)(x, x[idx])
    return -torch.log(d + eps).mean()


# ---------------------------------------------------------------------------------------------
# DINO
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_local", [0, 1, 5])
def test_dino_loss_matches_the_dinov2_pairwise_formula(n_local):
    b, temp = 6, 0.04
    loss = DINOLoss(K, student_temp=0.1)
    teacher = _scores(0, 2 * b, K)
    center = _scores(1, 1, K, scale=0.5)
    loss.center.copy_(center)
    targets = loss.teacher_targets(teacher, temp)
    # targets: centred, sharpened teacher softmax with the centre *before* this batch
    torch.testing.assert_close(targets, F.softmax((teacher - center) / temp, dim=-1))
    student = _scores(2, (2 + n_local) * b, K)
    g, l_ = loss(student.view(2 + n_local, b, K), targets.view(2, b, K), n_global=2)
    expected = ref_dino(list(student.split(b)), list(targets.split(b)), 0.1)
    torch.testing.assert_close(g + l_, expected, rtol=1e-5, atol=1e-6)
    if n_local == 0:
        assert float(l_) == 0.0


def test_dino_centre_is_an_ema_of_the_batch_mean_and_skips_non_finite_batches():
    loss = DINOLoss(K, center_momentum=0.9)
    t1, t2 = _scores(3, 10, K), _scores(4, 10, K)
    loss.teacher_targets(t1, 0.07)
    torch.testing.assert_close(loss.center, 0.1 * t1.mean(0, keepdim=True))
    loss.teacher_targets(t2, 0.07)
    torch.testing.assert_close(loss.center, 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True))
    before = loss.center.clone()
    bad = t1.clone()
    bad[0, 0] = float("nan")
    loss.update_center(bad)
    torch.testing.assert_close(loss.center, before)


def test_dino_gradient_descent_drives_the_student_to_the_teacher():
    """Minimising the loss over student scores reaches the teacher distribution (loss -> its entropy)."""
    b = 4
    loss = DINOLoss(K, student_temp=0.1)
    targets = loss.teacher_targets(_scores(5, 2 * b, K), 0.07, update_center=False).view(2, b, K)
    # one local crop compared with both (different) teacher crops can only match their average
    s = torch.zeros(3, b, K, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.1)
    for _ in range(400):
        g, l_ = loss(s, targets, n_global=2)
        opt.zero_grad()
        (g + l_).backward()
        opt.step()
    p = F.softmax(s.detach() / 0.1, dim=-1)
    torch.testing.assert_close(p[0], targets[1], atol=2e-3, rtol=0)  # global crop 0 learns teacher crop 1
    torch.testing.assert_close(p[1], targets[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(p[2], targets.mean(0), atol=2e-3, rtol=0)


def test_sinkhorn_knopp_matches_the_reference_and_equalises_prototype_use():
    scores = _scores(6, 24, K)
    q = sinkhorn_knopp(scores, 0.05, n_iterations=3)
    torch.testing.assert_close(q, ref_sinkhorn(scores.double(), 0.05, 3).float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(1), torch.ones(24))  # each sample's targets are a distribution
    many = sinkhorn_knopp(scores, 0.5, n_iterations=200)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(many.sum(0), torch.full((K,), 24 / K), rtol=1e-3, atol=1e-3)  # uniform use
    # log-domain iterations: huge scores / tiny temperatures stay finite where exp overflows in float32
    assert not torch.isfinite(torch.exp(scores * 100 / 0.01)).all()
    extreme = sinkhorn_knopp(scores * 100, 0.01)
    assert torch.isfinite(extreme).all()
    torch.testing.assert_close(extreme.sum(1), torch.ones(24))


def test_sinkhorn_centering_in_the_dino_loss():
    loss = DINOLoss(K, centering="sinkhorn_knopp", sinkhorn_iterations=3)
    t = _scores(7, 12, K)
    torch.testing.assert_close(loss.teacher_targets(t, 0.07), ref_sinkhorn(t.double(), 0.07, 3).float(),
                               rtol=1e-4, atol=1e-6)
    assert float(loss.center.abs().sum()) == 0.0  # Sinkhorn does not use the EMA centre
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(K, centering="softmax")


# ---------------------------------------------------------------------------------------------
# iBOT
# ---------------------------------------------------------------------------------------------


def _masks(n_img: int, n_patch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n_img, n_patch, generator=g) < 0.35
    m[1] = False  # an image without a mask still counts in the denominator
    return m


def test_ibot_loss_matches_dinov2_masked_and_full_map_formulas():
    n_img, n_patch, temp = 5, 16, 0.05
    masks = _masks(n_img, n_patch, 0)
    s_full, t_full_scores = _scores(8, n_img, n_patch, K), _scores(9, n_img, n_patch, K)
    loss = IBOTPatchLoss(K, student_temp=0.1)
    center = _scores(10, 1, K, scale=0.3)
    loss.center.copy_(center)
    t_masked = loss.teacher_targets(t_full_scores[masks], temp)
    torch.testing.assert_close(t_masked, F.softmax((t_full_scores[masks] - center) / temp, dim=-1))
    # the centre moves toward the mean teacher score over masked patches
    torch.testing.assert_close(loss.center, 0.9 * center + 0.1 * t_full_scores[masks].mean(0, keepdim=True))
    ours = loss(s_full[masks], t_masked, masks)
    torch.testing.assert_close(ours, ref_ibot_masked(s_full[masks], t_masked, masks, 0.1))
    t_full = torch.zeros(n_img, n_patch, K)
    t_full[masks] = t_masked
    torch.testing.assert_close(ours, ref_ibot_full(s_full, t_full, masks, 0.1))


def test_ibot_loss_without_masked_patches_is_zero_and_keeps_the_graph():
    loss = IBOTPatchLoss(K)
    s = torch.zeros(0, K, requires_grad=True)
    out = loss(s, torch.zeros(0, K), torch.zeros(3, 8, dtype=torch.bool))
    assert float(out.detach()) == 0.0 and out.requires_grad


# ---------------------------------------------------------------------------------------------
# KoLeo
# ---------------------------------------------------------------------------------------------


def test_koleo_matches_the_reference_and_rewards_spread():
    x = _scores(11, 16, 8)
    torch.testing.assert_close(KoLeoLoss()(x), ref_koleo(x.clone()))
    # gradient descent on KoLeo spreads points: the minimum pairwise distance grows
    y = (x * 0.01 + torch.tensor([1.0] + [0.0] * 7)).requires_grad_(True)  # a tight cluster

    def min_dist(z):
        z = F.normalize(z.detach(), dim=-1)
        d = torch.cdist(z, z) + torch.eye(len(z)) * 10
        return float(d.min())

    before = min_dist(y)
    opt = torch.optim.SGD([y], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        KoLeoLoss()(y).backward()
        opt.step()
    assert min_dist(y) > 5 * before
    with pytest.raises(ValueError, match="at least two"):
        KoLeoLoss()(x[:1])


# ---------------------------------------------------------------------------------------------
# Two ranks (gloo) give what one process gives on the whole batch
# ---------------------------------------------------------------------------------------------


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        scores = _scores(20, 16, K)[rank * 8:(rank + 1) * 8]
        patches = _scores(21, 10, K)[[slice(0, 3), slice(3, 10)][rank]]  # uneven masked-patch counts
        dino = DINOLoss(K)
        dino.teacher_targets(scores, 0.07)
        ibot = IBOTPatchLoss(K)
        ibot.teacher_targets(patches, 0.07)
        q = sinkhorn_knopp(scores, 0.07, 3)
        qp = IBOTPatchLoss(K, centering="sinkhorn_knopp").teacher_targets(patches, 0.07)
        torch.save({"dino_center": dino.center, "ibot_center": ibot.center, "q": q, "qp": qp},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    scores, patches = _scores(20, 16, K), _scores(21, 10, K)
    dino, ibot = DINOLoss(K), IBOTPatchLoss(K)
    dino.teacher_targets(scores, 0.07)
    ibot.teacher_targets(patches, 0.07)
    for r in (r0, r1):
        torch.testing.assert_close(r["dino_center"], dino.center)
        torch.testing.assert_close(r["ibot_center"], ibot.center)  # mean over all 10 patches, not of rank means
    torch.testing.assert_close(torch.cat([r0["q"], r1["q"]]), sinkhorn_knopp(scores, 0.07, 3))
    torch.testing.assert_close(torch.cat([r0["qp"], r1["qp"]]), sinkhorn_knopp(patches, 0.07, 3))
