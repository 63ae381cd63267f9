#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic; needs torch, diffusers,
# transformers, open_clip_torch (for its real CLIP vocabulary), pyarrow, PIL):
#     python3 tools/make_pipeline_fixtures.py     # writes tests/fixtures/pipeline/
#
# Tiny random-initialised text-to-image pipelines saved with save_pretrained exactly as diffusers
# lays them out, and what diffusers does with them:
#   sd15/  StableDiffusionPipeline   (CLIPTextModel, quick_gelu; tokenizer pads with <|endoftext|>)
#   sdxl/  StableDiffusionXLPipeline (CLIPTextModel + CLIPTextModelWithProjection (gelu), tokenizer_2
#          pads with "!", force_zeros_for_empty_prompt, text_time UNet)
# The tokenizers use the real CLIP BPE (open_clip's bpe_simple_vocab_16e6.txt.gz) cut to its first
# MERGES merges, so ids stay below the tiny text encoders' vocab_size.
# expect_<pipe>.safetensors:
#   cond.<i>.prompt_embeds / .pooled  pipe.encode_prompt of PROMPTS[i] (pooled for SDXL)
#   sample.<sampler>.<neg>.latents / .image   pipe(...) with given initial latents, output_type
#          "np" (float image in [0,1], [1,H,W,3]) for sampler ddim|euler, neg = "neg" (a negative
#          prompt) or "none" (no negative prompt)
# data/: a 6-pair preference dataset of generated JPEGs (different sizes), once as a JSONL manifest
#   folder and once as a Pick-a-Pic-style parquet (snappy; one tie row, which must be dropped),
#   and expect_cache_{parquet,manifest}_<pipe>.safetensors: the non-tie pairs, preprocessed as
#   the official script (resolution RES, center crop) and encoded: chosen / rejected latents
#   (latent_dist.mean * scaling_factor), the same horizontally flipped (chosen_hflip /
#   rejected_hflip: RandomHorizontalFlip after the resize, before the crop), encoder_hidden_states,
#   text_embeds, time_ids.
#   (They differ in the pair whose images have different sizes: in the parquet jpg_0 sets the
#   original size, in a manifest the chosen image does.)
import gzip
import io
import json
import os
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler,  # noqa: E402
                       StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (CLIPTextConfig, CLIPTextModel,  # noqa: E402
                          CLIPTextModelWithProjection, CLIPTokenizer)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pipeline")
MERGES = 400
H = W = 32          # image size of the sampling fixtures
RES = 32            # training resolution of the dataset fixture
STEPS = 4
GUIDANCE = 5.0
PROMPTS = ["a photo of a cat", "An astronaut riding a horse on Mars, 4k!"]
NEG = "blurry, low quality"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(path, pad):
    import open_clip
    gz = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:1 + MERGES]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                        pad_token=pad, model_max_length=77)
    tok.save_pretrained(path)
    return CLIPTokenizer.from_pretrained(path), len(vocab)


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def text_encoder(vocab, proj, act, seed, eos):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                         hidden_act=act, projection_dim=16, bos_token_id=vocab - 2,
                         eos_token_id=eos, pad_token_id=1)
    m = CLIPTextModelWithProjection(cfg) if proj else CLIPTextModel(cfg)
    return perturb(m, seed + 1)


def vae(seed):
    torch.manual_seed(seed)
    v = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                      up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16],
                      layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
                      scaling_factor=0.13025)
    return perturb(v, seed + 1)


def unet(seed, sdxl):
    torch.manual_seed(seed)
    kw = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
              block_out_channels=[8, 16], norm_num_groups=4,
              down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    if sdxl:
        kw.update(cross_attention_dim=64, attention_head_dim=[2, 4], use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=6 * 8 + 16)
    else:
        kw.update(cross_attention_dim=32, attention_head_dim=2)
    return perturb(UNet2DConditionModel(**kw), seed + 1)


def scheduler_config():
    # what SD 1.5 / SDXL ship (betas), as a DDIM config; the samplers are chosen at run time
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def build(kind):
    out = os.path.join(ROOT, kind)
    tok, V = write_tokenizer(os.path.join(out, "tokenizer_src"), "<|endoftext|>")
    te = text_encoder(V, False, "quick_gelu", 11, 2)
    sch = DDIMScheduler(**scheduler_config())
    if kind == "sd15":
        pipe = StableDiffusionPipeline(vae=vae(21), text_encoder=te, tokenizer=tok,
                                       unet=unet(31, False), scheduler=sch, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        tok2, _ = write_tokenizer(os.path.join(out, "tokenizer2_src"), "!")
        te2 = text_encoder(V, True, "gelu", 12, V - 1)
        pipe = StableDiffusionXLPipeline(vae=vae(22), text_encoder=te, text_encoder_2=te2,
                                         tokenizer=tok, tokenizer_2=tok2, unet=unet(32, True),
                                         scheduler=sch, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out, safe_serialization=True)
    if kind == "sd15":
        # the layout of the Hub's SD 1.5 folders (vocab.json, merges.txt, special_tokens_map.json,
        # tokenizer_config.json); transformers 5 writes tokenizer.json instead, as sdxl/ keeps it
        td = os.path.join(out, "tokenizer")
        for f in os.listdir(td):
            os.remove(os.path.join(td, f))
        for f in ("vocab.json", "merges.txt"):
            os.rename(os.path.join(out, "tokenizer_src", f), os.path.join(td, f))
        sp = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        with open(os.path.join(td, "special_tokens_map.json"), "w") as f:
            json.dump(sp, f, indent=2)
        with open(os.path.join(td, "tokenizer_config.json"), "w") as f:
            json.dump(dict(sp, model_max_length=77, do_lower_case=True, errors="replace",
                           tokenizer_class="CLIPTokenizer"), f, indent=2)
    for d in ("tokenizer_src", "tokenizer2_src"):
        p = os.path.join(out, d)
        if os.path.isdir(p):
            for f in os.listdir(p):
                os.remove(os.path.join(p, f))
            os.rmdir(p)
    pipe = (StableDiffusionPipeline if kind == "sd15" else StableDiffusionXLPipeline) \
        .from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    exp = {}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            if kind == "sd15":
                pe, _ = pipe.encode_prompt(p, "cpu", 1, False)
                exp[f"cond.{i}.prompt_embeds"] = pe[0]
            else:
                pe, _, pooled, _ = pipe.encode_prompt(p, device="cpu", num_images_per_prompt=1,
                                                     do_classifier_free_guidance=False)
                exp[f"cond.{i}.prompt_embeds"] = pe[0]
                exp[f"cond.{i}.pooled"] = pooled[0]
        g = torch.Generator().manual_seed(5)
        for sname, cls in (("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler)):
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
            for neg in ("neg", "none"):
                lat = torch.randn(1, 4, H // 2, W // 2, generator=g)
                img = pipe(PROMPTS[1], negative_prompt=NEG if neg == "neg" else None,
                           num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=H, width=W,
                           latents=lat.clone(), output_type="np").images
                exp[f"sample.{sname}.{neg}.latents"] = lat[0]
                exp[f"sample.{sname}.{neg}.image"] = torch.from_numpy(np.ascontiguousarray(img[0]))
    save_file({k: v.float().contiguous() for k, v in exp.items()},
              os.path.join(ROOT, f"expect_{kind}.safetensors"),
              metadata={"prompts": json.dumps(PROMPTS), "negative_prompt": NEG,
                        "steps": str(STEPS), "guidance_scale": repr(GUIDANCE),
                        "height": str(H), "width": str(W)})
    return pipe


# ---------------------------------------------------------------- preference data
CAPTIONS = ["a red square", "a blue circle on white", "", "two cats", "sunset; sea & sky",
            "a tie that must be dropped"]


def make_image(seed, w, h):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(3,), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                  ((xx + yy) * 127 // max(w + h - 2, 1))], -1).astype(np.int32)
    a = (a + base + rng.integers(0, 40, size=(h, w, 3))) % 256
    im = Image.fromarray(a.astype(np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_data():
    out = os.path.join(ROOT, "data")
    os.makedirs(os.path.join(out, "manifest", "img"), exist_ok=True)
    sizes = [(40, 48), (48, 40), (32, 32), (64, 36), (36, 64), (40, 40)]
    rows = []
    for i, cap in enumerate(CAPTIONS):
        w, h = sizes[i]
        j0 = make_image(100 + i, w, h)
        # jpg_1 of row 1 has another size: it is resized to jpg_0's (PIL bicubic) first
        w1, h1 = (w + 8, h + 4) if i == 1 else (w, h)
        j1 = make_image(200 + i, w1, h1)
        label0 = [1.0, 0.0, 1.0, 0.0, 1.0, 0.5][i]
        rows.append(dict(caption=cap, jpg_0=j0, jpg_1=j1, label_0=label0, label_1=1.0 - label0,
                         ranking_id=i, user_id=7 * i))
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist(rows)
    os.makedirs(os.path.join(out, "parquet", "data"), exist_ok=True)
    pq.write_table(table, os.path.join(out, "parquet", "data", "train-00000-of-00001.parquet"),
                   compression="snappy", row_group_size=4)
    # the manifest: chosen / rejected already resolved (ties are not representable)
    with open(os.path.join(out, "manifest", "manifest.jsonl"), "w") as f:
        for i, r in enumerate(rows[:5]):
            for k in ("jpg_0", "jpg_1"):
                with open(os.path.join(out, "manifest", "img", f"{i}_{k}.jpg"), "wb") as g:
                    g.write(r[k])
            ch, rj = ("jpg_0", "jpg_1") if r["label_0"] == 1 else ("jpg_1", "jpg_0")
            f.write(json.dumps({"caption": r["caption"], "chosen": f"img/{i}_{ch}.jpg",
                                "rejected": f"img/{i}_{rj}.jpg"}) + "\n")
    return rows[:5]


def preprocess(r, flip=False):
    """train_diffusion_dpo_sdxl.py / mapo train.py preprocess_train, center crop, flip or not"""
    from torchvision import transforms
    resize = transforms.Resize(RES, interpolation=transforms.InterpolationMode.BILINEAR)
    crop = transforms.CenterCrop(RES)
    im0 = Image.open(io.BytesIO(r["jpg_0"])).convert("RGB")
    im1 = Image.open(io.BytesIO(r["jpg_1"])).convert("RGB")
    orig = (im0.height, im0.width)
    im1 = im1.resize(orig[::-1])
    t = [transforms.ToTensor()(im0), transforms.ToTensor()(im1)]
    if r["label_0"] == 0:
        t = t[::-1]
    x = resize(torch.cat(t, 0))
    if flip:
        x = transforms.RandomHorizontalFlip(p=1.0)(x)
    y1 = max(0, int(round((x.shape[1] - RES) / 2.0)))
    x1 = max(0, int(round((x.shape[2] - RES) / 2.0)))
    x = crop(x)
    x = transforms.Normalize([0.5], [0.5])(x)
    return x[:3], x[3:], orig, (y1, x1)


def cache_expect(kind, pipe, rows, which):
    exp = {k: [] for k in ("chosen", "rejected", "encoder_hidden_states", "text_embeds",
                           "time_ids", "chosen_hflip", "rejected_hflip")}
    sf = pipe.vae.config.scaling_factor
    with torch.no_grad():
        for r in rows:
            c, rj, orig, crop = preprocess(r)
            for name, x in (("chosen", c), ("rejected", rj)):
                exp[name].append(pipe.vae.encode(x[None]).latent_dist.mean[0] * sf)
            cf, rf, _, crop_f = preprocess(r, flip=True)
            assert crop_f == crop
            for name, x in (("chosen_hflip", cf), ("rejected_hflip", rf)):
                exp[name].append(pipe.vae.encode(x[None]).latent_dist.mean[0] * sf)
            if kind == "sd15":
                ids = pipe.tokenizer(r["caption"], padding="max_length", max_length=77,
                                     truncation=True, return_tensors="pt").input_ids
                exp["encoder_hidden_states"].append(pipe.text_encoder(ids)[0][0])
            else:
                embs = []
                for tok, te in ((pipe.tokenizer, pipe.text_encoder),
                                (pipe.tokenizer_2, pipe.text_encoder_2)):
                    ids = tok(r["caption"], padding="max_length", max_length=77,
                              truncation=True, return_tensors="pt").input_ids
                    o = te(ids, output_hidden_states=True)
                    pooled = o[0]
                    embs.append(o.hidden_states[-2])
                exp["encoder_hidden_states"].append(torch.cat(embs, -1)[0])
                exp["text_embeds"].append(pooled[0])
                exp["time_ids"].append(torch.tensor(list(orig) + list(crop) + [RES, RES],
                                                    dtype=torch.float32))
    out = {k: torch.stack(v).float().contiguous() for k, v in exp.items() if v}
    save_file(out, os.path.join(ROOT, f"expect_cache_{which}_{kind}.safetensors"),
              metadata={"resolution": str(RES), "center_crop": "1", "latents": "mean"})


if __name__ == "__main__":
    rows = make_data()
    for kind in ("sd15", "sdxl"):
        pipe = build(kind)
        cache_expect(kind, pipe, rows, "parquet")
        # a manifest names chosen / rejected: the chosen image plays jpg_0 (its size is the
        # original_size, the rejected image is resized to it)
        man = [dict(r, jpg_0=r["jpg_0"] if r["label_0"] == 1 else r["jpg_1"],
                    jpg_1=r["jpg_1"] if r["label_0"] == 1 else r["jpg_0"], label_0=1.0)
               for r in rows]
        cache_expect(kind, pipe, man, "manifest")
    total = 0
    for dp, _, fs in os.walk(ROOT):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print("pipeline fixtures:", total // 1024, "KiB")
