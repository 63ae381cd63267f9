#!/usr/bin/env python3
# Command (from the repository root, after `make mapo`; CPU only, deterministic; needs torch,
# diffusers, transformers):
#     python3 tools/make_pixel_fixtures.py     # writes tests/fixtures/pixel/
#
# The reference for a pixel-space pipeline (include/mapo/pixel_pipeline.h), checked by
# tests/test_pixel_pipeline.c:
#   pipeline/   a tiny folder written by `./mapo init-pixel-pipeline` (mapo's own writer: what
#               is proved is that transformers and diffusers read it as mapo means it)
#   expect.safetensors, from transformers' CLIPTokenizer / CLIPTextModel and diffusers'
#   UNet2DConditionModel / DDIMScheduler, each loaded with from_pretrained on its subfolder:
#     ids [N,77] int64                 tokenizer(PROMPTS, padding="max_length", max_length=77,
#                                      truncation=True).input_ids
#     negative_ids [1,77] int64        the same for "" (the negative prompt diffusers uses)
#     prompt_embeds [N,77,D]           text_encoder(ids)[0] (attention_mask None, as the pipeline)
#     negative_prompt_embeds [1,77,D]  text_encoder(negative_ids)[0]
#     latents [N,C,H,W]                the initial noise (before init_noise_sigma, 1.0 for DDIM)
#     x [N,C,H,W]                      the final sample of the loop below
#     image [N,H,W,C]                  (x / 2 + 0.5).clamp(0, 1) as numpy (output_type "np")
# The loop is StableDiffusionPipeline.__call__'s, written out (there is no VAE to decode):
# classifier-free guidance on the batch [uncond x N, cond x N] with the empty prompt as the
# negative, latents * init_noise_sigma, set_timesteps, scale_model_input, noise_pred = uncond +
# g (cond - uncond), scheduler.step(..., eta=0).prev_sample. The scheduler is used exactly as its
# config says (clip_sample true, set_alpha_to_one true, steps_offset 0): StableDiffusionPipeline's
# constructor would rewrite a config with steps_offset != 1 or clip_sample true (a deprecation
# shim for old SD 1.x configs), so the development checks below run the real
# StableDiffusionPipeline(vae=None, output_type="latent") with the scheduler put back afterwards
# and require it to give the same x bit for bit.
# Development checks (not in CI; they stop this script when they fail): from_pretrained reports no
# missing / unexpected / mismatched keys and no load warning naming weights; the token ids are
# the byte-level ids computed independently from the vocabulary's layout (first prompt and "");
# the hand-written loop equals diffusers' pipeline; one prompt at a time equals the batch.
# Rerunning gives the same files (expect.safetensors up to the order of its metadata keys).
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ROOT = os.path.join(REPO, "tests", "fixtures", "pixel")
PIPE = os.path.join(ROOT, "pipeline")
# tiny: the whole tests/fixtures/pixel stays under 300 KiB
INIT_ARGS = ["--block_out_channels", "8,8,8", "--text_width", "16", "--text_layers", "1",
             "--attention_heads", "2", "--seed", "3"]
H = W = 32
STEPS = 5
GUIDANCE = 3.0
# plain ASCII, capitals + punctuation + digits (regex pieces), and a 2-byte UTF-8 letter
PROMPTS = ["a photo of a sneaker", "An ANKLE boot, size 42!", "a caf\u00e9 t-shirt"]
LATENT_SEED = 7


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def load_all():
    """from_pretrained on each subfolder; every warning collected (logging and warnings)."""
    col = Collect()
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).addHandler(col)
    with warnings.catch_warnings(record=True) as wl:
        warnings.simplefilter("always")
        tok = CLIPTokenizer.from_pretrained(os.path.join(PIPE, "tokenizer"))
        te, te_info = CLIPTextModel.from_pretrained(os.path.join(PIPE, "text_encoder"),
                                                    output_loading_info=True)
        unet, unet_info = UNet2DConditionModel.from_pretrained(os.path.join(PIPE, "unet"),
                                                               output_loading_info=True)
        sch = DDIMScheduler.from_pretrained(os.path.join(PIPE, "scheduler"))
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).removeHandler(col)
    msgs = col.records + [f"{w.category.__name__}: {w.message}" for w in wl]
    print("text_encoder loading info:", te_info)
    print("unet loading info:", unet_info)
    for info in (te_info, unet_info):
        for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            assert not info[k], (k, info[k])
    # only the accelerate notice is expected (low_cpu_mem_usage falls back to False)
    for m in msgs:
        print("load warning:", m.splitlines()[0])
        assert "accelerate" in m, m
        for word in ("missing", "unexpected", "newly initialized", "not used", "mismatch"):
            assert word not in m.lower(), m
    return tok, te.eval(), unet.eval(), sch


def byte_ids(prompt):
    """ids of mapo's byte-level vocabulary without merges (id b for byte b, 256 + b for b</w>,
    bos 512, eos = pad 513), for prompts of lower-case letters / spaces only"""
    ids = [512]
    for word in prompt.split():
        bs = word.encode("utf-8")
        ids += list(bs[:-1]) + [256 + bs[-1]]
    return ids + [513] * (77 - len(ids))


def tokenize(tok, prompts):
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def sample(tok, te, unet, sch, prompts, latents):
    """StableDiffusionPipeline.__call__ (diffusers 0.42) for a UNet on pixels: encode_prompt
    with classifier-free guidance, negative prompt "" per prompt, DDIM, no VAE."""
    n = len(prompts)
    prompt_embeds = te(tokenize(tok, prompts), attention_mask=None)[0]
    negative_prompt_embeds = te(tokenize(tok, [""] * n), attention_mask=None)[0]
    embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
    sch.set_timesteps(STEPS, device="cpu")
    x = latents * sch.init_noise_sigma
    for t in sch.timesteps:
        model_in = sch.scale_model_input(torch.cat([x] * 2), t)
        noise_pred = unet(model_in, t, encoder_hidden_states=embeds, timestep_cond=None,
                          cross_attention_kwargs=None, added_cond_kwargs=None,
                          return_dict=False)[0]
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + GUIDANCE * (cond - uncond)
        x = sch.step(noise_pred, t, x, eta=0.0, generator=None, return_dict=False)[0]
    return x


def real_pipeline(tok, te, unet, sch, latents):
    """diffusers' own StableDiffusionPipeline on the same parts, output_type "latent" (no VAE)"""
    from diffusers import StableDiffusionPipeline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # (a copy: the constructor rewrites the config of the scheduler object it is given)
        pipe = StableDiffusionPipeline(vae=None, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=DDIMScheduler.from_config(sch.config),
                                       safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    # the constructor has replaced the config (steps_offset 1, clip_sample False): put it back
    rewritten = {k: pipe.scheduler.config[k] for k in ("steps_offset", "clip_sample")}
    pipe.scheduler = DDIMScheduler.from_pretrained(os.path.join(PIPE, "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=H, width=W,
               latents=latents.clone(), output_type="latent").images
    return out, rewritten


def main():
    mapo = os.path.join(REPO, "mapo")
    if not os.path.isfile(mapo):
        sys.exit("build mapo first (make mapo)")
    if os.path.isdir(PIPE):
        shutil.rmtree(PIPE)
    os.makedirs(ROOT, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([mapo, "init-pixel-pipeline", "--out", PIPE] + INIT_ARGS, check=True, env=env)

    tok, te, unet, sch = load_all()
    C = unet.config.in_channels
    assert unet.config.sample_size == H and unet.config.out_channels == C

    exp = {}
    with torch.no_grad():
        ids = tokenize(tok, PROMPTS)
        neg_ids = tokenize(tok, [""])
        assert ids[0].tolist() == byte_ids(PROMPTS[0]), ids[0].tolist()
        assert neg_ids[0].tolist() == byte_ids(""), neg_ids[0].tolist()
        exp["ids"] = ids
        exp["negative_ids"] = neg_ids
        exp["prompt_embeds"] = te(ids, attention_mask=None)[0]
        exp["negative_prompt_embeds"] = te(neg_ids, attention_mask=None)[0]

        g = torch.Generator().manual_seed(LATENT_SEED)
        latents = torch.randn(len(PROMPTS), C, H, W, generator=g)
        x = sample(tok, te, unet, sch, PROMPTS, latents)
        exp["latents"] = latents
        exp["x"] = x
        image = (x / 2 + 0.5).clamp(0, 1)
        exp["image"] = image.permute(0, 2, 3, 1)  # as VaeImageProcessor.pt_to_numpy

        # development checks
        ref, rewritten = real_pipeline(tok, te, unet, sch, latents)
        d = (ref - x).abs().max().item()
        print(f"StableDiffusionPipeline(vae=None, output_type='latent') vs this loop: max |d| "
              f"{d:.3e} (its constructor rewrote the scheduler config to {rewritten})")
        assert d == 0.0
        one = torch.cat([sample(tok, te, unet, sch, [p], latents[i:i + 1])
                         for i, p in enumerate(PROMPTS)])
        rel = ((one - x).norm() / x.norm()).item()
        print(f"one prompt at a time vs the batch of {len(PROMPTS)}: relative L2 {rel:.3e}")
        clipped = (image.eq(0) | image.eq(1)).float().mean().item()
        assert sch.config.steps_offset == 0 and sch.config.clip_sample is True
        print(f"x range [{x.min().item():.4f}, {x.max().item():.4f}], std {x.std().item():.4f}, "
              f"fraction of image values at 0 or 1: {clipped:.4f}")
        print("timesteps", sch.timesteps.tolist(), "init_noise_sigma", sch.init_noise_sigma)

    save_file({k: v.contiguous() if v.dtype == torch.int64 else v.float().contiguous()
               for k, v in exp.items()},
              os.path.join(ROOT, "expect.safetensors"),
              metadata={"prompts": json.dumps(PROMPTS), "negative_prompt": "",
                        "sampler": "ddim", "steps": str(STEPS), "guidance_scale": repr(GUIDANCE),
                        "height": str(H), "width": str(W),
                        "init": " ".join(INIT_ARGS)})
    total = 0
    for dp, _, fs in os.walk(ROOT):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print(f"pixel fixtures: {total} bytes ({total / 1024:.1f} KiB)")
    assert total < 300 * 1024


if __name__ == "__main__":
    main()
