/* lora.c -- LoRA adapters on the UNet's attention projections (see unet.h).
 *
 * The adapters live in their own parameter table (unet.lora), so the optimiser, gradient
 * clipping, checkpoints and saving see only them when training with --lora_rank; the base
 * weights are loaded without gradients. Internally an adapter is named like peft names it
 * ("<module>.lora_A.weight" [r, in], "<module>.lora_B.weight" [out, r]); on disk we write what
 * the official train_with_lora.py writes (convert_state_dict_to_diffusers + save_lora_weights):
 * "unet.<module>.lora.down.weight" / "unet.<module>.lora.up.weight". */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/lora_formats.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "mapo/unet.h"

enum { STREAM_LORA_INIT = 0x10a };

typedef int (*tblock_fn)(unet *u, unet_tblock *b, void *ctx);

static int each_xformer(unet *u, unet_xformer *x, tblock_fn fn, void *ctx) {
    for (int l = 0; l < x->n_tb; l++)
        if (fn(u, &x->tb[l], ctx)) return -1;
    return 0;
}

/* every transformer block of the UNet, in a fixed order */
static int each_tblock(unet *u, tblock_fn fn, void *ctx) {
    for (int i = 0; i < u->cfg.n_blocks; i++) {
        unet_block *bl[2] = {&u->down[i], &u->up[i]};
        for (int k = 0; k < 2; k++)
            for (int j = 0; bl[k]->attn && j < bl[k]->n_res; j++)
                if (each_xformer(u, &bl[k]->attn[j], fn, ctx)) return -1;
    }
    return each_xformer(u, &u->mid.attn[0], fn, ctx);
}

/* the base weight index of target k (q, k, v, out) of attention a of a block */
static int base_weight(const unet_tblock *b, int a, int k) {
    const int w[2][4] = {{b->q1, b->k1, b->v1, b->o1w}, {b->q2, b->k2, b->v2, b->o2w}};
    return w[a][k];
}

/* "<...>.to_q.weight" -> "<...>.to_q" */
static void module_name(const unet *u, int w, char *out, size_t n) {
    const char *nm = u->params.p[w].name;
    size_t len = strlen(nm);
    if (len > 7) len -= 7; /* ".weight" */
    snprintf(out, n, "%.*s", (int)len, nm);
}

static void add_adapter(unet *u, unet_tblock *b, int a, int k, int rank) {
    int w = base_weight(b, a, k);
    const param_info *p = &u->params.p[w];
    char mod[512];
    module_name(u, w, mod, sizeof mod);
    b->lora[a][k][0] =
        params_add(&u->lora, 2, (int64_t[]){rank, p->shape[1]}, "%s.lora_A.weight", mod);
    b->lora[a][k][1] =
        params_add(&u->lora, 2, (int64_t[]){p->shape[0], rank}, "%s.lora_B.weight", mod);
}

static int add_all(unet *u, unet_tblock *b, void *ctx) {
    int rank = *(int *)ctx;
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 4; k++) add_adapter(u, b, a, k, rank);
    return 0;
}

int unet_lora_add(unet *u, int rank, uint64_t seed) {
    if (rank < 1 || rank > 4096) return mapo_error("--lora_rank must be in 1..4096 (got %d)", rank);
    if (u->lora.n) return mapo_error("the UNet already has LoRA adapters");
    params_init(&u->lora);
    each_tblock(u, add_all, &rank);
    if (!u->lora.n) return mapo_error("this UNet has no attention layers to put LoRA adapters on");
    params_alloc(&u->lora, 1);
    for (int i = 0; i < u->lora.n; i++) {
        const param_info *p = &u->lora.p[i];
        if (!strstr(p->name, ".lora_A.")) continue; /* B stays 0 */
        philox r;
        philox_init(&r, seed, STREAM_LORA_INIT, (uint64_t)i);
        float *d = u->lora.data + p->offset;
        philox_fill_normal(&r, d, p->numel);
        const float sd = 1.0f / (float)rank;
        for (int64_t j = 0; j < p->numel; j++) d[j] *= sd;
    }
    u->lora_on = 1;
    return 0;
}

/* ------------------------------------------------------------------ load */
typedef struct {
    const st_file *f;
    const char *prefix; /* "unet." or "" */
    int peft;           /* lora_A/lora_B names (else lora.down/lora.up) */
    int kohya;          /* lora_unet_<module>.lora_down / lora_up / alpha (lora_formats.h) */
    int *used;          /* per file tensor: matched */
    int pass;           /* 0: register, 1: copy values */
    int rc;
} load_ctx;

static const st_tensor *find_used(load_ctx *c, const char *name) {
    const st_tensor *t = st_find(c->f, name);
    if (t) c->used[t - c->f->tensors] = 1;
    return t;
}

static int load_block(unet *u, unet_tblock *b, void *vctx) {
    load_ctx *c = vctx;
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 4; k++) {
            char mod[512], na[700], nb[700], nal[700];
            int w = base_weight(b, a, k);
            module_name(u, w, mod, sizeof mod);
            snprintf(na, sizeof na, "%s%s.%s", c->prefix, mod, c->peft ? "lora_A.weight" : "lora.down.weight");
            snprintf(nb, sizeof nb, "%s%s.%s", c->prefix, mod, c->peft ? "lora_B.weight" : "lora.up.weight");
            snprintf(nal, sizeof nal, "%s%s.alpha", c->prefix, mod);
            /* kohya: the diffusers-layout name, else the original-layout one */
            for (int l = KOHYA_LAYOUT_DIFFUSERS; c->kohya && l <= KOHYA_LAYOUT_ORIGINAL; l++) {
                char kn[600];
                if (lora_kohya_name(&u->cfg, mod, (kohya_layout)l, kn, sizeof kn)) continue;
                snprintf(na, sizeof na, "%s.lora_down.weight", kn);
                snprintf(nb, sizeof nb, "%s.lora_up.weight", kn);
                snprintf(nal, sizeof nal, "%s.alpha", kn);
                if (st_find(c->f, na) || st_find(c->f, nb)) break;
            }
            const st_tensor *ta = find_used(c, na), *tb = find_used(c, nb), *tal = find_used(c, nal);
            if (!ta && !tb) continue; /* this module has no adapter */
            if (!ta || !tb)
                return mapo_error("%s: '%s' has no matching '%s'", c->f->path, ta ? na : nb,
                                  ta ? nb : na);
            const param_info *p = &u->params.p[w];
            if (ta->ndim != 2 || tb->ndim != 2 || ta->shape[0] != tb->shape[1] ||
                ta->shape[1] != p->shape[1] || tb->shape[0] != p->shape[0] || ta->shape[0] < 1)
                return mapo_error("%s: '%s' / '%s' do not fit %s [%lld, %lld]", c->f->path, na,
                                  nb, p->name, (long long)p->shape[0], (long long)p->shape[1]);
            int rank = (int)ta->shape[0];
            if (c->pass == 0) {
                add_adapter(u, b, a, k, rank);
                continue;
            }
            const param_table *L = &u->lora;
            float *A = L->data + L->p[b->lora[a][k][0]].offset;
            float *B = L->data + L->p[b->lora[a][k][1]].offset;
            if (st_to_f32(ta, A) || st_to_f32(tb, B))
                return mapo_error("%s: '%s' is not a float tensor", c->f->path, na);
            if (tal) {
                float alpha;
                if (tal->numel != 1 || st_to_f32(tal, &alpha) || !isfinite(alpha))
                    return mapo_error("%s: '%s' is not one finite number", c->f->path, nal);
                const float s = alpha / (float)rank;
                for (int64_t j = 0; j < tb->numel; j++) B[j] *= s;
            }
            for (int64_t j = 0; j < ta->numel; j++)
                if (!isfinite(A[j])) return mapo_error("%s: '%s' holds a non-finite value", c->f->path, na);
            for (int64_t j = 0; j < tb->numel; j++)
                if (!isfinite(B[j])) return mapo_error("%s: '%s' holds a non-finite value", c->f->path, nb);
        }
    return 0;
}

static int reset_block(unet *u, unet_tblock *b, void *ctx) {
    (void)u;
    (void)ctx;
    memset(b->lora, 0xff, sizeof b->lora);
    return 0;
}

void unet_lora_drop(unet *u) {
    params_free(&u->lora);
    each_tblock(u, reset_block, NULL);
    u->lora_on = 0;
}

int unet_lora_load(unet *u, const char *path, int with_grad) {
    char p[4200];
    if (mapo_is_dir(path)) {
        /* a folder: the diffusers file, else (trained with --lora_format kohya) the kohya one */
        snprintf(p, sizeof p, "%s/%s", path, LORA_DIFFUSERS_FILE);
        if (!mapo_is_file(p)) {
            char q[4200];
            snprintf(q, sizeof q, "%s/%s", path, LORA_KOHYA_FILE);
            if (mapo_is_file(q)) snprintf(p, sizeof p, "%s", q);
        }
    } else
        snprintf(p, sizeof p, "%s", path);
    if (u->lora.n) return mapo_error("the UNet already has LoRA adapters");
    st_file f;
    if (st_open(&f, p)) return -1;
    /* naming: detect from the first LoRA-looking tensor */
    load_ctx c = {&f, "", 0, 0, xcalloc(f.n ? f.n : 1, sizeof(int)), 0, 0};
    int found = 0;
    for (int i = 0; i < f.n && !found; i++) {
        const char *nm = f.tensors[i].name;
        if (strstr(nm, ".lora_A.") || strstr(nm, ".lora.down.")) {
            c.peft = strstr(nm, ".lora_A.") != NULL;
            c.prefix = strncmp(nm, "unet.", 5) ? "" : "unet.";
            found = 1;
        } else if (!strncmp(nm, "lora_", 5) && strstr(nm, ".lora_down.")) {
            c.kohya = found = 1; /* lora_unet_* (lora_te* are refused below by name) */
        }
    }
    int rc = 0;
    if (!found)
        rc = mapo_error("%s: no LoRA tensors (*.lora.down.weight, *.lora_A.weight or kohya's "
                        "lora_unet_*.lora_down.weight)", p);
    params_init(&u->lora);
    if (!rc) rc = each_tblock(u, load_block, &c);
    if (!rc) {
        params_alloc(&u->lora, with_grad);
        c.pass = 1;
        rc = each_tblock(u, load_block, &c);
    }
    for (int i = 0; i < f.n && !rc; i++)
        if (!c.used[i])
            rc = mapo_error("%s: tensor '%s' is not a LoRA adapter of this UNet's attention "
                            "projections (to_q, to_k, to_v, to_out.0)%s; text-encoder LoRAs and "
                            "other targets are not supported", p, f.tensors[i].name,
                            c.kohya && strncmp(f.tensors[i].name, "lora_te", 7)
                                ? " in either kohya layout (a LoRA for another UNet?)" : "");
    if (!rc && !u->lora.n) rc = mapo_error("%s: no adapter matches this UNet", p);
    free(c.used);
    st_close(&f);
    if (rc) {
        /* leave the UNet without adapters */
        unet_lora_drop(u);
        return -1;
    }
    u->lora_on = 1;
    return 0;
}

/* ------------------------------------------------------------------ save / merge */
int unet_lora_save_as(const unet *u, const char *path, st_dtype store) {
    if (!u->lora.n) return mapo_error("no LoRA adapters to save");
    st_writer *w = st_writer_new();
    for (int i = 0; i < u->lora.n; i++) {
        const param_info *p = &u->lora.p[i];
        char nm[700];
        size_t len = strlen(p->name);
        const char *suf = strstr(p->name, ".lora_A.weight") ? "lora.down.weight" : "lora.up.weight";
        snprintf(nm, sizeof nm, "unet.%.*s.%s", (int)(len - 14), p->name, suf);
        st_writer_add_f32_as(w, nm, store, p->ndim, p->shape, u->lora.data + p->offset);
    }
    int rc = st_writer_write(w, path);
    st_writer_free(w);
    return rc;
}

int unet_lora_save(const unet *u, const char *path) { return unet_lora_save_as(u, path, ST_F32); }

static int merge_block(unet *u, unet_tblock *b, void *ctx) {
    (void)ctx;
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 4; k++) {
            if (b->lora[a][k][0] < 0) continue;
            const param_info *pa = &u->lora.p[b->lora[a][k][0]], *pb = &u->lora.p[b->lora[a][k][1]];
            const param_info *pw = &u->params.p[base_weight(b, a, k)];
            const float *A = u->lora.data + pa->offset, *B = u->lora.data + pb->offset;
            float *W = u->params.data + pw->offset;
            const int64_t out = pw->shape[0], in = pw->shape[1], r = pa->shape[0];
            for (int64_t o = 0; o < out; o++)
                for (int64_t q = 0; q < r; q++) {
                    const float bq = B[o * r + q];
                    for (int64_t i = 0; i < in; i++) W[o * in + i] += bq * A[q * in + i];
                }
        }
    return 0;
}

void unet_lora_merge(unet *u) {
    if (!u->lora.n) return;
    params_require_f32(&u->params, "merging LoRA into the weights");
    each_tblock(u, merge_block, NULL);
    unet_lora_drop(u);
}
