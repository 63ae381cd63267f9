#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic):
#     pip install pyarrow datasets            # datasets is optional (one fixture)
#     python3 tools/make_parquet_fixtures.py             # writes tests/fixtures/parquet/
#     python3 tools/make_parquet_fixtures.py --out DIR   # somewhere else
#
# Fixtures for the C parquet reader (src/io/parquet.c, tests/test_parquet.c):
#   t_<codec>_<dict|plain>_v<1|2>.parquet   one 12-row Pick-a-Pic style table written by
#         pyarrow with every codec (none/snappy/gzip/zstd) x dictionary on/off x data page
#         v1/v2
#   t_rg5_*.parquet     the same table in row groups of 5 rows with tiny data pages (several
#         pages per column chunk, dictionary fallback to PLAIN mid-chunk, page index, CRCs)
#   t_hf_datasets.parquet   written through Hugging Face datasets (if it is installed)
#   t_lz4.parquet       LZ4 codec: opening works, reading a column must be refused
#   c_ok.parquet        written by the small hand-made writer below (RLE runs, v2 pages with
#         is_compressed=false, RLE booleans, FIXED_LEN_BYTE_ARRAY, page CRCs, unknown Thrift
#         fields of every type everywhere); checked here to read back through pyarrow
#   h_*.parquet         hostile files from the same writer, each with one defect; the C test
#         requires one error message naming the problem (and file, row group, column)
#   expected.json       every value of every column ("columns", shared by all files), and
#         per file its row groups, columns and expected outcome ("files")
# Numbers are stored as the double the reader must produce (Python float(), exact in JSON);
# byte strings as hex; nulls as null.
import argparse
import gzip
import json
import os
import random
import struct
import sys
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

N = 12


# ------------------------------------------------------------------ the table
def make_table():
    rng = random.Random(20240601)
    captions = ["a cat sitting on a mat", "猫が座っている 🐱 on a sofa", "",
                "a cat sitting on a mat", "Ünïcödé façade — “quotes” and \\ back\\slash",
                "a very long caption " * 6, "dog", "dog", "x", "tab\there\nnewline",
                "emoji 🎨🖼️", "last"]
    jpg0 = [bytes(rng.randrange(256) for _ in range(rng.randint(50, 300))) for _ in range(N)]
    jpg1 = [bytes(rng.randrange(256) for _ in range(rng.randint(50, 300))) for _ in range(N)]
    jpg1[3] = jpg0[0]  # repeated values (dictionary)
    jpg1[7] = jpg1[6]
    lab0 = [rng.choice([1.0, 0.0, 0.5]) for _ in range(N)]
    lab1 = [1.0 - x for x in lab0]
    ranking = [rng.randint(-2**40, 2**40) for _ in range(N)]
    ranking[2] = 2**62 + 1      # rounds when read as a double
    ranking[5] = -2**63
    user = [rng.randint(-1000, 100000) for _ in range(N)]
    user[1], user[9] = -2**31, 2**31 - 1
    has = [rng.random() < 0.5 for _ in range(N)]
    score = [rng.uniform(-10, 10) for _ in range(N)]
    score[0] = 0.1
    note = [None if i in (1, 4, 5, 11) else "note %d ✓" % i for i in range(N)]
    note[6] = ""
    maybe = [None if i % 3 == 0 else rng.choice([1.0, 0.0, 0.5, -2.75]) for i in range(N)]
    uid = [bytes(rng.randrange(256) for _ in range(16)) for _ in range(N)]
    tags = [None if i == 2 else [rng.randint(0, 9) for _ in range(i % 4)] for i in range(N)]
    meta = [{"a": i, "b": "m%d" % i} if i != 3 else None for i in range(N)]
    return pa.table({
        "caption": pa.array(captions, pa.string()),
        "jpg_0": pa.array(jpg0, pa.binary()),
        "jpg_1": pa.array(jpg1, pa.binary()),
        "label_0": pa.array(lab0, pa.float64()),
        "label_1": pa.array(lab1, pa.float64()),
        "ranking_id": pa.array(ranking, pa.int64()),
        "user_id": pa.array(user, pa.int32()),
        "has_label": pa.array(has, pa.bool_()),
        "score": pa.array(score, pa.float32()),
        "note": pa.array(note, pa.string()),
        "maybe_label": pa.array(maybe, pa.float64()),
        "uid": pa.array(uid, pa.binary(16)),
        "n_votes": pa.array([4000000000, 0, 2**32 - 1] + [i * 7919 for i in range(N - 3)],
                            pa.uint32()),
        "big_u": pa.array([2**64 - 1, 2**63, 1] + [i * 2**40 for i in range(N - 3)],
                          pa.uint64()),
        "tiny": pa.array([-128, 127] + list(range(N - 2)), pa.int8()),
        "tags": pa.array(tags, pa.list_(pa.int32())),
        "meta": pa.array(meta, pa.struct([("a", pa.int32()), ("b", pa.string())])),
    })


def column_values(arr):
    """JSON-able expected values of a flat arrow column."""
    t = arr.type
    out = []
    for v in arr.to_pylist():
        if v is None:
            out.append(None)
        elif pa.types.is_string(t):
            out.append(v.encode("utf-8").hex())
        elif pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t):
            out.append(bytes(v).hex())
        elif pa.types.is_boolean(t):
            out.append(1.0 if v else 0.0)
        elif pa.types.is_float32(t):
            out.append(float(struct.unpack("<f", struct.pack("<f", v))[0]))
        else:
            out.append(float(v))
    kind = "bytes" if (pa.types.is_string(t) or pa.types.is_binary(t)
                       or pa.types.is_fixed_size_binary(t)) else "double"
    return {"kind": kind, "values": out}


def file_entry(path, name, **extra):
    md = pq.ParquetFile(path).metadata
    cols = [md.schema.column(i).path for i in range(md.num_columns)]
    e = {"file": name, "num_rows": md.num_rows,
         "row_groups": [md.row_group(i).num_rows for i in range(md.num_row_groups)],
         "columns": cols}
    e.update(extra)
    return e


# ------------------------------------------------------------------ Thrift compact writer
def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zz(n):
    return uvarint((n << 1) ^ (n >> 63))


TYPE = {"bool": 1, "byte": 3, "i16": 4, "i32": 5, "i64": 6, "dbl": 7, "bin": 8, "list": 9,
        "map": 11, "struct": 12}


def ttype(v):
    if v[0] == "bool":
        return 1 if v[1] else 2
    return TYPE[v[0]]


def enc(v, in_container=False):
    k = v[0]
    if k == "bool":
        return bytes([1 if v[1] else 2]) if in_container else b""
    if k == "byte":
        return struct.pack("<b", v[1])
    if k in ("i16", "i32", "i64"):
        return zz(v[1])
    if k == "dbl":
        return struct.pack("<d", v[1])
    if k == "bin":
        b = v[1].encode() if isinstance(v[1], str) else v[1]
        return uvarint(len(b)) + b
    if k == "list":  # ("list", elemtype, [values], [size override])
        et, items = TYPE[v[1]], v[2]
        n = v[3] if len(v) > 3 else len(items)
        hdr = bytes([(n << 4) | et]) if n < 15 else bytes([0xF0 | et]) + uvarint(n)
        return hdr + b"".join(enc(x, True) for x in items)
    if k == "map":  # ("map", ktype, vtype, [(k, v)])
        items = v[3]
        if not items:
            return b"\x00"
        return uvarint(len(items)) + bytes([(TYPE[v[1]] << 4) | TYPE[v[2]]]) + b"".join(
            enc(a, True) + enc(b, True) for a, b in items)
    if k == "struct":  # ("struct", [(id, value)])
        out, last = bytearray(), 0
        for fid, fv in v[1]:
            t = ttype(fv)
            if 0 < fid - last <= 15:
                out.append(((fid - last) << 4) | t)
            else:
                out.append(t)
                out += zz(fid)
            out += enc(fv)
            last = fid
        out.append(0)
        return bytes(out)
    raise ValueError(k)


def S(*fields):
    return ("struct", [f for f in fields if f is not None])


def i32(x):
    return ("i32", x)


def i64(x):
    return ("i64", x)


# unknown fields of every Thrift type (readers must skip them)
def junk(depth=3):
    inner = S((1, ("dbl", 2.5)), (2, ("bool", True)), (3, ("bool", False)), (4, ("i16", -7)),
              (5, ("byte", -3)), (6, ("bin", b"\x00\xffjunk")), (31, ("i64", -2**60)))
    if depth > 0:
        inner[1].append((40, junk(depth - 1)))
    return S((1, ("list", "bool", [("bool", True), ("bool", False), ("bool", True)])),
             (2, ("map", "bin", "list", [(("bin", "k"), ("list", "i32", [i32(1), i32(-2)])),
                                          (("bin", "k2"), ("list", "i32", [i32(3)]))])),
             (3, ("map", "i32", "i32", [])),
             (4, ("list", "struct", [inner, S()])),
             (5, ("list", "dbl", [("dbl", 1.0)] * 16)),  # long-form list header
             (300, inner))


# ------------------------------------------------------------------ hand-made parquet writer
PT = {"BOOLEAN": 0, "INT32": 1, "INT64": 2, "INT96": 3, "FLOAT": 4, "DOUBLE": 5,
      "BYTE_ARRAY": 6, "FIXED_LEN_BYTE_ARRAY": 7}
CODEC = {"none": 0, "snappy": 1, "gzip": 2, "zstd": 6}
PLAIN, PLAIN_DICTIONARY, RLE, RLE_DICTIONARY = 0, 2, 3, 8


def compress(codec, data):
    if codec == "none":
        return data
    if codec == "gzip":
        return gzip.compress(data, mtime=0)
    return pa.compress(data, codec=codec, asbytes=True)


def rle_runs(runs):
    """runs: list of ('rle', value, count, width) / ('bp', [values], width)"""
    out = bytearray()
    for r in runs:
        if r[0] == "rle":
            _, val, cnt, w = r
            out += uvarint(cnt << 1) + val.to_bytes((w + 7) // 8, "little")
        else:
            _, vals, w = r
            vals = list(vals) + [0] * (-len(vals) % 8)
            out += uvarint(((len(vals) // 8) << 1) | 1)
            acc = nb = 0
            for v in vals:
                acc |= v << nb
                nb += w
                while nb >= 8:
                    out.append(acc & 0xFF)
                    acc >>= 8
                    nb -= 8
            if nb:
                out.append(acc & 0xFF)
    return bytes(out)


def plain(ptype, vals, tlen=0):
    if ptype == "BOOLEAN":
        b = bytearray((len(vals) + 7) // 8)
        for i, v in enumerate(vals):
            if v:
                b[i // 8] |= 1 << (i % 8)
        return bytes(b)
    if ptype == "BYTE_ARRAY":
        return b"".join(struct.pack("<I", len(v)) + v for v in vals)
    if ptype == "FIXED_LEN_BYTE_ARRAY":
        assert all(len(v) == tlen for v in vals)
        return b"".join(vals)
    fmt = {"INT32": "<i", "INT64": "<q", "FLOAT": "<f", "DOUBLE": "<d"}[ptype]
    return b"".join(struct.pack(fmt, v) for v in vals)


def page(ptype_id, raw_len, body, sub_id, sub, crc=False, extra=(), usize=None, csize=None):
    hdr = enc(S((1, i32(ptype_id)), (2, i32(raw_len if usize is None else usize)),
                (3, i32(len(body) if csize is None else csize)),
                (4, i32(struct.unpack("<i", struct.pack("<I", zlib.crc32(body)))[0]))
                if crc is True else ((4, i32(crc)) if crc not in (False, None) else None),
                (sub_id, sub), *extra))
    return hdr + body


def dict_page(codec, ptype, vals, tlen=0, **kw):
    raw = plain(ptype, vals, tlen)
    return page(2, len(raw), compress(codec, raw), 7, S((1, i32(len(vals))), (2, i32(PLAIN))), **kw)


def data_page_v1(codec, nvals, values_raw, encoding, def_runs=None, **kw):
    raw = b""
    if def_runs is not None:
        lv = rle_runs(def_runs)
        raw += struct.pack("<I", len(lv)) + lv
    raw += values_raw
    sub = S((1, i32(nvals)), (2, i32(encoding)), (3, i32(RLE)), (4, i32(RLE)),
            (9, ("i16", 5)))  # an unknown field inside DataPageHeader
    return page(0, len(raw), compress(codec, raw), 5, sub, **kw)


def data_page_v2(codec, nvals, nnulls, values_raw, encoding, def_runs=None,
                 is_compressed=True, **kw):
    lv = rle_runs(def_runs) if def_runs is not None else b""
    body = compress(codec, values_raw) if is_compressed else values_raw
    sub = S((1, i32(nvals)), (2, i32(nnulls)), (3, i32(nvals)), (4, i32(encoding)),
            (5, i32(len(lv))), (6, i32(0)),
            (7, ("bool", False)) if not is_compressed else None)  # default: true
    return page(3, len(lv) + len(values_raw), lv + body, 8, sub, **kw)


def defs_of(vals):
    return [("bp", [0 if v is None else 1 for v in vals], 1)]


class Col:
    def __init__(self, name, ptype, rep, codec, pages, tlen=0, has_dict=False, nvals=None,
                 path=None, data_off_override=None, extra_meta=(), schema_extra=()):
        self.name, self.ptype, self.rep, self.codec = name, ptype, rep, codec
        self.pages, self.tlen, self.has_dict = pages, tlen, has_dict
        self.nvals, self.path, self.extra_meta = nvals, path, extra_meta
        self.data_off_override = data_off_override
        self.schema_extra = schema_extra


def write_crafted(path, cols, nrows, footer_rows=None, footer_extra=(), schema_override=None,
                  raw_footer=None):
    out = bytearray(b"PAR1")
    chunks = []
    for c in cols:
        start = len(out)
        for p in c.pages:
            out += p
        data_off = start + (len(c.pages[0]) if c.has_dict else 0)
        if c.data_off_override is not None:
            data_off = c.data_off_override
        size = len(out) - start
        meta = S((1, i32(PT[c.ptype])),
                 (2, ("list", "i32", [i32(PLAIN), i32(RLE)] +
                      ([i32(RLE_DICTIONARY)] if c.has_dict else []))),
                 (3, ("list", "bin", [("bin", x) for x in (c.path or [c.name])])),
                 (4, i32(CODEC[c.codec])), (5, i64(nrows if c.nvals is None else c.nvals)),
                 (6, i64(size)), (7, i64(size)), (9, i64(data_off)),
                 (11, i64(start)) if c.has_dict else None, *c.extra_meta)
        chunks.append(S((2, i64(start)), (3, meta)))
    schema = [S((4, ("bin", "schema")), (5, i32(len(cols))))]
    for c in cols:
        schema.append(S((1, i32(PT[c.ptype])),
                        (2, i32(c.tlen)) if c.ptype == "FIXED_LEN_BYTE_ARRAY" else None,
                        (3, i32(c.rep)), (4, ("bin", c.name)),
                        (6, i32(0)) if c.ptype == "BYTE_ARRAY" else None,  # UTF8
                        (30, ("bin", "unknown schema field")), *c.schema_extra))
    if schema_override is not None:
        schema = schema_override
    rg = S((1, ("list", "struct", chunks)), (2, i64(len(out))), (3, i64(nrows)))
    fm = S((1, i32(2)), (2, ("list", "struct", schema)),
           (3, i64(nrows if footer_rows is None else footer_rows)),
           (4, ("list", "struct", [rg])), (6, ("bin", "mapo make_parquet_fixtures.py")),
           *footer_extra)
    footer = enc(fm) if raw_footer is None else raw_footer
    out += footer + struct.pack("<I", len(footer)) + b"PAR1"
    with open(path, "wb") as f:
        f.write(out)


# the crafted table (6 rows)
C_INT = [10, -20, 30, 30, 30, 30]
C_STR = [b"a", None, b"", "héllo".encode(), None, b"z"]
C_DBL = [1.5, None, -0.0, 1e300, None, 0.5]
C_BOOL = [True, False, True, True, False, False]
C_FLBA = [b"abc", None, b"xyz", b"abc", b"abc", None]
C_I64 = [1, -2, 2**53 + 2, 4, 5, -6]


def col_int(bitwidth=2, idx_runs=None, nvals=6, dict_vals=(10, -20, 30), with_dict=True):
    runs = idx_runs or [("rle", 0, 1, 2), ("rle", 1, 1, 2), ("rle", 2, 4, 2)]
    pages = []
    if with_dict:
        pages.append(dict_page("none", "INT32", list(dict_vals)))
    pages.append(data_page_v1("none", nvals, bytes([bitwidth]) + rle_runs(runs), RLE_DICTIONARY,
                              extra=((20, ("list", "bool", [("bool", True)])),)))
    return Col("c_int", "INT32", 0, "none", pages, has_dict=with_dict)


def col_str(codec="gzip", def_runs=None, values_raw=None, usize=None):
    vals = [v for v in C_STR if v is not None]
    raw = plain("BYTE_ARRAY", vals) if values_raw is None else values_raw
    p = data_page_v1(codec, 6, raw, PLAIN, def_runs or defs_of(C_STR), usize=usize)
    return Col("c_str", "BYTE_ARRAY", 1, codec, [p])


def col_dbl(is_compressed=False, usize=None, nnulls=2):
    vals = [v for v in C_DBL if v is not None]
    p = data_page_v2("snappy", 6, nnulls, plain("DOUBLE", vals), PLAIN, defs_of(C_DBL),
                     is_compressed=is_compressed, usize=usize)
    return Col("c_dbl", "DOUBLE", 1, "snappy", [p])


def col_bool(corrupt=False):
    lv = rle_runs([("bp", [1 if v else 0 for v in C_BOOL], 1)])
    raw = struct.pack("<I", len(lv)) + lv
    body = compress("zstd", raw)
    if corrupt:
        body = body[:8] + bytes(b ^ 0x5A for b in body[8:])
    sub = S((1, i32(6)), (2, i32(0)), (3, i32(6)), (4, i32(RLE)), (5, i32(0)), (6, i32(0)))
    return Col("c_bool", "BOOLEAN", 0, "zstd", [page(3, len(raw), body, 8, sub)])


def col_flba():
    d = dict_page("snappy", "FIXED_LEN_BYTE_ARRAY", [b"abc", b"xyz"], 3)
    idx = bytes([1]) + rle_runs([("bp", [0, 1, 0, 0], 1)])
    p = data_page_v2("snappy", 6, 2, idx, RLE_DICTIONARY, defs_of(C_FLBA))
    return Col("c_flba", "FIXED_LEN_BYTE_ARRAY", 1, "snappy", [d, p], tlen=3, has_dict=True)


def col_i64(crc=True, second_crc=True):
    p1 = data_page_v1("none", 3, plain("INT64", C_I64[:3]), PLAIN, crc=crc)
    p2 = data_page_v1("none", 3, plain("INT64", C_I64[3:]), PLAIN, crc=second_crc)
    return Col("c_i64", "INT64", 0, "none", [p1, p2], extra_meta=((50, ("dbl", 3.25)),))


C_U32 = [4000000000, 1, 2**31, 0, 5, 2**32 - 1]


def col_u32():
    # unsigned only through the LogicalType (INTEGER(bitWidth=32, isSigned=false)), no
    # ConvertedType
    raw = b"".join(struct.pack("<I", v) for v in C_U32)
    logical = S((10, S((1, ("byte", 32)), (2, ("bool", False)))))
    return Col("c_u32", "INT32", 0, "none", [data_page_v1("none", 6, raw, PLAIN)],
               schema_extra=((10, logical),))


def crafted_ok_cols():
    return [col_int(), col_str(), col_dbl(), col_bool(), col_flba(), col_i64(), col_u32()]


def hostile(out):
    """(file, stage, column, substring) for each hostile file written"""
    H = []

    def w(name, cols, stage, column, substr, **kw):
        write_crafted(os.path.join(out, name), cols, 6, **kw)
        H.append({"file": name, "stage": stage, "column": column, "error": substr})

    w("h_bitwidth.parquet", [col_int(bitwidth=33)], "read", "c_int", "bit width 33")
    w("h_dict_oob.parquet", [col_int(idx_runs=[("bp", [0, 1, 2, 5, 1, 0], 3)], bitwidth=3)],
      "read", "c_int", "dictionary index 5 out of range")
    w("h_no_dict.parquet", [col_int(with_dict=False)], "read", "c_int", "no dictionary page")
    w("h_page_values.parquet", [col_int(nvals=7)], "read", "c_int", "page holds 7 values")
    short = col_int()
    short.pages[1] = data_page_v1("none", 4, bytes([2]) + rle_runs([("rle", 1, 4, 2)]),
                                  RLE_DICTIONARY)
    w("h_chunk_short.parquet", [short], "read", "c_int", "ends after 4 of 6 rows")
    big = col_int()
    big.pages[1] = data_page_v1("none", 6, bytes([2]) + rle_runs([("rle", 1, 6, 2)]),
                                RLE_DICTIONARY, csize=4000)
    w("h_page_size.parquet", [big], "read", "c_int", "does not fit in the column chunk")
    w("h_deflevel.parquet", [col_str(def_runs=[("rle", 3, 6, 1)])], "read", "c_str",
      "definition levels")
    w("h_gzip_size.parquet", [col_str(usize=len(plain("BYTE_ARRAY",
                                                      [v for v in C_STR if v is not None]))
                                      + 4 + len(rle_runs(defs_of(C_STR))) + 5)],
      "read", "c_str", "GZIP data decompresses to")
    w("h_plain_trunc.parquet",
      [col_str(codec="none", values_raw=struct.pack("<I", 1) + b"a" + struct.pack("<I", 1000))],
      "read", "c_str", "values truncated")
    w("h_snappy_size.parquet", [col_dbl(is_compressed=True, usize=8 * 4 + 2 + 1)], "read",
      "c_dbl", "SNAPPY data decompresses to")
    w("h_v2_nulls.parquet", [col_dbl(nnulls=3)], "read", "c_dbl", "num_nulls")
    w("h_zstd_corrupt.parquet", [col_bool(corrupt=True)], "read", "c_bool", "ZSTD")
    w("h_crc.parquet", [col_i64(second_crc=12345)], "read", "c_i64", "CRC mismatch")
    far = col_i64()
    far.data_off_override = 10**9
    w("h_offset.parquet", [far], "read", "c_i64", "outside the data region")
    w("h_int96.parquet", [Col("c_ts", "INT96", 0, "none",
                              [data_page_v1("none", 6, b"\0" * 72, PLAIN)])],
      "read", "c_ts", "INT96")
    w("h_rows.parquet", [col_i64()], "open", None, "num_rows 7", footer_rows=7)
    bad_path = col_i64()
    bad_path.path = ["other"]
    w("h_path.parquet", [bad_path], "open", None, "path_in_schema")
    deep = ("i32", 1)
    for _ in range(100):
        deep = S((1, deep))
    w("h_deep.parquet", [col_i64()], "open", None, "nested deeper than", footer_extra=((90, deep),))
    w("h_biglist.parquet", [col_i64()], "open", None, "cannot fit",
      footer_extra=((91, ("list", "i32", [], 2**31 - 1)),))
    w("h_negchildren.parquet", [col_i64()], "open", None, "negative num_children",
      schema_override=[S((4, ("bin", "schema")), (5, i32(-1)))])
    w("h_varint.parquet", [col_i64()], "open", None, "varint",
      raw_footer=b"\x15" + b"\xff" * 11 + b"\x00")
    return H


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/parquet")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith(".parquet") or f == "expected.json":
            os.remove(os.path.join(out, f))
    table = make_table()
    columns = {}
    for name in table.column_names:
        if name in ("tags", "meta"):
            continue
        columns[name] = column_values(table[name].combine_chunks())
    for leaf in ("tags.list.element", "meta.a", "meta.b"):
        columns[leaf] = {"kind": "nested"}
    files = []

    def write(name, **kw):
        p = os.path.join(out, name)
        pq.write_table(table, p, **kw)
        back = pq.read_table(p)
        assert back.equals(table), name
        files.append(file_entry(p, name))

    for codec in ("none", "snappy", "gzip", "zstd"):
        for d in (True, False):
            for v in ("1.0", "2.0"):
                write("t_%s_%s_v%s.parquet" % (codec, "dict" if d else "plain", v[0]),
                      compression=codec, use_dictionary=d, data_page_version=v)
    small = dict(row_group_size=5, data_page_size=64, write_batch_size=2,
                 dictionary_pagesize_limit=300)
    write("t_rg5_pages_snappy_dict_v1.parquet", compression="snappy", use_dictionary=True,
          data_page_version="1.0", write_page_index=True, **small)
    write("t_rg5_pages_zstd_dict_v2.parquet", compression="zstd", use_dictionary=True,
          data_page_version="2.0", write_page_checksum=True, **small)
    write("t_rg5_pages_gzip_plain_v2.parquet", compression="gzip", use_dictionary=False,
          data_page_version="2.0", write_statistics=False, **small)

    lz4 = os.path.join(out, "t_lz4.parquet")
    pq.write_table(table.select(["caption", "label_0"]), lz4, compression="lz4")
    files.append(file_entry(lz4, "t_lz4.parquet", error="LZ4"))

    try:
        import datasets
        cols = ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "note"]
        ds = datasets.Dataset.from_dict({c: table[c].to_pylist() for c in cols})
        hf = os.path.join(out, "t_hf_datasets.parquet")
        ds.to_parquet(hf)
        assert pq.read_table(hf).select(cols).equals(table.select(cols))
        files.append(file_entry(hf, "t_hf_datasets.parquet"))
        print("datasets %s: wrote t_hf_datasets.parquet" % datasets.__version__, file=sys.stderr)
    except ImportError:
        print("datasets not installed: no t_hf_datasets.parquet", file=sys.stderr)

    # hand-made files: the valid one must read back through pyarrow as intended
    ok = os.path.join(out, "c_ok.parquet")
    write_crafted(ok, crafted_ok_cols(), 6, footer_extra=((100, junk()),))
    back = pq.read_table(ok)
    want = {"c_int": C_INT, "c_str": C_STR, "c_dbl": C_DBL, "c_bool": C_BOOL, "c_flba": C_FLBA,
            "c_i64": C_I64, "c_u32": C_U32}
    for k, v in want.items():
        got = back[k].to_pylist()
        got = [g.encode() if isinstance(g, str) else g for g in got]
        assert got == v, (k, got, v)
        columns[k] = column_values(pa.array(v, back[k].type if k != "c_str" else pa.binary()))
    files.append(file_entry(ok, "c_ok.parquet"))
    H = hostile(out)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"source": "tools/make_parquet_fixtures.py", "pyarrow": pa.__version__,
                   "columns": columns, "files": files, "hostile": H}, f, indent=1,
                  ensure_ascii=True)
    total = sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))
    print("wrote %d files to %s (%d bytes)" % (len(os.listdir(out)), out, total), file=sys.stderr)


if __name__ == "__main__":
    main()
