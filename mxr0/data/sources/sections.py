"""Split a free-text radiology report into the record's sections.

Used by every converter that receives whole reports (MIMIC-CXR's ``sYYYYYYYY.txt`` files, report
columns of a hospital export). The parser is built for the variations of real reports:

- headers are upper-case words followed by a colon (``FINDINGS:``, ``CLINICAL HISTORY:``), on a line
  of their own or followed by text on the same line; a known header is also recognised in the middle
  of a line (``... COMPARISON: None. FINDINGS: ...``) and in any letter case at a line start;
- ``FINAL REPORT``, ``WET READ: ...``, ``NOTIFICATION:``, ``RECOMMENDATION(S):``, ``ADDENDUM:`` and
  the other headers mapped to ``""`` in ``HEADER_ALIASES`` end the section before them and are dropped;
  any other upper-case label (``LUNGS:``, ``HEART:``, ``LINES/TUBES:`` in structured findings) is
  kept as text of the section it stands in;
- text before the first header (titles such as ``PA AND LATERAL CHEST RADIOGRAPH``) is dropped;
- several headers can feed one section (``HISTORY:`` and ``INDICATION:``); their texts are joined;
- ``EXAMINATION:`` (the procedure name) fills ``technique`` only when no ``TECHNIQUE:`` is given;
- ``FINDINGS AND IMPRESSION:`` goes to ``findings`` (``impression`` stays empty unless a separate
  ``IMPRESSION:`` / ``CONCLUSION:`` exists); reports may have an impression but no findings;
- a report without any recognised header is kept whole as ``findings``; when a report has no
  FINDINGS header, paragraphs after the first one of an INDICATION / TECHNIQUE / COMPARISON /
  EXAMINATION section (separated by a blank line) are taken as findings;
- line-wrapped text is joined and whitespace collapsed; de-identification placeholders (``___`` in
  MIMIC-CXR, ``XXXX`` in IU X-ray) are kept as they are.
"""

from __future__ import annotations

import re

from mxr0.data.records import REPORT_SECTIONS

__all__ = ["HEADER_ALIASES", "clean_text", "split_sections"]

#: Upper-case header (without its colon) → record section; ``""`` marks headers that are dropped.
HEADER_ALIASES: dict[str, str] = {
    "INDICATION": "indication",
    "INDICATIONS": "indication",
    "HISTORY": "indication",
    "CLINICAL HISTORY": "indication",
    "CLINICAL INDICATION": "indication",
    "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication",
    "REASON FOR STUDY": "indication",
    "TECHNIQUE": "technique",
    "TECHNIQUES": "technique",
    "PROCEDURE": "technique",
    "EXAMINATION": "examination",
    "EXAM": "examination",
    "TYPE OF EXAMINATION": "examination",
    "COMPARISON": "comparison",
    "COMPARISONS": "comparison",
    "COMPARISON STUDY": "comparison",
    "PRIOR STUDIES": "comparison",
    "FINDINGS": "findings",
    "FINDING": "findings",
    "FINDINGS AND IMPRESSION": "findings",
    "FINDINGS/IMPRESSION": "findings",
    "REPORT": "findings",
    "IMPRESSION": "impression",
    "IMPRESSIONS": "impression",
    "CONCLUSION": "impression",
    "CONCLUSIONS": "impression",
    "SUMMARY": "impression",
    "WET READ": "",
    "PROVISIONAL FINDINGS IMPRESSION (PFI)": "",
    "PFI": "",
    "NOTIFICATION": "",
    "RECOMMENDATION": "",
    "RECOMMENDATIONS": "",
    "RECOMMENDATION(S)": "",
    "ADDENDUM": "",
    "DICTATED BY": "",
    "SIGNED BY": "",
}

# Known headers anywhere (word boundary before, colon after), any case only at a line start.
_KNOWN = "|".join(re.escape(h) for h in sorted(HEADER_ALIASES, key=len, reverse=True))
_KNOWN_INLINE = re.compile(rf"(?<![A-Za-z0-9_])(?P<h>{_KNOWN})[ \t]*:")
_KNOWN_LINE_START = re.compile(rf"^[ \t]*(?P<h>{_KNOWN})[ \t]*:", re.MULTILINE | re.IGNORECASE)
# Title lines dropped wherever they stand.
_TITLES = re.compile(r"^[ \t]*(FINAL REPORT|PRELIMINARY REPORT|WET READ VERSION #?\d*)[ \t]*$",
                     re.MULTILINE | re.IGNORECASE)
_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Join wrapped lines and collapse runs of whitespace to one space."""
    return _WS.sub(" ", text).strip()


def _headers(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, section)`` of every header, in order; overlapping matches keep the first."""
    found: dict[int, tuple[int, str]] = {}
    for rx in (_KNOWN_LINE_START, _KNOWN_INLINE):
        for m in rx.finditer(text):
            found.setdefault(m.start("h"), (m.end(), HEADER_ALIASES[m.group("h").upper()]))
    out: list[tuple[int, int, str]] = []
    last_end = -1
    for start in sorted(found):
        end, section = found[start]
        if start >= last_end:
            out.append((start, end, section))
            last_end = end
    return out


_SHORT = ("indication", "technique", "comparison", "examination")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _first_paragraph(body: str) -> tuple[str, str]:
    """``(first paragraph, the rest)``: unlabelled findings often follow COMPARISON after a blank line."""
    lead = len(body) - len(body.lstrip())
    m = _PARAGRAPH_BREAK.search(body, lead)
    return (body, "") if m is None else (body[: m.start()], body[m.end():])


def split_sections(text: str) -> dict[str, str]:
    """The report's sections as ``{indication, technique, comparison, findings, impression}``.

    Every section is a single cleaned line (``""`` when absent); see the module docstring for the
    header variations handled.
    """
    text = _TITLES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    parts: dict[str, list[str]] = {s: [] for s in (*REPORT_SECTIONS, "examination")}
    heads = _headers(text)
    if not heads:
        parts["findings"].append(text)
    has_findings = any(section == "findings" for _, _, section in heads)
    for i, (_, end, section) in enumerate(heads):
        stop = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        body = text[end:stop]
        if section in _SHORT and not has_findings:
            body, rest = _first_paragraph(body)
            parts["findings"].append(rest)
        if section:
            parts[section].append(body)
    out = {s: clean_text(" ".join(parts[s])) for s in REPORT_SECTIONS}
    if not out["technique"]:
        out["technique"] = clean_text(" ".join(parts["examination"]))
    return out
