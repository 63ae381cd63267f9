#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, a few seconds):
#     python3 tools/make_sampler_fixtures.py            # writes tests/fixtures/sampler/
#     python3 tools/make_sampler_fixtures.py --out DIR  # somewhere else
#
# Reference trajectories of diffusers' DDIMScheduler and EulerDiscreteScheduler (inference),
# read by tests/test_sampler.c. Everything runs on CPU in float32, exactly as the
# StableDiffusion / StableDiffusionXL pipelines drive a scheduler:
#
#     sched = Kind.from_config(Source.from_pretrained(case_dir).config)   # (= pipe.scheduler)
#     sched.set_timesteps(N)
#     x = x_T * sched.init_noise_sigma
#     for i, t in enumerate(sched.timesteps):
#         x_in = sched.scale_model_input(x, t)
#         uncond = 0.05 * x_in + E[(2i) % K];  cond = 0.08 * x_in + E[(2i+1) % K]
#         mo = uncond + G * (cond - uncond)                                  # CFG, G = 5
#         x = sched.step(mo, t, x, [eta=eta, variance_noise=NZ[i % K]]).prev_sample
#
# The "model" is a deterministic function of the scaled input that the C test computes with
# the same float32 operations, so the whole trajectory (scale_model_input, CFG, step) is
# checked, not just one step. Source is the config's own _class_name, as in a pipeline, so
# keys absent from the JSON take the *target* scheduler's defaults (diffusers'
# _use_default_values), e.g. SD 1.5's PNDM config gives Euler timestep_spacing "linspace"
# and DDIM "leading".
#
# Files:
#   <case>.json            the scheduler_config.json of the case, verbatim
#   common.safetensors     x_T [n], eps [K, n], noise [K, n] (F32, torch.randn, seed 1234);
#                          trailing_bad_n I64: the N in 1..1000 for which DDIMScheduler with
#                          timestep_spacing "trailing" (T = 1000) does not give N timesteps;
#                          rescale.* : guidance_rescale reference (rescale_noise_cfg of the
#                          SDXL pipeline): cfg [2, n], cond [2, n], out [2, n], phi [1] (F64)
#   <case>.safetensors     per run "<kind><N>[_eta]":
#                            .timesteps F64 [N]   sched.timesteps (as the UNet receives them)
#                            .init_sigma F64 [1]  float(sched.init_noise_sigma)
#                            .sigmas F32 [N+1]    (Euler only) sched.sigmas
#                            .traj F32 [N, n]     x after each step
#                            .eta F64 [1]
#                          metadata "runs": comma-separated run names
import argparse
import json
import os
import struct
import warnings

import numpy as np
import torch
from safetensors.torch import load_file

warnings.filterwarnings("ignore")
import diffusers  # noqa: E402
from diffusers import DDIMScheduler, EulerDiscreteScheduler  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

N_ELEM = 64   # latent elements per sample (1 x 4 x 4 x 4)
K = 8         # pool of fixed "model" noises
G = 5.0       # guidance scale
STEPS = (5, 10, 25)

SD15 = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None, "clip_sample": False}
SDXL = {  # stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False}
ZSNR = {  # SD 2.1-like, v_prediction with the zero-terminal-SNR fixes (trailing spacing)
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.21.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "set_alpha_to_one": False, "steps_offset": 1,
    "timestep_spacing": "trailing", "trained_betas": None}
# mostly defaults: DDIM clips (clip_sample defaults to true), set_alpha_to_one true, leading;
# Euler linspace; cosine betas; x0 ("sample") prediction
MISC = {"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample", "clip_sample_range": 1.5}
LINSPACE = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
            "beta_end": 0.02, "timestep_spacing": "linspace", "clip_sample": False,
            "num_train_timesteps": 1000, "steps_offset": 0}
KARRAS = dict(SDXL, use_karras_sigmas=True, final_sigmas_type="sigma_min", sigma_min=None)
# zero-SNR + Karras: log_sigmas are not monotonic (Euler's 2^-24 tail), _sigma_to_t still exact
ZKARRAS = dict(ZSNR, _class_name="EulerDiscreteScheduler", use_karras_sigmas=True)
EXPCONT = {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear",
           "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
           "use_exponential_sigmas": True, "timestep_type": "continuous",
           "timestep_spacing": "trailing", "sigma_max": 10.0, "sigma_min": 0.05}

# case -> (config, [(kind, N, eta)])
CASES = {
    "sd15": (SD15, [(k, n, 0.0) for k in ("ddim", "euler") for n in STEPS] + [("ddim", 10, 1.0)]),
    "sdxl": (SDXL, [(k, n, 0.0) for k in ("ddim", "euler") for n in STEPS]),
    "zsnr": (ZSNR, [(k, n, 0.0) for k in ("ddim", "euler") for n in STEPS]
             + [("ddim", 10, 0.5), ("ddim", 7, 0.0), ("euler", 7, 0.0), ("ddim", 16, 0.0),
                ("euler", 16, 0.0)]),
    "misc": (MISC, [("ddim", 10, 0.0), ("euler", 10, 0.0), ("ddim", 7, 0.3)]),
    "linspace": (LINSPACE, [("ddim", 7, 0.0), ("euler", 7, 0.0), ("ddim", 25, 0.0)]),
    "karras": (KARRAS, [("euler", 5, 0.0), ("euler", 25, 0.0)]),
    "expcont": (EXPCONT, [("euler", 10, 0.0)]),
    "zkarras": (ZKARRAS, [("euler", 10, 0.0)]),
}

_DT = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def tsave(d, path, md):
    """Byte-deterministic safetensors writer (tensors in sorted name order)."""
    header = {"__metadata__": dict(sorted(md.items()))}
    blobs, off = [], 0
    for k in sorted(d):
        t = d[k].detach().contiguous().cpu()
        b = t.numpy().tobytes()
        header[k] = {"dtype": _DT[t.dtype], "shape": list(t.shape),
                     "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    back = load_file(path)
    assert set(back) == set(d) and all(torch.equal(back[k], d[k].detach().cpu()) for k in d), path


def pipeline_scheduler(case_dir, kind):
    """What a pipeline does: load the config as its own class, then Kind.from_config."""
    with open(os.path.join(case_dir, "scheduler_config.json")) as f:
        cls_name = json.load(f).get("_class_name", "DDIMScheduler")
    src = getattr(diffusers, cls_name).from_pretrained(case_dir)
    cls = DDIMScheduler if kind == "ddim" else EulerDiscreteScheduler
    return cls.from_config(src.config)


def run(sched, kind, n_steps, eta, x_T, E, NZ):
    sched.set_timesteps(n_steps)
    x = x_T * sched.init_noise_sigma
    traj = []
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)
        uncond = 0.05 * x_in + E[(2 * i) % K]
        cond = 0.08 * x_in + E[(2 * i + 1) % K]
        mo = uncond + G * (cond - uncond)
        if kind == "ddim":
            kw = dict(eta=eta, variance_noise=NZ[i % K]) if eta > 0 else {}
            x = sched.step(mo, t, x, **kw).prev_sample
        else:
            x = sched.step(mo, t, x).prev_sample
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        traj.append(x.clone())
    out = {
        "timesteps": sched.timesteps.to(torch.float64).clone(),
        "init_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float64),
        "traj": torch.stack(traj),
        "eta": torch.tensor([eta], dtype=torch.float64),
    }
    if kind == "euler":
        out["sigmas"] = sched.sigmas.to(torch.float32).clone()
    return out


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    # verbatim from diffusers' pipeline_stable_diffusion_xl.py
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    noise_cfg = guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg
    return noise_cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/sampler")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    x_T = torch.randn(N_ELEM, generator=g)
    E = 0.25 * torch.randn(K, N_ELEM, generator=g)
    NZ = torch.randn(K, N_ELEM, generator=g)
    cfg_b = torch.randn(2, N_ELEM, generator=g) * torch.tensor([[2.0], [0.5]])
    cond_b = torch.randn(2, N_ELEM, generator=g) + 0.3
    phi = 0.7
    # num_inference_steps for which diffusers' trailing spacing (T = 1000) does not give N
    # timesteps (numpy's arange yields an extra point that becomes timestep -1)
    probe = DDIMScheduler(timestep_spacing="trailing")
    bad = []
    for n in range(1, 1001):
        probe.set_timesteps(n)
        if len(probe.timesteps) != n or int(probe.timesteps.min()) < 0:
            bad.append(n)
    common = {"trailing_bad_n": torch.tensor(bad, dtype=torch.int64), "x_T": x_T, "eps": E,
              "noise": NZ, "rescale.cfg": cfg_b, "rescale.cond": cond_b,
              "rescale.out": rescale_noise_cfg(cfg_b, cond_b, phi),
              "rescale.phi": torch.tensor([phi], dtype=torch.float64)}
    tsave(common, os.path.join(args.out, "common.safetensors"),
          {"source": "tools/make_sampler_fixtures.py", "diffusers": diffusers.__version__,
           "torch": torch.__version__, "G": repr(G)})

    tmp = os.path.join(args.out, ".tmp_case")
    os.makedirs(tmp, exist_ok=True)
    for name, (cfg, runs) in CASES.items():
        text = json.dumps(cfg, indent=2) + "\n"
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            f.write(text)
        with open(os.path.join(tmp, "scheduler_config.json"), "w") as f:
            f.write(text)
        tensors, names = {}, []
        for kind, n, eta in runs:
            rn = f"{kind}{n}" + ("_eta" if eta > 0 else "")
            names.append(rn)
            res = run(pipeline_scheduler(tmp, kind), kind, n, eta, x_T, E, NZ)
            for k, v in res.items():
                tensors[f"{rn}.{k}"] = v
            ts = res["timesteps"].tolist()
            print(f"{name:9s} {rn:10s} t[0..] = {[round(t, 3) for t in ts[:3]]} .. "
                  f"{round(ts[-1], 3)}  init_sigma {res['init_sigma'].item():.6g}  "
                  f"|x_0| {res['traj'][-1].norm().item():.4g}")
        tsave(tensors, os.path.join(args.out, name + ".safetensors"), {"runs": ",".join(names)})
    os.remove(os.path.join(tmp, "scheduler_config.json"))
    os.rmdir(tmp)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {args.out} ({total} bytes)")


if __name__ == "__main__":
    main()
