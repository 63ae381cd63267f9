#!/usr/bin/env python3
# Command (from the repository root; needs `pip install unicodedataplus==16.0.0.post1`):
#     python3 tools/gen_unicode_tables.py            # writes src/models/unicode_tables.inc
#     python3 tools/gen_unicode_tables.py --check    # also compares every code point with the
#                                                    # `tokenizers` library (what transformers 5.x
#                                                    # CLIPTokenizer runs); needs it installed
#
# Unicode tables for the CLIP tokenizer (src/models/tokenizer.c). transformers 5.x CLIPTokenizer
# is backed by the Rust `tokenizers` library: normalizer NFC -> Replace(\s+, " ") -> Lowercase,
# then a Split on the CLIP regex with \p{L}, \p{N} and \s. The tables reproduce what those
# components do, code point by code point:
#   letter / number ranges   General_Category L* / N* from Unicode 16.0 (unicodedataplus);
#                            tokenizers' regex engine (Oniguruma) matches 16.0 exactly (--check).
#   space                    the regex \s: Unicode White_Space (Python's str.isspace() minus
#                            U+001C..U+001F, which Python counts and Oniguruma does not).
#   lower                    Rust's char::to_lowercase: Python's str.lower() of each single code
#                            point (Unicode of this Python, 14.0 on 3.11; no final-sigma rule,
#                            since tokenizers lowercases char by char) plus the case pairs
#                            added in Unicode 16.0/17.0 that Rust's std already knows
#                            (NEW_LOWER below, found by --check). U+0130 maps to two code points.
#   ccc / decomp / comp      canonical combining class, full canonical decompositions and the
#                            primary composites (canonical pairs not excluded from composition)
#                            for NFC, as of Unicode 9.0: tokenizers' NFC (the
#                            unicode-normalization-alignments crate) has 9.0 tables (--check
#                            finds thousands of differing sequences against 11.0..16.0 and none
#                            against 9.0). By Unicode's normalization stability policy the 9.0
#                            data is the 16.0 data restricted to code points whose Age <= 9.0;
#                            later code points are treated as ccc 0 without decomposition, as
#                            the 9.0 tables do. Hangul syllables are done in code.
# Deterministic: same inputs, same file.
import argparse
import os
import sys

import unicodedataplus as ud

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "models",
                   "unicode_tables.inc")
MAXCP = 0x110000

# Lowercase mappings Rust's std (Unicode 17.0 in the tokenizers build that transformers 5.x
# uses) has and Python 3.11's str.lower() (Unicode 14.0) lacks: (first, last, delta).
NEW_LOWER = [
    (0x1C89, 0x1C89, 1), (0xA7CB, 0xA7CB, 0x0264 - 0xA7CB), (0xA7CC, 0xA7CC, 1),
    (0xA7CE, 0xA7CE, 1), (0xA7D2, 0xA7D2, 1), (0xA7D4, 0xA7D4, 1), (0xA7DA, 0xA7DA, 1),
    (0xA7DC, 0xA7DC, 0x019B - 0xA7DC),
    (0x10D50, 0x10D65, 0x20),     # Garay
    (0x16EA0, 0x16EB8, 0x1B),     # Beria Erfe
]


def cps():
    return (c for c in range(MAXCP) if not 0xD800 <= c < 0xE000)


def is_hangul_syllable(c):
    return 0xAC00 <= c <= 0xD7A3


def ranges(pred):
    out, start = [], None
    for c in range(MAXCP + 1):
        ok = c < MAXCP and not 0xD800 <= c < 0xE000 and pred(c)
        if ok and start is None:
            start = c
        elif not ok and start is not None:
            out.append((start, c - 1))
            start = None
    return out


def lower_map():
    m = {}
    for c in cps():
        s = chr(c).lower()
        if s != chr(c):
            m[c] = [ord(x) for x in s]
    for lo, hi, d in NEW_LOWER:
        for c in range(lo, hi + 1):
            m[c] = [c + d]
    return m


def lower_ranges(m):
    """single-code-point mappings as (lo, hi, stride, delta) runs"""
    singles = sorted((c, v[0] - c) for c, v in m.items() if len(v) == 1)
    out = []
    for c, d in singles:
        if out:
            lo, hi, st, dd = out[-1]
            if dd == d and (c - hi == st or (lo == hi and c - hi in (1, 2))):
                out[-1] = (lo, c, c - hi, dd)
                continue
        out.append((c, c, 1, d))
    return out


def space(c):
    return chr(c).isspace() and not 0x1C <= c <= 0x1F


def letter(c):
    return ud.category(chr(c))[0] == "L"


def number(c):
    return ud.category(chr(c))[0] == "N"


NFC_AGE = (9, 0)


def old(c):
    """assigned in Unicode <= 9.0 (the version of tokenizers' NFC tables)"""
    a = ud.age(chr(c))
    if a.lower() == "unassigned":
        return False
    return tuple(int(x) for x in a.split(".")) <= NFC_AGE


def ccc_ranges():
    out = []
    for c in cps():
        k = ud.combining(chr(c)) if old(c) else 0
        if not k:
            continue
        if out and out[-1][1] == c - 1 and out[-1][2] == k:
            out[-1] = (out[-1][0], c, k)
        else:
            out.append((c, c, k))
    return out


def decomps():
    out = []
    for c in cps():
        if is_hangul_syllable(c) or not old(c):
            continue
        d = ud.normalize("NFD", chr(c))
        if d != chr(c):
            out.append((c, [ord(x) for x in d]))
    return out


def comps():
    out = []
    for c in cps():
        if is_hangul_syllable(c) or not old(c):
            continue
        d = ud.decomposition(chr(c))
        if not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        if len(parts) != 2:
            continue
        if ud.normalize("NFC", chr(c)) != chr(c):   # excluded (or non-starter decomposition)
            continue
        out.append((parts[0], parts[1], c))
    out.sort()
    return out


def fmt_rows(rows, per_line, fmt):
    lines = []
    for i in range(0, len(rows), per_line):
        lines.append("    " + " ".join(fmt(r) for r in rows[i:i + per_line]))
    return "\n".join(lines)


def generate():
    lm = lower_map()
    multi = sorted((c, v) for c, v in lm.items() if len(v) != 1)
    assert all(len(v) == 2 for _, v in multi), multi
    L, N = ranges(letter), ranges(number)
    S = [c for c in cps() if space(c)]
    LR = lower_ranges(lm)
    # the C lookup binary-searches runs by first code point: they must not overlap
    assert all(x[1] < y[0] for x, y in zip(LR, LR[1:]))
    C = ccc_ranges()
    D = decomps()
    P = comps()
    pool, didx = [], []
    for c, d in D:
        assert 1 <= len(d) <= 4
        didx.append((c, len(pool), len(d)))
        pool.extend(d)
    hexr = lambda r: "{0x%X,0x%X}," % r
    s = []
    s.append("/* unicode_tables.inc -- GENERATED by tools/gen_unicode_tables.py from Unicode %s\n"
             " * (unicodedataplus; NFC data cut to Unicode 9.0) and Python %d.%d's str.lower(); do not\n"
             " * edit. See the script for what each table reproduces. Included by\n"
             " * src/models/tokenizer.c only. */\n"
             % (ud.unidata_version, sys.version_info[0], sys.version_info[1]))
    s.append("#define UC_UNICODE_VERSION \"%s\"\n" % ud.unidata_version)
    s.append("/* General_Category L*: inclusive ranges */\nstatic const uint32_t uc_letter[][2] = {\n%s\n};\n"
             % fmt_rows(L, 6, hexr))
    s.append("/* General_Category N*: inclusive ranges */\nstatic const uint32_t uc_number[][2] = {\n%s\n};\n"
             % fmt_rows(N, 6, hexr))
    s.append("/* regex \\s (White_Space) */\nstatic const uint32_t uc_space[] = {\n%s\n};\n"
             % fmt_rows(S, 10, lambda c: "0x%X," % c))
    s.append("/* lowercase: {first, last, stride, delta}: c in [first,last], (c-first) %% stride == 0\n"
             " * maps to c + delta */\nstatic const int32_t uc_lower[][4] = {\n%s\n};\n"
             % fmt_rows(LR, 4, lambda r: "{0x%X,0x%X,%d,%d}," % r))
    s.append("/* lowercase to two code points */\nstatic const uint32_t uc_lower2[][3] = {\n%s\n};\n"
             % fmt_rows([(c, v[0], v[1]) for c, v in multi], 4, lambda r: "{0x%X,0x%X,0x%X}," % r))
    s.append("/* canonical combining class: {first, last, ccc} */\nstatic const uint32_t uc_ccc[][3] = {\n%s\n};\n"
             % fmt_rows(C, 5, lambda r: "{0x%X,0x%X,%d}," % r))
    s.append("/* full canonical decomposition (Hangul syllables excluded): {cp, offset, length} into\n"
             " * uc_decomp_pool */\nstatic const uint32_t uc_decomp[][3] = {\n%s\n};\n"
             % fmt_rows(didx, 5, lambda r: "{0x%X,%d,%d}," % r))
    s.append("static const uint32_t uc_decomp_pool[] = {\n%s\n};\n"
             % fmt_rows(pool, 10, lambda c: "0x%X," % c))
    s.append("/* primary composites: {first, second, composite}, sorted by (first, second) */\n"
             "static const uint32_t uc_comp[][3] = {\n%s\n};\n"
             % fmt_rows(P, 4, lambda r: "{0x%X,0x%X,0x%X}," % r))
    with open(OUT, "w") as f:
        f.write("".join(s))
    print("wrote %s: %d letter, %d number ranges, %d spaces, %d lower runs (+%d two-cp), "
          "%d ccc ranges, %d decompositions (%d cps), %d composites"
          % (os.path.relpath(OUT), len(L), len(N), len(S), len(LR), len(multi), len(C), len(D),
             len(pool), len(P)))
    return dict(L=L, N=N, S=S, LR=LR, multi=multi, lm=lm, C=C, D=dict(D), P=P)


def nfc_model(t, s):
    """NFC with the generated tables, the algorithm of tokenizer.c (UAX #15)"""
    if "ccc" not in t:
        t["ccc"] = {c: k for a, b, k in t["C"] for c in range(a, b + 1)}
        t["comp"] = {(a, b): c for a, b, c in t["P"]}
    ccc, comp = t["ccc"], t["comp"]
    SB, LB, VB, TB, NV, NT = 0xAC00, 0x1100, 0x1161, 0x11A7, 21, 28
    d = []
    for ch in s:
        c = ord(ch)
        if SB <= c <= 0xD7A3:
            i = c - SB
            d += [LB + i // (NV * NT), VB + i % (NV * NT) // NT] + ([TB + i % NT] if i % NT else [])
        else:
            d += t["D"].get(c, [c])
    for i in range(1, len(d)):          # canonical ordering (stable insertion sort)
        j = i
        while j > 0 and ccc.get(d[j], 0) and ccc.get(d[j - 1], 0) > ccc.get(d[j], 0):
            d[j - 1], d[j] = d[j], d[j - 1]
            j -= 1
    out, st, last = [], -1, -1
    for c in d:
        k = ccc.get(c, 0)
        if st >= 0 and (last == -1 or last < k):
            a = out[st]
            x = None
            if LB <= a < LB + 19 and VB <= c < VB + NV:
                x = SB + ((a - LB) * NV + (c - VB)) * NT
            elif SB <= a <= 0xD7A3 and (a - SB) % NT == 0 and TB < c < TB + NT:
                x = a + (c - TB)
            else:
                x = comp.get((a, c))
            if x is not None:
                out[st] = x
                continue
        if k == 0:
            st, last = len(out), -1
        else:
            last = k
        out.append(c)
    return "".join(map(chr, out))


def check(t):
    """every code point against the tokenizers library (the reference)"""
    import random
    from tokenizers import Regex, normalizers
    bad = 0
    low, nfc = normalizers.Lowercase(), normalizers.NFC()
    rx = {k: normalizers.Replace(Regex(p), "") for k, p in
          (("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s"))}
    inr = {k: set() for k in "LNS"}
    for k in "LN":
        for lo, hi in t[k]:
            inr[k].update(range(lo, hi + 1))
    inr["S"] = set(t["S"])
    runmap = {}
    for a, b, st, d in t["LR"]:
        for c in range(a, b + 1, st):
            runmap[c] = [c + d]
    for c0, v in t["multi"]:
        runmap[c0] = v
    for c in cps():
        s = chr(c)
        ref = [ord(x) for x in low.normalize_str(s)]
        if runmap.get(c, [c]) != ref:
            bad += 1
            if bad < 20:
                print("lower U+%04X: tables %s, tokenizers %s" % (c, runmap.get(c, [c]), ref))
        if nfc.normalize_str(s) != nfc_model(t, s):
            bad += 1
            print("nfc U+%04X differs" % c)
        for k in "LNS":
            if (rx[k].normalize_str(s) == "") != (c in inr[k]):
                bad += 1
                if bad < 40:
                    print("%s U+%04X differs" % (k, c))
    # NFC of sequences: every canonical pair, and random base + combining-mark runs
    rnd = random.Random(0)
    marks = [c for c in cps() if ud.combining(chr(c))]
    bases = [c for c in cps() if ud.decomposition(chr(c)) and not ud.decomposition(chr(c)).startswith("<")]
    seqs = []
    for c in bases:
        d = ud.normalize("NFD", chr(c))
        seqs.append(d)
        seqs.append(d[::-1])
    for _ in range(200000):
        b = chr(rnd.choice(bases + [0x41, 0x61, 0x1100, 0xAC00, 0x0B47, 0x0915]))
        seqs.append(b + "".join(chr(rnd.choice(marks + [0x1161, 0x11A8, 0x0B3E, 0x0301]))
                                for _ in range(rnd.randint(1, 4))))
    nbad = 0
    for s in seqs:
        if nfc.normalize_str(s) != nfc_model(t, s):
            nbad += 1
            if nbad < 10:
                print("nfc sequence differs:", [hex(ord(x)) for x in s])
    bad += nbad
    print("check: %d code points, %d sequences: %d differences" % (len(list(cps())), len(seqs), bad))
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if ud.unidata_version != "16.0.0":
        sys.exit("need unicodedataplus 16.0.0 (pip install unicodedataplus==16.0.0.post1), have %s"
                 % ud.unidata_version)
    t = generate()
    if a.check and check(t):
        sys.exit(1)


if __name__ == "__main__":
    main()
