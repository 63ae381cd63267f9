#!/usr/bin/env python3
"""fuzz/make_corpus.py -- (re)build the committed seed corpora fuzz/corpus/<target>/ from the
test fixtures (run from the repository root). Targets whose input starts with a selector byte
(config, tokenizer; see fuzz/targets.h) get it prepended here."""
import glob, gzip, json, os, shutil, struct

F = "tests/fixtures"
OUT = "fuzz/corpus"
CFG = dict(unet=0, vae=1, clip=2, scheduler=3, model_index=4, trainer_state=5, classifier=6)
NCFG = 7
TOK = dict(vocab=0, merges=1, config=2, special=3, json=4, prompt=5)


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def copy(target, paths, prefix=""):
    for p in paths:
        put(target, prefix + os.path.basename(p), read(p))


def safetensors(tensors, meta=None):
    hdr, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        hdr["__metadata__"] = meta
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def idx(dims, payload):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


if os.path.isdir(OUT):
    shutil.rmtree(OUT)

# safetensors: every dtype, metadata, F16/BF16 specials, a LoRA file, an empty tensor
copy("safetensors", [f"{F}/io/dtypes.safetensors", f"{F}/lora/sd15/pytorch_lora_weights.safetensors"])
put("safetensors", "f16_specials.safetensors", safetensors({
    "h": ("F16", [6], struct.pack("<6H", 0x0000, 0x0001, 0x3c00, 0x7c00, 0xfc00, 0x7e00)),
    "b": ("BF16", [2, 2], struct.pack("<4H", 0x3f80, 0x0001, 0x7f80, 0xffc1)),
    "d": ("F64", [1], struct.pack("<d", 1e300)),
    "e": ("F32", [0, 3], b""),
}, {"format": "pt", "mapo.kind": "pairs"}))
put("safetensors", "ints.safetensors", safetensors({
    "i8": ("I8", [2], b"\x80\x7f"), "u8": ("U8", [1], b"\xff"), "bool": ("BOOL", [1], b"\x01"),
    "i64": ("I64", [1], struct.pack("<q", -2**63)), "s": ("F32", [], struct.pack("<f", 2.5)),
}))

# parquet: the hostile files, every codec / page version / encoding, Pick-a-Pic shards
copy("parquet", sorted(glob.glob(f"{F}/parquet/h_*.parquet")))
copy("parquet", [p for p in sorted(glob.glob(f"{F}/parquet/t_*.parquet")) if "rg5" not in p])
copy("parquet", [f"{F}/parquet/t_rg5_pages_zstd_dict_v2.parquet", f"{F}/parquet/c_ok.parquet",
                 f"{F}/dataset/pickapic.parquet", f"{F}/dataset/pickapic_nojpg1.parquet",
                 f"{F}/dataset/pickapic_nulllabel.parquet"])

# images: every PNG colour type / bit depth / interlace, JPEG 4:2:0 / 4:2:2 / 4:4:4 / gray /
# CMYK / progressive
copy("image", sorted(glob.glob(f"{F}/dataset/img/*.png")) + sorted(glob.glob(f"{F}/dataset/img/*.jpg")))
copy("image", [f"{F}/dataset/manifest/img/corrupt.jpg"])

# configs
def cfg(kind, name, data, steps=None):
    b = CFG[kind] + (NCFG * (steps - 1) if steps else 0)
    put("config", f"{kind}-{name}", bytes([b]) + data)

for p in [f"{F}/configs/sd15_unet.json", f"{F}/configs/sdxl_unet.json",
          f"{F}/unet/mixed/model/config.json", f"{F}/pixel/pipeline/unet/config.json"]:
    cfg("unet", p.replace("/", "_"), read(p))
for p in sorted(glob.glob(f"{F}/vae/*/model/config.json")):
    cfg("vae", p.replace("/", "_"), read(p))
for p in sorted(glob.glob(f"{F}/clip_text/*/model/config.json")) + [f"{F}/pixel/pipeline/text_encoder/config.json"]:
    cfg("clip", p.replace("/", "_"), read(p))
for i, p in enumerate([f"{F}/pipeline/sd15/scheduler/scheduler_config.json",
                       f"{F}/pipeline/sdxl/scheduler/scheduler_config.json",
                       f"{F}/pixel/pipeline/scheduler/scheduler_config.json"]):
    cfg("scheduler", p.replace("/", "_"), read(p), steps=[20, 30, 25][i])
for i, p in enumerate(sorted(glob.glob(f"{F}/sampler/*.json"))):
    cfg("scheduler", os.path.basename(p), read(p), steps=[10, 37, 31, 1, 4, 33, 15][i % 7])
cfg("scheduler", "karras.json", json.dumps({"_class_name": "EulerDiscreteScheduler",
    "use_karras_sigmas": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "beta_schedule": "squaredcos_cap_v2"}).encode(), steps=7)
for p in [f"{F}/pipeline/sd15/model_index.json", f"{F}/pipeline/sdxl/model_index.json",
          f"{F}/pixel/pipeline/model_index.json"]:
    cfg("model_index", p.replace("/", "_"), read(p))
cfg("trainer_state", "ok.json", json.dumps({"global_step": 4, "seed": 42, "train_batch_size": 2,
    "gradient_accumulation_steps": 1, "loss": "mapo", "dataset_name": "pairs.safetensors",
    "learning_rate": 1e-5, "max_train_steps": 8, "lora_rank": 0}, indent=2).encode())
cfg("classifier", "parity.json", read(f"{F}/classifier/parity/model/config.json"))
for p in sorted(glob.glob("models/fmnist-evaluators/*/config.json"))[:1]:
    cfg("classifier", p.replace("/", "_"), read(p))

# tokenizer
def tok(kind, name, data):
    put("tokenizer", f"{kind}-{name}", bytes([TOK[kind]]) + data)

T = f"{F}/pipeline/sd15/tokenizer"
tok("vocab", "sd15.json", read(f"{T}/vocab.json"))
tok("vocab", "pixel.json", read(f"{F}/pixel/pipeline/tokenizer/vocab.json"))
tok("merges", "sd15.txt", read(f"{T}/merges.txt"))
tok("merges", "pixel.txt", read(f"{F}/pixel/pipeline/tokenizer/merges.txt"))
for d in ["sd15", "sdxl2", "sdxl2_modern"]:
    tok("config", d + ".json", read(f"{F}/tokenizer/{d}/tokenizer_config.json"))
    tok("special", d + ".json", read(f"{F}/tokenizer/{d}/special_tokens_map.json"))
tok("config", "pipe_sd15.json", read(f"{T}/tokenizer_config.json"))
tok("json", "sdxl.json", read(f"{F}/pipeline/sdxl/tokenizer/tokenizer.json"))
cases = json.load(open(f"{F}/tokenizer/cases.json"))["cases"]
prompts = [bytes.fromhex(c["hex"]) for c in cases]
for i, p in enumerate(prompts[:: max(1, len(prompts) // 16)][:16]):
    tok("prompt", f"{i:02d}.txt", p)

# manifests: pairs and images-only, naming the harness's a.jpg / b.png
put("manifest", "pairs.jsonl", b'{"caption": "ok", "chosen": "a.jpg", "rejected": "b.png"}\n'
    b'\n{"caption": "caption 1: a \\"quoted\\" \\u00fcn\\u00efcode", "chosen": "b.png", "rejected": "a.jpg", "x": 1}\n'
    b'{"caption": "", "chosen": "a.jpg", "rejected": "missing.png"}\n')
put("manifest", "images.jsonl", b'\xef\xbb\xbf{"caption": "one", "image": "a.jpg"}\n{"caption": "two", "image": "b.png"}\n')
copy("manifest", sorted(glob.glob(f"{F}/dataset/manifest/*.jsonl")) + [f"{F}/pipeline/data/manifest/manifest.jsonl"], "fx-")

# IDX: the gzipped fixtures, plain files of 1..4 dims
copy("idx", [f"{F}/idx/t10k-labels-idx1-ubyte.gz", f"{F}/idx/t10k-images-idx3-ubyte.gz"])
put("idx", "labels-plain", idx([5], bytes([0, 1, 2, 9, 3])))
put("idx", "images-plain", idx([2, 3, 2], bytes(range(12))))
put("idx", "dims4", idx([1, 1, 2, 2], bytes(4)))
put("idx", "images.gz", gzip.compress(idx([3, 4, 4], bytes(range(48))), mtime=0))
