/* cmd_debug.c -- mapo debug-step, mapo diff, mapo init-unet. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
#include "mapo/pairs.h"
#include "mapo/safetensors.h"
#include "mapo/step.h"

int cmd_debug_step(int argc, char **argv) {
    const char *model = NULL, *batch = NULL, *out = NULL, *ref = NULL, *loss = "mapo";
    objective_cfg oc;
    objective_cfg_default(&oc);
    int64_t T = 1000;
    const char *mixed = NULL;
    int grad_ckpt = 0, recompute_norms = 0;
    opt_def o[] = {
        {"model", OPT_STR, &model, "diffusers UNet (or pipeline) folder", 0},
        {"batch", OPT_STR, &batch, "safetensors: sample, timestep, encoder_hidden_states, "
                                   "target [, text_embeds, time_ids]", 0},
        {"out", OPT_STR, &out, "output safetensors: model_pred, errors, loss, grad.<name>", 0},
        {"loss", OPT_STR, &loss, "mapo | dpo | sft (default mapo)", 0},
        {"ref", OPT_STR, &ref, "reference UNet folder (dpo)", 0},
        {"beta_mapo", OPT_DOUBLE, &oc.beta_mapo, "MaPO margin weight (0.1)", 0},
        {"snr_value", OPT_DOUBLE, &oc.snr_value, "MaPO s in g(l) = s l/(exp(s l)-1) (0.5)", 0},
        {"beta_dpo", OPT_DOUBLE, &oc.beta_dpo, "Diffusion-DPO beta (5000)", 0},
        {"num_train_timesteps", OPT_INT, &T, "T multiplying MaPO's log odds (1000)", 0},
        {"mixed_precision", OPT_STR, &mixed, "no | bf16 | fp16 (no; fp16 runs as bf16)", 0},
        {"gradient_checkpointing", OPT_FLAG, &grad_ckpt, "recompute blocks in backward", 0},
        {"recompute_norms", OPT_FLAG, &recompute_norms,
         "recompute LayerNorm and GroupNorm + SiLU outputs in backward", 0},
    };
    int r = args_parse(o, 12, argc, argv, 2,
                       "usage: mapo debug-step --model DIR --batch FILE --out FILE "
                       "[--loss mapo|dpo|sft] [--ref DIR] [--beta_mapo X --snr_value X "
                       "--beta_dpo X] [--mixed_precision no|bf16|fp16] [--gradient_checkpointing] "
                       "[--recompute_norms]");
    if (r) return r > 0 ? 0 : -1;
    int precision;
    if (mixed_precision_parse(mixed, &precision)) return -1;
    if (!model || !batch || !out) return mapo_error("debug-step needs --model, --batch and --out");
    if (objective_parse(loss, &oc.kind)) return -1;
    if ((oc.kind == OBJ_DPO || oc.kind == OBJ_KTO) && !ref)
        return mapo_error("--loss %s needs --ref DIR", objective_name(oc.kind));
    oc.num_train_timesteps = (int)T;
    unet u, ru;
    if (unet_load_dir(&u, model, 1)) return -1;
    u.precision = precision;
    u.grad_ckpt = grad_ckpt;
    u.recompute_norms = recompute_norms;
    debug_batch b;
    if (debug_batch_load(&b, batch, &u.cfg)) {
        unet_free(&u);
        return -1;
    }
    unet_inputs in;
    debug_batch_inputs(&b, &in);
    int rc = unet_check_inputs(&u, &in);
    double *err = xcalloc(b.n, sizeof(double)), *ref_err = NULL;
    int64_t npred = (int64_t)b.n * u.cfg.out_channels * b.H * b.W;
    float *pred = xmalloc(npred * sizeof(float));
    if (!rc && (oc.kind == OBJ_DPO || oc.kind == OBJ_KTO)) {
        rc = unet_load_dir(&ru, ref, unet_frozen_mode(precision)); /* as mapo train's */
        if (!rc) {
            ru.precision = precision;
            ref_err = xcalloc(b.n, sizeof(double));
            model_errors(&ru, &in, b.target, ref_err);
            unet_free(&ru);
        }
    }
    objective_stats st;
    if (!rc) rc = preference_step(&u, &in, b.target, &oc, ref_err, 1.0, err, &st, pred, NULL);
    if (!rc) {
        st_writer *w = st_writer_new();
        float *ef = xmalloc(b.n * sizeof(float)), *rf = xmalloc(b.n * sizeof(float));
        float lossf = (float)st.loss;
        for (int i = 0; i < b.n; i++) ef[i] = (float)err[i];
        st_writer_add(w, "model_pred", ST_F32, 4,
                      (int64_t[]){b.n, u.cfg.out_channels, b.H, b.W}, pred);
        st_writer_add(w, "errors", ST_F32, 1, (int64_t[]){b.n}, ef);
        st_writer_add(w, "loss", ST_F32, 1, (int64_t[]){1}, &lossf);
        st_writer_add(w, "errors_f64", ST_F64, 1, (int64_t[]){b.n}, err);
        st_writer_add(w, "loss_f64", ST_F64, 1, (int64_t[]){1}, &st.loss);
        if (ref_err) {
            for (int i = 0; i < b.n; i++) rf[i] = (float)ref_err[i];
            st_writer_add(w, "ref_errors", ST_F32, 1, (int64_t[]){b.n}, rf);
        }
        params_write(&u.params, w, "grad.", u.params.grad);
        st_writer_meta(w, "loss_type", objective_name(oc.kind));
        rc = st_writer_write(w, out);
        st_writer_free(w);
        free(ef);
        free(rf);
        if (!rc)
            printf("loss %.9g  err_w %.6g  err_l %.6g  margin %.6g  -> %s\n", st.loss, st.err_w,
                   st.err_l, st.margin, out);
    }
    free(err);
    free(ref_err);
    free(pred);
    debug_batch_free(&b);
    unet_free(&u);
    return rc;
}

/* mapo diff A B [--tol X] [--prefix P]: relative L2 error per common tensor. */
int cmd_diff(int argc, char **argv) {
    double tol = 1e-4;
    const char *prefix = "", *a_prefix = "";
    int quiet = 0;
    if (argc < 4) return mapo_error("usage: mapo diff A.safetensors B.safetensors [--tol X] "
                                    "[--prefix P] [--quiet]");
    opt_def o[] = {
        {"tol", OPT_DOUBLE, &tol, "largest relative error ||a-b||/||b|| allowed (1e-4)", 0},
        {"prefix", OPT_STR, &prefix, "compare only tensors whose name starts with this", 0},
        {"quiet", OPT_FLAG, &quiet, "print only the worst tensor", 0},
        {"a_prefix", OPT_STR, &a_prefix, "A names its tensors with this prefix before B's names "
         "(e.g. text_model.: transformers 4 vs 5 CLIPTextModel layouts)", 0},
    };
    int r = args_parse(o, 4, argc, argv, 4,
                       "usage: mapo diff A B [--tol X] [--prefix P] [--a_prefix P]");
    if (r) return r > 0 ? 0 : -1;
    st_file a, b;
    if (st_open(&a, argv[2])) return -1;
    if (st_open(&b, argv[3])) {
        st_close(&a);
        return -1;
    }
    int n = 0, bad = 0, rc = 0, skipped = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < b.n && !rc; i++) {
        const st_tensor *tb = &b.tensors[i];
        if (strncmp(tb->name, prefix, strlen(prefix))) continue;
        char an[1024];
        snprintf(an, sizeof an, "%s%s", a_prefix, tb->name);
        const st_tensor *ta = st_find(&a, an);
        if (!ta) {
            skipped++;
            if (!quiet) printf("%-70s only in %s\n", tb->name, argv[3]);
            continue;
        }
        if (ta->numel != tb->numel) {
            rc = mapo_error("tensor '%s': %lld vs %lld elements", tb->name,
                            (long long)ta->numel, (long long)tb->numel);
            break;
        }
        double *x = xmalloc(ta->numel * sizeof(double)), *y = xmalloc(tb->numel * sizeof(double));
        if (st_to_f64(ta, x) || st_to_f64(tb, y)) {
            free(x);
            free(y);
            continue; /* integer tensors are not compared */
        }
        double num = 0, den = 0;
        for (int64_t k = 0; k < ta->numel; k++) {
            num += (x[k] - y[k]) * (x[k] - y[k]);
            den += y[k] * y[k];
        }
        double e = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!isfinite(e)) e = INFINITY;
        n++;
        if (e > tol) bad++;
        if (e > worst || !isfinite(e)) {
            worst = e;
            worst_name = tb->name;
        }
        if (!quiet) printf("%-70s %.3e%s\n", tb->name, e, e > tol ? "  > tol" : "");
        free(x);
        free(y);
    }
    if (!rc) {
        printf("compared %d tensors (%d only in B); worst relative error %.3e (%s); "
               "tolerance %.1e: %s\n", n, skipped, worst, worst_name, tol, bad ? "FAIL" : "ok");
        if (n == 0) rc = mapo_error("no tensors compared");
        else if (bad) rc = mapo_error("%d of %d tensors exceed the tolerance %.1e", bad, n, tol);
    }
    st_close(&a);
    st_close(&b);
    return rc;
}

int cmd_init_unet(int argc, char **argv) {
    const char *config = NULL, *out = NULL;
    int64_t seed = 0;
    opt_def o[] = {
        {"config", OPT_STR, &config, "a diffusers UNet2DConditionModel config.json", 0},
        {"out", OPT_STR, &out, "output folder (config.json + safetensors)", 0},
        {"seed", OPT_INT, &seed, "init seed (0)", 0},
    };
    int r = args_parse(o, 3, argc, argv, 2,
                       "usage: mapo init-unet --config config.json --out DIR [--seed N]");
    if (r) return r > 0 ? 0 : -1;
    if (!config || !out) return mapo_error("init-unet needs --config and --out");
    unet u;
    if (unet_init_dir(&u, config, (uint64_t)seed, 0)) return -1;
    int rc = unet_save_dir(&u, out);
    if (!rc) printf("%s: %zu parameters\n", out, u.params.total);
    unet_free(&u);
    return rc;
}
