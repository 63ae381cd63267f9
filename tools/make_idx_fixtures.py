#!/usr/bin/env python3
# Writes tests/fixtures/idx/, the reference files for tests/test_idx.c, from the Debian package
# dataset-fashion-mnist (apt-get install dataset-fashion-mnist). Produced with (from the
# repository root):
#     python3 tools/make_idx_fixtures.py [DIR]   # DIR: /usr/share/datasets/fashion-mnist
# Plain python3 (gzip, struct, json); no numpy, and nothing from mapo.
#
#   t10k-images-idx3-ubyte.gz  the first 64 images of t10k as a valid IDX file (magic 0x00000803,
#                              count rewritten to 64, 28, 28), gzip with mtime 0
#   t10k-labels-idx1-ubyte.gz  the first 64 labels (magic 0x00000801, count 64)
#   expected.json              values computed here from the original files' bytes:
#       n, h, w; labels (64); image_sums (sum of the 784 bytes of each of the 64 images);
#       pixels: [image, row, col, value] samples (each image's first maximum in row-major order,
#       plus fixed positions); first_rows: image 0's rows 10..13 as lists;
#       full: for "t10k" and "train", n, label_counts, sum of all image bytes, sum of all labels.
import gzip
import json
import os
import struct
import sys

HEAD = 64
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "idx")


def read_idx(path, want_magic):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    assert magic == want_magic, (path, hex(magic))
    nd = raw[3]
    dims = list(struct.unpack(">%dI" % nd, raw[4:4 + 4 * nd]))
    data = raw[4 + 4 * nd:]
    n = 1
    for d in dims:
        n *= d
    assert len(data) == n, (path, len(data), n)
    return dims, data


def write_idx_gz(path, magic, dims, data):
    body = struct.pack(">I", magic) + struct.pack(">%dI" % len(dims), *dims) + bytes(data)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as g:
            g.write(body)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    os.makedirs(OUT, exist_ok=True)
    full = {}
    for split in ("t10k", "train"):
        idims, img = read_idx(os.path.join(src, split + "-images-idx3-ubyte.gz"), 0x00000803)
        ldims, lab = read_idx(os.path.join(src, split + "-labels-idx1-ubyte.gz"), 0x00000801)
        assert idims[0] == ldims[0]
        counts = [0] * 10
        for v in lab:
            counts[v] += 1
        full[split] = {"n": idims[0], "h": idims[1], "w": idims[2], "label_counts": counts,
                       "image_byte_sum": sum(img), "label_sum": sum(lab)}
        if split == "t10k":
            h, w = idims[1], idims[2]
            hw = h * w
            head_img = img[:HEAD * hw]
            head_lab = lab[:HEAD]
    write_idx_gz(os.path.join(OUT, "t10k-images-idx3-ubyte.gz"), 0x00000803, [HEAD, h, w],
                 head_img)
    write_idx_gz(os.path.join(OUT, "t10k-labels-idx1-ubyte.gz"), 0x00000801, [HEAD], head_lab)

    sums = [sum(head_img[i * hw:(i + 1) * hw]) for i in range(HEAD)]
    pixels = []
    for i in range(HEAD):
        im = head_img[i * hw:(i + 1) * hw]
        m = max(im)
        k = im.index(m)
        pixels.append([i, k // w, k % w, m])
    for (i, r, c) in [(0, 0, 0), (0, 14, 14), (1, 5, 20), (7, 27, 27), (63, 13, 0), (33, 20, 9)]:
        pixels.append([i, r, c, head_img[i * hw + r * w + c]])
    first_rows = [list(head_img[r * w:(r + 1) * w]) for r in range(10, 14)]
    exp = {"n": HEAD, "h": h, "w": w, "labels": list(head_lab), "image_sums": sums,
           "pixels": pixels, "first_rows_from": 10, "first_rows": first_rows, "full": full}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        f.write("{\n" + ",\n".join(" %s: %s" % (json.dumps(k), json.dumps(v))
                                     for k, v in exp.items()) + "\n}\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
