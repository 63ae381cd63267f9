#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, a few seconds):
#     pip install open_clip_torch            # ships the real CLIP BPE vocabulary
#     python3 tools/make_tokenizer_fixtures.py            # writes tests/fixtures/tokenizer/
#     python3 tools/make_tokenizer_fixtures.py --out DIR  # somewhere else
#
# Fixtures for the C CLIP tokenizer (src/models/tokenizer.c, tests/test_tokenizer.c):
#   vocab.json, merges.txt   the real CLIP vocabulary (49408 tokens), built from open_clip's
#                            bpe_simple_vocab_16e6.txt.gz laid out as Hugging Face's CLIP
#                            tokenizer files are: 256 byte characters, the same with "</w>",
#                            the 48894 merges in order, then <|startoftext|> <|endoftext|>;
#                            merges.txt = "#version: 0.2" + the merges. Shared by every variant.
#   <variant>/               tokenizer_config.json + special_tokens_map.json only:
#       sd15          SD 1.5's tokenizer/ (legacy format; pads with <|endoftext|>)
#       sdxl2         SDXL's tokenizer_2/ (legacy format; pads with "!")
#       sdxl2_modern  SDXL's tokenizer_2/ as newer transformers save it (added_tokens_decoder)
#       bare          (no folder) vocab.json + merges.txt alone: CLIPTokenizer's defaults
#       sdxl2_json    tokenizer.json + tokenizer_config.json as transformers 5.x save_pretrained
#                     writes a folder (no vocab.json / merges.txt), of a CUT vocabulary (the
#                     first JSON_MERGES merges; 1.5 MB of merges would not fit the budget) with
#                     sdxl2's special tokens; loaded from its own folder
#   cases.json    for every prompt (UTF-8 bytes in hex; some deliberately invalid UTF-8, which
#                 a Python caller would see as bytes.decode("utf-8", errors="replace")) and
#                 every variant: the ids of
#                     tokenizer(text, padding="max_length", max_length=77, truncation=True)
#                 and the untruncated length len(tokenizer(text).input_ids), from
#                 transformers' CLIPTokenizer.from_pretrained (transformers 5.x: backed by the
#                 `tokenizers` library, no ftfy step).
# The script also checks the vocabulary against open_clip's own tokenizer on the corpus and
# prints the prompts where the two disagree (all explained by open_clip's ftfy + html.unescape
# cleaning, which transformers 5.x does not do, or by special-token handling).
import argparse
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
import open_clip  # noqa: E402
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode, default_bpe  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
MAXLEN = 77
JSON_MERGES = 1500


def build_vocab():
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = merges[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m.split()))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {v: i for i, v in enumerate(vocab)}, merges


def tok(c, normalized=True):
    return {"content": c, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False}


def tokA(c):
    d = {"__type": "AddedToken"}
    d.update(tok(c))
    return d


def legacy_configs(pad):
    """SD 1.5 tokenizer/ and SDXL tokenizer_2/ as published (transformers 4.2x era)"""
    stm = {"bos_token": tok("<|startoftext|>"), "eos_token": tok("<|endoftext|>"),
           "pad_token": pad, "unk_token": tok("<|endoftext|>")}
    cfg = {"add_prefix_space": False, "bos_token": tokA("<|startoftext|>"), "do_lower_case": True,
           "eos_token": tokA("<|endoftext|>"), "errors": "replace", "model_max_length": MAXLEN,
           "name_or_path": "openai/clip-vit-large-patch14", "pad_token": pad,
           "special_tokens_map_file": "./special_tokens_map.json",
           "tokenizer_class": "CLIPTokenizer", "unk_token": tokA("<|endoftext|>")}
    return cfg, stm


def modern_configs():
    """SDXL tokenizer_2/ as transformers >= 4.34 saves it: added_tokens_decoder, plain strings"""
    special = lambda c, n: dict(tok(c, n), special=True)
    cfg = {"add_prefix_space": False,
           "added_tokens_decoder": {"0": special("!", False),
                                    "49406": special("<|startoftext|>", True),
                                    "49407": special("<|endoftext|>", False)},
           "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True,
           "do_lower_case": True, "eos_token": "<|endoftext|>", "errors": "replace",
           "model_max_length": MAXLEN, "pad_token": "!", "tokenizer_class": "CLIPTokenizer",
           "unk_token": "<|endoftext|>"}
    stm = {"bos_token": tok("<|startoftext|>"), "eos_token": tok("<|endoftext|>"),
           "pad_token": "!", "unk_token": tok("<|endoftext|>")}
    return cfg, stm


def corpus():
    """(bytes, why): hand-written prompts, then a seeded random corpus"""
    C = []
    add = lambda s, why: C.append((s.encode("utf-8") if isinstance(s, str) else s, why))
    add("a photo of a cat", "plain")
    add("A Photo Of A CAT", "upper case")
    add("an astronaut riding a horse on mars, highly detailed, 8k, trending on artstation",
        "plain, pipeline-style")
    add("wow!!! really??? ...yes... (masterpiece:1.2), [[best quality]]", "punctuation runs")
    add("hello, world!", "punctuation / '!' (pad of sdxl2)")
    add("hello! world!! !!!", "'!' runs")
    add("!!!!!!!!!!!!!!!!!!!! ........ ---- ~~~~", "long punctuation runs")
    add("it's a dog's life, they're here, we've been, I'm, you'll, he'd, don't", "contractions")
    add("IT'S THEY'RE WE'VE I'M YOU'LL HE'D", "upper-case contractions")
    add("rock'n'roll ''s 's's 'S 're' '", "apostrophe edge cases")
    add("it\u2019s don\u2019t \u201cquoted\u201d", "curly apostrophes and quotes")
    add("1234567890 3.14159 1,000,000 2024-01-01 42nd", "digits split one per token")
    add("\u00bd \u00b2 \u00b3 \u216b \u0663 \u0e55 \U0001d7cf", "other numbers (No, Nl, Nd)")
    add("caf\u00e9 na\u00efve r\u00e9sum\u00e9 cr\u00e8me br\u00fbl\u00e9e", "accents, composed")
    add("cafe\u0301 nai\u0308ve re\u0301sume\u0301 cre\u0300me bru\u0302le\u0301e",
        "accents, decomposed (NFC composes)")
    add("\u212bngstr\u00f6m \u00c5NGSTR\u00d6M \u2126 \u212a", "singleton decompositions (NFC)")
    add("a\u0323\u0302 a\u0302\u0323 o\u031b\u0301", "combining marks in both orders")
    add("\u0958\u0959 \u0915\u093c", "composition-excluded Devanagari")
    add("e" + "\u0301\u0323\u0334\u0345\u0300\u0316" * 7 + " x",
        "42 combining marks in one run (long canonical reordering)")
    add("Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u", "Vietnamese")
    add("Tie\u0302\u0301ng Vie\u0323\u0302t co\u0301 da\u0302\u0301u", "Vietnamese, decomposed")
    add("\ud55c\uad6d\uc5b4 \ud504\ub86c\ud504\ud2b8", "Hangul")
    add("\u1112\u1161\u11ab\u1100\u1173\u11af", "Hangul conjoining jamo (NFC composes)")
    add("\u4e00\u53ea\u732b\u5750\u5728\u684c\u5b50\u4e0a", "CJK")
    add("\u5bcc\u58eb\u5c71\u306e\u98a8\u666f\u3001\u6d6e\u4e16\u7d75\u98a8", "Japanese")
    add("\uff76\uff80\uff76\uff85 \uff21\uff22\uff23\uff11\uff12\uff13\uff01", "half/full width")
    add("a cat \U0001f431 with a hat \U0001f3a9 \u2764\ufe0f \U0001f44d\U0001f3fd "
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1ef\U0001f1f5 1\ufe0f\u20e3", "emoji")
    add("a\tcat\n\non  a   mat\r\n", "tabs, newlines, multiple spaces")
    add("   padded prompt   ", "leading / trailing spaces")
    add("", "empty prompt")
    add(" \t\n ", "white space only")
    add("a\u00a0b\u2003c\u3000d\u2028e\u0085f\u1680g\u202fh", "Unicode spaces")
    add("a\x1cb\x1fc\x07d\x7fe\x0bf", "control characters (0x1C-0x1F are not \\s)")
    add("zero\u200bwidth joiner\u200d non\u200cjoiner \ufeffbom", "zero-width characters")
    add("1\u0301 !\u0308 \u0301alone", "combining marks after non-letters")
    add("tom &amp; jerry &lt;3 &quot;quoted&quot; &#39;x&#39; &nbsp;", "HTML entities")
    add("caf\u00c3\u00a9 na\u00c3\u00afve \u00e2\u20ac\u0153quotes\u00e2\u20ac\x9d",
        "mojibake (ftfy would repair it)")
    add("\u0391\u0398\u0397\u039d\u0391 \u039f\u03b4\u03c5\u03c3\u03c3\u03b5\u03cd\u03c2 "
        "\u03a3\u039f\u03a6\u039f\u03a3", "Greek, final sigma")
    add("\u0130stanbul ISTANBUL \u0131 \u0130", "Turkish dotted/dotless i")
    add("STRASSE Stra\u00dfe \u1e9e \u01c5 \u1fbc \u0390", "special casing")
    add("\u041c\u043e\u0441\u043a\u0432\u0430 \u041f\u0420\u0418\u0412\u0415\u0422", "Cyrillic")
    add("\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645", "Arabic")
    add("\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
        "Devanagari with combining signs")
    add("\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a", "Thai")
    add("\U0001d400\U0001d401\U0001d402 \U0001d7cf\U0001d7d0", "math alphanumerics (non-BMP)")
    add("\ufb01ne \ufb02ow", "ligatures")
    add("(red:1.3) [blue] {green} <lora:foo:0.8> masterpiece, best quality, 4k",
        "prompt weighting syntax")
    add("https://example.com/a?b=c&d=e user@mail.com #tag @user $100 50% off",
        "URL, e-mail, symbols")
    add("snake_case_words and CamelCaseWords", "underscores, camel case")
    add("supercalifragilisticexpialidocious " + "a" * 64, "long words")
    add("a <|endoftext|> b", "eos typed in the prompt")
    add("<|startoftext|>x<|endoftext|><|endoftext|>", "bos and eos typed in the prompt")
    add("<|ENDOFTEXT|>x <|StartOfText|>", "upper-case special tokens")
    add("<|endoftext|>", "only a special token")
    add("<|ENDOFTEXT|>>> x<|STARTOFTEXT|>!! <|endoftext|>.", "special tokens next to punctuation")
    add("<|endof text|> <|endoftext| <endoftext>", "near-special tokens")
    add("\U00010d50\U00010d51 \u1c89 \ua7cb \U00016ea0", "case pairs new in Unicode 16/17")
    add("\U000105c0\U000105c1 \U00011935\U00011930 \U000113c2\U000113b8",
        "Unicode 16 letters; compositions newer than Unicode 9")
    add("\ue000 \U000e0001 \U0010fffd \ufffd", "private use, tags, U+FFFD")
    words = ("portrait of a beautiful woman with long flowing hair, intricate, elegant, "
             "highly detailed, digital painting, artstation, concept art, smooth, sharp focus, "
             "illustration, art by artgerm and greg rutkowski and alphonse mucha, 8k, volumetric "
             "lighting, cinematic, golden hour, bokeh, ultra realistic, octane render, unreal "
             "engine 5, trending on pixiv fanbox, painted by makoto shinkai and studio ghibli")
    add(words, "longer than 77 tokens (truncation)")
    add("cat " * 75, "exactly 75 tokens")
    add("cat " * 76, "76 tokens (one truncated)")
    add("cat " * 74 + "!", "75 tokens ending in '!'")
    add("\u732b" * 40, "multi-byte characters past 77 tokens")
    # invalid UTF-8 (a Python caller would have decoded with errors="replace")
    add(b"caf\xe9 au lait", "invalid UTF-8: Latin-1 byte")
    add(b"\xff\xfe\xfd", "invalid UTF-8: bytes never valid")
    add(b"\xed\xa0\x80 surrogate \xed\xbf\xbf", "invalid UTF-8: encoded surrogates")
    add(b"cat \xf0\x9f\x90", "invalid UTF-8: truncated emoji at the end")
    add(b"\xc0\xaf \xe0\x80\xaf \xf0\x80\x80\xaf", "invalid UTF-8: overlong encodings")
    add(b"\xf4\x90\x80\x80 \xf5\x80", "invalid UTF-8: beyond U+10FFFF")
    add(b"a\x80b\xbfc \xe2\x82x \xe2\x82\xac", "invalid UTF-8: stray continuation, truncated")

    rnd = random.Random(1234)
    pools = [
        [chr(c) for c in range(0x20, 0x7f)] * 6,
        list(" " * 20 + "\t\n\r\x0b\x0c\u00a0\u2003\u3000\u0085"),
        [chr(c) for c in range(0xa0, 0x250)],
        [chr(c) for c in range(0x300, 0x370)],
        [chr(c) for c in range(0x370, 0x530)],
        [chr(c) for c in range(0x900, 0x980)],
        [chr(c) for c in range(0x1100, 0x1200)] + [chr(c) for c in range(0xac00, 0xac00 + 400)],
        [chr(c) for c in range(0x4e00, 0x4e00 + 300)] + [chr(c) for c in range(0x3040, 0x3100)],
        [chr(c) for c in range(0x1f300, 0x1f650)] + ["\u200d", "\ufe0f", "\U0001f3fd"],
        ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "!", "!!", "<|endoftext|>",
         "<|startoftext|>", "<|", "|>", "\u0130", "\u03a3", "\u1e9e", "\ufb01", "\u212b"],
        [chr(c) for c in range(0x1e00, 0x2000)] + [chr(c) for c in range(0xff00, 0xfff0)],
    ]
    for _ in range(190):
        n = rnd.randint(1, 40)
        s = []
        for _ in range(n):
            if rnd.random() < 0.04:
                c = rnd.randrange(1, 0x110000)
                while 0xD800 <= c < 0xE000:
                    c = rnd.randrange(1, 0x110000)
                s.append(chr(c))
            else:
                s.append(rnd.choice(rnd.choice(pools)))
        add("".join(s), "random")
    for _ in range(20):
        add(bytes(rnd.randrange(1, 256) for _ in range(rnd.randint(1, 30))), "random bytes")
    return C


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "tests", "fixtures", "tokenizer"))
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    vocab, merges = build_vocab()
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    variants = {"sd15": legacy_configs("<|endoftext|>"), "sdxl2": legacy_configs("!"),
                "sdxl2_modern": modern_configs(), "bare": None, "sdxl2_json": "json"}
    toks = {}
    tmp = tempfile.mkdtemp()
    # sdxl2_json: a cut vocabulary through save_pretrained
    cut = os.path.join(tmp, "cut")
    os.makedirs(cut)
    byte_tokens = [k for k, i in sorted(vocab.items(), key=lambda kv: kv[1])][:512]
    cv = byte_tokens + ["".join(m.split()) for m in merges[:JSON_MERGES]]
    cv += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(cut, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(cv)}, f, ensure_ascii=False)
    with open(os.path.join(cut, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges[:JSON_MERGES]) + "\n")
    for fn, obj in zip(("tokenizer_config.json", "special_tokens_map.json"), legacy_configs("!")):
        with open(os.path.join(cut, fn), "w") as f:
            json.dump(obj, f)
    jdir = os.path.join(out, "sdxl2_json")
    shutil.rmtree(jdir, ignore_errors=True)
    CLIPTokenizer.from_pretrained(cut).save_pretrained(jdir)
    assert sorted(os.listdir(jdir)) == ["tokenizer.json", "tokenizer_config.json"], os.listdir(jdir)
    for name, cfgs in variants.items():
        if cfgs == "json":
            toks[name] = CLIPTokenizer.from_pretrained(jdir)
            continue
        d = os.path.join(tmp, name)
        os.makedirs(d)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(out, f), d)
        if cfgs:
            os.makedirs(os.path.join(out, name), exist_ok=True)
            for fn, obj in zip(("tokenizer_config.json", "special_tokens_map.json"), cfgs):
                for dd in (d, os.path.join(out, name)):
                    with open(os.path.join(dd, fn), "w") as f:
                        json.dump(obj, f, indent=2)
                        f.write("\n")
        toks[name] = CLIPTokenizer.from_pretrained(d)
    shutil.rmtree(tmp)
    oc = SimpleTokenizer()
    cases, differ = [], []
    for raw, why in corpus():
        text = raw.decode("utf-8", errors="replace")
        assert "\0" not in text
        c = {"hex": raw.hex(), "why": why, "ids": {}, "n": {}}
        for name, t in toks.items():
            ids = t(text, padding="max_length", max_length=MAXLEN, truncation=True).input_ids
            assert len(ids) == MAXLEN
            c["ids"][name] = ids
            c["n"][name] = len(t(text).input_ids)
        cases.append(c)
        full = toks["sd15"](text).input_ids[1:-1]
        if oc.encode(text) != full:
            differ.append((why, text))
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"max_length": MAXLEN, "variants": list(variants), "cases": cases}, f,
                  separators=(",", ":"))
        f.write("\n")
    print("transformers %s, open_clip %s: %d cases, %d variants -> %s"
          % (__import__("transformers").__version__, open_clip.__version__, len(cases),
             len(variants), out))
    hand = [d for d in differ if not d[0].startswith("random")]
    nhand = sum(1 for c in cases if not c["why"].startswith("random"))
    print("open_clip's tokenizer agrees with transformers on %d of %d hand-written prompts and "
          "%d of %d random ones; it differs on:" % (nhand - len(hand), nhand,
                                                    len(cases) - nhand - (len(differ) - len(hand)),
                                                    len(cases) - nhand))
    for why, text in hand:
        print("   %-45s %r" % (why, text[:60]))
    print("(ftfy: curly quotes, width, ligatures, control characters, mojibake; html.unescape;\n"
          " Python's str.split()/str.lower() (U+001C..1F are spaces there, final sigma) and\n"
          " Unicode 14 tables; special tokens are plain text to open_clip)")
    # the vocabulary itself: plain prompts must agree exactly
    plain = ("plain", "upper case", "plain, pipeline-style", "punctuation runs", "contractions",
             "digits split one per token", "accents, composed", "CJK", "emoji",
             "longer than 77 tokens (truncation)", "Hangul", "Cyrillic", "Arabic")
    assert not [d for d in hand if d[0] in plain], "open_clip disagrees on a plain prompt"
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print("fixture size %.2f MB" % (total / 1e6))


if __name__ == "__main__":
    sys.exit(main())
