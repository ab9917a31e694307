"""Longitudinal pairs (opt-in: ``generate_phantom(prior_fraction=...)``): the prior study and the change statements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mxr0.data.phantom.chest_findings import (
    _CTR_RANGE,
    _EFFUSION_RANGE,
    _KIND_LABEL,
    _PTX_RANGE,
    _Finding,
    _sample_chest_findings,
)
from mxr0.data.phantom.chest_frontal import _draw_chest_frontal
from mxr0.data.phantom.chest_report import _chest_text
from mxr0.data.phantom.chest_scene import _chest_geometry
from mxr0.data.phantom.common import _choice, _Ctx, _fill, _pick
from mxr0.data.records import CHEXPERT_LABELS

_SIZES = {"cardiomegaly": ("mild", "moderate", "marked"), "effusion": ("small", "moderate", "large"),
          "ptx": ("small", "moderate", "large"), "edema": ("mild", "moderate")}
"""Findings whose size can change between the prior and the current study (smallest first)."""
_RESOLVABLE = ("opacity", "effusion", "ptx", "atelectasis", "edema")
CHANGE_STATUSES: tuple[str, ...] = ("new", "unchanged", "resolved", "worse", "better")
"""What a longitudinal pair's report says of each certain finding (`mxr0.eval.reports.rules.change_report`)."""
_CHANGE_TEXT = {
    "new": ["New {p}.", "Interval development of {p}.", "{P}, new since the prior study.", "Newly seen {p}."],
    "unchanged": ["Unchanged {p}.", "Stable {p}.", "{P}, unchanged from the prior study.",
                  "{P}, not significantly changed."],
    "worse": ["Increased {p}, previously {old}.", "Worsening {p}.", "{P}, increased since the prior study.",
              "Enlarging {p}, previously {old}."],
    "better": ["Decreased {p}, previously {old}.", "Improving {p}.", "{P}, decreased since the prior study.",
               "Improved {p}, previously {old}."],
    "resolved": ["Interval resolution of the {p}.", "The previously seen {p} has resolved.", "{P} has resolved.",
                 "The {p} seen on the prior study is no longer present."],
}


def _resize(f: _Finding, size: str, rng: np.random.Generator) -> None:
    """Give ``f`` the drawing parameters of ``size`` (the ranges of `_sample_chest_findings`)."""
    f.size = size
    if f.kind == "cardiomegaly":
        lo, hi = _CTR_RANGE[size]
        f.prm["ctr"] = rng.uniform(lo, hi)
    elif f.kind == "effusion":
        lo, hi = _EFFUSION_RANGE[size]
        f.prm = {s: (rng.uniform(lo, hi), c) for s, (_, c) in f.prm.items()}
    elif f.kind == "ptx":
        lo, hi = _PTX_RANGE[size]
        f.prm["f"] = rng.uniform(lo, hi)


def _conflicts(f: _Finding, fs: dict[str, _Finding]) -> bool:
    """Whether a prior-only finding would break the sampler's rules against the prior's other findings."""
    sides = {"left", "right"} if f.side == "bilateral" else {f.side}

    def on(k: str) -> set:
        g = fs.get(k)
        return set() if g is None else ({"left", "right"} if g.side == "bilateral" else {g.side})
    if f.kind == "effusion":
        return bool(sides & on("ptx"))
    if f.kind == "ptx":
        return bool(sides & (on("effusion") | on("opacity") | on("lesion")))
    if f.kind == "opacity":
        return bool(sides & on("ptx")) or (f.zone == "lower" and bool(sides & on("effusion")))
    return False


@dataclass
class _Pair:
    """A longitudinal pair: the prior study of the same patient (same thorax: its geometry stream is the
    current's) with findings new (absent before), unchanged, worse / better (another size before) or
    resolved (present before only). ``rng`` draws the changes and their wording."""

    ctx: _Ctx
    rng: np.random.Generator
    status: dict = field(default_factory=dict)  # kind -> change status (certain current findings)
    old_size: dict = field(default_factory=dict)  # kind -> the prior's size (worse / better)
    prior: dict = field(default_factory=dict)  # the prior's findings (after drawing: phrases set)
    image: Any = None
    findings: str = ""
    impression: str = ""

    def draw_prior(self, view: str, fs: dict[str, _Finding]) -> None:
        ctx, rng = self.ctx, self.rng
        ctx.rng.random()  # the view draw: the prior's geometry stream stays in step with the current's
        prior, pdevs = _sample_chest_findings(ctx, view)  # fresh copies of the current's findings
        for k, f in list(prior.items()):
            if not f.certain:
                continue  # hedged findings carry no change statement (drawn the same)
            sizes = _SIZES.get(k, ())
            i = sizes.index(f.size) if f.size in sizes else -1
            opts, w = ["new", "unchanged"], [0.3, 0.35]
            if i > 0:
                opts, w = opts + ["worse"], w + [0.175]
            if 0 <= i < len(sizes) - 1:
                opts, w = opts + ["better"], w + [0.175]
            st = _choice(rng, opts, w)
            self.status[k] = st
            if st == "new":
                del prior[k]
            elif st in ("worse", "better"):
                self.old_size[k] = sizes[i - 1 if st == "worse" else i + 1]
                _resize(f, self.old_size[k], rng)
        if rng.random() < 0.45:  # a finding of the prior that has resolved
            scratch = _Ctx(ctx.index, ctx.size, ctx.g, rng, rng, ctx.sex, ctx.age)
            for _ in range(20):
                cand, _devs = _sample_chest_findings(scratch, view)
                ks = [k for k in _RESOLVABLE if k in cand and k not in fs and cand[k].certain
                      and not _conflicts(cand[k], prior)]
                if ks:
                    prior[ks[0]] = cand[ks[0]]
                    self.status[ks[0]] = "resolved"
                    break
        geo = _chest_geometry(ctx, view, prior)
        ctx.rng = np.random.default_rng(int(rng.integers(2**63)))  # same thorax; its own texture, noise and exposure
        self.image, _ = _draw_chest_frontal(ctx, geo, prior, pdevs)
        labels = {n: None for n in CHEXPERT_LABELS}
        self.findings, self.impression = _chest_text(ctx, view, prior, pdevs, labels)
        self.prior = prior

    def rewrite(self, impr: list, fs: dict[str, _Finding]) -> list:
        """The current impression items with comparison statements (the `_chest_text` ``change`` hook)."""
        out = []
        for prio, sent, kind in impr:
            st = self.status.get(kind)
            if st is not None and st != "resolved" and kind in fs and fs[kind].certain:
                sent = _fill(_pick(self.rng, _CHANGE_TEXT[st]), fs[kind].phrase, old=self.old_size.get(kind, ""))
            out.append((prio, sent, kind))
        for kind, st in self.status.items():
            if st == "resolved":
                out.append((6, _fill(_pick(self.rng, _CHANGE_TEXT[st]), self.prior[kind].phrase), kind))
        return out

    def resolved_labels(self, labels: dict) -> None:
        """A resolution sentence negates its finding (as "resolution of" does for the labeller)."""
        for kind, st in self.status.items():
            if st != "resolved":
                continue
            names = [_KIND_LABEL[kind]] + (["Consolidation"] if kind == "opacity" and self.prior[kind].prm["dense"]
                                           else [])
            for n in names:
                if labels[n] is None:
                    labels[n] = 0
