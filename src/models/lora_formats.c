/* lora_formats.c -- kohya-ss (A1111 / ComfyUI) LoRA names, saving and file conversion; see
 * lora_formats.h and docs/LORA_FORMATS.md. Reading kohya files is in unet_lora_load (lora.c),
 * which asks lora_kohya_name for the names of each adapter. */
#include "mapo/lora_formats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"

int lora_format_parse(const char *s, lora_format *fmt) {
    if (s && !strcmp(s, "diffusers")) *fmt = LORA_FMT_DIFFUSERS;
    else if (s && !strcmp(s, "kohya")) *fmt = LORA_FMT_KOHYA;
    else if (s && !strcmp(s, "both")) *fmt = LORA_FMT_BOTH;
    else
        return mapo_error("--lora_format must be diffusers, kohya or both (got '%s')",
                          s ? s : "(none)");
    return 0;
}

static kohya_layout resolve(const unet_config *c, kohya_layout l) {
    if (l != KOHYA_LAYOUT_AUTO) return l;
    return c->text_time ? KOHYA_LAYOUT_ORIGINAL : KOHYA_LAYOUT_DIFFUSERS;
}

/* diffusers module path -> original (sgm / LDM) module path, for the attention blocks.
 *   input_blocks: 0 is conv_in; down block i has layers[i] entries [resnet, attention] and then
 *     (all but the last block) one downsampler entry, so block i starts at 1 + sum_{b<i}(layers[b]+1)
 *   middle_block: 0 resnet, 1 attention, 2 resnet
 *   output_blocks: up block i has layers[n-1-i] + 1 entries [resnet, attention, upsampler] */
static int to_original(const unet_config *c, const char *mod, char *out, size_t n) {
    int i, j, k = -1;
    const int nb = c->n_blocks;
    if (sscanf(mod, "down_blocks.%d.attentions.%d.%n", &i, &j, &k) == 2 && k > 0) {
        if (i < 0 || i >= nb || !c->down_cross[i] || j < 0 || j >= c->layers[i]) return -1;
        int idx = 1 + j;
        for (int b = 0; b < i; b++) idx += c->layers[b] + 1;
        snprintf(out, n, "input_blocks.%d.1.%s", idx, mod + k);
        return 0;
    }
    k = -1;
    if (sscanf(mod, "up_blocks.%d.attentions.%d.%n", &i, &j, &k) == 2 && k > 0) {
        if (i < 0 || i >= nb || !c->up_cross[i] || j < 0 || j > c->layers[nb - 1 - i]) return -1;
        int idx = j;
        for (int b = 0; b < i; b++) idx += c->layers[nb - 1 - b] + 1;
        snprintf(out, n, "output_blocks.%d.1.%s", idx, mod + k);
        return 0;
    }
    static const char mid[] = "mid_block.attentions.0.";
    if (!strncmp(mod, mid, sizeof mid - 1)) {
        snprintf(out, n, "middle_block.1.%s", mod + sizeof mid - 1);
        return 0;
    }
    return -1;
}

int lora_kohya_name(const unet_config *c, const char *module, kohya_layout layout, char *out,
                    size_t n) {
    char m[600];
    if (resolve(c, layout) == KOHYA_LAYOUT_ORIGINAL) {
        if (to_original(c, module, m, sizeof m)) return -1;
    } else {
        snprintf(m, sizeof m, "%s", module);
    }
    int w = snprintf(out, n, "lora_unet_%s", m);
    if (w < 0 || (size_t)w >= n) return -1;
    for (char *p = out; *p; p++)
        if (*p == '.') *p = '_';
    return 0;
}

/* ------------------------------------------------------------------ save */
int unet_lora_save_kohya_layout(const unet *u, const char *path, kohya_layout layout,
                                st_dtype store) {
    const param_table *L = &u->lora;
    if (!L->n) return mapo_error("no LoRA adapters to save");
    st_writer *w = st_writer_new();
    float *alpha = xcalloc((size_t)L->n, sizeof(float));
    int rank = -1, rc = 0;
    /* the adapters come in pairs: "<module>.lora_A.weight" [r, in], "<module>.lora_B.weight" */
    for (int i = 0; i + 1 < L->n && !rc; i += 2) {
        const param_info *pa = &L->p[i], *pb = &L->p[i + 1];
        const char *sa = strstr(pa->name, ".lora_A.weight"), *sb = strstr(pb->name, ".lora_B.weight");
        char mod[600], base[700], nm[760];
        if (!sa || !sb || sa - pa->name != sb - pb->name ||
            strncmp(pa->name, pb->name, (size_t)(sa - pa->name))) {
            rc = mapo_error("LoRA table: '%s' / '%s' are not one adapter", pa->name, pb->name);
            break;
        }
        snprintf(mod, sizeof mod, "%.*s", (int)(sa - pa->name), pa->name);
        if (lora_kohya_name(&u->cfg, mod, layout, base, sizeof base)) {
            rc = mapo_error("'%s' has no kohya name for this UNet", mod);
            break;
        }
        const int r = (int)pa->shape[0];
        rank = rank == -1 ? r : (rank == r ? r : 0);
        alpha[i] = (float)r;
        snprintf(nm, sizeof nm, "%s.lora_down.weight", base);
        st_writer_add_f32_as(w, nm, store, pa->ndim, pa->shape, L->data + pa->offset);
        snprintf(nm, sizeof nm, "%s.lora_up.weight", base);
        st_writer_add_f32_as(w, nm, store, pb->ndim, pb->shape, L->data + pb->offset);
        snprintf(nm, sizeof nm, "%s.alpha", base); /* as sd-scripts: alpha in the save dtype too */
        st_writer_add_f32_as(w, nm, store, 0, NULL, &alpha[i]);
    }
    if (!rc) {
        /* what sd-scripts' train_network.py writes, as str(): dim an int, alpha a float */
        char s[64];
        st_writer_meta(w, "ss_network_module", "networks.lora");
        if (rank > 0) {
            snprintf(s, sizeof s, "%d", rank);
            st_writer_meta(w, "ss_network_dim", s);
            snprintf(s, sizeof s, "%d.0", rank);
            st_writer_meta(w, "ss_network_alpha", s);
        }
        const int v2 = !u->cfg.text_time && u->cfg.cross_dim == 1024;
        st_writer_meta(w, "ss_base_model_version",
                       u->cfg.text_time ? "sdxl_base_v1-0" : v2 ? "sd_v2" : "sd_v1");
        st_writer_meta(w, "ss_v2", v2 ? "True" : "False");
        rc = st_writer_write(w, path);
    }
    st_writer_free(w);
    free(alpha);
    return rc;
}

int unet_lora_save_kohya(const unet *u, const char *path) {
    return unet_lora_save_kohya_layout(u, path, KOHYA_LAYOUT_AUTO, ST_F32);
}

int unet_lora_save_formats(const unet *u, const char *dir, lora_format fmt, st_dtype store) {
    if (fmt != LORA_FMT_DIFFUSERS && fmt != LORA_FMT_KOHYA && fmt != LORA_FMT_BOTH)
        return mapo_error("unknown LoRA format %d", (int)fmt);
    char p[4200];
    if (fmt & LORA_FMT_DIFFUSERS) {
        snprintf(p, sizeof p, "%s/%s", dir, LORA_DIFFUSERS_FILE);
        if (unet_lora_save_as(u, p, store)) return -1;
    }
    if (fmt & LORA_FMT_KOHYA) {
        snprintf(p, sizeof p, "%s/%s", dir, LORA_KOHYA_FILE);
        if (unet_lora_save_kohya_layout(u, p, KOHYA_LAYOUT_AUTO, store)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ convert */
int lora_convert_file(const char *in, const char *out, const char *to, const unet_config *cfg,
                      st_dtype store) {
    int kohya;
    if (to && !strcmp(to, "kohya")) kohya = 1;
    else if (to && !strcmp(to, "diffusers")) kohya = 0;
    else return mapo_error("LoRA conversion: unknown target format '%s' (kohya, diffusers)",
                           to ? to : "(none)");
    /* the UNet's structure and shapes only: no weights are allocated */
    unet u;
    unet_build(&u, cfg);
    int rc = unet_lora_load(&u, in, 0);
    if (!rc)
        rc = kohya ? unet_lora_save_kohya_layout(&u, out, KOHYA_LAYOUT_AUTO, store)
                   : unet_lora_save_as(&u, out, store);
    u.cfg.json = NULL; /* the caller's config */
    unet_free(&u);
    return rc;
}

int lora_convert_file_model(const char *in, const char *out, const char *to, const char *model,
                            st_dtype store) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", model);
    if (!mapo_is_file(p)) {
        snprintf(p, sizeof p, "%s/unet/config.json", model);
        if (!mapo_is_file(p))
            return mapo_error("%s: no config.json (nor unet/config.json): not a diffusers UNet "
                              "or pipeline folder", model);
    }
    unet_config c;
    if (unet_config_load(&c, p)) return -1;
    int rc = lora_convert_file(in, out, to, &c, store);
    unet_config_free(&c);
    return rc;
}
