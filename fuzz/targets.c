/* targets.c -- see targets.h. Built with clang + libFuzzer + ASan/UBSan by fuzz/fuzz.mk, and
 * #included by tests/test_fuzz_regress.c (plain gcc build) so both run the same code. */
#include "targets.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/classifier.h"
#include "mapo/clip_text.h"
#include "mapo/common.h"
#include "mapo/dataset.h"
#include "mapo/ddpm.h"
#include "mapo/idx.h"
#include "mapo/image.h"
#include "mapo/parquet.h"
#include "mapo/pipeline.h"
#include "mapo/safetensors.h"
#include "mapo/sampler.h"
#include "mapo/tokenizer.h"
#include "mapo/trainer.h"
#include "mapo/unet.h"
#include "mapo/vae.h"

static char g_tmp[512];              /* the per-process temp folder; "" before setup */
static clip_tokenizer *g_tok;        /* the valid SD 1.5 tokenizer of FUZZ_TOK_PROMPT */

/* ------------------------------------------------------------------ files */

static int write_bytes(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd);
}

static int copy_file(const char *from, const char *to) {
    FILE *f = fopen(from, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_setup: cannot read %s: %s\n", from, strerror(errno));
        return -1;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n == cap) buf = realloc(buf, cap = cap ? 2 * cap : 65536);
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got);
    fclose(f);
    int rc = write_bytes(to, buf, n);
    free(buf);
    if (rc) fprintf(stderr, "fuzz_setup: cannot write %s\n", to);
    return rc;
}

static int mkdirs(const char *fmt, const char *sub) {
    char p[1024];
    snprintf(p, sizeof p, fmt, g_tmp, sub);
    if (mkdir(p, 0755) && errno != EEXIST) {
        fprintf(stderr, "fuzz_setup: cannot create %s: %s\n", p, strerror(errno));
        return -1;
    }
    return 0;
}

/* g_tmp/<rel> */
static const char *tmp_path(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/%s", g_tmp, rel);
    return buf;
}

static int put(const char *rel, const uint8_t *data, size_t size) {
    char p[1024];
    return write_bytes(tmp_path(p, sizeof p, rel), data, size);
}

static void rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            struct stat st;
            if (!lstat(p, &st) && S_ISDIR(st.st_mode)) rm_tree(p);
            else unlink(p);
        }
        closedir(d);
    }
    rmdir(path);
}

/* a safetensors file with one F32 [1, 1] tensor of this name */
static int write_one_tensor(const char *rel, const char *name) {
    char hdr[256];
    int h = snprintf(hdr, sizeof hdr,
                     "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]}}", name);
    while (h % 8) hdr[h++] = ' ';
    uint8_t buf[8 + 256 + 4] = {0};
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, hdr, (size_t)h);
    return put(rel, buf, 8 + (size_t)h + 4);
}

int fuzz_setup(const char *root) {
    if (g_tmp[0]) return 0;
    mapo_log_level = 0;
    const char *base = getenv("TMPDIR");
    struct stat st;
    if (!base || !*base || stat(base, &st) || !S_ISDIR(st.st_mode))
        base = !stat("/dev/shm", &st) && S_ISDIR(st.st_mode) && !access("/dev/shm", W_OK)
                   ? "/dev/shm" : "/tmp";
    snprintf(g_tmp, sizeof g_tmp, "%s/mapo-fuzz-%ld", base, (long)getpid());
    rm_tree(g_tmp);
    if (mkdir(g_tmp, 0700)) {
        fprintf(stderr, "fuzz_setup: cannot create %s: %s\n", g_tmp, strerror(errno));
        g_tmp[0] = 0;
        return -1;
    }
    static const char *const dirs[] = {"cfg", "cfg/unet", "cfg/vae", "cfg/te", "cfg/pipe",
                                       "cfg/cls", "ds", "tok", "tok/0", "tok/1", "tok/2",
                                       "tok/3", "tok/4", "tok/base"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
        if (mkdirs("%s/%s", dirs[i])) return -1;
    /* fixtures: the valid files around the one being fuzzed */
    static const struct { const char *from, *to; } files[] = {
        {"tests/fixtures/dataset/manifest/img/c0.jpg", "ds/a.jpg"},
        {"tests/fixtures/dataset/manifest/img/r0.png", "ds/b.png"},
    };
    static const char *const sd15[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                       "special_tokens_map.json"};
    char from[2048], to[1024];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(from, sizeof from, "%s/%s", root, files[i].from);
        if (copy_file(from, tmp_path(to, sizeof to, files[i].to))) return -1;
    }
    /* tok/0..3 and tok/base: the SD 1.5 test tokenizer (vocab.json + merges.txt);
       tok/4: the SDXL one (tokenizer.json + tokenizer_config.json) */
    static const char *const tdirs[] = {"tok/0", "tok/1", "tok/2", "tok/3", "tok/base"};
    for (size_t d = 0; d < sizeof tdirs / sizeof *tdirs; d++)
        for (size_t i = 0; i < 4; i++) {
            snprintf(from, sizeof from, "%s/tests/fixtures/pipeline/sd15/tokenizer/%s", root,
                     sd15[i]);
            char rel[256];
            snprintf(rel, sizeof rel, "%s/%s", tdirs[d], sd15[i]);
            if (copy_file(from, tmp_path(to, sizeof to, rel))) return -1;
        }
    snprintf(from, sizeof from, "%s/tests/fixtures/pipeline/sdxl/tokenizer/tokenizer_config.json",
             root);
    if (copy_file(from, tmp_path(to, sizeof to, "tok/4/tokenizer_config.json"))) return -1;
    /* a text encoder folder whose weights can never match a config: the config is parsed and
       the model's parameter table built, then the weights are refused before any allocation
       of the model's size */
    if (write_one_tensor("cfg/te/model.safetensors",
                         "text_model.embeddings.token_embedding.weight"))
        return -1;
    return 0;
}

void fuzz_teardown(void) {
    if (g_tok) clip_tokenizer_free(g_tok);
    g_tok = NULL;
    if (g_tmp[0]) rm_tree(g_tmp);
    g_tmp[0] = 0;
}

/* ------------------------------------------------------------------ safetensors */

int fuzz_safetensors(const uint8_t *data, size_t size) {
    char p[1024];
    if (put("x.safetensors", data, size)) return mapo_error("fuzz: cannot write the input");
    st_file f;
    if (st_open(&f, tmp_path(p, sizeof p, "x.safetensors"))) return -1;
    int rc = 0;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (st_find(&f, t->name) != t) rc = mapo_error("fuzz: st_find misses '%s'", t->name);
        size_t n = t->numel > 0 ? (size_t)t->numel : 1;
        float *a = malloc(n * sizeof *a);
        double *b = malloc(n * sizeof *b);
        int fa = st_to_f32(t, a), fb = st_to_f64(t, b);
        int is_float = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 ||
                       t->dtype == ST_F64;
        if (fa != (is_float ? 0 : -1) || fb != fa)
            rc = mapo_error("fuzz: st_to_f32/f64 of '%s' (%s) returned %d / %d", t->name,
                            st_dtype_name(t->dtype), fa, fb);
        if (is_float && !st_read_f32_shape(&f, t->name, a, t->ndim, t->shape)) {
            /* same conversion twice: bit-identical (NaNs compared as bits) */
            float *c = malloc(n * sizeof *c);
            st_to_f32(t, c);
            if (t->numel > 0 && memcmp(a, c, (size_t)t->numel * sizeof *c))
                rc = mapo_error("fuzz: st_read_f32_shape differs from st_to_f32 for '%s'",
                                t->name);
            free(c);
        }
        free(a);
        free(b);
    }
    for (int i = 0; i < f.n_meta; i++)
        if (st_meta(&f, f.meta_keys[i]) == NULL)
            rc = mapo_error("fuzz: st_meta misses '%s'", f.meta_keys[i]);
    st_close(&f);
    if (rc) abort(); /* an accepted file the API contradicts itself on: a bug */
    return 0;
}

/* ------------------------------------------------------------------ parquet */

int fuzz_parquet(const uint8_t *data, size_t size) {
    char p[1024];
    if (put("x.parquet", data, size)) return mapo_error("fuzz: cannot write the input");
    tmp_path(p, sizeof p, "x.parquet");
    parquet_file *pf;
    if (parquet_open(&pf, p)) return -1;
    int rc = 0;
    char first[1024] = ""; /* the first refusal, returned at the end */
    const int nrg = parquet_num_row_groups(pf), nc = parquet_num_columns(pf);
    (void)parquet_num_rows(pf);
    for (int rg = 0; rg < nrg && rg < 16; rg++) {
        const int64_t nr = parquet_row_group_num_rows(pf, rg);
        for (int c = 0; c < nc && c < 32; c++) {
            const char *name = parquet_column_name(pf, c);
            if (!name || parquet_column_index(pf, name) < 0) abort();
            const int kind = parquet_column_kind(pf, c);
            parquet_column col;
            if (parquet_read_column(pf, rg, c, &col)) {
                if (!rc) snprintf(first, sizeof first, "%s", mapo_last_error());
                rc = -1;
                continue;
            }
            if (col.n != nr || col.kind != kind) abort();
            /* touch every value: reads past what the reader allocated show up under ASan */
            uint64_t h = 0;
            for (int64_t i = 0; i < col.n; i++) {
                h += col.valid[i];
                if (col.kind == PQ_BYTES && col.ptr[i])
                    for (int64_t k = 0; k < col.len[i]; k++) h += col.ptr[i][k];
                else if (col.kind == PQ_DOUBLE && col.valid[i])
                    h += col.num[i] == col.num[i];
            }
            (void)h;
            parquet_column_free(&col);
        }
    }
    parquet_close(pf);
    /* as a Pick-a-Pic shard: columns caption, jpg_0, jpg_1, label_0 [, label_1] */
    pref_dataset_opts o = {.on_bad_image = ON_BAD_IMAGE_SKIP};
    pref_dataset *d;
    if (pref_dataset_open(&d, p, &o)) {
        if (rc) mapo_error("%s", first);
        return -1;
    }
    const int res = 8;
    float ch[3 * 8 * 8], rj[3 * 8 * 8];
    for (int64_t i = 0; i < pref_dataset_size(d) && i < 2; i++) {
        char *cap = NULL;
        if (!pref_dataset_caption(d, i, &cap)) free(cap);
        prep_cfg cfg = {res, 1, 0};
        int hw[2], yx[2];
        cap = NULL;
        if (pref_dataset_get(d, i, &cfg, 1, 0, &cap, ch, rj, hw, yx) >= 0) free(cap);
    }
    pref_dataset_close(d);
    if (rc) mapo_error("%s", first);
    return rc;
}

/* ------------------------------------------------------------------ images */

int fuzz_image(const uint8_t *data, size_t size) {
    (void)image_detect(data, size);
    mapo_image im;
    if (image_decode(&im, data, size, "fuzz")) return -1;
    if (im.w <= 0 || im.h <= 0 || im.c != 3 || !im.px) abort();
    /* touch the last pixel: the buffer holds w * h * 3 bytes */
    volatile uint8_t last = im.px[(size_t)im.w * (size_t)im.h * 3 - 1];
    (void)last;
    image_free(&im);
    return 0;
}

/* ------------------------------------------------------------------ JSON configs */

int fuzz_config(const uint8_t *data, size_t size) {
    if (size < 1) return mapo_error("fuzz: empty input");
    const int sel = data[0] % FUZZ_CFG_COUNT;
    const uint8_t *js = data + 1;
    const size_t n = size - 1;
    char p[1024];
    switch (sel) {
    case FUZZ_CFG_UNET: {
        if (put("cfg/unet/config.json", js, n)) return mapo_error("fuzz: cannot write");
        unet_config c;
        if (unet_config_load(&c, tmp_path(p, sizeof p, "cfg/unet/config.json"))) return -1;
        unet u;
        unet_build(&u, &c); /* the parameter table only (no arena): owns c.json now */
        unet_free(&u);
        return 0;
    }
    case FUZZ_CFG_VAE: {
        if (put("cfg/vae/config.json", js, n)) return mapo_error("fuzz: cannot write");
        int f;
        return vae_config_downscale(tmp_path(p, sizeof p, "cfg/vae"), &f);
    }
    case FUZZ_CFG_CLIP: {
        if (put("cfg/te/config.json", js, n)) return mapo_error("fuzz: cannot write");
        clip_text *m;
        if (clip_text_load_dir(&m, tmp_path(p, sizeof p, "cfg/te"))) return -1;
        clip_text_free(m); /* a config matching a [1, 1] embedding and nothing else */
        return 0;
    }
    case FUZZ_CFG_SCHEDULER: {
        const int steps = 1 + data[0] / FUZZ_CFG_COUNT;
        char *text = malloc(n + 1);
        memcpy(text, js, n);
        text[n] = 0;
        int rc = 0;
        static const char *const kinds[2] = {"ddim", "euler"};
        for (int k = 0; k < 2; k++) {
            sampler *s;
            if (sampler_create_from_string(&s, text, "scheduler_config.json", kinds[k], steps)) {
                rc = -1;
                continue;
            }
            /* the whole sampling loop on 4 values: x_T = 1, eps = 0.5, noise = -1 */
            float x[4] = {1, 1, 1, 1}, xin[4], mo[4] = {0.5f, 0.5f, 0.5f, 0.5f},
                  nz[4] = {-1, -1, -1, -1};
            sampler_init_noise(s, x, 4);
            for (int i = 0; i < sampler_num_steps(s); i++) {
                (void)sampler_timestep(s, i);
                (void)sampler_sigma(s, i);
                sampler_scale_model_input(s, i, xin, x, 4);
                if (sampler_step(s, i, x, mo, nz, 4)) rc = -1;
            }
            sampler_free(s);
        }
        free(text);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", mapo_last_error());
        if (put("cfg/scheduler_config.json", js, n)) return mapo_error("fuzz: cannot write");
        ddpm_schedule sch;
        if (!ddpm_from_config(&sch, tmp_path(p, sizeof p, "cfg/scheduler_config.json")))
            ddpm_free(&sch);
        else
            rc = -1;
        if (rc && msg[0]) mapo_error("%s", msg); /* the sampler's message first */
        return rc;
    }
    case FUZZ_CFG_MODEL_INDEX:
        if (put("cfg/pipe/model_index.json", js, n)) return mapo_error("fuzz: cannot write");
        return pipeline_is_pixel(tmp_path(p, sizeof p, "cfg/pipe")) ? 0 : -1;
    case FUZZ_CFG_TRAINER_STATE: {
        if (put("cfg/trainer_state.json", js, n)) return mapo_error("fuzz: cannot write");
        train_config c;
        train_config_default(&c);
        c.seed = 42;
        c.train_batch_size = 2;
        c.grad_accum = 1;
        int64_t step;
        return checkpoint_state_read(tmp_path(p, sizeof p, "cfg/trainer_state.json"), &c,
                                     &step);
    }
    case FUZZ_CFG_CLASSIFIER: {
        if (put("cfg/cls/config.json", js, n)) return mapo_error("fuzz: cannot write");
        classifier *m;
        if (classifier_load(&m, tmp_path(p, sizeof p, "cfg/cls"))) return -1;
        classifier_free(m); /* not reached: there is no model.safetensors */
        return 0;
    }
    }
    return -1;
}

/* ------------------------------------------------------------------ tokenizer */

static const char *const TOK_FILE[FUZZ_TOK_COUNT - 1] = {
    "tok/0/vocab.json", "tok/1/merges.txt", "tok/2/tokenizer_config.json",
    "tok/3/special_tokens_map.json", "tok/4/tokenizer.json"};

int fuzz_tokenizer(const uint8_t *data, size_t size) {
    if (size < 1) return mapo_error("fuzz: empty input");
    const int sel = data[0] % FUZZ_TOK_COUNT;
    const uint8_t *s = data + 1;
    const size_t n = size - 1;
    char p[1024];
    int32_t ids[80];
    static const char *const prompts[] = {
        "a photo of an astronaut riding a horse on the moon",
        "<|startoftext|>It's 12:30, ÉCOLE naïve café!! <|endoftext|> x\xff\xfe",
    };
    if (sel == FUZZ_TOK_PROMPT) {
        if (!g_tok && clip_tokenizer_load(&g_tok, tmp_path(p, sizeof p, "tok/base")))
            abort(); /* the committed tokenizer must load */
        char *text = malloc(n + 1);
        memcpy(text, s, n);
        text[n] = 0;
        int rc = clip_tokenize(g_tok, text, ids, 77);
        const int vs = clip_tokenizer_vocab_size(g_tok);
        for (int i = 0; rc >= 0 && i < 77; i++)
            if (ids[i] < 0 || ids[i] >= vs) abort(); /* an id outside the vocabulary */
        free(text);
        return rc < 0 ? -1 : 0;
    }
    if (put(TOK_FILE[sel], s, n)) return mapo_error("fuzz: cannot write");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tok/%d", g_tmp, sel);
    clip_tokenizer *t;
    if (clip_tokenizer_load(&t, dir)) return -1;
    const int ml = clip_tokenizer_max_length(t);
    if (ml >= 2 && ml <= 80)
        for (size_t k = 0; k < sizeof prompts / sizeof *prompts; k++)
            (void)clip_tokenize(t, prompts[k], ids, ml);
    clip_tokenizer_free(t);
    return 0;
}

/* ------------------------------------------------------------------ JSONL manifests */

int fuzz_manifest(const uint8_t *data, size_t size) {
    char p[1024];
    if (put("ds/manifest.jsonl", data, size)) return mapo_error("fuzz: cannot write");
    pref_dataset_opts o = {.on_bad_image = ON_BAD_IMAGE_SKIP};
    pref_dataset *d;
    if (pref_dataset_open(&d, tmp_path(p, sizeof p, "ds/manifest.jsonl"), &o)) return -1;
    /* decode only images that stay in the manifest's folder (a manifest may name any file on
       the machine: /dev, /proc, ...; what is there is not the manifest reader's input) */
    const int local = !memchr(data, '/', size) && !memchr(data, '\\', size);
    const int64_t n = pref_dataset_size(d);
    float a[3 * 8 * 8], b[3 * 8 * 8], af[3 * 8 * 8], bf[3 * 8 * 8];
    for (int64_t i = 0; i < n && i < 3; i++) {
        char desc[256], *cap = NULL;
        pref_dataset_describe(d, i, desc, sizeof desc);
        if (!pref_dataset_caption(d, i, &cap)) free(cap);
        if (!local) continue;
        prep_cfg cfg = {8, (int)(i & 1), 0};
        int hw[2], yx[2];
        cap = NULL;
        if (i == 0) {
            if (pref_dataset_get_flips(d, i, &cfg, 7, &cap, a, b, af, bf, hw, yx) >= 0) free(cap);
        } else if (pref_dataset_get(d, i, &cfg, 7, 0, &cap, a, b, hw, yx) >= 0) {
            free(cap);
        }
    }
    (void)pref_dataset_fingerprint(d);
    pref_dataset_close(d);
    return 0;
}

/* ------------------------------------------------------------------ IDX */

int fuzz_idx(const uint8_t *data, size_t size) {
    char p[1024];
    if (put("x-idx-ubyte", data, size)) return mapo_error("fuzz: cannot write");
    tmp_path(p, sizeof p, "x-idx-ubyte");
    idx_u8 a;
    int rc = idx_read_u8(&a, p, 0, (int64_t)1 << 26);
    if (!rc) {
        if (a.count > 0) {
            volatile uint8_t last = a.data[a.count - 1];
            (void)last;
        }
        idx_free(&a);
    }
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mapo_last_error());
    int64_t d0;
    idx_u8 h;
    if (!idx_read_u8_head(&h, p, 0, (int64_t)1 << 26, 2, &d0)) idx_free(&h);
    if (rc) mapo_error("%s", msg);
    return rc;
}

const fuzz_target FUZZ_TARGETS[] = {
    {"safetensors", fuzz_safetensors}, {"parquet", fuzz_parquet}, {"image", fuzz_image},
    {"config", fuzz_config},           {"tokenizer", fuzz_tokenizer},
    {"manifest", fuzz_manifest},       {"idx", fuzz_idx},         {NULL, NULL}};
