/* test_vae.c -- the C AutoencoderKL against diffusers.
 *
 * Fixtures: tests/fixtures/vae/<case>/ from tools/make_vae_fixtures.py (random-initialised,
 * perturbed tiny AutoencoderKLs; see the README there). Compared per tensor: encoder mean, logvar,
 * std, the posterior sample for given noise, the scaled training latents, the decoder output, the
 * decoder output of vae_decode_latents (unscale + shift), diffusers' tiled decode and tiled
 * encode; then the same with a 1-byte conv scratch (every 3x3 conv in one-row bands), refusals of
 * bad configs / weights / sizes, old attention parameter names, and the peak working memory of a
 * tiled vs an untiled decode of a large latent (printed).
 *
 * Tolerance: relative L2 error ||c - ref|| / ||ref|| <= 1e-4 per tensor (the bound).
 * Both sides compute in float32 with different summation orders (im2col + OpenBLAS GEMM vs
 * torch's mkldnn convolutions, a fused vs an unfused softmax); rounding of ~1e-7 per op grows
 * through the ~20-40 layers of these encoders / decoders to ~1e-6 (measured worst 2.3e-6; an
 * SD-1.5-sized config, block_out [128,256,512,512], 32 groups, checked once outside CI: 1.7e-6),
 * while each wrong formula tried on purpose failed: GroupNorm eps 1e-5 instead of 1e-6 (0.15; the
 * fixtures scale both conv_in by 0.01 so the first GroupNorms see variances of ~1e-5), the
 * attention residual scaled by 0.999 (3.6e-4), symmetric instead of (0,1,0,1) downsampling
 * padding (0.8), no upper logvar clamp (0.98), a wrong blend weight in blend_v / blend_h (0.08 /
 * 0.28), + instead of - shift_factor (0.11), a wrong row offset in the banded im2col (0.8). The
 * memory test asserts only that a tiled decode's working memory is a fraction of the untiled one
 * (deterministic byte counts; times are printed, never asserted). Clamped logvar
 * channels are compared channel by channel, so the constant clamped channels (20 and -30) cannot
 * hide errors in the others. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"
#include "mapo/vae.h"
#include "testutil.h"

#define TOL 1e-4
#define FIX "tests/fixtures/vae"

static double g_worst = 0;
static char g_worst_name[256];

static void note(const char *what, double e) {
    if (e > g_worst) {
        g_worst = e;
        snprintf(g_worst_name, sizeof g_worst_name, "%s", what);
    }
}

typedef struct {
    st_file f;
    char name[64];
} fixture;

static void fx_open(fixture *fx, const char *cs) {
    char p[512];
    snprintf(p, sizeof p, FIX "/%s/expect.safetensors", cs);
    if (st_open(&fx->f, p)) fail_msg("%s", mapo_last_error());
    snprintf(fx->name, sizeof fx->name, "%s", cs);
}

/* a fixture tensor as float32 (malloc'd); dims into d[4] */
static float *fx_get(fixture *fx, const char *name, int64_t d[4]) {
    const st_tensor *t = st_find(&fx->f, name);
    if (!t) fail_msg("%s: fixture lacks '%s'", fx->name, name);
    assert_int_equal(t->ndim, 4);
    for (int i = 0; i < 4; i++) d[i] = t->shape[i];
    float *x = malloc(t->numel * sizeof(float));
    assert_int_equal(st_to_f32(t, x), 0);
    return x;
}

static double cmp(fixture *fx, const char *name, const float *c, int64_t n, const char *ctx) {
    int64_t d[4];
    float *ref = fx_get(fx, name, d);
    assert_int_equal(d[0] * d[1] * d[2] * d[3], n);
    double e = rel_err_f32(c, ref, n);
    free(ref);
    char w[256];
    snprintf(w, sizeof w, "%s/%s%s", fx->name, name, ctx);
    note(w, e);
    if (!(e <= TOL)) fail_msg("%s: relative error %.3e > %.0e", w, e, TOL);
    return e;
}

/* per (sample, channel) plane of a [B,C,h,w] tensor */
static double cmp_planes(fixture *fx, const char *name, const float *c, const char *ctx) {
    int64_t d[4];
    float *ref = fx_get(fx, name, d);
    const int64_t hw = d[2] * d[3];
    double worst = 0;
    for (int64_t p = 0; p < d[0] * d[1]; p++) {
        double e = rel_err_f32(c + p * hw, ref + p * hw, hw);
        if (e > worst) worst = e;
        if (!(e <= TOL))
            fail_msg("%s/%s%s: plane %lld relative error %.3e > %.0e", fx->name, name, ctx,
                     (long long)p, e, TOL);
    }
    free(ref);
    char w[256];
    snprintf(w, sizeof w, "%s/%s%s (per plane)", fx->name, name, ctx);
    note(w, worst);
    return worst;
}

static vae *load(const char *cs) {
    char p[512];
    snprintf(p, sizeof p, FIX "/%s/model", cs);
    vae *v;
    if (vae_load_dir(&v, p)) fail_msg("%s", mapo_last_error());
    return v;
}

/* encode, sample, latents, decode, decode_latents of one case; ctx tags the run */
static void run_case(const char *cs, vae *v, const char *ctx) {
    fixture fx;
    fx_open(&fx, cs);
    int64_t xd[4], zd[4];
    float *x = fx_get(&fx, "x", xd), *noise = fx_get(&fx, "noise", zd);
    float *z = fx_get(&fx, "z", zd);
    const int B = (int)xd[0], H = (int)xd[2], W = (int)xd[3], f = vae_downscale(v);
    const int L = vae_latent_channels(v), h = H / f, w = W / f;
    assert_int_equal(xd[1], vae_in_channels(v));
    assert_int_equal(zd[1], L);
    assert_int_equal(zd[2], h);
    assert_int_equal(zd[3], w);
    const int64_t nl = (int64_t)B * L * h * w, nx = (int64_t)B * vae_out_channels(v) * H * W;
    float *mean = malloc(nl * 4), *logvar = malloc(nl * 4), *std = malloc(nl * 4);
    float *smp = malloc(nl * 4), *lat = malloc(nl * 4), *dec = malloc(nx * 4);
    if (vae_encode(v, x, B, H, W, mean, logvar, std)) fail_msg("%s", mapo_last_error());
    double e = 0, t;
    t = cmp_planes(&fx, "mean", mean, ctx), e = fmax(e, t);
    t = cmp_planes(&fx, "logvar", logvar, ctx), e = fmax(e, t);
    t = cmp_planes(&fx, "std", std, ctx), e = fmax(e, t);
    vae_sample(smp, mean, std, noise, nl);
    t = cmp_planes(&fx, "sample", smp, ctx), e = fmax(e, t);
    /* the training helper, with noise, and the NULL outputs of vae_encode */
    if (vae_encode_latents(v, x, B, H, W, noise, lat, 0)) fail_msg("%s", mapo_last_error());
    t = cmp_planes(&fx, "latents", lat, ctx), e = fmax(e, t);
    float *m2 = malloc(nl * 4);
    if (vae_encode(v, x, B, H, W, m2, NULL, NULL)) fail_msg("%s", mapo_last_error());
    assert_memory_equal(m2, mean, nl * 4);
    if (vae_encode_latents(v, x, B, H, W, NULL, m2, 0)) fail_msg("%s", mapo_last_error());
    vae_unscale_latents(v, m2, nl); /* back to the mean, up to rounding */
    assert_true(rel_err_f32(m2, mean, nl) < 1e-6);
    free(m2);
    /* decode */
    if (vae_decode(v, z, B, h, w, dec, 0)) fail_msg("%s", mapo_last_error());
    t = cmp(&fx, "dec", dec, nx, ctx), e = fmax(e, t);
    float *latr = fx_get(&fx, "latents", zd);
    if (vae_decode_latents(v, latr, B, h, w, dec, 0)) fail_msg("%s", mapo_last_error());
    t = cmp(&fx, "dec_latents", dec, nx, ctx), e = fmax(e, t);
    printf("  %-6s%-16s encode/decode B=%d %dx%d -> %dx%d (f=%d, L=%d): worst %.2e\n", cs, ctx,
           B, H, W, h, w, f, L, e);
    free(latr);
    free(x), free(noise), free(z), free(mean), free(logvar), free(std), free(smp), free(lat);
    free(dec);
    st_close(&fx.f);
}

static void run_tiled(const char *cs, vae *v, const char *ctx) {
    fixture fx;
    fx_open(&fx, cs);
    const int f = vae_downscale(v), L = vae_latent_channels(v);
    int64_t d[4];
    float *zt = fx_get(&fx, "z_tiled", d);
    const int B = (int)d[0], h = (int)d[2], w = (int)d[3];
    const int64_t nx = (int64_t)B * vae_out_channels(v) * h * f * w * f;
    float *dec = malloc(nx * 4), *dec0 = malloc(nx * 4);
    if (vae_decode(v, zt, B, h, w, dec, 1)) fail_msg("%s", mapo_last_error());
    double e = cmp(&fx, "dec_tiled", dec, nx, ctx);
    /* the untiled decode differs (each tile sees only its neighbourhood): tiling happened */
    if (vae_decode(v, zt, B, h, w, dec0, 0)) fail_msg("%s", mapo_last_error());
    double diff = rel_err_f32(dec0, dec, nx);
    assert_true(diff > 1e-2);
    printf("  %-6s%-16s tiled decode %dx%d latent (tiles of %d): error %.2e (untiled differs "
           "by %.2f)\n", cs, ctx, h, w, vae_sample_size(v) / f, e, diff);
    free(zt), free(dec), free(dec0);

    float *xt = fx_get(&fx, "x_tiled", d);
    const int Bx = (int)d[0], H = (int)d[2], W = (int)d[3];
    const int64_t nl = (int64_t)Bx * L * (H / f) * (W / f);
    float *mean = malloc(nl * 4), *logvar = malloc(nl * 4), *std = malloc(nl * 4);
    if (vae_encode_tiled(v, xt, Bx, H, W, mean, logvar, std)) fail_msg("%s", mapo_last_error());
    e = cmp(&fx, "mean_tiled", mean, nl, ctx);
    e = fmax(e, cmp(&fx, "logvar_tiled", logvar, nl, ctx));
    e = fmax(e, cmp(&fx, "std_tiled", std, nl, ctx));
    printf("  %-6s%-16s tiled encode %dx%d image (tiles of %d): worst %.2e\n", cs, ctx, H, W,
           vae_sample_size(v), e);
    free(xt), free(mean), free(logvar), free(std);
    st_close(&fx.f);
}

static void test_small(void **state) {
    (void)state;
    vae *v = load("small");
    assert_int_equal(vae_downscale(v), 2);
    assert_int_equal(vae_has_shift(v), 0);
    assert_true(fabs(vae_scaling_factor(v) - 0.18215) < 1e-12);
    assert_int_equal(vae_param_count(v), 43711);
    run_case("small", v, "");
    run_tiled("small", v, "");
    vae_free(v);
}

static void test_shift(void **state) {
    (void)state;
    vae *v = load("shift");
    assert_int_equal(vae_downscale(v), 4);
    assert_int_equal(vae_has_shift(v), 1);
    assert_true(fabs(vae_shift_factor(v) - 0.0609) < 1e-12);
    assert_true(fabs(vae_scaling_factor(v) - 1.5305) < 1e-12);
    run_case("shift", v, "");
    run_tiled("shift", v, "");
    /* one output row per im2col band: the banded convolution must give the same result */
    vae_set_conv_scratch(v, 1);
    run_case("shift", v, " (1-row bands)");
    run_tiled("shift", v, " (1-row bands)");
    vae_free(v);
}

static void test_f16(void **state) {
    (void)state;
    vae *v = load("f16");
    assert_int_equal(vae_latent_channels(v), 3);
    run_case("f16", v, "");
    /* the clamps really acted: channel 0 at 20, channel 1 at -30 */
    fixture fx;
    fx_open(&fx, "f16");
    int64_t d[4];
    float *lv = fx_get(&fx, "logvar", d);
    assert_true(lv[0] == 20.0f && lv[d[2] * d[3]] == -30.0f);
    free(lv);
    st_close(&fx.f);
    vae_free(v);
}

/* tiled decode / encode of inputs no larger than one tile falls back to the plain path */
static void test_tiled_fallback(void **state) {
    (void)state;
    vae *v = load("small");
    const int L = 4, h = 8, w = 8; /* tile of 8 latents */
    float *z = malloc(L * h * w * 4), *a = malloc(3 * 16 * 16 * 4), *b = malloc(3 * 16 * 16 * 4);
    for (int i = 0; i < L * h * w; i++) z[i] = (float)sin(0.37 * i);
    assert_int_equal(vae_decode(v, z, 1, h, w, a, 0), 0);
    assert_int_equal(vae_decode(v, z, 1, h, w, b, 1), 0);
    assert_memory_equal(a, b, 3 * 16 * 16 * 4);
    free(z), free(a), free(b);
    vae_free(v);
}

/* ------------------------------------------------------------------ memory */
static void test_memory(void **state) {
    (void)state;
    vae *v = load("small");
    const int L = 4, h = 96, w = 128, f = vae_downscale(v);
    const int64_t nz = (int64_t)L * h * w, nx = (int64_t)3 * h * f * w * f;
    float *z = malloc(nz * 4), *xt = malloc(nx * 4), *xu = malloc(nx * 4);
    for (int64_t i = 0; i < nz; i++) z[i] = (float)sin(0.013 * i) * 1.5f;
    /* tiled first: the process RSS peak only grows */
    vae_reset_peak(v);
    double t0 = mapo_now();
    assert_int_equal(vae_decode(v, z, 1, h, w, xt, 1), 0);
    double tt = mapo_now() - t0;
    size_t pt = vae_peak_bytes(v), rss_t = mapo_peak_rss();
    vae_reset_peak(v);
    t0 = mapo_now();
    assert_int_equal(vae_decode(v, z, 1, h, w, xu, 0), 0);
    double tu = mapo_now() - t0;
    size_t pu = vae_peak_bytes(v), rss_u = mapo_peak_rss();
    printf("  memory: decode of a %dx%d latent to %dx%d (tile %d latents): working memory peak "
           "tiled %.2f MiB vs untiled %.2f MiB (output %.2f MiB); process peak RSS after tiled "
           "%.1f MiB, after untiled %.1f MiB; time tiled %.2f s, untiled %.2f s\n",
           h, w, h * f, w * f, vae_sample_size(v) / f, pt / 1048576.0, pu / 1048576.0,
           nx * 4 / 1048576.0, rss_t / 1048576.0, rss_u / 1048576.0, tt, tu);
    /* bounded by the tile, not the image: the tiled peak is a small fraction of the untiled one */
    assert_true(pt * 4 < pu);
    free(z), free(xt), free(xu);
    vae_free(v);
}

/* ------------------------------------------------------------------ refusals */
static char g_tmp[256];

static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(a);
    assert_non_null(b);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

/* tmp/ holds config.json from `cfg` (a JSON object, or raw text when raw != NULL) and the weights
   of tests/fixtures/vae/<cs>/model */
static void make_dir(const char *cs, json_t *cfg, const char *raw) {
    char p[512], q[512];
    snprintf(p, sizeof p, "%s/config.json", g_tmp);
    if (raw) {
        FILE *f = fopen(p, "w");
        fputs(raw, f);
        fclose(f);
    } else {
        assert_int_equal(json_dump_file(cfg, p, JSON_INDENT(1)), 0);
    }
    snprintf(p, sizeof p, FIX "/%s/model/diffusion_pytorch_model.safetensors", cs);
    snprintf(q, sizeof q, "%s/diffusion_pytorch_model.safetensors", g_tmp);
    copy_file(p, q);
}

static json_t *fixture_cfg(const char *cs) {
    char p[512];
    snprintf(p, sizeof p, FIX "/%s/model/config.json", cs);
    json_t *c = json_load_file(p, 0, NULL);
    assert_non_null(c);
    return c;
}

static void expect_refusal(const char *what, const char *needle) {
    vae *v = (vae *)1;
    int rc = vae_load_dir(&v, g_tmp);
    if (rc == 0) fail_msg("%s: loaded, expected a refusal", what);
    assert_null(v);
    const char *m = mapo_last_error();
    if (!strstr(m, needle)) fail_msg("%s: message '%s' lacks '%s'", what, m, needle);
    printf("    refused %-28s %s\n", what, m + (strlen(m) > 90 ? strlen(m) - 90 : 0));
}

static void cfg_case(const char *what, const char *key, json_t *val, const char *needle) {
    json_t *c = fixture_cfg("small");
    if (val) json_object_set_new(c, key, val);
    else json_object_del(c, key);
    make_dir("small", c, NULL);
    json_decref(c);
    expect_refusal(what, needle);
}

static void test_bad_config(void **state) {
    (void)state;
    /* control: the copied folder loads */
    json_t *c = fixture_cfg("small");
    make_dir("small", c, NULL);
    json_decref(c);
    vae *v;
    if (vae_load_dir(&v, g_tmp)) fail_msg("%s", mapo_last_error());
    vae_free(v);
    cfg_case("unknown key", "down_block_out", json_integer(3), "unsupported config key 'down_block_out'");
    cfg_case("class name", "_class_name", json_string("AutoencoderTiny"), "AutoencoderTiny");
    cfg_case("act_fn", "act_fn", json_string("gelu"), "act_fn");
    cfg_case("latents_mean", "latents_mean", json_pack("[f,f,f,f]", 0.1, 0.2, 0.3, 0.4), "latents_mean");
    cfg_case("sample_size list", "sample_size", json_pack("[i,i]", 16, 16), "sample_size");
    cfg_case("down block type", "down_block_types",
             json_pack("[s,s]", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"), "AttnDownEncoderBlock2D");
    cfg_case("up block type", "up_block_types", json_pack("[s]", "UpDecoderBlock2D"), "up_block_types");
    cfg_case("groups", "norm_num_groups", json_integer(3), "not divisible");
    cfg_case("negative channels", "latent_channels", json_integer(-4), "latent_channels");
    cfg_case("string channels", "in_channels", json_string("3"), "in_channels");
    cfg_case("scaling zero", "scaling_factor", json_real(0.0), "scaling_factor");
    cfg_case("shift string", "shift_factor", json_string("0.1"), "shift_factor");
    cfg_case("quant conv flag", "use_quant_conv", json_integer(1), "use_quant_conv");
    cfg_case("too many blocks", "block_out_channels",
             json_pack("[i,i,i,i,i,i,i,i,i]", 4, 4, 4, 4, 4, 4, 4, 4, 4), "block_out_channels");
    /* a config that disagrees with the weights */
    cfg_case("weights vs config", "latent_channels", json_integer(8), "shape");
    cfg_case("missing weights", "use_quant_conv", json_false(), "unexpected tensor 'quant_conv");
    cfg_case("mid attention off", "mid_block_add_attention", json_false(), "unexpected tensor");
    cfg_case("layers", "layers_per_block", json_integer(2), "missing");
    make_dir("small", NULL, "{\"in_channels\": 3,");
    expect_refusal("truncated JSON", "cannot read config");
    make_dir("small", NULL, "[1, 2]");
    expect_refusal("not an object", "not a JSON object");
    /* no weights file */
    c = fixture_cfg("small");
    make_dir("small", c, NULL);
    json_decref(c);
    char p[512];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", g_tmp);
    unlink(p);
    expect_refusal("no weights file", "no diffusion_pytorch_model.safetensors");
    v = (vae *)1;
    assert_int_equal(vae_load_dir(&v, "tests/fixtures/vae/no_such_dir"), -1);
    assert_null(v);
}

/* rewrite the small model's weights through `edit` (which may rename, drop, add or alter
   tensors) into tmp/ */
typedef struct {
    const char *drop, *rename_from, *rename_to, *nan_in, *add;
    int truncate, as_i32;
} wedit;

static void write_weights(const wedit *e) {
    json_t *c = fixture_cfg("small");
    make_dir("small", c, NULL);
    json_decref(c);
    st_file f;
    if (st_open(&f, FIX "/small/model/diffusion_pytorch_model.safetensors"))
        fail_msg("%s", mapo_last_error());
    st_writer *w = st_writer_new();
    float **bufs = calloc(f.n + 1, sizeof *bufs);
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (e->drop && !strcmp(t->name, e->drop)) continue;
        char name[512];
        snprintf(name, sizeof name, "%s", t->name);
        if (e->rename_from) {
            const char *s = strstr(t->name, e->rename_from);
            if (s)
                snprintf(name, sizeof name, "%.*s%s%s", (int)(s - t->name), t->name, e->rename_to,
                         s + strlen(e->rename_from));
        }
        bufs[i] = malloc(t->numel * 4);
        assert_int_equal(st_to_f32(t, bufs[i]), 0);
        if (e->nan_in && !strcmp(t->name, e->nan_in)) bufs[i][t->numel / 2] = NAN;
        st_dtype dt = ST_F32;
        if (e->as_i32 && !strcmp(t->name, "quant_conv.bias")) dt = ST_I32;
        st_writer_add(w, name, dt, t->ndim, t->shape, bufs[i]);
    }
    float extra[3] = {1, 2, 3};
    int64_t es[1] = {3};
    if (e->add) st_writer_add(w, e->add, ST_F32, 1, es, extra);
    char p[512];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", g_tmp);
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    for (int i = 0; i < f.n; i++) free(bufs[i]);
    free(bufs);
    st_close(&f);
    if (e->truncate) {
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal(truncate(p, st.st_size - e->truncate), 0);
    }
}

static void test_bad_weights(void **state) {
    (void)state;
    wedit e = {0};
    e.drop = "decoder.conv_out.bias";
    write_weights(&e);
    expect_refusal("missing tensor", "'decoder.conv_out.bias' is missing");
    memset(&e, 0, sizeof e);
    e.add = "decoder.extra.weight";
    write_weights(&e);
    expect_refusal("extra tensor", "unexpected tensor 'decoder.extra.weight'");
    memset(&e, 0, sizeof e);
    e.nan_in = "encoder.conv_in.weight";
    write_weights(&e);
    expect_refusal("NaN weight", "non-finite");
    memset(&e, 0, sizeof e);
    e.as_i32 = 1;
    write_weights(&e);
    expect_refusal("integer dtype", "quant_conv.bias");
    memset(&e, 0, sizeof e);
    e.truncate = 100;
    write_weights(&e);
    expect_refusal("truncated file", "diffusion_pytorch_model.safetensors");
    /* old attention names (query / key / value / proj_attn) load like diffusers renames them */
    memset(&e, 0, sizeof e);
    e.rename_from = ".to_out.0.";
    e.rename_to = ".proj_attn.";
    write_weights(&e);
    vae *v;
    if (vae_load_dir(&v, g_tmp)) fail_msg("%s", mapo_last_error());
    vae *ref = load("small");
    const int64_t n = 4 * 8 * 12;
    float *z = malloc(n * 4), *a = malloc(3 * 16 * 24 * 4), *b = malloc(3 * 16 * 24 * 4);
    for (int64_t i = 0; i < n; i++) z[i] = (float)cos(0.21 * i);
    assert_int_equal(vae_decode(v, z, 1, 8, 12, a, 0), 0);
    assert_int_equal(vae_decode(ref, z, 1, 8, 12, b, 0), 0);
    assert_memory_equal(a, b, 3 * 16 * 24 * 4);
    vae_free(v);
    vae_free(ref);
    free(z), free(a), free(b);
    printf("    loaded old attention names (proj_attn -> to_out.0)\n");
}

static void test_bad_sizes(void **state) {
    (void)state;
    vae *v = load("shift"); /* f = 4, sample_size 32 */
    float buf[3 * 64 * 64] = {0}, out[4 * 64 * 64];
    assert_int_equal(vae_encode(v, buf, 1, 3, 8, out, NULL, NULL), -1); /* H < f */
    assert_int_equal(vae_encode(v, buf, 0, 8, 8, out, NULL, NULL), -1);
    assert_int_equal(vae_decode(v, buf, 1, 0, 4, out, 0), -1);
    assert_int_equal(vae_decode(v, buf, -1, 4, 4, out, 0), -1);
    assert_int_equal(vae_decode(v, buf, 1, 1 << 20, 4, out, 0), -1);
    assert_int_equal(vae_decode(v, buf, 1, 40000, 40000, out, 0), -1);
    /* an odd size encodes like diffusers' floor: 9x13 -> 2x3 */
    assert_int_equal(vae_encode(v, buf, 1, 9, 13, out, NULL, NULL), 0);
    /* tiled encode of 49 pixels: tiles at 0, 24, 48; the last is 1 pixel < f */
    float *big = calloc(3 * 49 * 40, 4);
    assert_int_equal(vae_encode_tiled(v, big, 1, 49, 40, out, NULL, NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "edge tile"));
    free(big);
    vae_free(v);
    /* a sample_size whose tiles do not reassemble (20 / 2 = 10 latents, overlap 7, but
       row_limit 15 != 14) is refused for tiled decoding only */
    json_t *c = fixture_cfg("small");
    json_object_set_new(c, "sample_size", json_integer(20));
    make_dir("small", c, NULL);
    json_decref(c);
    if (vae_load_dir(&v, g_tmp)) fail_msg("%s", mapo_last_error());
    float *z = calloc(4 * 12 * 12, 4), *x = malloc(3 * 24 * 24 * 4);
    assert_int_equal(vae_decode(v, z, 1, 12, 12, x, 0), 0);
    assert_int_equal(vae_decode(v, z, 1, 12, 12, x, 1), -1);
    assert_non_null(strstr(mapo_last_error(), "assembles"));
    printf("    refused tiled decode: %s\n", mapo_last_error());
    free(z), free(x);
    vae_free(v);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mapo_test_vae_XXXXXX");
    if (!mkdtemp(g_tmp)) return -1;
    return 0;
}
static int teardown(void **state) {
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", g_tmp);
    unlink(p);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", g_tmp);
    unlink(p);
    rmdir(g_tmp);
    printf("  worst relative error over all parity checks: %.2e (%s), bound %.0e\n", g_worst,
           g_worst_name, TOL);
    return 0;
}

int main(void) {
    mapo_log_level = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small),        cmocka_unit_test(test_shift),
        cmocka_unit_test(test_f16),          cmocka_unit_test(test_tiled_fallback),
        cmocka_unit_test(test_memory),       cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_bad_weights),  cmocka_unit_test(test_bad_sizes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
