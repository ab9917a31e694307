"""Penn Treebank tokenisation as pycocoevalcap does it, in pure Python (no Java).

pycocoevalcap's ``PTBTokenizer`` runs ``java -cp stanford-corenlp-3.4.1.jar
edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` on all captions of one side
(references, or hypotheses) joined by newlines, then drops the tokens in :data:`PUNCTUATIONS`.
This module re-implements the lexer of CoreNLP 3.4.1 (``PTBLexer.flex`` at tag v3.4.1, default
options plus ``tokenizeNLs``): JFlex longest-match semantics (the text matched by ``r1/r2``
trailing-context rules counts ``r2`` when rules compete; ties go to the earlier rule), the same
rule order, abbreviation lists, quote/bracket/dash/ellipsis/fraction/currency normalisations,
assimilation splits (``cannot`` -> ``can not``, ``gonna`` -> ``gon na``), ``n't`` and ``'s``
splits and the sentence-final abbreviation period (``etc.`` before an upper-case word or at
the end of the stream gives ``etc.`` and ``.``).

Conventions reproduced on purpose, because they change BLEU/CIDEr/ROUGE-L:

* lower-casing happens *after* tokenisation, so ``-LRB-`` becomes ``-lrb-`` and is **not**
  removed by pycocoevalcap's punctuation filter (which lists the upper-case form): round and
  square brackets survive as ``-lrb-``/``-rrb-``/``-lsb-``/``-rsb-`` tokens;
* one side is lexed as a single stream, so the first character of the next caption can decide
  whether an abbreviation at the end of a caption gets an extra ``.`` token (removed later).

One deliberate deviation: characters that the Java lexer treats as line breaks (``\\r``,
``\\u2028``, ``\\u2029``, ``\\v``, ``\\f``, ``\\u0085``) inside a caption are turned into spaces
first. pycocoevalcap only replaces ``\\n``; with any of the others it emits an extra line and
silently pairs every later caption with the wrong tokens.

Parity: ``tests/unit/test_reports_ptb.py`` compares this tokeniser with the real jar (when Java and
pycocoevalcap are installed) on all IU X-ray report texts and on adversarial strings.
"""

from __future__ import annotations

import sys
import unicodedata
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import regex

__all__ = ["PUNCTUATIONS", "lex", "tokenize", "tokenize_corpus"]

#: pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (compared with the lower-cased tokens).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_NL = "\n"  # our stand-in for the lexer's *NL* token


# ---------------------------------------------------------------------------------------------
# Character classes. JFlex's [:letter:], [:digit:], [:uppercase:] are Java's Character.isLetter,
# isDigit, isUpperCase over the BMP (JFlex 1.4 %unicode works on 16-bit chars).
def _class_from(pred: Callable[[str], bool]) -> str:
    ranges, start, prev = [], None, None
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            ok = False
        else:
            ok = pred(chr(cp))
        if ok and start is None:
            start = cp
        if not ok and start is not None:
            ranges.append((start, prev))
            start = None
        prev = cp
    if start is not None:
        ranges.append((start, prev))
    parts = []
    for a, b in ranges:
        parts.append(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}")
    return "".join(parts)


@lru_cache(maxsize=1)
def _classes() -> dict[str, str]:
    return {
        "L": _class_from(lambda c: unicodedata.category(c) in ("Lu", "Ll", "Lt", "Lm", "Lo")),
        "D": _class_from(lambda c: unicodedata.category(c) == "Nd"),
        "U": _class_from(lambda c: unicodedata.category(c) == "Lu"),
    }


def _ci(words: str) -> str:
    """A case-insensitive group: JFlex %caseless applies to literals, not to character classes.

    Letters outside ``[...]`` become ``[xX]`` classes (scoped ``(?i:...)`` flags hit an
    alternation bug in the ``regex`` module)."""
    out, i, n = [], 0, len(words)
    while i < n:
        ch = words[i]
        if ch == "\\":
            out.append(words[i:i + 2])
            i += 2
        elif ch == "[":
            j = i + 1
            if j < n and words[j] == "^":
                j += 1
            if j < n and words[j] == "]":
                j += 1
            while words[j] != "]":
                j += 2 if words[j] == "\\" else 1
            out.append(words[i:j + 1])
            i = j + 1
        elif ch.isalpha() and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "(?:" + "".join(out) + ")"


# The house's commented exception to ~100 lines a function: a data table (PTBLexer's JFlex macros, one regex each).
@lru_cache(maxsize=1)
def _macros() -> dict[str, str]:
    c = _classes()
    m: dict[str, str] = {}
    m["LETTERCH"] = "[" + c["L"] + "]"
    m["DIGIT"] = "[" + c["D"] + "\\u07C0-\\u07C9]"
    m["UPPER"] = "[" + c["U"] + "]"
    m["ALNUM"] = "[" + c["L"] + c["D"] + "]"  # ([:letter:]|[:digit:])
    m["SGML"] = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*"
                 r"|[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>")
    m["SPMDASH"] = "(?:&" + _ci("MD|mdash|ndash") + ";|[\\u0096\\u0097\\u2013\\u2014\\u2015])"
    m["SPAMP"] = "&" + _ci("amp") + ";"
    m["SPPUNC"] = "&" + _ci("HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+") + ";"
    m["SPLET"] = "&[aeiouAEIOU]" + _ci("acute|grave|uml") + ";"
    m["SPACE"] = "[ \\t\\u00A0\\u2000-\\u200A\\u3000]"
    m["NEWLINE"] = "(?:\\r\\n|\\r|\\n|\\u2028|\\u2029|\\u000B|\\u000C|\\u0085)"
    m["SPACENL"] = f"(?:{m['SPACE']}|{m['NEWLINE']})"
    m["SPACENLS"] = f"(?:{m['SPACENL']})+"
    m["SENTEND"] = f"{m['SPACENL']}(?:{m['SPACENL']}|{m['UPPER']}|{m['SGML']})"
    D = m["DIGIT"]
    m["DATE"] = f"{D}{{1,2}}[\\-/]{D}{{1,2}}[\\-/]{D}{{2,4}}"
    m["NUM"] = f"(?:{D}+|{D}*(?:[.:,\\u00AD\\u066B\\u066C]{D}+)+)"
    m["NUMBER"] = f"[\\-+]?{m['NUM']}"
    m["SUBSUPNUM"] = "[\\u207A\\u207B\\u208A\\u208B]?(?:[\\u2070\\u00B9\\u00B2\\u00B3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)"
    m["FRAC"] = f"(?:{D}{{1,4}}[- \\u00A0])?{D}{{1,4}}(?:\\\\?/|\\u2044){D}{{1,4}}"
    m["FRAC2"] = "[\\u00BC\\u00BD\\u00BE\\u2153-\\u215E]"
    m["DOLSIGN"] = "(?:[A-Z]*\\$|#)"
    m["DOLSIGN2"] = "[\\u00A2\\u00A3\\u00A4\\u00A5\\u0080\\u20A0\\u20AC\\u060B\\u0E3F\\u20A4\\uFFE0\\uFFE1\\uFFE5\\uFFE6]"
    extra = ("\\u00AD\\u0237-\\u024F\\u02C2-\\u02C5\\u02D2-\\u02DF\\u02E5-\\u02FF\\u0300-\\u036F\\u0370-\\u037D"
             "\\u0384\\u0385\\u03CF\\u03F6\\u03FC-\\u03FF\\u0483-\\u0487\\u04CF\\u04F6-\\u04FF\\u0510-\\u0525"
             "\\u055A-\\u055F\\u0591-\\u05BD\\u05BF\\u05C1\\u05C2\\u05C4\\u05C5\\u05C7\\u0615-\\u061A"
             "\\u063B-\\u063F\\u064B-\\u065E\\u0670\\u06D6-\\u06EF\\u06FA-\\u06FF\\u070F\\u0711\\u0730-\\u074F"
             "\\u0750-\\u077F\\u07A6-\\u07B1\\u07CA-\\u07F5\\u07FA\\u0900-\\u0903\\u093C\\u093E-\\u094E"
             "\\u0951-\\u0955\\u0962-\\u0963\\u0981-\\u0983\\u09BC-\\u09C4\\u09C7\\u09C8\\u09CB-\\u09CD\\u09D7"
             "\\u09E2\\u09E3\\u0A01-\\u0A03\\u0A3C\\u0A3E-\\u0A4F\\u0A81-\\u0A83\\u0ABC-\\u0ACF\\u0B82"
             "\\u0BBE-\\u0BC2\\u0BC6-\\u0BC8\\u0BCA-\\u0BCD\\u0C01-\\u0C03\\u0C3E-\\u0C56\\u0D3E-\\u0D44"
             "\\u0D46-\\u0D48\\u0E30-\\u0E3A\\u0E47-\\u0E4E\\u0EB1-\\u0EBC\\u0EC8-\\u0ECD")
    m["LETTER"] = f"(?:[{c['L']}{extra}]|{m['SPLET']})"
    L = m["LETTER"]
    m["WORD"] = f"{L}(?:{L}|{D})*(?:[.!?]{L}(?:{L}|{D})*)*"
    m["FILENAME_EXT"] = _ci("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|"
                            "pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
    m["FILENAME"] = f"(?:{L}|{D})+(?:[.](?:{L}|{D})+)*(?:[.]{m['FILENAME_EXT']})"
    m["APOS"] = "(?:['\\u0092\\u2019]|&" + _ci("apos") + ";)"
    m["APOSETCETERA"] = f"(?:{m['APOS']}|[`\\u0091\\u2018\\u201B])"
    m["HYPHEN"] = "[-_\\u058A\\u2010\\u2011]"
    A, AE, AN = m["APOS"], m["APOSETCETERA"], m["ALNUM"]
    m["THING"] = (f"(?:[dDoOlL]{AE}{AN})?{AN}+(?:{m['HYPHEN']}(?:[dDoOlL]{AE}{AN})?{AN}+)*")
    m["THINGA"] = f"[A-Z]+(?:(?:[+&]|{m['SPAMP']})[A-Z]+)+"
    m["THING3"] = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
    m["ACRO"] = "(?:[A-Za-z](?:\\.[A-Za-z])*|" + _ci("(?:Canada|Sino|Korean|EU|Japan|non)-U\\.S|U\\.S\\.-(?:U\\.K|U\\.S\\.S\\.R)") + ")"
    m["ACRO2"] = "(?:[A-Za-z](?:\\.[A-Za-z])+|" + _ci("(?:Canada|Sino|Korean|EU|Japan|non)-U\\.S|U\\.S\\.-(?:U\\.K|U\\.S\\.S\\.R)") + ")"
    m["HTHING"] = f"[A-Za-z0-9][A-Za-z0-9.,\\u00AD]*(?:-(?:[A-Za-z0-9\\u00AD]+|{m['ACRO2']}\\.))+"
    m["REDAUX"] = f"{A}(?:[msdMSD]|{_ci('re|ve|ll')})"
    m["SWORD"] = "[A-Za-z\\u00AD]*[A-MO-Za-mo-z](?:\\u00AD)*"
    m["SREDAUX"] = f"{_ci('n')}{AE}{_ci('t')}"
    LC = m["LETTERCH"]
    m["APOWORD"] = ("(?:" + "|".join([
        f"{A}{_ci('n')}{A}?", f"[lLdDjJ]{A}", f"{_ci('Dunkin')}{A}", f"{_ci('somethin')}{A}", f"{_ci('ol')}{A}",
        f"{A}{_ci('em')}", f"[A-HJ-XZn]{AE}{LC}{{2}}{LC}*", f"{A}[2-9]0{_ci('s')}", f"{A}{_ci('till?')}",
        f"{LC}{LC}*[aeiouyAEIOUY]{AE}[aeiouA-Z]{LC}*", f"{A}{_ci('cause')}",
        _ci("cont'd\\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"), f"{_ci('O')}{AE}{_ci('o')}"]) + ")")
    m["APOWORD2"] = f"{_ci('y')}{A}"
    m["FULLURL"] = _ci("https?") + ":\\/\\/[^ \\t\\n\\f\\r\"<>|(){}]+[^ \\t\\n\\f\\r\"<>|.!?(){},-]"
    m["LIKELYURL"] = ("(?:(?:" + _ci("www") + "\\.(?:[^ \\t\\n\\f\\r\"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})|"
                      "(?:(?:[^ \\t\\n\\f\\r\"`'<>|.!?(){},-_$]+\\.)+" + _ci("com|net|org|edu") + "))"
                      "(?:\\/[^ \\t\\n\\f\\r\"<>|()]+[^ \\t\\n\\f\\r\"<>|.!?(){},-])?")
    m["EMAIL"] = ("(?:&" + _ci("lt") + ";|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r\"<>|()\\u00A0{}]*@"
                  "(?:[^ \\t\\n\\f\\r\"<>|(){}.\\u00A0]+\\.)*(?:[^ \\t\\n\\f\\r\"<>|(){}.\\u00A0]+)(?:&" + _ci("gt") + ";|>)?")
    m["TWITTER"] = f"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{L}+)"
    m["ABMONTH"] = _ci("Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
    m["ABDAYS"] = _ci("Mon|Tue|Tues|Wed|Thu|Thurs|Fri")
    m["ABSTATE"] = ("(?:" + _ci("Ala|Ariz") + "|A" + _ci("z") + "|A" + _ci("rk") + "|" + _ci("Calif|Colo|Conn|Ct|Dak")
                    + "|D" + _ci("el") + "|" + _ci("Fla|Ga") + "|I" + _ci("ll") + "|" + _ci("Ind|Kans?|Ky")
                    + "|L" + _ci("a") + "|M" + _ci("ass") + "|" + _ci("Md|Mich|Minn") + "|M" + _ci("iss") + "|"
                    + _ci("Mo|Mont|Neb|Nev|Okla") + "|O" + _ci("re") + "|P" + _ci("a") + "|" + _ci("Penn|Tenn")
                    + "|T" + _ci("ex") + "|" + _ci("Va|Vt") + "|W" + _ci("ash") + "|" + _ci("Wisc?|Wyo") + ")")
    m["ABCOMP"] = "(?:" + _ci("Inc|Cos?|Corp") + "|" + _ci("Pp?t") + "[ye]" + _ci("s?") + "|" + _ci("Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys") + ")"
    m["ABNUM"] = _ci("tel|est|ext|sq")
    m["ABPTIT"] = _ci("Jr|Sr|Bros|(?:Ed|Ph)\\.D|Blvd|Rd|Esq")
    m["ABBREV1"] = (f"(?:{m['ABMONTH']}|{m['ABDAYS']}|{m['ABSTATE']}|{m['ABCOMP']}|{m['ABNUM']}|{m['ABPTIT']}|"
                    + _ci("etc|al|seq|Bldg") + ")\\.")
    m["ABTITLE"] = ("(?:" + _ci("Mr|Mrs|Ms") + "|M" + _ci("iss") + "|" + _ci(
        "Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|"
        "Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc") + ")")
    m["ABCOMP2"] = _ci("Invt|Elec|Natl|M[ft]g|Dept")
    m["ABBREV4"] = (f"(?:{m['ABTITLE']}|" + _ci("vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph")
                    + f"|{m['ACRO']}|{m['ABCOMP2']})")
    m["ABBREV2"] = f"{m['ABBREV4']}\\."
    m["ACRONYM"] = f"{m['ACRO']}\\."
    m["ABBREV3"] = _ci("(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)") + "\\."
    m["PHONE"] = ("(?:(?:\\([0-9]{2,3}\\)[ \\u00A0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \\u00A0])?[0-9]{2,4}[\\- \\u00A0])"
                  "[0-9]{3,4}[\\- \\u00A0]?[0-9]{3,5}|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5})")
    m["FAKEDUCKFEET"] = "(?:<<|>>)"
    m["LESSTHAN"] = "(?:<|&" + _ci("lt") + ";)"
    m["GREATERTHAN"] = "(?:>|&" + _ci("gt") + ";)"
    m["HYPHENS"] = "\\-+"
    m["LDOTS"] = "(?:\\.{3,5}|(?:\\.[ \\u00A0]){2,4}\\.|[\\u0085\\u2026])"
    m["FNMARKS"] = "(?:@+|#+|_+)"
    m["ASTS"] = "(?:\\*+|(?:\\\\\\*){1,3})"
    m["INSENTP"] = "[,;:\\u3001]"
    m["QUOTES"] = (f"(?:{A}|''|[`\\u2018\\u2019\\u201A\\u201B\\u201C\\u201D\\u0091\\u0092\\u0093\\u0094\\u201E\\u201F"
                   "\\u2039\\u203A\\u00AB\\u00BB]{1,2})")
    m["DBLQUOT"] = "(?:\"|&" + _ci("quot") + ";)"
    m["TBSPEC"] = ("(?:-" + _ci("(?:RRB|LRB|RCB|LCB|RSB|LSB)") + "-|" + _ci("C\\.D\\.s|pro-|anti-") + "|"
                   + _ci("S") + "(?:&|" + m["SPAMP"] + ")" + _ci("P-500") + "|" + _ci("S") + "(?:&|" + m["SPAMP"] + ")"
                   + _ci("Ls") + "|" + _ci("Cap") + A + _ci("n") + "|" + _ci("c") + A + _ci("est") + ")")
    m["TBSPEC2"] = f"{A}[0-9][0-9]"
    m["SMILEY"] = "[<>]?[:;=][\\-o\\*']?[\\(\\)DPdpO\\\\{@\\|\\[\\]]"
    m["ASIANSMILEY"] = ("(?:[\\^x=~<>]\\.\\[\\^x=~<>]|[\\-\\^x=~<>']_[\\-\\^x=~<>']|\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)"
                        "|\\([\\^x=~<>']-[\\^x=~<>'`]\\))")
    m["MISCSYMBOL"] = ("[+%&~\\^|\\\\\\u00A6\\u00A7\\u00A8\\u00A9\\u00AC\\u00AE\\u00AF\\u00B0-\\u00B3\\u00B4-\\u00BA\\u00D7"
                       "\\u00F7\\u0387\\u05BE\\u05C0\\u05C3\\u05C6\\u05F3\\u05F4\\u0600-\\u0603\\u0606-\\u060A\\u060C"
                       "\\u0614\\u061B\\u061E\\u066A\\u066D\\u0703-\\u070D\\u07F6\\u07F7\\u07F8\\u0964\\u0965\\u0E4F"
                       "\\u1FBD\\u2016\\u2017\\u2020-\\u2023\\u2030-\\u2038\\u203B\\u203E-\\u2042\\u2044\\u207A-\\u207F"
                       "\\u208A-\\u208E\\u2100-\\u214F\\u2190-\\u21FF\\u2200-\\u2BFF\\u3012\\u30FB\\uFF01-\\uFF0F"
                       "\\uFF1A-\\uFF20\\uFF3B-\\uFF40\\uFF5B-\\uFF65\\uFF65]")
    return m


# ---------------------------------------------------------------------------------------------
# Token actions. Each takes the text matched by the rule (without trailing context) and returns
# (token text or None to emit nothing, number of characters consumed); consuming less than the
# match is JFlex's yypushback.
_OPEN = {"{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-", "(": "-LRB-", ")": "-RRB-"}


def _soft(s: str) -> str:
    if "\u00AD" not in s:
        return s
    out = s.replace("\u00AD", "")
    return out or "-"


def _latex_quotes(s: str, left: bool) -> str:
    s = regex.sub(r"&apos;|'", "`" if left else "'", s)
    s = regex.sub(r"\"|&quot;", "``" if left else "''", s)
    s = regex.sub("[\u0091\u2018\u201B\u2039]", "`", s)
    s = regex.sub("[\u0092\u2019\u203A]", "'", s)
    s = regex.sub("[\u0093\u201C\u00AB]", "``", s)
    s = regex.sub("[\u0094\u201D\u00BB]", "''", s)
    return s


def _amp(s: str) -> str:
    return regex.sub(r"(?i:&amp;)", "&", s)


def _parens(s: str) -> str:
    return s.replace("(", "-LRB-").replace(")", "-RRB-")


def _strip_trailing_ws(s: str) -> str:
    # the JFlex trailing-context work-around in the ACRONYM and ABBREV3 actions
    return s.rstrip(" \t\n\x0b\x0c\r\x85")


def _act_token(t: str):
    return t, len(t)


def _act_acronym(t: str):
    t = _strip_trailing_ws(t)
    if len(t) == 2:  # "I." before "The": the letter, then the period
        return t[0], 1
    return t, len(t) - 1  # the token keeps its period, and the period is lexed again


def _act_abbrev_period(t: str):
    return t, len(t) - 1  # the token keeps its period, and the period is lexed again


def _same(f: Callable[[str], str | None]) -> Callable[[str], tuple]:
    return lambda t: (f(t), len(t))


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = [("\u00A2", "cents"), ("\u00A3", "#")]


def _currency(s: str) -> str:
    for a, b in _CURRENCY:
        s = s.replace(a, b)
    return regex.sub("[\u0080\u00A4\u20A0\u20AC]", "$", s)


def _rules() -> list[tuple[str, str, str | None, Callable]]:
    m = _macros()
    R: list[tuple[str, str, str | None, Callable]] = []

    def add(name, r1, r2, act):
        R.append((name, r1, r2, act))

    nbsp = _same(lambda t: t.replace(" ", "\u00A0"))
    add("cpp", _ci("c") + "[+][+]", None, _act_token)
    add("csharp", _ci("(?:c|f)") + "#", None, _act_token)
    add("cannot", _ci("cannot"), None, lambda t: (t[:-3], len(t) - 3))
    add("twas", _ci("'twas"), None, lambda t: (t[:-3], len(t) - 3))
    add("tis", _ci("'tis"), None, lambda t: (t[:-2], len(t) - 2))
    add("assim", _ci("gonna|gotta|lemme|gimme|wanna"), None, lambda t: (t[:-2], len(t) - 2))
    add("sgml", m["SGML"], None, nbsp)
    add("spmdash", m["SPMDASH"], None, _same(lambda t: "--"))
    add("spamp", m["SPAMP"], None, _same(lambda t: _amp(t)))
    add("sppunc", m["SPPUNC"], None, _act_token)
    add("word_redaux", m["WORD"], m["REDAUX"], _same(lambda t: _soft(t)))
    add("sword_sredaux", m["SWORD"], m["SREDAUX"], _same(lambda t: _soft(t)))
    add("word", m["WORD"], None, _same(lambda t: _soft(t)))
    add("apoword", m["APOWORD"], None, _act_token)
    add("apoword2", m["APOWORD2"], m["LETTERCH"], _act_token)
    add("fullurl", m["FULLURL"], None, _act_token)
    add("likelyurl", m["LIKELYURL"], None, _act_token)
    add("email", m["EMAIL"], None, _act_token)
    add("twitter", m["TWITTER"], None, _act_token)
    add("redaux_ctx", m["REDAUX"], "[^A-Za-z]", _same(lambda t: _latex_quotes(t, False)))
    add("sredaux_ctx", m["SREDAUX"], "[^A-Za-z]", _same(lambda t: _latex_quotes(t, False)))
    add("date", m["DATE"], None, _act_token)
    add("number", m["NUMBER"], None, _same(lambda t: _soft(t)))
    add("subsupnum", m["SUBSUPNUM"], None, _act_token)
    add("frac", m["FRAC"], None, nbsp)
    add("frac2", m["FRAC2"], None, _same(lambda t: "".join(_FRACTIONS.get(ch, ch) for ch in t)))
    add("tbspec", m["TBSPEC"], None, _same(lambda t: _amp(t)))
    add("thing3", m["THING3"], None, _act_token)
    add("dolsign", m["DOLSIGN"], None, _act_token)
    add("dolsign2", m["DOLSIGN2"], None, _same(lambda t: _currency(t)))
    words = ("[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|"
             "[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|"
             "[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|"
             "[W]hile|[W]hat|[Y]et|[Y]ou")
    # caseless literals after the bracketed capital: "[T]he" matches "The" and "THE", not "the"
    words = "|".join(w[:3] + (_ci(w[3:]) if len(w) > 3 else "") for w in words.split("|"))
    add("acronym_ctx", m["ACRONYM"], f"{m['SPACENLS']}(?:{words}|{m['SGML']}){m['SPACENL']}", _act_acronym)
    add("abbrev3_ctx", m["ABBREV3"], f"{m['SPACENL']}?{m['DIGIT']}", _same(lambda t: _strip_trailing_ws(t)))
    add("pty_ltd", _ci("(?:pt[eyEY]|co)") + "\\.", f"{m['SPACE']}{_ci('ltd|lim')}", _act_token)
    add("abbrev1_sentend", m["ABBREV1"], m["SENTEND"], _act_abbrev_period)
    add("abbrev1_2", m["ABBREV1"], "(?s:..)", _act_token)
    add("abbrev1_eof", m["ABBREV1"], None, _act_abbrev_period)
    add("abbrev2", m["ABBREV2"], None, _act_token)
    add("abbrev4", m["ABBREV4"], m["SPACE"], _act_token)
    add("acro", m["ACRO"], m["SPACENL"], _act_token)
    add("tbspec2", m["TBSPEC2"], m["SPACENL"], _act_token)
    add("filename", m["FILENAME"], f"(?:{m['SPACENL']}|[.?!,])", _act_token)
    add("word_dot", f"{m['WORD']}\\.", m["INSENTP"], _same(lambda t: _soft(t)))
    add("phone", m["PHONE"], None, _same(lambda t: _parens(t.replace(" ", "\u00A0"))))
    add("dblquot_left", m["DBLQUOT"], "[A-Za-z0-9$]", _same(lambda t: _latex_quotes(t, True)))
    add("dblquot", m["DBLQUOT"], None, _same(lambda t: _latex_quotes(t, False)))
    add("del", "\\x7f", None, _same(lambda t: None))
    add("lessthan", m["LESSTHAN"], None, _same(lambda t: "<"))
    add("greaterthan", m["GREATERTHAN"], None, _same(lambda t: ">"))
    add("smiley", m["SMILEY"], "[^A-Za-z0-9]", _same(lambda t: _parens(t)))
    add("asiansmiley", m["ASIANSMILEY"], None, _same(lambda t: _parens(t)))
    add("brackets", "[{}\\[\\]()]", None, _same(lambda t: _OPEN[t]))
    add("hyphens", m["HYPHENS"], None, _same(lambda t: "--" if 3 <= len(t) <= 4 else t))
    add("ldots", m["LDOTS"], None, _same(lambda t: "..."))
    add("fnmarks", m["FNMARKS"], None, _act_token)
    add("asts", m["ASTS"], None, _act_token)
    add("insentp", m["INSENTP"], None, _act_token)
    add("qe", "[?!]+", None, _act_token)
    add("period", "[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, _act_token)
    add("equals", "=", None, _act_token)
    add("slash", "/", None, _act_token)
    add("hthing_dot", f"{m['HTHING']}\\.", m["INSENTP"], _same(lambda t: _soft(t)))
    add("hthing", m["HTHING"], None, _same(lambda t: _soft(t)))
    add("thing_dot", f"{m['THING']}\\.", m["INSENTP"], _act_token)
    add("thing", m["THING"], None, _act_token)
    add("thinga_dot", f"{m['THINGA']}\\.", m["INSENTP"], _same(lambda t: _amp(t)))
    add("thinga", m["THINGA"], None, _same(lambda t: _amp(t)))
    add("quote_left", "'", "[A-Za-z][^ \\t\\n\\r\\u00A0]", _same(lambda t: _latex_quotes(t, True)))
    add("redaux", m["REDAUX"], None, _same(lambda t: _latex_quotes(t, False)))
    add("sredaux", m["SREDAUX"], None, _same(lambda t: _latex_quotes(t, False)))
    add("quotes", m["QUOTES"], None, _same(lambda t: _latex_quotes(t, False)))
    add("fakeduckfeet", m["FAKEDUCKFEET"], None, _act_token)
    add("miscsymbol", m["MISCSYMBOL"], None, _act_token)
    add("space", "(?:\\x00|[ \\t\\u00A0\\u2000-\\u200A\\u3000]+|[\\u200B\\u200E-\\u200F\\uFEFF])", None, _same(lambda t: None))
    add("newline", m["NEWLINE"], None, _same(lambda t: _NL))
    add("nbsp", "&" + _ci("nbsp") + ";", None, _same(lambda t: None))
    add("any", "[^\\n]", None, _same(lambda t: None))  # untokenizable: deleted (default firstDelete)
    return R


class _Lexer:
    def __init__(self) -> None:
        self.rules = []
        for name, r1, r2, act in _rules():
            pat = f"(?P<a>{r1})" + (f"(?P<b>{r2})" if r2 else "")
            self.rules.append((name, regex.compile(pat, flags=regex.POSIX | regex.V0), r2 is not None, act))
        # Rules that can only match when the current whitespace-free run holds a given character
        # (skipping them is only a speed-up; EMAIL is slow under POSIX matching).
        self.needs = {"email": "@", "fullurl": ":", "likelyurl": "."}
        # Fast paths (checked against the jar on the whole IU X-ray corpus): a plain ASCII word
        # followed by a space or a newline is its own token whichever rule wins (no rule extends a
        # letters-only word across a space), except the assimilations; so is such a word followed by
        # one of ",;." and then a space/newline, unless it could be an abbreviation (then the period
        # may belong to it). Runs of spaces are skipped.
        m = _macros()
        self.fast_word = regex.compile(r"([A-Za-z]+)(?:(?=[ \n])|([,;]|\.(?![ \u00A0]\.))(?=[ \n]))")
        self.assim = {"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"}
        abbrev1 = m["ABBREV1"][: -len("\\.")]
        abbrev3 = m["ABBREV3"][: -len("\\.")]
        self.abbrev_like = regex.compile(
            f"(?:{abbrev1}|{m['ABBREV4']}|{abbrev3}|{_ci('(?:pt[eyEY]|co)')})", flags=regex.POSIX)
        self.fast_space = regex.compile(r"[ \t\u00A0\u2000-\u200A\u3000]+")  # the lexer's SPACES
        self.fast_punct = regex.compile(r"(?:,|\.(?![ \u00A0]\.))(?=[ \n])")  # not a spaced ". . ."
        self.run_end = regex.compile(r"[^ \t\n\r\f]*")

    def lex(self, text: str) -> list[str]:
        out: list[str] = []
        pos, n = 0, len(text)
        fast_word, fast_space, fast_punct = self.fast_word.match, self.fast_space.match, self.fast_punct.match
        assim, abbrev_like, needs = self.assim, self.abbrev_like.fullmatch, self.needs
        while pos < n:
            ch = text[pos]
            if ch == "\n":
                out.append(_NL)
                pos += 1
                continue
            if ch == " " or ch == "\t":
                pos = fast_space(text, pos).end()
                continue
            mw = fast_word(text, pos)
            if mw is not None:
                word, punct = mw.group(1), mw.group(2)
                if word.lower() not in assim and not (punct == "." and abbrev_like(word)):
                    out.append(word)
                    if punct:
                        out.append(punct)
                    pos = mw.end()
                    continue
            mp = fast_punct(text, pos)
            if mp is not None:
                out.append(mp.group())
                pos += 1
                continue
            run = None
            best_len, best = -1, None
            for name, rx, _ctx, act in self.rules:
                need = needs.get(name)
                if need is not None:
                    if run is None:
                        run = self.run_end.match(text, pos).group()
                    if need not in run:
                        continue
                mm = rx.match(text, pos)
                if mm is None:
                    continue
                total = mm.end() - pos
                if total > best_len:
                    best_len, best = total, (mm, act)
            assert best is not None  # the catch-all rule always matches one character
            mm, act = best
            tok, consumed = act(mm.group("a"))
            if tok is not None:
                out.append(tok)
            pos += max(consumed, 1)
        return out


@lru_cache(maxsize=1)
def _lexer() -> _Lexer:
    return _Lexer()


_LINE_BREAKS = str.maketrans({"\r": " ", "\u2028": " ", "\u2029": " ", "\x0b": " ", "\x0c": " ", "\x85": " ",
                              "\n": " "})


def lex(text: str) -> list[str]:
    """Raw PTB tokens of one string (original case; newlines are returned as ``"\\n"`` tokens)."""
    return _lexer().lex(text)


def tokenize_corpus(texts: Sequence[str]) -> list[str]:
    """Tokenise one side of a corpus exactly as ``pycocoevalcap.tokenizer.PTBTokenizer`` does.

    The texts are joined by newlines and lexed as one stream (the lexer looks one caption ahead),
    tokens are lower-cased, punctuation tokens are removed, and each caption comes back as a
    space-joined string, in order."""
    joined = "\n".join(t.translate(_LINE_BREAKS) for t in texts)
    lines: list[list[str]] = [[]]
    for tok in _lexer().lex(joined):
        if tok == _NL:
            lines.append([])
        else:
            lines[-1].append(tok.lower())
    if len(lines) != len(texts):  # pragma: no cover - guarded by construction
        raise RuntimeError(f"PTB tokeniser produced {len(lines)} lines for {len(texts)} texts")
    # pycocoevalcap: ' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)
    out = []
    for toks in lines:
        line = " ".join(toks).rstrip()
        out.append(" ".join(w for w in line.split(" ") if w not in PUNCTUATIONS))
    return out


def tokenize(text: str) -> str:
    """One caption on its own (no following caption to look ahead into)."""
    return tokenize_corpus([text])[0]


def _main(argv: Iterable[str] | None = None) -> int:  # pragma: no cover - debugging aid
    for line in sys.stdin:
        print(" ".join(t if t != _NL else "*NL*" for t in lex(line.rstrip("\n"))))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
