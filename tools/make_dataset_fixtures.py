#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, a few seconds):
#     python3 tools/make_dataset_fixtures.py            # writes tests/fixtures/dataset/
#     python3 tools/make_dataset_fixtures.py --out DIR  # somewhere else
#
# Fixtures for tests/test_image.c and tests/test_dataset.c (src/io/image.c, src/io/dataset.c):
#   img/*.jpg, img/*.png   generated images: JPEG 4:2:0, 4:2:2, 4:4:4, progressive, grayscale,
#                          CMYK; PNG RGB, RGBA, palette (+tRNS), 4-bit palette, 2-bit gray,
#                          1-bit gray, 16-bit gray, 16-bit gray+alpha, 16-bit RGB, 16-bit
#                          RGBA, interlaced RGB, gray + tRNS
#   decode.safetensors     <file name> -> U8 [h, w, 3] = np.array(Image.open(f).convert("RGB"))
#   resize.safetensors     PIL Image.resize((w, h)) (BICUBIC) of img/src_rgb.png, U8 [h, w, 3]
#   aa.safetensors         F.interpolate(bilinear, antialias=True, align_corners=False) of a
#                          random float [3, 37, 53] to several sizes
#   prep.json + prep.safetensors
#                          pairs through preprocess_train of train_diffusion_dpo_sdxl.py /
#                          mapo train.py with the random draws fixed (flip, crop offsets):
#                          <case>.chosen / .rejected F32 [3, res, res], .orig_hw, .crop_yx I32
#   manifest/              manifest.jsonl + images (one corrupt, one missing), bad.jsonl
#   pickapic.parquet       Pick-a-Pic-style parquet (pyarrow, snappy): caption, jpg_0, jpg_1,
#                          label_0, label_1 (+ extra columns); two row groups; one tie, one
#                          corrupt jpg_1
#   pickapic_hf/data/      the same rows as HF lays them out: train-0000x-of-00002.parquet (zstd,
#                          gzip) + test-00000-of-00001.parquet (uncompressed), which is ignored
#   pickapic_nojpg1.parquet, pickapic_nulllabel.parquet   schema errors
#   expect_dataset.safetensors
#                          what the datasets must return (res 16, center crop, no flip)
# Images go through the real torchvision / PIL calls of the official script.
import argparse
import io
import json
import os
import struct
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms
from torchvision.transforms.functional import crop

torch.set_num_threads(1)


def pattern(w, h, seed):
    """smooth colour fields + edges + noise + saturated blocks (exercise clipping)"""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 110 * np.sin(x / 3.1 + seed) * np.cos(y / 4.3)
    g = 255 * x / max(w - 1, 1)
    b = 255 * ((x + y) % 9 < 4)
    img = np.stack([r, g, b], -1) + rs.normal(0, 25, (h, w, 3))
    img[h // 3: h // 3 + 3, :, :] = 255
    img[:, w // 2: w // 2 + 2, :] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def pack_rows(a, bit_depth):
    """a: [h, w] ints < 2**bit_depth -> list of packed rows (bit_depth < 8)"""
    rows = []
    per = 8 // bit_depth
    for row in a:
        out = bytearray()
        for i in range(0, len(row), per):
            v = 0
            chunk = list(row[i:i + per]) + [0] * (per - len(row[i:i + per]))
            for c in chunk:
                v = (v << bit_depth) | int(c)
            out.append(v)
        rows.append(bytes(out))
    return rows


def write_png_raw(path, w, h, bit_depth, color_type, rows=None, pixels=None, plte=None,
                  trns=None, interlace=False):
    """A minimal PNG writer (Pillow cannot write 16-bit RGB / LA or low bit depths).
    pixels: uint8/uint16 array [h, w, ch] for bit depths 8/16; rows: packed rows otherwise."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 1 if interlace else 0)

    def row_bytes(px_rows):
        if bit_depth == 16:
            return [r.astype(">u2").tobytes() for r in px_rows]
        return [r.astype(np.uint8).tobytes() for r in px_rows]

    raw = bytearray()
    if not interlace:
        rws = rows if rows is not None else row_bytes(list(pixels))
        for r in rws:
            raw += b"\x00" + r
    else:
        assert pixels is not None
        for xs, ys, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                               (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            sub = pixels[ys::dy, xs::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for r in row_bytes(list(sub)):
                raw += b"\x00" + r
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    if plte is not None:
        data += png_chunk(b"PLTE", bytes(plte))
    if trns is not None:
        data += png_chunk(b"tRNS", bytes(trns))
    data += png_chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def make_images(d):
    os.makedirs(d, exist_ok=True)
    names = []

    def save(im, name, **kw):
        im.save(os.path.join(d, name), **kw)
        names.append(name)

    rgb = Image.fromarray(pattern(45, 31, 1))
    save(rgb, "jpeg_420.jpg", quality=90, subsampling=2)
    save(rgb, "jpeg_422.jpg", quality=85, subsampling=1)
    save(Image.fromarray(pattern(37, 29, 2)), "jpeg_444.jpg", quality=95, subsampling=0)
    save(Image.fromarray(pattern(50, 43, 3)), "jpeg_prog.jpg", quality=80, progressive=True,
         subsampling=2)
    save(Image.fromarray(pattern(33, 26, 4)).convert("L"), "jpeg_gray.jpg", quality=90)
    save(Image.fromarray(pattern(30, 22, 5)).convert("CMYK"), "jpeg_cmyk.jpg", quality=90)

    save(Image.fromarray(pattern(53, 37, 6)), "src_rgb.png")
    rgba = np.concatenate([pattern(29, 23, 7), (np.arange(29 * 23) % 256).reshape(23, 29, 1)
                           .astype(np.uint8)], -1)
    save(Image.fromarray(rgba, "RGBA"), "png_rgba.png")
    pal = Image.fromarray(pattern(31, 19, 8)).quantize(colors=40)
    pal.info["transparency"] = 3
    save(pal, "png_palette.png", transparency=3)
    # 16-bit gray (Pillow "I;16"): values above 255 saturate in convert("RGB")
    g16 = (np.arange(27 * 17).reshape(17, 27) * 157 % 65536).astype(np.uint16)
    g16[:3] = np.arange(27)[None, :] * 9  # some values below 256
    save(Image.fromarray(g16), "png_gray16.png")

    rs = np.random.RandomState(9)
    p16 = rs.randint(0, 65536, (13, 21, 3)).astype(np.uint16)
    write_png_raw(os.path.join(d, "png_rgb16.png"), 21, 13, 16, 2, pixels=p16)
    names.append("png_rgb16.png")
    p16a = rs.randint(0, 65536, (11, 17, 4)).astype(np.uint16)
    write_png_raw(os.path.join(d, "png_rgba16.png"), 17, 11, 16, 6, pixels=p16a)
    names.append("png_rgba16.png")
    la16 = rs.randint(0, 65536, (9, 14, 2)).astype(np.uint16)
    write_png_raw(os.path.join(d, "png_la16.png"), 14, 9, 16, 4, pixels=la16)
    names.append("png_la16.png")
    g2 = rs.randint(0, 4, (10, 13))
    write_png_raw(os.path.join(d, "png_gray2.png"), 13, 10, 2, 0, rows=pack_rows(g2, 2))
    names.append("png_gray2.png")
    g1 = rs.randint(0, 2, (7, 19))
    write_png_raw(os.path.join(d, "png_gray1.png"), 19, 7, 1, 0, rows=pack_rows(g1, 1))
    names.append("png_gray1.png")
    p4 = rs.randint(0, 12, (9, 15))
    plte = rs.randint(0, 256, 12 * 3).tolist()
    write_png_raw(os.path.join(d, "png_pal4.png"), 15, 9, 4, 3, rows=pack_rows(p4, 4),
                  plte=plte, trns=[0, 128, 255])
    names.append("png_pal4.png")
    gt = rs.randint(0, 256, (8, 11, 1)).astype(np.uint8)
    write_png_raw(os.path.join(d, "png_gray_trns.png"), 11, 8, 8, 0, pixels=gt,
                  trns=[0, int(gt[0, 0, 0])])
    names.append("png_gray_trns.png")
    il = pattern(23, 18, 10)
    write_png_raw(os.path.join(d, "png_interlaced.png"), 23, 18, 8, 2, pixels=il, interlace=True)
    names.append("png_interlaced.png")
    il16 = rs.randint(0, 65536, (9, 10, 4)).astype(np.uint16)
    write_png_raw(os.path.join(d, "png_interlaced16.png"), 10, 9, 16, 6, pixels=il16,
                  interlace=True)
    names.append("png_interlaced16.png")
    return names


def decode_expect(d, names):
    out = {}
    for n in names:
        im = Image.open(os.path.join(d, n))
        out[n] = np.ascontiguousarray(np.array(im.convert("RGB"), dtype=np.uint8))
        print(f"  {n:22s} PIL mode {im.mode:5s} {im.size}")
    return out


# (w, h); Pillow 13 runs the vertical pass first when the height shrinks by more than twice
# as much as the width: (106, 5), (40, 10), (50, 3) go vertical first, the rest horizontal
RESIZES = [(20, 15), (80, 60), (53, 20), (30, 37), (7, 90), (1, 1), (106, 5), (40, 10),
           (50, 3), (13, 30), (27, 11)]


def resize_expect(d):
    src = Image.open(os.path.join(d, "src_rgb.png")).convert("RGB")
    out = {}
    for w, h in RESIZES:
        out[f"{w}x{h}"] = np.ascontiguousarray(np.array(src.resize((w, h)), dtype=np.uint8))
    return out


AA_SIZES = [(20, 30), (37, 53), (37, 20), (12, 53), (80, 61), (5, 7), (100, 17), (36, 52)]


def aa_expect():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 37, 53, generator=g)
    out = {"input": x[0].numpy().copy()}
    for h, w in AA_SIZES:
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[f"{h}x{w}"] = y[0].numpy().copy()
    return out


def script_preprocess(b0, b1, label_0, res, flip, random_crop_yx):
    """preprocess_train of train_diffusion_dpo_sdxl.py for one example, with the draws fixed:
    flip stands for `random.random() < 0.5`, random_crop_yx for RandomCrop.get_params."""
    train_resize = transforms.Resize(res, interpolation=transforms.InterpolationMode.BILINEAR)
    train_crop = transforms.CenterCrop(res)
    train_flip = transforms.RandomHorizontalFlip(p=1.0)
    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize([0.5], [0.5])

    image = Image.open(io.BytesIO(b0)).convert("RGB")
    original_size = (image.height, image.width)
    all_pixel_values = []
    for col, b in (("jpg_0", b0), ("jpg_1", b1)):
        im = Image.open(io.BytesIO(b)).convert("RGB")
        if col == "jpg_1":
            im = im.resize(original_size[::-1])
        all_pixel_values.append(to_tensor(im))
    im_tup = tuple(all_pixel_values)
    if label_0 == 0:
        im_tup = im_tup[::-1]
    combined_im = torch.cat(im_tup, dim=0)
    combined_im = train_resize(combined_im)
    if flip:
        combined_im = train_flip(combined_im)
    if random_crop_yx is None:
        y1 = max(0, int(round((combined_im.shape[1] - res) / 2.0)))
        x1 = max(0, int(round((combined_im.shape[2] - res) / 2.0)))
        combined_im = train_crop(combined_im)
    else:
        y1, x1 = random_crop_yx
        combined_im = crop(combined_im, y1, x1, res, res)
    combined_im = normalize(combined_im)
    return (combined_im[:3].numpy().copy(), combined_im[3:].numpy().copy(),
            np.array(original_size, np.int32), np.array([y1, x1], np.int32))


def encode(arr, fmt, **kw):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format=fmt, **kw)
    return b.getvalue()


def make_prep(d):
    os.makedirs(os.path.join(d, "prep"), exist_ok=True)
    # (name, jpg_0 (w, h, fmt, seed), jpg_1 (...), label_0, res, flip, crop (None = center))
    cases = [
        ("landscape_up", (61, 40, "PNG", 20), (50, 70, "JPEG", 21), 1.0, 24, 0, None),
        ("portrait_swap_flip", (33, 47, "JPEG", 22), (33, 47, "PNG", 23), 0.0, 16, 1, None),
        ("random_crop_flip", (45, 31, "JPEG", 24), (45, 31, "JPEG", 25), 1.0, 20, 1, (0, 6)),
        ("upsample", (12, 9, "PNG", 26), (20, 30, "PNG", 27), 0.0, 16, 0, None),
        ("no_resize_half_even", (24, 45, "PNG", 28), (30, 30, "JPEG", 29), 1.0, 24, 1, None),
        ("half_even_up", (16, 23, "PNG", 30), (16, 23, "PNG", 31), 1.0, 16, 0, None),
        ("big_reduction", (181, 97, "JPEG", 32), (90, 200, "JPEG", 33), 0.0, 12, 1, (0, 3)),
    ]
    meta, tensors = [], {}
    for name, a, b, label, res, flip, rc in cases:
        fa = f"prep/{name}_0.{'jpg' if a[2] == 'JPEG' else 'png'}"
        fb = f"prep/{name}_1.{'jpg' if b[2] == 'JPEG' else 'png'}"
        ba = encode(pattern(a[0], a[1], a[3]), a[2], **({"quality": 90} if a[2] == "JPEG" else {}))
        bb = encode(pattern(b[0], b[1], b[3]), b[2], **({"quality": 90} if b[2] == "JPEG" else {}))
        open(os.path.join(d, fa), "wb").write(ba)
        open(os.path.join(d, fb), "wb").write(bb)
        c, r, ohw, cyx = script_preprocess(ba, bb, label, res, flip, rc)
        tensors[f"{name}.chosen"] = c
        tensors[f"{name}.rejected"] = r
        tensors[f"{name}.orig_hw"] = ohw
        tensors[f"{name}.crop_yx"] = cyx
        meta.append(dict(name=name, jpg_0=fa, jpg_1=fb, label_0=label, resolution=res,
                         flip=flip, crop=list(rc) if rc else None))
    save_file(tensors, os.path.join(d, "prep.safetensors"))
    with open(os.path.join(d, "prep.json"), "w") as f:
        json.dump(meta, f, indent=1)


RES = 16  # the datasets' expected outputs: resolution 16, center crop, no flip


def make_manifest(d, tensors):
    md = os.path.join(d, "manifest")
    os.makedirs(os.path.join(md, "img"), exist_ok=True)
    entries = []
    for i, (wc, hc, wr, hr) in enumerate([(30, 22, 30, 22), (25, 41, 40, 28), (19, 19, 23, 17)]):
        bc = encode(pattern(wc, hc, 40 + i), "JPEG", quality=88)
        br = encode(pattern(wr, hr, 50 + i), "PNG")
        open(os.path.join(md, f"img/c{i}.jpg"), "wb").write(bc)
        open(os.path.join(md, f"img/r{i}.png"), "wb").write(br)
        entries.append((f"caption {i}: a \"quoted\" ünïcode prompt", f"img/c{i}.jpg",
                        f"img/r{i}.png", bc, br))
    # a corrupt chosen image and a missing rejected image
    open(os.path.join(md, "img/corrupt.jpg"), "wb").write(b"\xff\xd8\xff\xe0garbage" * 3)
    with open(os.path.join(md, "manifest.jsonl"), "w") as f:
        for k, (cap, c, r, _, _) in enumerate(entries):
            f.write(json.dumps({"caption": cap, "chosen": c, "rejected": r}) + "\n")
            if k == 0:
                f.write(json.dumps({"caption": "corrupt", "chosen": "img/corrupt.jpg",
                                    "rejected": "img/r0.png"}) + "\n")
                f.write("\n")  # blank lines are skipped
            if k == 1:
                f.write(json.dumps({"caption": "missing", "chosen": "img/c1.jpg",
                                    "rejected": "img/does_not_exist.png"}) + "\n")
    with open(os.path.join(md, "bad.jsonl"), "w") as f:
        f.write(json.dumps({"caption": "ok", "chosen": "img/c0.jpg", "rejected": "img/r0.png"})
                + "\n")
        f.write(json.dumps({"caption": "no rejected", "chosen": "img/c0.jpg"}) + "\n")
    with open(os.path.join(md, "bad_json.jsonl"), "w") as f:
        f.write(json.dumps({"caption": "ok", "chosen": "img/c0.jpg", "rejected": "img/r0.png"})
                + "\n")
        f.write("{\"caption\": \"x\", \"chosen\": \n")
    # expected: the manifest's chosen image plays jpg_0 with label_0 = 1
    for i, (cap, _, _, bc, br) in enumerate(entries):
        c, r, ohw, cyx = script_preprocess(bc, br, 1.0, RES, 0, None)
        tensors[f"manifest.{i}.chosen"] = c
        tensors[f"manifest.{i}.rejected"] = r
        tensors[f"manifest.{i}.orig_hw"] = ohw
        tensors[f"manifest.{i}.crop_yx"] = cyx
    return [e[0] for e in entries]


def make_pickapic(d, tensors):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pd_ = os.path.join(d, "pickapic_hf")
    os.makedirs(os.path.join(pd_, "data"), exist_ok=True)
    rows = []
    labels = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (1.0, 0.0)]
    for i, (l0, l1) in enumerate(labels):
        w0, h0 = 24 + 3 * i, 18 + 5 * (i % 3)
        w1, h1 = (w0, h0) if i % 2 == 0 else (20 + i, 30 - i)
        b0 = encode(pattern(w0, h0, 60 + i), "JPEG", quality=85)
        b1 = encode(pattern(w1, h1, 70 + i), "JPEG", quality=85)
        if i == 4:
            b1 = b1[:40]  # corrupt (truncated) jpg_1
        rows.append(dict(caption=f"pick-a-pic prompt {i}", jpg_0=b0, jpg_1=b1, label_0=l0,
                         label_1=l1, ranking_id=1000 + i, are_different=True,
                         best_image_uid=f"uid{i}"))
    schema = pa.schema([("ranking_id", pa.int64()), ("caption", pa.string()),
                        ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                        ("label_0", pa.float64()), ("label_1", pa.float64()),
                        ("are_different", pa.bool_()), ("best_image_uid", pa.string())])

    def table(rs, sch=schema):
        return pa.Table.from_pylist(rs, schema=sch)

    # one file, two row groups (rows 0-3, 4-5), snappy as pyarrow / HF datasets write it
    pq.write_table(table(rows), os.path.join(d, "pickapic.parquet"), row_group_size=4)
    # HF layout: data/train-0000x-of-00002.parquet (+ a test split that must be ignored)
    pq.write_table(table(rows[:3]), os.path.join(pd_, "data/train-00000-of-00002.parquet"),
                   compression="zstd")
    pq.write_table(table(rows[3:]), os.path.join(pd_, "data/train-00001-of-00002.parquet"),
                   compression="gzip", row_group_size=2)
    pq.write_table(table(rows[:2]), os.path.join(pd_, "data/test-00000-of-00001.parquet"),
                   compression="none")
    # schema errors: no jpg_1 column; a null label
    tiny = encode(pattern(8, 8, 99), "JPEG", quality=50)
    sch2 = pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("label_0", pa.float64())])
    pq.write_table(table([dict(caption="x", jpg_0=tiny, label_0=1.0)], sch2),
                   os.path.join(d, "pickapic_nojpg1.parquet"))
    pq.write_table(table([dict(caption="x", jpg_0=tiny, jpg_1=tiny, label_0=1.0, label_1=0.0),
                          dict(caption="y", jpg_0=tiny, jpg_1=tiny, label_0=None, label_1=1.0)]),
                   os.path.join(d, "pickapic_nulllabel.parquet"))
    # expected (ties removed, label_0 == 0 -> jpg_1 chosen), in row order; row 4 is corrupt
    kept = []
    for i, r in enumerate(rows):
        if r["label_0"] == r["label_1"]:
            continue
        kept.append(i)
        if i == 4:
            continue
        c, rj, ohw, cyx = script_preprocess(r["jpg_0"], r["jpg_1"], r["label_0"], RES, 0, None)
        tensors[f"pickapic.row{i}.chosen"] = c
        tensors[f"pickapic.row{i}.rejected"] = rj
        tensors[f"pickapic.row{i}.orig_hw"] = ohw
        tensors[f"pickapic.row{i}.crop_yx"] = cyx
    return kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/dataset")
    args = ap.parse_args()
    d = args.out
    os.makedirs(d, exist_ok=True)
    print("images:")
    names = make_images(os.path.join(d, "img"))
    save_file(decode_expect(os.path.join(d, "img"), names), os.path.join(d, "decode.safetensors"))
    save_file(resize_expect(os.path.join(d, "img")), os.path.join(d, "resize.safetensors"))
    save_file(aa_expect(), os.path.join(d, "aa.safetensors"))
    make_prep(d)
    tensors = {}
    caps = make_manifest(d, tensors)
    kept = make_pickapic(d, tensors)
    save_file(tensors, os.path.join(d, "expect_dataset.safetensors"),
              metadata={"manifest_captions": json.dumps(caps), "pickapic_kept_rows": json.dumps(kept)})
    total = 0
    for root, _, files in os.walk(d):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"wrote {d}: {total} bytes")


if __name__ == "__main__":
    main()
