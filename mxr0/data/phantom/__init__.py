"""Procedurally drawn radiograph studies: the embedded default dataset of mxr0 (the "phantom").

`generate_phantom` draws a small, deterministic, multi-anatomy set of studies in the canonical
record format (`mxr0.data.records`): 8-bit grayscale PNG radiographs, organ masks, a free-text
report (indication, technique, comparison, findings, impression), the 14 CheXpert labels, one box
per localised finding, and 3-6 question/answer pairs. It is the data of the demo and of every test
of the project, so it is built to be *learnable*: each chest finding is drawn visibly (position,
size, intensity, noise and anatomy vary from study to study) and the labels, boxes, report and QA
of a study are all derived from the same sampled findings, so they never disagree.

Domain rules the drawing and the text follow
--------------------------------------------
- **Orientation.** Frontal images are displayed as if facing the patient: the patient's LEFT is on
  the IMAGE'S RIGHT. A "left pleural effusion" is drawn (and boxed) in the right half of the
  picture; the heart extends mostly to the image's right, the aortic knob, the stomach bubble and a
  chest-wall pacemaker sit on the image's right, the liver (higher right hemidiaphragm) and a right
  internal jugular line on the image's left. Boxes and masks use image coordinates (``x`` to the
  image's right, ``y`` down, normalised to [0, 1]); mask names (``left_lung``, ``right_lung``) and
  report words use the patient's side. Pelvis AP follows the same rule; a hand PA is shown fingers
  up as seen from the dorsum (a right hand has its thumb on the image's left) and an AP knee as if
  facing the patient (the fibula, lateral, is on the image's left for a right knee). Left-sided
  extremities are drawn as mirror images of right-sided ones.
- **Photometry.** MONOCHROME2: air black, soft tissue grey, bone and metal white.
- **Chest anatomy.** Lungs dark with vessels radiating from the hila; mediastinum and heart bright;
  posterior ribs as curved bands; clavicles; spine behind the mediastinum; hemidiaphragm domes with
  sharp costophrenic angles; liver below the right dome and a gas bubble below the left one.
- **Cardiothoracic ratio.** Heart width over inner thoracic width: normal 0.40-0.48 on PA,
  cardiomegaly 0.54-0.72. One third of the heart lies right of the midline, two thirds left. AP
  views magnify the heart (x1.08) and are taken with a poorer inspiration (higher domes).
- **Demographics.** Men get a wider, larger thorax and hands; bone density falls after 45 years
  (fainter bones); the cardiac size grows slightly with age.

Labels (CheXpert / CheXbert convention, ``mxr0.data.records.CHEXPERT_LABELS``)
----------------------------------------------------------------------------
- ``1`` the report states the finding; ``-1`` the report hedges it ("possible", "cannot be
  excluded", "may represent", "questionable"); such findings (about 10 % of positives) are drawn
  faintly. ``0`` the report explicitly negates it ("No pleural effusion or pneumothorax.", "The
  lungs are clear." negates Lung Opacity and Consolidation, "Heart size is normal." negates
  Cardiomegaly). ``None`` not mentioned (and not drawn).
- Consolidation implies Lung Opacity (the CheXpert hierarchy); Pneumonia is positive only when the
  report calls a consolidation pneumonia (the larger lobar consolidations).
- **No Finding** (our choice, following the CheXpert labeler's rule): ``1`` when no pathology is
  positive or uncertain, where Support Devices do not count as a pathology (a study with only a
  tube in place has No Finding = 1); otherwise ``0`` (the CheXpert labeler leaves it blank; we
  write ``0`` so that classifiers get explicit negatives).
- Non-chest studies: every chest observation is ``None`` except Fracture (``1`` / ``-1`` / ``0``)
  and No Finding. Pleural Other is never drawn (always ``None``).

Longitudinal pairs (opt-in: ``generate_phantom(prior_fraction=...)``, ``mxr0 prepare phantom --prior-fraction``)
----------------------------------------------------------------------------------------------------------
A share of the chest studies gets the same patient's prior study: the same thorax (the prior's geometry is
drawn from the current study's stream), its own texture, noise and exposure, and findings that are new
(absent before), unchanged, worse or better (another size before: effusion, pneumothorax, cardiomegaly,
edema) or resolved (a finding of the prior only). The record gets the prior frontal image (role ``prior``,
``images/<id>_prior.png``), ``prior_study_id`` and the prior report (``prior_findings`` / ``prior_impression``);
its impression states each certain finding's change with varied phrasing ("New small left pleural effusion.",
"Stable cardiomegaly.", "Interval resolution of the right basilar opacity.", "Increased moderate right pleural
effusion, previously small."), which `mxr0.eval.reports.rules.change_report` reads back exactly (tested).
Hedged findings carry no change statement. With ``prior_fraction=0`` (the default) nothing is drawn
differently: the same records, PNGs and ``phantom.json`` as without the option.

Everything is deterministic: study ``i`` draws from ``numpy.random.SeedSequence([seed, i])`` only, so
the same arguments give byte-identical records and PNGs whatever the number of worker processes.

The package: `common` (constants, per-study state, small helpers), `draw` (numpy drawing primitives),
`chest_findings` (sampling), `chest_scene` / `chest_signs` / `chest_frontal` / `chest_lateral` (the chest images),
`chest_report_lungs` / `chest_report` (the chest report), `qa`, `chest` (a chest study), `pairs` (longitudinal
pairs), `bones` / `hand` / `knee` / `pelvis` (the other anatomies), `study` (`draw_study`), `writer`
(`generate_phantom`) and `preview` (`preview_grid`).
"""

from __future__ import annotations

from mxr0.data.phantom.common import (
    DEFAULT_ANATOMY_MIX,
    PHANTOM_ANATOMIES,
    PHANTOM_CHEST_LABELS,
    PHANTOM_LABELS,
    PHANTOM_VERSION,
)
from mxr0.data.phantom.pairs import CHANGE_STATUSES
from mxr0.data.phantom.preview import preview_grid
from mxr0.data.phantom.study import draw_study
from mxr0.data.phantom.writer import generate_phantom

__all__ = [
    "PHANTOM_VERSION",
    "PHANTOM_LABELS",
    "PHANTOM_CHEST_LABELS",
    "PHANTOM_ANATOMIES",
    "DEFAULT_ANATOMY_MIX",
    "CHANGE_STATUSES",
    "generate_phantom",
    "draw_study",
    "preview_grid",
]
