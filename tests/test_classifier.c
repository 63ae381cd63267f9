/* test_classifier.c -- the image classifier of classifier.h.
 *
 * Parity: tests/fixtures/classifier/parity/ from tools/make_classifier_fixtures.py (the same
 * network in torch, random init with GroupNorm affines perturbed; B = 4, 1x32x32, width 8,
 * features 16, 3 classes). Relative L2 error per tensor ||c - ref|| / ||ref||:
 *   logits, features, loss <= 1e-5. Both sides compute in float32 with different summation
 *     orders; the script measures torch's own float32 result against float64 at 3.2e-7
 *     (logits), 4.7e-7 (features), 6.8e-8 (loss), so two float32 implementations differ by
 *     about twice that; 1e-5 leaves a 10x margin while any wrong formula (a transposed
 *     weight, a wrong eps, a mis-ordered flatten) is off by 1e-3 or more.
 *   every parameter gradient <= 1e-4. Backward runs through ~14 ops whose reductions
 *     (GroupNorm's, conv weight gradients over 1024 pixels x 4 images) amplify rounding; the
 *     script measures torch float32 vs float64 at up to 1.3e-6 (conv1.weight), so 1e-4 is
 *     the same 10x+ margin.
 *   conv1.bias is the exception: conv1's 8 channels are 8 GroupNorm groups of one channel,
 *     which remove any per-channel constant, so its exact gradient is 0 and both sides hold
 *     rounding noise (torch: 5.7e-8). It is checked in absolute terms:
 *     ||grad conv1.bias|| <= 1e-5 * ||grad conv1.weight||.
 * Then: save / load round trip (bit-exact, atomic replace, foreign files kept), init,
 * determinism, a synthetic task learnt to >= 95% held-out accuracy, error cases.
 * MAPO_CLASSIFIER_BENCH=1 adds a timing of training and inference at width 16 / features 128
 * (not part of the default run). */
#include <dirent.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/classifier.h"
#include "mapo/common.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FIX "tests/fixtures/classifier/parity"
#define TOL_OUT 1e-5
#define TOL_GRAD 1e-4

static float *read_f32(const st_file *f, const char *name, int64_t *n) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("fixture lacks '%s'", name);
    float *d = malloc(t->numel * sizeof(float));
    assert_int_equal(st_to_f32(t, d), 0);
    if (n) *n = t->numel;
    return d;
}

static void check_rel(const char *what, const float *c, const float *ref, int64_t n, double tol,
                      double *worst) {
    double e = rel_err_f32(c, ref, n);
    if (e > *worst) *worst = e;
    if (!(e <= tol)) fail_msg("%s: relative error %.3e > %.0e", what, e, tol);
}

static double l2(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* ------------------------------------------------------------------ parity */
static void test_parity(void **state) {
    (void)state;
    classifier *m;
    if (classifier_load(&m, FIX "/model")) fail_msg("%s", mapo_last_error());
    const classifier_config *c = classifier_get_config(m);
    assert_int_equal(c->in_channels, 1);
    assert_int_equal(c->image_size, 32);
    assert_int_equal(c->width, 8);
    assert_int_equal(c->features, 16);
    assert_int_equal(c->num_classes, 3);
    assert_string_equal(c->labels[0], "circle");
    assert_string_equal(c->labels[2], "noise");
    assert_int_equal(classifier_check_input(m, 1, 32, 32), 0);

    st_file f;
    if (st_open(&f, FIX "/expect.safetensors")) fail_msg("%s", mapo_last_error());
    int64_t nx;
    float *x = read_f32(&f, "x", &nx);
    const int B = 4, K = 3, F = 16;
    assert_int_equal(nx, (int64_t)B * 32 * 32);
    const st_tensor *lt = st_find(&f, "labels");
    assert_non_null(lt);
    assert_int_equal(lt->dtype, ST_I64);
    int labels[4];
    for (int i = 0; i < B; i++) {
        int64_t v;
        memcpy(&v, (const char *)lt->data + 8 * i, 8);
        labels[i] = (int)v;
    }
    float *ref_logits = read_f32(&f, "logits", NULL), *ref_feat = read_f32(&f, "features", NULL);
    float *ref_loss = read_f32(&f, "loss", NULL);

    double worst_out = 0, worst_grad = 0;
    float logits[12], feat[64], probs[12];
    assert_int_equal(classifier_forward(m, x, B, logits, feat), 0);
    check_rel("logits", logits, ref_logits, B * K, TOL_OUT, &worst_out);
    check_rel("features", feat, ref_feat, B * F, TOL_OUT, &worst_out);
    /* either output alone gives the same numbers */
    float l2only[12], f2only[64];
    assert_int_equal(classifier_forward(m, x, B, l2only, NULL), 0);
    assert_int_equal(classifier_forward(m, x, B, NULL, f2only), 0);
    assert_memory_equal(l2only, logits, sizeof logits);
    assert_memory_equal(f2only, feat, sizeof feat);
    /* probabilities: softmax of the reference logits */
    assert_int_equal(classifier_probs(m, x, B, probs), 0);
    for (int i = 0; i < B; i++) {
        double s = 0, mx = ref_logits[i * K], z = 0;
        for (int k = 1; k < K; k++) mx = fmax(mx, ref_logits[i * K + k]);
        for (int k = 0; k < K; k++) z += exp(ref_logits[i * K + k] - mx);
        for (int k = 0; k < K; k++) {
            s += probs[i * K + k];
            assert_true(fabs(probs[i * K + k] - exp(ref_logits[i * K + k] - mx) / z) < 1e-6);
        }
        assert_true(fabs(s - 1) < 1e-6);
    }
    int pred[4];
    assert_int_equal(classifier_predict(m, x, B, pred), 0);
    for (int i = 0; i < B; i++) {
        int best = 0;
        for (int k = 1; k < K; k++)
            if (ref_logits[i * K + k] > ref_logits[i * K + best]) best = k;
        assert_int_equal(pred[i], best);
    }

    /* loss and gradients */
    classifier_zero_grad(m);
    double loss;
    assert_int_equal(classifier_loss_backward(m, x, labels, B, &loss), 0);
    float lossf = (float)loss;
    check_rel("loss", &lossf, ref_loss, 1, TOL_OUT, &worst_out);
    param_table *t = classifier_params(m);
    assert_int_equal(t->n, 20);
    char name[300];
    double bias_noise = 0, w1_norm = 0;
    for (int i = 0; i < t->n; i++) {
        const param_info *p = &t->p[i];
        snprintf(name, sizeof name, "grad.%s", p->name);
        int64_t n;
        float *ref = read_f32(&f, name, &n);
        assert_int_equal(n, p->numel);
        const float *g = t->grad + p->offset;
        if (!strcmp(p->name, "conv1.bias")) bias_noise = l2(g, n);
        else check_rel(name, g, ref, n, TOL_GRAD, &worst_grad);
        if (!strcmp(p->name, "conv1.weight")) w1_norm = l2(ref, n);
        free(ref);
    }
    if (!(bias_noise <= 1e-5 * w1_norm))
        fail_msg("|grad conv1.bias| = %.3e, expected ~0 (<= 1e-5 * %.3e)", bias_noise, w1_norm);
    /* gradients accumulate: a second call doubles them */
    float *g1 = malloc(t->total * sizeof(float));
    memcpy(g1, t->grad, t->total * sizeof(float));
    assert_int_equal(classifier_loss_backward(m, x, labels, B, NULL), 0);
    for (size_t i = 0; i < t->total; i++) assert_true(fabsf(t->grad[i] - 2 * g1[i]) <= 1e-6f * (1 + fabsf(g1[i])));
    classifier_zero_grad(m);
    for (size_t i = 0; i < t->total; i++) assert_true(t->grad[i] == 0);
    /* the batch is split between threads (one slice each): each image's numbers do not
       depend on the others, but BLAS may pick other kernels for other slice sizes, and the
       gradients are summed per slice, so 1, 2 or 3 threads agree to rounding */
    const int nt = omp_get_max_threads();
    omp_set_num_threads(2); /* the workers' single-threading stays inside the calls */
    assert_int_equal(classifier_forward(m, x, B, l2only, NULL), 0);
    assert_int_equal(omp_get_max_threads(), 2);
    assert_int_equal(classifier_loss_backward(m, x, labels, B, NULL), 0);
    assert_int_equal(omp_get_max_threads(), 2);
    for (int th = 1; th <= 3; th++) {
        omp_set_num_threads(th);
        float lt[12], ftt[64];
        assert_int_equal(classifier_forward(m, x, B, lt, ftt), 0);
        assert_true(rel_err_f32(lt, logits, B * K) <= 1e-6);
        assert_true(rel_err_f32(ftt, feat, B * F) <= 1e-6);
        double lth;
        classifier_zero_grad(m);
        assert_int_equal(classifier_loss_backward(m, x, labels, B, &lth), 0);
        assert_true(fabs(lth - loss) <= 1e-6 * loss);
        for (int i = 0; i < t->n; i++) {
            if (!strcmp(t->p[i].name, "conv1.bias")) continue;
            double e = rel_err_f32(t->grad + t->p[i].offset, g1 + t->p[i].offset, t->p[i].numel);
            if (!(e <= 1e-5)) fail_msg("%d threads: %s differs by %.2e", th, t->p[i].name, e);
        }
    }
    omp_set_num_threads(nt);
    classifier_zero_grad(m);
    print_message("parity: worst output %.2e, worst gradient %.2e, |grad conv1.bias| %.1e "
                  "(exactly 0 in exact arithmetic)\n", worst_out, worst_grad, bias_noise);
    free(g1);
    free(x);
    free(ref_logits);
    free(ref_feat);
    free(ref_loss);
    st_close(&f);
    classifier_free(m);
}

/* ------------------------------------------------------------------ helpers */
static char *make_tmpdir(void) {
    char *d = strdup("/tmp/mapo_classifier_XXXXXX");
    if (!mkdtemp(d)) fail_msg("mkdtemp failed");
    return d;
}
static void rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        rm_tree(p);
    }
    closedir(d);
    rmdir(path);
}
static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(s, f);
    fclose(f);
}
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static void random_images(float *x, int64_t n, uint64_t seed) {
    philox r;
    philox_init(&r, seed, 1, 2);
    philox_fill_normal(&r, x, n);
}

/* ------------------------------------------------------------------ save / load */
static void test_save_load(void **state) {
    (void)state;
    classifier_config c;
    classifier_config_default(&c);
    c.width = 8;
    c.features = 24;
    c.num_classes = 2;
    snprintf(c.labels[0], sizeof c.labels[0], "real");
    snprintf(c.labels[1], sizeof c.labels[1], "generated");
    classifier *a, *b;
    assert_int_equal(classifier_init(&a, &c, 7), 0);
    char *root = make_tmpdir(), dir[512], p[600];
    snprintf(dir, sizeof dir, "%s/model", root);
    assert_int_equal(classifier_save(a, dir), 0);
    assert_int_equal(count_entries(root), 1); /* no temporary left */
    assert_int_equal(count_entries(dir), 2);
    assert_int_equal(classifier_load(&b, dir), 0);
    const param_table *ta = classifier_params(a), *tb = classifier_params(b);
    assert_int_equal(ta->total, tb->total);
    assert_memory_equal(ta->data, tb->data, ta->total * sizeof(float));
    assert_memory_equal(classifier_get_config(a), classifier_get_config(b),
                        sizeof(classifier_config));
    float x[3 * 1024], la[6], lb[6], fa[72], fb[72];
    random_images(x, 3 * 1024, 3);
    assert_int_equal(classifier_forward(a, x, 3, la, fa), 0);
    assert_int_equal(classifier_forward(b, x, 3, lb, fb), 0);
    assert_memory_equal(la, lb, sizeof la);
    assert_memory_equal(fa, fb, sizeof fa);
    classifier_free(b);

    /* replace an existing model folder (swapped as a whole) */
    classifier *a2;
    assert_int_equal(classifier_init(&a2, &c, 8), 0);
    assert_int_equal(classifier_save(a2, dir), 0);
    assert_int_equal(count_entries(root), 1);
    assert_int_equal(classifier_load(&b, dir), 0);
    assert_memory_equal(classifier_params(a2)->data, classifier_params(b)->data,
                        ta->total * sizeof(float));
    classifier_free(b);
    /* a folder with other files: they are kept, ours replaced file by file */
    snprintf(p, sizeof p, "%s/README.txt", dir);
    write_text(p, "mine\n");
    char dir_slash[600];
    snprintf(dir_slash, sizeof dir_slash, "%s/", dir);
    assert_int_equal(classifier_save(a, dir_slash), 0);
    assert_int_equal(count_entries(dir), 3);
    assert_true(mapo_is_file(p));
    assert_int_equal(classifier_load(&b, dir), 0);
    assert_memory_equal(ta->data, classifier_params(b)->data, ta->total * sizeof(float));
    classifier_free(b);
    /* a file in the way */
    snprintf(p, sizeof p, "%s/file", root);
    write_text(p, "x");
    assert_int_equal(classifier_save(a, p), -1);
    classifier_free(a);
    classifier_free(a2);
    rm_tree(root);
    free(root);
}

/* ------------------------------------------------------------------ init */
static void test_init(void **state) {
    (void)state;
    classifier_config c;
    classifier_config_default(&c);
    assert_int_equal(c.in_channels, 1);
    assert_int_equal(c.image_size, 32);
    assert_int_equal(c.width, 16);
    assert_int_equal(c.features, 128);
    assert_int_equal(c.num_classes, 10);
    assert_string_equal(c.labels[9], "9");
    classifier *a, *b, *d;
    assert_int_equal(classifier_init(&a, &c, 1), 0);
    assert_int_equal(classifier_init(&b, &c, 1), 0);
    assert_int_equal(classifier_init(&d, &c, 2), 0);
    const param_table *t = classifier_params(a);
    /* 16*9+16 + 32*16*9+32 + 64*32*9+64 + 64*64*9+64 + 2*(16+32+64+64) + 1024*128+128 + 1290 */
    int64_t expect = 160 + 4640 + 18496 + 36928 + 352 + 131200 + 1290;
    assert_int_equal(classifier_num_params(a), expect);
    assert_memory_equal(t->data, classifier_params(b)->data, t->total * sizeof(float));
    assert_memory_not_equal(t->data, classifier_params(d)->data, t->total * sizeof(float));
    for (int i = 0; i < t->n; i++) {
        const param_info *p = &t->p[i];
        const float *v = t->data + p->offset;
        if (!strncmp(p->name, "norm", 4)) {
            float want = strstr(p->name, ".weight") ? 1.0f : 0.0f;
            for (int64_t k = 0; k < p->numel; k++) assert_true(v[k] == want);
            continue;
        }
        /* fan_in of the layer: the weight's dims after the first */
        char w[64];
        snprintf(w, sizeof w, "%.*s.weight", (int)(strchr(p->name, '.') - p->name), p->name);
        const param_info *pw = &t->p[params_find(t, w)];
        int64_t fan_in = pw->numel / pw->shape[0];
        double bound = 1.0 / sqrt((double)fan_in), mean = 0, var = 0;
        for (int64_t k = 0; k < p->numel; k++) {
            assert_true(fabs(v[k]) <= bound);
            mean += v[k];
            var += (double)v[k] * v[k];
        }
        if (p->numel >= 1000) { /* U(-b, b): variance b^2/3 */
            var /= p->numel;
            mean /= p->numel;
            assert_true(fabs(var / (bound * bound / 3) - 1) < 0.1);
            assert_true(fabs(mean) < 0.1 * bound);
        }
    }
    classifier_free(a);
    classifier_free(b);
    classifier_free(d);
}

/* ------------------------------------------------------------------ training */
/* 4 classes: horizontal stripes, vertical stripes, a centred blob, a checkerboard, each at a
   random contrast and offset plus Gaussian noise of std 0.5 */
static void synth(float *x, int *y, int n, int S, uint64_t seed) {
    philox r;
    philox_init(&r, seed, 3, 4);
    for (int i = 0; i < n; i++) {
        int k = (int)philox_below(&r, 4);
        double amp = 0.5 + philox_uniform(&r), off = philox_uniform(&r) - 0.5;
        int ph = (int)philox_below(&r, 4);
        y[i] = k;
        float *im = x + (int64_t)i * S * S;
        for (int a = 0; a < S; a++)
            for (int b = 0; b < S; b++) {
                double v;
                if (k == 0) v = ((a + ph) / 2) % 2 ? 1 : -1;
                else if (k == 1) v = ((b + ph) / 2) % 2 ? 1 : -1;
                else if (k == 2) {
                    double da = a - S / 2.0 + 0.5, db = b - S / 2.0 + 0.5;
                    v = da * da + db * db < S * S / 10.0 ? 1 : -1;
                } else v = ((a / 4) + (b / 4) + ph) % 2 ? 1 : -1;
                im[a * S + b] = (float)(amp * v + off + 0.5 * philox_normal(&r));
            }
    }
}

static void test_train_synthetic(void **state) {
    (void)state;
    classifier_config c;
    classifier_config_default(&c);
    c.width = 8;
    c.features = 32;
    c.num_classes = 4;
    const int S = 32, ntr = 512, nte = 256;
    float *x = malloc((size_t)(ntr + nte) * S * S * sizeof(float));
    int *y = malloc((ntr + nte) * sizeof(int));
    synth(x, y, ntr + nte, S, 11);
    classifier *m;
    assert_int_equal(classifier_init(&m, &c, 5), 0);
    double acc0;
    assert_int_equal(classifier_accuracy(m, x + (int64_t)ntr * S * S, y + ntr, nte, &acc0), 0);
    classifier_train_cfg tc;
    classifier_train_cfg_default(&tc);
    assert_int_equal(tc.epochs, 2);
    assert_int_equal(tc.batch_size, 64);
    tc.epochs = 3;
    tc.batch_size = 32;
    tc.lr = 3e-3;
    tc.quiet = 1;
    double t0 = mapo_now();
    assert_int_equal(classifier_train(m, x, y, ntr, &tc), 0);
    double dt = mapo_now() - t0, acc;
    assert_int_equal(classifier_accuracy(m, x + (int64_t)ntr * S * S, y + ntr, nte, &acc), 0);
    print_message("synthetic 4 classes: held-out accuracy %.3f before, %.3f after %d epochs on "
                  "%d images (%.2f s)\n", acc0, acc, (int)tc.epochs, ntr, dt);
    assert_true(acc >= 0.95);
    /* the gradient arena is left clear */
    const param_table *t = classifier_params(m);
    for (size_t i = 0; i < t->total; i++) assert_true(t->grad[i] == 0);

    /* deterministic: same init + same config = same weights; another seed differs */
    classifier *m2, *m3;
    assert_int_equal(classifier_init(&m2, &c, 5), 0);
    assert_int_equal(classifier_init(&m3, &c, 5), 0);
    tc.epochs = 1;
    assert_int_equal(classifier_train(m2, x, y, 100, &tc), 0);
    assert_int_equal(classifier_train(m3, x, y, 100, &tc), 0);
    assert_memory_equal(classifier_params(m2)->data, classifier_params(m3)->data,
                        t->total * sizeof(float));
    classifier_free(m3);
    assert_int_equal(classifier_init(&m3, &c, 5), 0);
    tc.seed = 1;
    assert_int_equal(classifier_train(m3, x, y, 100, &tc), 0);
    assert_memory_not_equal(classifier_params(m2)->data, classifier_params(m3)->data,
                            t->total * sizeof(float));
    /* zero epochs: nothing changes */
    classifier *m4;
    assert_int_equal(classifier_init(&m4, &c, 5), 0);
    tc.epochs = 0;
    assert_int_equal(classifier_train(m4, x, y, 100, &tc), 0);
    classifier_free(m3);
    assert_int_equal(classifier_init(&m3, &c, 5), 0);
    assert_memory_equal(classifier_params(m4)->data, classifier_params(m3)->data,
                        t->total * sizeof(float));
    classifier_free(m);
    classifier_free(m2);
    classifier_free(m3);
    classifier_free(m4);
    free(x);
    free(y);
}

/* ------------------------------------------------------------------ errors */
static void expect_load_error(const char *dir, const char *needle) {
    classifier *m = (classifier *)(uintptr_t)1;
    assert_int_equal(classifier_load(&m, dir), -1);
    assert_null(m);
    if (!strstr(mapo_last_error(), needle))
        fail_msg("error '%s' does not mention '%s'", mapo_last_error(), needle);
}

static void test_errors(void **state) {
    (void)state;
    char *root = make_tmpdir(), dir[512], cfgp[600], model[600], cmd[2000];
    snprintf(dir, sizeof dir, "%s/m", root);
    expect_load_error(dir, "no such folder");
    mkdir(dir, 0755);
    expect_load_error(dir, "config.json: no such file");
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    snprintf(model, sizeof model, "%s/model.safetensors", dir);
    static const struct {
        const char *json, *needle;
    } bad[] = {
        {"{", "invalid JSON"},
        {"[1]", "JSON object"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16}", "num_classes"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":3,"
         "\"dropout\":0.1}", "unknown key 'dropout'"},
        {"{\"in_channels\":1,\"image_size\":30,\"width\":8,\"features\":16,\"num_classes\":3}",
         "divisible by 8"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":12,\"features\":16,\"num_classes\":3}",
         "width 12"},
        {"{\"in_channels\":0,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":3}",
         "in_channels"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":0,\"num_classes\":3}",
         "features"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":1}",
         "num_classes 1"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":17}",
         "num_classes 17"},
        {"{\"in_channels\":1.5,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":3}",
         "must be an integer"},
        {"{\"in_channels\":1,\"image_size\":99999999999,\"width\":8,\"features\":16,"
         "\"num_classes\":3}", "out of range"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":3,"
         "\"labels\":[\"a\",\"b\"]}", "labels"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":2,"
         "\"labels\":[\"a\",7]}", "label 1"},
        {"{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,\"num_classes\":2,"
         "\"labels\":[\"a\",\"0123456789012345678901234567890123\"]}", "label 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_text(cfgp, bad[i].json);
        expect_load_error(dir, bad[i].needle);
    }
    /* a valid config without weights */
    write_text(cfgp, "{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,"
                     "\"num_classes\":3}");
    expect_load_error(dir, "no model.safetensors");
    /* weights of another shape: the fixture (width 8, features 16) under features 24 */
    snprintf(cmd, sizeof cmd, "cp " FIX "/model/model.safetensors %s", model);
    assert_int_equal(system(cmd), 0);
    write_text(cfgp, "{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":24,"
                     "\"num_classes\":3}");
    expect_load_error(dir, "fc1.weight' has shape [16, 512], the config gives [24, 512]");
    write_text(cfgp, "{\"in_channels\":1,\"image_size\":16,\"width\":8,\"features\":16,"
                     "\"num_classes\":3}");
    expect_load_error(dir, "fc1.weight' has shape [16, 512], the config gives [16, 128]");
    /* labels default to indices when absent; the fixture weights then load */
    write_text(cfgp, "{\"in_channels\":1,\"image_size\":32,\"width\":8,\"features\":16,"
                     "\"num_classes\":3}");
    classifier *m;
    if (classifier_load(&m, dir)) fail_msg("%s", mapo_last_error());
    assert_string_equal(classifier_get_config(m)->labels[2], "2");
    /* wrong image shapes, bad labels, bad batches */
    assert_int_equal(classifier_check_input(m, 3, 32, 32), -1);
    assert_non_null(strstr(mapo_last_error(), "[3, 32, 32], the model takes [1, 32, 32]"));
    assert_int_equal(classifier_check_input(m, 1, 28, 28), -1);
    float x[2 * 1024] = {0}, lg[6];
    int lab[2] = {0, 3};
    double loss;
    assert_int_equal(classifier_loss_backward(m, x, lab, 2, &loss), -1);
    assert_non_null(strstr(mapo_last_error(), "label 3 of image 1"));
    lab[1] = -1;
    assert_int_equal(classifier_loss_backward(m, x, lab, 2, &loss), -1);
    lab[1] = 1;
    assert_int_equal(classifier_loss_backward(m, x, lab, 0, &loss), -1);
    assert_int_equal(classifier_forward(m, x, -1, lg, NULL), -1);
    assert_int_equal(classifier_forward(m, x, 0, lg, NULL), 0);
    classifier_train_cfg tc;
    classifier_train_cfg_default(&tc);
    tc.quiet = 1;
    tc.batch_size = 0;
    assert_int_equal(classifier_train(m, x, lab, 2, &tc), -1);
    tc.batch_size = 2;
    tc.lr = NAN;
    assert_int_equal(classifier_train(m, x, lab, 2, &tc), -1);
    tc.lr = 1e-3;
    tc.weight_decay = -1;
    assert_int_equal(classifier_train(m, x, lab, 2, &tc), -1);
    tc.weight_decay = 0;
    tc.epochs = -1;
    assert_int_equal(classifier_train(m, x, lab, 2, &tc), -1);
    tc.epochs = 1;
    assert_int_equal(classifier_train(m, x, lab, 0, &tc), -1);
    lab[0] = 9;
    assert_int_equal(classifier_train(m, x, lab, 2, &tc), -1);
    classifier_free(m);
    /* invalid configs refused by init */
    classifier_config c;
    classifier_config_default(&c);
    c.width = 20;
    assert_int_equal(classifier_init(&m, &c, 0), -1);
    assert_null(m);
    classifier_config_default(&c);
    c.labels[3][0] = 0;
    assert_int_equal(classifier_init(&m, &c, 0), -1);
    rm_tree(root);
    free(root);
}

/* ------------------------------------------------------------------ speed (opt-in) */
static void test_bench(void **state) {
    (void)state;
    const char *env = getenv("MAPO_CLASSIFIER_BENCH");
    if (!env) {
        print_message("timing skipped (MAPO_CLASSIFIER_BENCH=1 runs it; =N: on N images)\n");
        return;
    }
    classifier_config c;
    classifier_config_default(&c);
    classifier *m;
    assert_int_equal(classifier_init(&m, &c, 0), 0);
    const int n = atoi(env) > 4096 ? atoi(env) : 4096;
    float *x = malloc((size_t)n * 1024 * sizeof(float)), *lg = malloc((size_t)n * 10 * 4);
    float *ft = malloc((size_t)n * 128 * 4);
    int *y = malloc(n * sizeof(int));
    random_images(x, (int64_t)n * 1024, 9);
    for (int i = 0; i < n; i++) y[i] = i % 10;
    classifier_train_cfg tc;
    classifier_train_cfg_default(&tc);
    tc.epochs = 1;
    tc.quiet = 1;
    for (int bs = 32; bs <= 128; bs *= 2) {
        tc.batch_size = bs;
        double t0 = mapo_now();
        assert_int_equal(classifier_train(m, x, y, n, &tc), 0);
        double dt = mapo_now() - t0;
        print_message("train width 16 features 128, batch %d, %d threads: one epoch of %d images "
                      "in %.1f s, %.0f images/s\n", bs, omp_get_max_threads(), n, dt, n / dt);
    }
    double t0 = mapo_now();
    assert_int_equal(classifier_forward(m, x, n, lg, ft), 0);
    print_message("inference (logits + features), %d threads: %.0f images/s\n",
                  omp_get_max_threads(), n / (mapo_now() - t0));
    classifier_free(m);
    free(x);
    free(lg);
    free(ft);
    free(y);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity),         cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_init),           cmocka_unit_test(test_train_synthetic),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
