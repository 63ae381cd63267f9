#!/usr/bin/env python3
# Checks mapo's TensorBoard event files (src/io/tfevents.c) with tensorboard itself and writes
# tests/fixtures/tfevents/, the reference bytes for tests/test_tfevents.c. Development only
# (pip install tensorboard numpy pillow; torch optional). From the repository root:
#     python3 tools/make_tfevents_fixtures.py [--no-build] [--serve]
#
# 1. Builds build/tests/test_tfevents and runs it with MAPO_TFEVENTS_SAMPLE_DIR=<tmp>: it
#    writes the sample streams (SCALARS, IMAGES below, fixed wall time) with mapo's writer
#    into <tmp>/full (scalars + images) and <tmp>/scalars, and exits.
# 2. Reads them with tensorboard's EventAccumulator (the classic one and the plugin one that
#    TensorBoard's Python data path uses) and with its TFRecord reader (which checks both CRCs
#    of every record): file name, file_version, tags, steps, values (float32), wall times,
#    image sizes and colorspaces, and the PNGs decoded (PIL) to the written pixels.
# 3. Writes the same Events with tensorboard's protobuf classes (event_pb2 / summary_pb2) and
#    its RecordWriter (tensorboard.summary.writer.record_writer) into
#        expect.tfevents           file_version, the scalars, the images, a last scalar
#        expect_scalars.tfevents   the same without the images
#        img_<i>.png               the PNG of image i (the bytes mapo's libpng + zlib produced;
#                                  checked here by decoding; tensorboard's writer wraps them)
#    and asserts mapo's files equal them byte for byte.
# 4. With torch installed: torch.utils.tensorboard.SummaryWriter writes the scalars and the RGB
#    image with the same wall time; its scalar records must equal mapo's byte for byte, its
#    image record must match in every field but the PNG bytes (PIL's encoder), whose pixels
#    must be equal; its file name must have the same form.
# 5. --serve: also starts `tensorboard --logdir <tmp>/full` (with --load_fast true: the Rust data
#    server; and false: the Python multiplexer) and reads the scalars and images back through
#    its HTTP API (what the browser sees).
import argparse
import glob
import io
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image
import tensorboard
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.summary.writer.record_writer import RecordWriter

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tfevents")
BIN = os.path.join(ROOT, "build", "tests", "test_tfevents")

# must match write_sample() in tests/test_tfevents.c
WALL = 1700000000.125
SCALARS = [("loss", 0, 0.5), ("loss", 1, 0.25), ("train/lr", 1, 1e-5), ("zero", 2, 0.0),
           ("negzero", 2, -0.0), ("big_step", 1 << 40, 3.0), ("neg_step", -3, -1.5),
           ("inf", 3, math.inf), ("nan", 3, math.nan), ("unicode/\u03bb\u2713", 4, 2.0),
           ("rounding", 4, 0.1)]
IMAGES = [("img/gray", 5, 3, 1, 5), ("img/gray_alpha", 4, 2, 2, 5), ("img/rgb", 7, 4, 3, 6),
          ("img/rgba", 3, 2, 4, 6)]  # tag, width, height, channels, step
LAST = ("loss", 7, 0.125)
PIL_MODE = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def pixels(w, h, ch):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(ch), indexing="ij")
    return ((x * 37 + y * 91 + c * 101 + ch * 13) & 255).astype(np.uint8)


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def same_f32(a, b):
    a, b = f32(a), f32(b)
    return (math.isnan(a) and math.isnan(b)) or struct.pack("<f", a) == struct.pack("<f", b)


def records(path):
    r = PyRecordReader_New(path)
    out = []
    while True:
        try:
            r.GetNext()
        except Exception as e:  # errors.OutOfRangeError at the end; anything else is a failure
            if type(e).__name__ != "OutOfRangeError":
                raise
            return out
        out.append(r.record())


def one_file(d):
    files = glob.glob(os.path.join(d, "events.out.tfevents.*"))
    assert len(files) == 1, files
    return files[0]


NAME = re.compile(r"^events\.out\.tfevents\.\d{10}\.(.+)\.(\d+)\.(\d+)$")


def check_stream(path, with_images):
    """mapo's file read by tensorboard; returns the PNG payloads in order."""
    m = NAME.match(os.path.basename(path))
    assert m and m.group(1) == socket.gethostname(), path
    evs = [event_pb2.Event.FromString(r) for r in records(path)]
    want_n = 1 + len(SCALARS) + (len(IMAGES) if with_images else 0) + 1
    assert len(evs) == want_n, (len(evs), want_n)
    assert evs[0].file_version == "brain.Event:2" and evs[0].source_metadata.writer == "mapo"
    assert all(e.wall_time == WALL for e in evs)
    pngs = []
    for e, (tag, w, h, ch, step) in zip(evs[1 + len(SCALARS):], IMAGES if with_images else []):
        v = e.summary.value[0]
        assert (e.step, v.tag, v.image.width, v.image.height, v.image.colorspace) == \
            (step, tag, w, h, ch), (e, tag)
        im = Image.open(io.BytesIO(v.image.encoded_image_string))
        assert im.format == "PNG" and im.mode == PIL_MODE[ch] and im.size == (w, h), im
        got = np.asarray(im).reshape(h, w, ch)
        assert np.array_equal(got, pixels(w, h, ch)), tag
        pngs.append(v.image.encoded_image_string)

    # the classic EventAccumulator
    acc = ea.EventAccumulator(path, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    want = {}
    for tag, step, val in SCALARS + [LAST]:
        want.setdefault(tag, []).append((step, val))
    assert sorted(acc.Tags()["scalars"]) == sorted(want), acc.Tags()
    for tag, lst in want.items():
        got = acc.Scalars(tag)
        assert [g.step for g in got] == [s for s, _ in lst], (tag, got)
        assert all(g.wall_time == WALL for g in got)
        for g, (_, v) in zip(got, lst):
            assert same_f32(g.value, v), (tag, g.value, v)
    if with_images:
        assert sorted(acc.Tags()["images"]) == sorted(t for t, *_ in IMAGES)
        for (tag, w, h, ch, step), png in zip(IMAGES, pngs):
            (g,) = acc.Images(tag)
            assert (g.step, g.width, g.height, g.encoded_image_string) == (step, w, h, png)
    else:
        assert acc.Tags()["images"] == []

    # the plugin EventAccumulator (data_compat: simple_value -> scalars plugin tensors,
    # image -> images plugin [width, height, png] string tensors)
    acc = pea.EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.PluginTagToContent("scalars")
    assert sorted(tags) == sorted(want), tags
    for tag, lst in want.items():
        got = acc.Tensors(tag)
        assert [g.step for g in got] == [s for s, _ in lst]
        for g, (_, v) in zip(got, lst):
            assert same_f32(float(g.tensor_proto.float_val[0]), v), (tag, g, v)
    if with_images:
        tags = acc.PluginTagToContent("images")
        assert sorted(tags) == sorted(t for t, *_ in IMAGES), tags
        for (tag, w, h, ch, step), png in zip(IMAGES, pngs):
            (g,) = acc.Tensors(tag)
            sv = list(g.tensor_proto.string_val)
            assert g.step == step and sv == [str(w).encode(), str(h).encode(), png], (tag, sv[:2])
    return pngs


def reference(with_images, pngs):
    """The same Events through tensorboard's protobuf classes and RecordWriter."""
    bio = io.BytesIO()
    rw = RecordWriter(bio)
    rw.write(event_pb2.Event(wall_time=WALL, file_version="brain.Event:2",
                             source_metadata=event_pb2.SourceMetadata(writer="mapo"))
             .SerializeToString())

    def scalar(tag, step, val):
        return event_pb2.Event(wall_time=WALL, step=step, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=val)]))

    for s in SCALARS:
        rw.write(scalar(*s).SerializeToString())
    if with_images:
        for (tag, w, h, ch, step), png in zip(IMAGES, pngs):
            im = summary_pb2.Summary.Image(height=h, width=w, colorspace=ch,
                                           encoded_image_string=png)
            rw.write(event_pb2.Event(wall_time=WALL, step=step, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, image=im)])).SerializeToString())
    rw.write(scalar(*LAST).SerializeToString())
    return bio.getvalue()


def torch_check(mapo_scalars, mapo_full):
    try:
        import torch
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("torch not installed: SummaryWriter comparison skipped")
        return None
    d = tempfile.mkdtemp(prefix="tfev_torch_")
    try:
        sw = SummaryWriter(log_dir=d)
        for tag, step, val in SCALARS + [LAST]:
            sw.add_scalar(tag, val, step, walltime=WALL)
        tag, w, h, ch, step = IMAGES[2]
        sw.add_image(tag, pixels(w, h, ch), step, walltime=WALL, dataformats="HWC")
        sw.close()
        path = one_file(d)
        assert NAME.match(os.path.basename(path)), path
        theirs = records(path)
        assert event_pb2.Event.FromString(theirs[0]).file_version == "brain.Event:2"
        ours = records(mapo_scalars)
        # records 1..: the scalars, byte for byte
        assert theirs[1:1 + len(SCALARS) + 1] == ours[1:], "torch scalar records differ"
        # the image: every field but the PNG bytes, then the pixels
        te = event_pb2.Event.FromString(theirs[-1])
        oe = [e for e in map(event_pb2.Event.FromString, records(mapo_full))
              if e.summary.value and e.summary.value[0].tag == tag][0]
        tpng, opng = te.summary.value[0].image.encoded_image_string, \
            oe.summary.value[0].image.encoded_image_string
        te.summary.value[0].image.encoded_image_string = b""
        oe.summary.value[0].image.encoded_image_string = b""
        assert te.SerializeToString() == oe.SerializeToString(), (te, oe)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(tpng))),
                              np.asarray(Image.open(io.BytesIO(opng))))
        return torch.__version__
    finally:
        shutil.rmtree(d)


def serve_check(logdir, load_fast):
    """tensorboard's own server on the file: the scalars and images as the browser gets them.
    load_fast "true": read by the Rust data server (tensorboard-data-server, the default when
    installed); "false": by the Python event multiplexer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
                          "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1",
                          "--load_fast", load_fast],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = "http://127.0.0.1:%d/data/plugin" % port

    def get(url):
        with urllib.request.urlopen(base + url, timeout=10) as r:
            return r.read()

    try:
        for _ in range(120):
            try:
                tags = json.loads(get("/scalars/tags"))
                if tags.get(".") and len(tags["."]) == len({t for t, *_ in SCALARS}):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("tensorboard server did not list the scalars: %s"
                                 % p.stderr.read1().decode(errors="replace")
                                 if p.poll() is not None else "timeout")
        want = {}
        for tag, step, val in SCALARS + [LAST]:
            want.setdefault(tag, []).append((step, val))
        for tag, lst in want.items():
            q = urllib.parse.urlencode({"run": ".", "tag": tag})
            got = json.loads(get("/scalars/scalars?" + q))
            assert [g[1] for g in got] == [s for s, _ in lst], (tag, got)
            for g, (_, v) in zip(got, lst):
                assert g[0] == WALL
                gv = g[2] if not isinstance(g[2], str) else float(g[2])
                assert same_f32(gv, v), (tag, g, v)
        for tag, w, h, ch, step in IMAGES:
            q = urllib.parse.urlencode({"run": ".", "tag": tag, "sample": 0})
            (meta,) = json.loads(get("/images/images?" + q))
            assert (meta["step"], meta["wall_time"]) == (step, WALL), meta
            png = get("/images/individualImage?" + meta["query"])
            got = np.asarray(Image.open(io.BytesIO(png))).reshape(h, w, ch)
            assert np.array_equal(got, pixels(w, h, ch)), tag
    finally:
        p.terminate()
        p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["nice", "-n", "19", "make", "-C", ROOT, "build/tests/test_tfevents"],
                       check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    tmp = tempfile.mkdtemp(prefix="tfev_")
    try:
        subprocess.run([BIN], check=True, cwd=ROOT,
                       env=dict(os.environ, MAPO_TFEVENTS_SAMPLE_DIR=tmp))
        full, scal = one_file(os.path.join(tmp, "full")), one_file(os.path.join(tmp, "scalars"))
        pngs = check_stream(full, True)
        check_stream(scal, False)
        ref_full, ref_scal = reference(True, pngs), reference(False, [])
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "expect.tfevents"), "wb") as f:
            f.write(ref_full)
        with open(os.path.join(OUT, "expect_scalars.tfevents"), "wb") as f:
            f.write(ref_scal)
        for i, png in enumerate(pngs):
            with open(os.path.join(OUT, "img_%d.png" % i), "wb") as f:
                f.write(png)
        with open(full, "rb") as f:
            assert f.read() == ref_full, "mapo's stream differs from tensorboard's bytes"
        with open(scal, "rb") as f:
            assert f.read() == ref_scal, "mapo's scalar stream differs from tensorboard's bytes"
        tv = torch_check(scal, full)
        if a.serve:
            for load_fast in ("true", "false"):
                serve_check(os.path.dirname(full), load_fast)
        import google.protobuf
        print("ok: tensorboard %s, protobuf %s%s%s; wrote %s (%d + %d bytes, %d PNGs)" % (
            tensorboard.__version__, google.protobuf.__version__,
            ", torch %s SummaryWriter" % tv if tv else "",
            ", tensorboard server (Rust data server and Python multiplexer)" if a.serve else "", OUT, len(ref_full), len(ref_scal),
            len(pngs)))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
