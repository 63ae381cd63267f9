/* test_fmnist_study.c -- the study's style and mark, the committed judges (accuracy floors on
 * real test images) and the pair builders (the pairs are what each task says, checked by the
 * judges on the written pair files). Needs the Debian package dataset-fashion-mnist (make
 * test installs it) and models/fmnist-evaluators. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/fmnist_eval.h"
#include "mapo/fmnist_study.h"
#include "mapo/idx.h"
#include "mapo/pairs.h"
#include "mapo/pixel_pipeline.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define EVAL_DIR "models/fmnist-evaluators"

/* Worked by hand: v = 0.5 in [-1,1] is 0.75 in [0,1]; striped rows keep (1 - s) of it:
   s = 0.4 -> 0.45 -> -0.1. Rows y with (y / 2) odd: 2, 3, 6, 7, ... */
static void test_style_and_mark(void **st) {
    (void)st;
    float img[FM_PIX];
    for (int i = 0; i < FM_PIX; i++) img[i] = 0.5f;
    fm_style(img, 0.4);
    for (int y = 0; y < FM_SIZE; y++) {
        const float want = ((y / 2) % 2) ? -0.1f : 0.5f;
        for (int x = 0; x < FM_SIZE; x++) assert_float_equal(img[y * FM_SIZE + x], want, 1e-6);
    }
    fm_mark(img);
    for (int y = 0; y < FM_SIZE; y++)
        for (int x = 0; x < FM_SIZE; x++) {
            const int in = y >= 2 && y < 6 && x >= 2 && x < 6;
            if (in) assert_float_equal(img[y * FM_SIZE + x], 1.0f, 0);
            else assert_true(img[y * FM_SIZE + x] != 1.0f);
        }
    char b[64];
    assert_string_equal(fm_prompt(7, b, sizeof b), "a photo of a sneaker");
    assert_string_equal(fm_prompt(-1, b, sizeof b), "");
    /* the counter-based draws: about the share asked, and the same every time */
    int64_t k = 0;
    for (int64_t i = 0; i < 20000; i++) k += fm_is_marked(0, i, 0.1);
    assert_true(k > 1800 && k < 2200); /* 2000 +- 4.7 sigma */
    assert_int_equal(fm_is_marked(0, 12345, 0.1), fm_is_marked(0, 12345, 0.1));
}

static float *test_images(int64_t n, int **labels) {
    float *x;
    int64_t got;
    assert_int_equal(fm_load_pixels(NULL, "t10k", n, &x, labels, &got), 0);
    assert_int_equal(got, n);
    return x;
}

/* Floors below the accuracies measured on the whole test split when the judges were trained
   (models/fmnist-evaluators/evaluators.json: 0.8925 / 0.9953 / 1.0), with room for the
   sampling error of 2000 images (binomial sd <= 0.007 at 0.89). */
static void test_judges_accuracy(void **st) {
    (void)st;
    const int64_t n = 2000;
    int *lab;
    float *x = test_images(n, &lab);
    fm_judges j;
    assert_int_equal(fm_judges_load(&j, EVAL_DIR), 0);
    int *pred = malloc(n * sizeof(int));
    double *ps = malloc(n * sizeof(double)), *pm = malloc(n * sizeof(double));
    assert_int_equal(fm_judge(&j, x, lab, n, NULL, pred, ps, pm, NULL), 0);
    int64_t ok_cls = 0, plain = 0, clean = 0;
    for (int64_t i = 0; i < n; i++) {
        ok_cls += pred[i] == lab[i];
        plain += ps[i] < 0.5;
        clean += pm[i] < 0.5;
    }
    print_message("  class accuracy %.4f, plain judged plain %.4f, clean judged clean %.4f\n",
                  ok_cls / (double)n, plain / (double)n, clean / (double)n);
    assert_true(ok_cls >= 0.85 * n);
    assert_true(plain >= 0.97 * n);
    assert_true(clean >= 0.99 * n);
    /* the weakest style of the study (strength 0.25) and the mark are seen */
    float *y = malloc((size_t)n * FM_PIX * sizeof(float));
    memcpy(y, x, (size_t)n * FM_PIX * sizeof(float));
    for (int64_t i = 0; i < n; i++) fm_style(y + i * FM_PIX, 0.25);
    assert_int_equal(fm_judge(&j, y, lab, n, NULL, pred, ps, NULL, NULL), 0);
    int64_t striped = 0, cls_striped = 0;
    for (int64_t i = 0; i < n; i++) striped += ps[i] > 0.5, cls_striped += pred[i] == lab[i];
    memcpy(y, x, (size_t)n * FM_PIX * sizeof(float));
    for (int64_t i = 0; i < n; i++) fm_mark(y + i * FM_PIX);
    assert_int_equal(fm_judge(&j, y, lab, n, NULL, NULL, NULL, pm, NULL), 0);
    int64_t marked = 0;
    for (int64_t i = 0; i < n; i++) marked += pm[i] > 0.5;
    print_message("  striped (0.25) judged striped %.4f (class accuracy on them %.4f), marked "
                  "judged marked %.4f\n", striped / (double)n, cls_striped / (double)n,
                  marked / (double)n);
    assert_true(striped >= 0.97 * n);
    assert_true(marked >= 0.99 * n);
    assert_true(cls_striped >= 0.80 * n); /* the class judge ignores the style */
    free(x), free(y), free(lab), free(pred), free(ps), free(pm);
    fm_judges_free(&j);
}

/* A pool as `mapo eval` writes it, from real test images standing in for base samples:
   image i is of class i % 10 (the i-th test image of that class); every 4th one marked. */
static void make_pool(const char *path, fm_judges *j) {
    int *lab;
    const int64_t m = 1000;
    float *x = test_images(m, &lab);
    fm_scores s = {0};
    s.n = 200;
    s.F = j->F;
    s.images = malloc((size_t)s.n * FM_PIX * sizeof(float));
    s.features = malloc((size_t)s.n * s.F * sizeof(float));
    s.cls = malloc(s.n * sizeof(int));
    s.pred = malloc(s.n * sizeof(int));
    s.p_class = malloc(s.n * sizeof(double));
    s.p_style = malloc(s.n * sizeof(double));
    s.p_mark = malloc(s.n * sizeof(double));
    int64_t used[FM_CLASSES] = {0};
    for (int64_t i = 0; i < s.n; i++) {
        const int k = (int)(i % FM_CLASSES);
        int64_t q = 0, seen = 0;
        for (; q < m; q++)
            if (lab[q] == k && seen++ == used[k]) break;
        assert_true(q < m);
        used[k]++;
        memcpy(s.images + i * FM_PIX, x + q * FM_PIX, FM_PIX * sizeof(float));
        if (i % 4 == 0) fm_mark(s.images + i * FM_PIX);
        s.cls[i] = k;
    }
    assert_int_equal(fm_judge(j, s.images, s.cls, s.n, s.p_class, s.pred, s.p_style, s.p_mark,
                              s.features), 0);
    s.noise_seed = 9;
    s.steps = 1;
    s.guidance = 1;
    assert_int_equal(fm_scores_save(&s, path), 0);
    fm_scores_free(&s);
    free(x);
    free(lab);
}

typedef struct {
    st_file f;
    int64_t n;
    float *w, *l;
    int *cls;
    double mismatch;
} pairs_read;

static void read_pairs(pairs_read *p, const char *path) {
    assert_int_equal(st_open(&p->f, path), 0);
    const st_tensor *c = st_find(&p->f, "chosen");
    assert_non_null(c);
    p->n = c->shape[0];
    int64_t sh[4] = {p->n, 1, FM_SIZE, FM_SIZE};
    p->w = malloc((size_t)p->n * FM_PIX * sizeof(float));
    p->l = malloc((size_t)p->n * FM_PIX * sizeof(float));
    assert_int_equal(st_read_f32_shape(&p->f, "chosen", p->w, 4, sh), 0);
    assert_int_equal(st_read_f32_shape(&p->f, "rejected", p->l, 4, sh), 0);
    const st_tensor *pi = st_find(&p->f, "prompt_index");
    assert_non_null(pi);
    p->cls = malloc(p->n * sizeof(int));
    for (int64_t i = 0; i < p->n; i++) {
        int32_t v;
        memcpy(&v, (const char *)pi->data + 4 * i, 4);
        p->cls[i] = v;
    }
    const char *meta = st_meta(&p->f, "fmnist_task");
    assert_non_null(meta);
    const char *m = strstr(meta, "\"mismatch\":");
    assert_non_null(m);
    p->mismatch = atof(m + 11);
}

static void free_pairs(pairs_read *p) {
    free(p->w), free(p->l), free(p->cls);
    st_close(&p->f);
}

static void test_pair_builders(void **st) {
    (void)st;
    char dir[] = "/tmp/mapo_fmpairs.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pipe[256], pool[256], out[256];
    snprintf(pipe, sizeof pipe, "%s/pipe", dir);
    snprintf(pool, sizeof pool, "%s/pool.safetensors", dir);
    pixel_pipeline_config pc;
    pixel_pipeline_config_default(&pc);
    pc.block_out[0] = 8, pc.block_out[1] = 16, pc.block_out[2] = 16, pc.text_width = 16;
    pc.text_layers = 1, pc.heads = 2;
    assert_int_equal(pixel_pipeline_create(pipe, &pc), 0);
    fm_judges j;
    assert_int_equal(fm_judges_load(&j, EVAL_DIR), 0);
    make_pool(pool, &j);
    fm_pairs_cfg c = {0};
    c.pool = pool, c.pipeline = pipe, c.evaluators = EVAL_DIR, c.out = out, c.quiet = 1;
    double mism[3];
    const double strengths[2] = {0.25, 1.0};
    for (int k = 0; k < 2; k++) { /* style: chosen striped, rejected the (unstriped) pool */
        c.task = FM_TASK_STYLE, c.strength = strengths[k], c.split = "t10k";
        snprintf(out, sizeof out, "%s/style%d.safetensors", dir, k);
        assert_int_equal(fm_build_pairs(&c), 0);
        pairs_read p;
        read_pairs(&p, out);
        assert_int_equal(p.n, 200);
        double *pw = malloc(p.n * sizeof(double)), *pl = malloc(p.n * sizeof(double));
        int *pred = malloc(p.n * sizeof(int));
        assert_int_equal(fm_judge(&j, p.w, p.cls, p.n, NULL, pred, pw, NULL, NULL), 0);
        assert_int_equal(fm_judge(&j, p.l, p.cls, p.n, NULL, NULL, pl, NULL, NULL), 0);
        int64_t sw = 0, sl = 0, cls = 0;
        for (int64_t i = 0; i < p.n; i++) {
            sw += pw[i] > 0.5, sl += pl[i] > 0.5, cls += pred[i] == p.cls[i];
            assert_int_equal(p.cls[i], (int)(i % FM_CLASSES)); /* the pool's prompt */
        }
        print_message("  style %.2f: chosen striped %lld/%lld, rejected striped %lld, chosen of "
                      "the prompted class %lld, mismatch %.4f\n", strengths[k], (long long)sw,
                      (long long)p.n, (long long)sl, (long long)cls, p.mismatch);
        assert_true(sw >= 0.95 * p.n);
        assert_true(sl <= 0.05 * p.n);
        assert_true(cls >= 0.75 * p.n);
        mism[k] = p.mismatch;
        free(pw), free(pl), free(pred);
        free_pairs(&p);
    }
    /* safety: rejected judged marked, chosen judged clean, same prompt; one pair per mark */
    c.task = FM_TASK_SAFETY;
    snprintf(out, sizeof out, "%s/safety.safetensors", dir);
    assert_int_equal(fm_build_pairs(&c), 0);
    {
        pairs_read p;
        read_pairs(&p, out);
        assert_int_equal(p.n, 50); /* every 4th of 200 is marked */
        double *mw = malloc(p.n * sizeof(double)), *ml = malloc(p.n * sizeof(double));
        assert_int_equal(fm_judge(&j, p.w, p.cls, p.n, NULL, NULL, NULL, mw, NULL), 0);
        assert_int_equal(fm_judge(&j, p.l, p.cls, p.n, NULL, NULL, NULL, ml, NULL), 0);
        for (int64_t i = 0; i < p.n; i++) {
            assert_true(mw[i] < 0.5);
            assert_true(ml[i] > 0.5);
            assert_float_equal(p.l[i * FM_PIX + 2 * FM_SIZE + 2], 1.0f, 0); /* the mark */
        }
        free(mw), free(ml);
        free_pairs(&p);
    }
    /* general: the chosen one is the one the class judge is surer of */
    c.task = FM_TASK_GENERAL;
    snprintf(out, sizeof out, "%s/general.safetensors", dir);
    assert_int_equal(fm_build_pairs(&c), 0);
    {
        pairs_read p;
        read_pairs(&p, out);
        assert_true(p.n >= 95 && p.n <= 100); /* 10 per class, ties dropped */
        double *cw = malloc(p.n * sizeof(double)), *cl = malloc(p.n * sizeof(double));
        assert_int_equal(fm_judge(&j, p.w, p.cls, p.n, cw, NULL, NULL, NULL, NULL), 0);
        assert_int_equal(fm_judge(&j, p.l, p.cls, p.n, cl, NULL, NULL, NULL, NULL), 0);
        for (int64_t i = 0; i < p.n; i++) assert_true(cw[i] > cl[i]);
        mism[2] = p.mismatch;
        free(cw), free(cl);
        free_pairs(&p);
    }
    /* the measured mismatch grows with the style strength and is smallest for general */
    print_message("  mismatch: style 0.25 %.4f, style 1.00 %.4f, general %.4f\n", mism[0],
                  mism[1], mism[2]);
    assert_true(mism[1] > mism[0]);
    assert_true(mism[0] > mism[2]);
    /* a pair file is what mapo train reads: open it against the pipeline's UNet config */
    unet_config uc;
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/unet/config.json", pipe);
    assert_int_equal(unet_config_load(&uc, cfg), 0);
    pair_file pf;
    assert_int_equal(pair_file_open(&pf, out, &uc), 0);
    assert_int_equal(pf.n_prompts, FM_CLASSES + 1);
    pair_file_close(&pf);
    unet_config_free(&uc);
    fm_judges_free(&j);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_style_and_mark),
        cmocka_unit_test(test_judges_accuracy),
        cmocka_unit_test(test_pair_builders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
