/* step.c -- the preference training step on a batch of pairs (see step.h). */
#include "mapo/step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"

void objective_cfg_default(objective_cfg *c) {
    c->kind = OBJ_MAPO;
    c->beta_mapo = 0.1;
    c->snr_value = 0.5;
    c->beta_dpo = 5000;
    c->beta_kto = 1000;
    c->lambda_d_kto = 1;
    c->lambda_u_kto = 1;
    c->labels = NULL;
    c->num_train_timesteps = 1000;
    c->unpaired = 0;
}

int objective_parse(const char *s, objective_kind *k) {
    if (!strcmp(s, "mapo")) *k = OBJ_MAPO;
    else if (!strcmp(s, "dpo")) *k = OBJ_DPO;
    else if (!strcmp(s, "sft")) *k = OBJ_SFT;
    else if (!strcmp(s, "kto")) *k = OBJ_KTO;
    else return mapo_error("unknown loss '%s' (expected mapo, dpo, sft or kto)", s);
    return 0;
}

const char *objective_name(objective_kind k) {
    return k == OBJ_MAPO ? "mapo" : k == OBJ_DPO ? "dpo" : k == OBJ_KTO ? "kto" : "sft";
}

void per_sample_mse(double *err, const float *pred, const float *target, int n, int64_t chw) {
    for (int i = 0; i < n; i++) {
        const float *p = pred + (size_t)i * chw, *t = target + (size_t)i * chw;
        double s = 0;
        for (int64_t k = 0; k < chw; k++) {
            double d = (double)p[k] - (double)t[k];
            s += d * d;
        }
        err[i] = s / (double)chw;
    }
}

int model_errors(unet *u, const unet_inputs *in, const float *target, double *err) {
    graph g;
    graph_init(&g, 0);
    tensor *pred = unet_forward(u, &g, in);
    per_sample_mse(err, pred->data, target, in->B, pred->numel / in->B);
    graph_free(&g);
    return 0;
}

/* Diffusion-KTO on the n = in->B samples: a paired batch is n/2 desirable chosen images
   followed by n/2 undesirable rejected ones; an unpaired one carries oc->labels. */
static int kto_step(double *dl, objective_stats *st, const double *errors, int n,
                    const objective_cfg *oc, const double *ref_err) {
    if (!ref_err) return mapo_error("Diffusion-KTO needs reference errors (a reference model)");
    if (oc->unpaired && !oc->labels)
        return mapo_error("Diffusion-KTO on single images needs their labels "
                          "(desirable / undesirable)");
    if (oc->labels)
        return objective_kto(dl, st, errors, ref_err, oc->labels, n, oc->beta_kto,
                             oc->lambda_d_kto, oc->lambda_u_kto);
    unsigned char *lab = xmalloc((size_t)n);
    for (int i = 0; i < n; i++) lab[i] = i < n / 2;
    const int rc = objective_kto(dl, st, errors, ref_err, lab, n, oc->beta_kto,
                                 oc->lambda_d_kto, oc->lambda_u_kto);
    free(lab);
    return rc;
}

int preference_step(unet *u, const unet_inputs *in, const float *target,
                    const objective_cfg *oc, const double *ref_err, double grad_scale,
                    double *errors, objective_stats *st, float *pred_out,
                    size_t *activation_peak) {
    if (in->B % 2 && !oc->unpaired)
        return mapo_error("a preference batch needs an even number of samples");
    const int B = in->B / 2;
    graph g;
    graph_init(&g, 1);
    tensor *pred = unet_forward(u, &g, in);
    const int64_t chw = pred->numel / in->B;
    per_sample_mse(errors, pred->data, target, in->B, chw);
    if (pred_out) memcpy(pred_out, pred->data, pred->numel * sizeof(float));
    double *dl = xmalloc(in->B * sizeof(double));
    int rc;
    if (oc->kind == OBJ_KTO) {
        rc = kto_step(dl, st, errors, in->B, oc, ref_err);
    } else if (oc->unpaired) {
        rc = objective_denoise(dl, st, errors, in->B);
    } else switch (oc->kind) {
    case OBJ_MAPO:
        rc = objective_mapo(dl, st, errors, B, oc->beta_mapo, oc->snr_value,
                            oc->num_train_timesteps);
        break;
    case OBJ_DPO:
        if (!ref_err) {
            rc = mapo_error("Diffusion-DPO needs reference errors (a reference model)");
            break;
        }
        rc = objective_dpo(dl, st, errors, ref_err, B, oc->beta_dpo);
        break;
    default:
        rc = objective_sft(dl, st, errors, B);
    }
    if (!rc) {
        float *gp = graph_grad(&g, pred);
        for (int i = 0; i < in->B; i++) {
            const double c = dl[i] * grad_scale * 2.0 / (double)chw;
            const float *p = pred->data + (size_t)i * chw, *t = target + (size_t)i * chw;
            float *d = gp + (size_t)i * chw;
            for (int64_t k = 0; k < chw; k++) d[k] = (float)(c * ((double)p[k] - (double)t[k]));
        }
        graph_backward(&g, pred);
    }
    if (activation_peak) *activation_peak = g.bytes_peak;
    free(dl);
    graph_free(&g);
    return rc;
}

int dpo_reference_errors(unet *u, unet *ref, const unet_inputs *in, const float *target,
                         double *err) {
    if (ref) return model_errors(ref, in, target, err);
    const int on = u->lora_on;
    u->lora_on = 0;
    int rc = model_errors(u, in, target, err);
    u->lora_on = on;
    return rc;
}
