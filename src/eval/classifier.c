/* classifier.c -- the small image classifier of classifier.h: parameter table, forward on
 * the autograd tape (backward from the ops' hand-written backwards), cross-entropy,
 * AdamW training, config.json + safetensors load / save. */
#include "mapo/classifier.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "mapo/common.h"
#include "mapo/graph.h"
#include "mapo/optim.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"

#define N_CONV 4
#define GN_GROUPS 8
#define GN_EPS 1e-5
/* images per inference pass: bounds activation memory (width 16, 32x32: ~40 MB) */
#define INFER_CHUNK 256

/* Data parallelism: a batch is split into contiguous slices, one per OpenMP thread, and each
 * worker runs the whole network on its slice single-threaded (the kernels' own parallel
 * loops and OpenBLAS then see a team of one). Per-sample GEMMs of this small network are
 * too small to share between threads: with the kernels' per-op threading, each batch costs
 * thousands of barriers, and on 2 cores shared with other processes (a preempted thread
 * stalls every barrier) that was 10-30x slower than one thread. Here a batch has one join.
 * Worker 0 accumulates into the table's gradient arena, worker k > 0 into its own buffer,
 * added in worker order afterwards: deterministic for a fixed thread count. */
typedef struct {
    graph gi;      /* inference (recording off) */
    graph gt;      /* training (recording on) */
    tensor *views; /* copies of the table's views; grad -> this worker's buffer */
    float *grad;   /* own gradient buffer (NULL for worker 0: the table's arena) */
} worker;

struct classifier {
    classifier_config cfg;
    param_table params;
    int cw[N_CONV], cb[N_CONV], nw[N_CONV], nb[N_CONV];
    int f1w, f1b, f2w, f2b;
    worker *w;
    int n_workers;
};

/* ------------------------------------------------------------------ config */
void classifier_config_default(classifier_config *c) {
    memset(c, 0, sizeof *c);
    c->in_channels = 1;
    c->image_size = 32;
    c->width = 16;
    c->features = 128;
    c->num_classes = 10;
    for (int k = 0; k < c->num_classes; k++) snprintf(c->labels[k], CLASSIFIER_LABEL_LEN, "%d", k);
}

int classifier_config_check(const classifier_config *c) {
    if (c->in_channels < 1 || c->in_channels > 64)
        return mapo_error("classifier: in_channels %d out of range 1..64", c->in_channels);
    if (c->image_size < 8 || c->image_size > 1024 || c->image_size % 8)
        return mapo_error("classifier: image_size %d must be in 8..1024 and divisible by 8 "
                          "(three stride-2 convolutions)", c->image_size);
    if (c->width < 8 || c->width > 1024 || c->width % GN_GROUPS)
        return mapo_error("classifier: width %d must be in 8..1024 and divisible by %d "
                          "(GroupNorm groups)", c->width, GN_GROUPS);
    if (c->features < 1 || c->features > 65536)
        return mapo_error("classifier: features %d out of range 1..65536", c->features);
    if (c->num_classes < 2 || c->num_classes > CLASSIFIER_MAX_CLASSES)
        return mapo_error("classifier: num_classes %d out of range 2..%d", c->num_classes,
                          CLASSIFIER_MAX_CLASSES);
    for (int k = 0; k < c->num_classes; k++) {
        size_t len = strnlen(c->labels[k], CLASSIFIER_LABEL_LEN);
        if (len == 0 || len >= CLASSIFIER_LABEL_LEN)
            return mapo_error("classifier: label %d is empty or longer than %d characters", k,
                              CLASSIFIER_LABEL_LEN - 1);
    }
    return 0;
}

static const char *const config_keys[] = {"in_channels", "image_size", "width", "features",
                                          "num_classes", "labels"};

static int get_int(json_t *root, const char *key, int *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v) return mapo_error("%s: missing key '%s'", path, key);
    if (!json_is_integer(v)) return mapo_error("%s: '%s' must be an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < INT_MIN || x > INT_MAX) return mapo_error("%s: '%s' is out of range", path, key);
    *out = (int)x;
    return 0;
}

static int config_parse(classifier_config *c, const char *path) {
    memset(c, 0, sizeof *c);
    if (!mapo_is_file(path)) return mapo_error("%s: no such file", path);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return mapo_error("%s: invalid JSON at line %d: %s", path, err.line, err.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = mapo_error("%s: must hold a JSON object", path);
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        int known = 0;
        for (size_t i = 0; i < sizeof config_keys / sizeof *config_keys; i++)
            known |= !strcmp(key, config_keys[i]);
        if (!known) {
            rc = mapo_error("%s: unknown key '%s' (a classifier config has in_channels, "
                            "image_size, width, features, num_classes, labels)", path, key);
            goto done;
        }
    }
    if (get_int(root, "in_channels", &c->in_channels, path) ||
        get_int(root, "image_size", &c->image_size, path) ||
        get_int(root, "width", &c->width, path) ||
        get_int(root, "features", &c->features, path) ||
        get_int(root, "num_classes", &c->num_classes, path)) {
        rc = -1;
        goto done;
    }
    if (c->num_classes < 2 || c->num_classes > CLASSIFIER_MAX_CLASSES) {
        rc = mapo_error("%s: num_classes %d out of range 2..%d", path, c->num_classes,
                        CLASSIFIER_MAX_CLASSES);
        goto done;
    }
    json_t *labels = json_object_get(root, "labels");
    if (!labels || json_is_null(labels)) {
        for (int k = 0; k < c->num_classes; k++)
            snprintf(c->labels[k], CLASSIFIER_LABEL_LEN, "%d", k);
    } else {
        if (!json_is_array(labels) || (int)json_array_size(labels) != c->num_classes) {
            rc = mapo_error("%s: 'labels' must be a list of num_classes (%d) strings", path,
                            c->num_classes);
            goto done;
        }
        for (int k = 0; k < c->num_classes; k++) {
            json_t *e = json_array_get(labels, k);
            const char *s = json_is_string(e) ? json_string_value(e) : NULL;
            if (!s || !*s || strlen(s) >= CLASSIFIER_LABEL_LEN) {
                rc = mapo_error("%s: label %d must be a non-empty string of at most %d "
                                "characters", path, k, CLASSIFIER_LABEL_LEN - 1);
                goto done;
            }
            snprintf(c->labels[k], CLASSIFIER_LABEL_LEN, "%s", s);
        }
    }
    if (classifier_config_check(c)) rc = mapo_error_prefix("%s", path);
done:
    json_decref(root);
    return rc;
}

static char *config_dump(const classifier_config *c) {
    json_t *root = json_object();
    json_object_set_new(root, "in_channels", json_integer(c->in_channels));
    json_object_set_new(root, "image_size", json_integer(c->image_size));
    json_object_set_new(root, "width", json_integer(c->width));
    json_object_set_new(root, "features", json_integer(c->features));
    json_object_set_new(root, "num_classes", json_integer(c->num_classes));
    json_t *l = json_array();
    for (int k = 0; k < c->num_classes; k++) json_array_append_new(l, json_string(c->labels[k]));
    json_object_set_new(root, "labels", l);
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

/* ------------------------------------------------------------------ building */
#define P1(t, a, ...) params_add(t, 1, (int64_t[]){a}, __VA_ARGS__)
#define P2(t, a, b, ...) params_add(t, 2, (int64_t[]){a, b}, __VA_ARGS__)
#define P4(t, a, b, c, d, ...) params_add(t, 4, (int64_t[]){a, b, c, d}, __VA_ARGS__)

static int64_t flat_dim(const classifier_config *c) {
    int64_t s = c->image_size / 8;
    return 4LL * c->width * s * s;
}

static classifier *build(const classifier_config *c) {
    classifier *m = xcalloc(1, sizeof *m);
    m->cfg = *c;
    memset(m->cfg.labels, 0, sizeof m->cfg.labels); /* zero past the NULs and unused names: */
    for (int k = 0; k < c->num_classes; k++)        /* configs compare bytewise */
        strncpy(m->cfg.labels[k], c->labels[k], CLASSIFIER_LABEL_LEN - 1);
    param_table *t = &m->params;
    params_init(t);
    const int w = c->width;
    const int cin[N_CONV] = {c->in_channels, w, 2 * w, 4 * w};
    const int cout[N_CONV] = {w, 2 * w, 4 * w, 4 * w};
    for (int i = 0; i < N_CONV; i++) {
        m->cw[i] = P4(t, cout[i], cin[i], 3, 3, "conv%d.weight", i + 1);
        m->cb[i] = P1(t, cout[i], "conv%d.bias", i + 1);
        m->nw[i] = P1(t, cout[i], "norm%d.weight", i + 1);
        m->nb[i] = P1(t, cout[i], "norm%d.bias", i + 1);
    }
    m->f1w = P2(t, c->features, flat_dim(c), "fc1.weight");
    m->f1b = P1(t, c->features, "fc1.bias");
    m->f2w = P2(t, c->num_classes, c->features, "fc2.weight");
    m->f2b = P1(t, c->num_classes, "fc2.bias");
    params_alloc(t, 1);
    return m;
}

int classifier_init(classifier **out, const classifier_config *c, uint64_t seed) {
    *out = NULL;
    if (classifier_config_check(c)) return -1;
    classifier *m = build(c);
    params_init_random(&m->params, seed);
    *out = m;
    return 0;
}

void classifier_free(classifier *m) {
    if (!m) return;
    for (int k = 0; k < m->n_workers; k++) {
        graph_free(&m->w[k].gi);
        graph_free(&m->w[k].gt);
        free(m->w[k].views);
        free(m->w[k].grad);
    }
    free(m->w);
    params_free(&m->params);
    free(m);
}

const classifier_config *classifier_get_config(const classifier *m) { return &m->cfg; }
param_table *classifier_params(classifier *m) { return &m->params; }
int64_t classifier_num_params(const classifier *m) { return (int64_t)m->params.total; }
void classifier_zero_grad(classifier *m) { params_zero_grad(&m->params); }

/* ------------------------------------------------------------------ forward */
/* at least n workers exist (created once, kept for the model's life) */
static void ensure_workers(classifier *m, int n) {
    if (n <= m->n_workers) return;
    const param_table *t = &m->params;
    m->w = xrealloc(m->w, n * sizeof *m->w);
    for (int k = m->n_workers; k < n; k++) {
        worker *w = &m->w[k];
        graph_init(&w->gi, 0);
        graph_init(&w->gt, 1);
        w->views = xmalloc(t->n * sizeof(tensor));
        memcpy(w->views, t->views, t->n * sizeof(tensor));
        w->grad = NULL;
        if (k > 0) {
            w->grad = xcalloc(t->total, sizeof(float));
            for (int i = 0; i < t->n; i++) w->views[i].grad = w->grad + t->p[i].offset;
        }
    }
    m->n_workers = n;
}

/* workers for a batch of n images: OpenMP's thread count, at most one per image */
static int workers_for(int64_t n) {
    int T = omp_get_max_threads();
    return T < 1 ? 1 : (n < T ? (int)(n > 0 ? n : 1) : T);
}

#define PV(i) (&views[i])

/* Flatten [B,C,H,W] -> [B,C*H*W] by rewriting the shape fields of t in place.
 *
 * Why this is safe with the tape (graph.c): t_linear treats every dim but the last as rows,
 * so it needs the 2-D shape. t is the output of the last t_silu and nothing else reads it:
 * - the data pointer is unchanged and row-major NCHW is exactly torch.flatten(x, 1);
 * - numel is unchanged, and the only recorded users of t are the SiLU node (its output:
 *   silu_bw reads out->grad with out->numel and the input's data) and the fc1 linear node
 *   (its input: linear_bw reads x->data / rows_of(x) with the new 2-D shape);
 * - t->grad is allocated lazily by graph_grad from numel, so fc1's backward creates it with
 *   the right size, and graph_backward frees t's data and grad once the SiLU node has run.
 * A separate view tensor (graph_input on t->data) would not do: it is not connected to
 * the SiLU node, so its gradient would never reach t. */
static void flatten_in_place(tensor *t) {
    int64_t B = t->shape[0];
    t->ndim = 2;
    t->shape[1] = t->numel / B;
    t->shape[2] = t->shape[3] = 0;
}

/* The network on x [B,C,S,S]; *feat = features [B,F]; returns logits [B,K]. With recording
   off every intermediate is released as soon as it has been consumed. */
static tensor *net_forward(classifier *m, tensor *views, graph *g, const float *x,
                           int64_t B, tensor **feat) {
    const classifier_config *c = &m->cfg;
    tensor *h = graph_input(g, (float *)x, 4,
                            (int64_t[]){B, c->in_channels, c->image_size, c->image_size});
    for (int i = 0; i < N_CONV; i++) {
        tensor *y = t_conv2d(g, h, PV(m->cw[i]), PV(m->cb[i]), i == 0 ? 1 : 2, 1);
        if (i) graph_release(g, h);
        tensor *n = t_group_norm(g, y, PV(m->nw[i]), PV(m->nb[i]), GN_GROUPS, GN_EPS);
        graph_release(g, y);
        h = t_silu(g, n);
        graph_release(g, n);
    }
    flatten_in_place(h);
    tensor *f = t_linear(g, h, PV(m->f1w), PV(m->f1b));
    graph_release(g, h);
    tensor *a = t_silu(g, f);
    graph_release(g, f);
    *feat = a;
    return t_linear(g, a, PV(m->f2w), PV(m->f2b));
}

int classifier_check_input(const classifier *m, int64_t channels, int64_t height,
                           int64_t width) {
    const classifier_config *c = &m->cfg;
    if (channels != c->in_channels || height != c->image_size || width != c->image_size)
        return mapo_error("classifier: images of shape [%lld, %lld, %lld], the model takes "
                          "[%d, %d, %d]", (long long)channels, (long long)height,
                          (long long)width, c->in_channels, c->image_size, c->image_size);
    return 0;
}

static int check_n(int64_t n, const float *x) {
    if (n < 0) return mapo_error("classifier: negative number of images %lld", (long long)n);
    if (n > 0 && !x) return mapo_error("classifier: no input images");
    return 0;
}

int classifier_forward(classifier *m, const float *x, int64_t n, float *logits,
                       float *features) {
    if (check_n(n, x)) return -1;
    if (n == 0) return 0;
    const classifier_config *c = &m->cfg;
    const int64_t img = (int64_t)c->in_channels * c->image_size * c->image_size;
    const int K = c->num_classes, F = c->features;
    const int T = workers_for(n);
    ensure_workers(m, T);
#pragma omp parallel num_threads(T)
    {
        const int k = omp_get_thread_num();
        omp_set_num_threads(1); /* nested kernels and BLAS: single-threaded */
        worker *w = &m->w[k];
        const int64_t lo = n * k / T, hi = n * (k + 1) / T;
        for (int64_t s = lo; s < hi; s += INFER_CHUNK) {
            const int64_t B = hi - s < INFER_CHUNK ? hi - s : INFER_CHUNK;
            tensor *feat;
            tensor *lg = net_forward(m, w->views, &w->gi, x + s * img, B, &feat);
            if (features) memcpy(features + s * F, feat->data, (size_t)(B * F) * sizeof(float));
            if (logits) memcpy(logits + s * K, lg->data, (size_t)(B * K) * sizeof(float));
            graph_reset(&w->gi);
        }
    }
    return 0;
}

/* row-wise softmax in double */
static void softmax_rows(float *p, const float *z, int64_t n, int K) {
    for (int64_t i = 0; i < n; i++) {
        const float *r = z + i * K;
        double mx = r[0], s = 0;
        for (int k = 1; k < K; k++) mx = r[k] > mx ? r[k] : mx;
        for (int k = 0; k < K; k++) s += exp((double)r[k] - mx);
        for (int k = 0; k < K; k++) p[i * K + k] = (float)(exp((double)r[k] - mx) / s);
    }
}

static int argmax(const float *r, int K) {
    int best = 0;
    for (int k = 1; k < K; k++)
        if (r[k] > r[best]) best = k;
    return best;
}

int classifier_probs(classifier *m, const float *x, int64_t n, float *probs) {
    if (classifier_forward(m, x, n, probs, NULL)) return -1;
    softmax_rows(probs, probs, n, m->cfg.num_classes); /* row by row: in place is fine */
    return 0;
}

int classifier_predict(classifier *m, const float *x, int64_t n, int *pred) {
    if (check_n(n, x)) return -1;
    const int K = m->cfg.num_classes;
    float *lg = xmalloc((size_t)(n > 0 ? n : 1) * K * sizeof(float));
    classifier_forward(m, x, n, lg, NULL);
    for (int64_t i = 0; i < n; i++) pred[i] = argmax(lg + i * K, K);
    free(lg);
    return 0;
}

static int check_labels(const int *labels, int64_t n, int K) {
    if (n > 0 && !labels) return mapo_error("classifier: no labels");
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= K)
            return mapo_error("classifier: label %d of image %lld is outside 0..%d", labels[i],
                              (long long)i, K - 1);
    return 0;
}

int classifier_accuracy(classifier *m, const float *x, const int *labels, int64_t n,
                        double *acc) {
    if (n <= 0) return mapo_error("classifier: accuracy of no images");
    if (check_labels(labels, n, m->cfg.num_classes)) return -1;
    int *pred = xmalloc((size_t)n * sizeof(int));
    int rc = classifier_predict(m, x, n, pred);
    int64_t ok = 0;
    for (int64_t i = 0; !rc && i < n; i++) ok += pred[i] == labels[i];
    free(pred);
    if (!rc) *acc = (double)ok / (double)n;
    return rc;
}

/* ------------------------------------------------------------------ training */
/* forward + cross-entropy + backward of images [lo, hi) of a batch of n on worker w: returns
   the slice's summed loss (the gradient is that of the batch mean, scaled by 1/n) */
static double slice_loss_backward(classifier *m, worker *w, const float *x, const int *labels,
                                  int64_t lo, int64_t hi, int n, int64_t *correct) {
    graph *g = &w->gt;
    const int K = m->cfg.num_classes;
    const int64_t img = (int64_t)m->cfg.in_channels * m->cfg.image_size * m->cfg.image_size;
    tensor *feat;
    tensor *lg = net_forward(m, w->views, g, x + lo * img, hi - lo, &feat);
    float *dl = graph_grad(g, lg);
    double loss = 0;
    int64_t ok = 0;
    for (int64_t i = 0; i < hi - lo; i++) {
        const float *r = lg->data + i * K;
        const int y = labels[lo + i];
        double mx = r[0], s = 0;
        for (int k = 1; k < K; k++) mx = r[k] > mx ? r[k] : mx;
        for (int k = 0; k < K; k++) s += exp((double)r[k] - mx);
        const double lse = mx + log(s);
        loss += lse - r[y];
        ok += argmax(r, K) == y;
        for (int k = 0; k < K; k++)
            dl[i * K + k] = (float)((exp((double)r[k] - lse) - (k == y ? 1.0 : 0.0)) / n);
    }
    graph_backward(g, lg);
    graph_reset(g);
    *correct = ok;
    return loss;
}

/* mean cross-entropy of a batch (labels already checked); gradients accumulate into the
   table's arena; *correct = images whose argmax is their label */
static double loss_backward(classifier *m, const float *x, const int *labels, int n,
                            int64_t *correct) {
    const int T = workers_for(n);
    ensure_workers(m, T);
    param_table *t = &m->params;
    double loss[T];
    int64_t ok[T];
    for (int k = 1; k < T; k++) memset(m->w[k].grad, 0, t->total * sizeof(float));
#pragma omp parallel num_threads(T)
    {
        const int k = omp_get_thread_num();
        omp_set_num_threads(1);
        loss[k] = slice_loss_backward(m, &m->w[k], x, labels, (int64_t)n * k / T,
                                      (int64_t)n * (k + 1) / T, n, &ok[k]);
    }
    double l = 0;
    int64_t c = 0;
    for (int k = 0; k < T; k++) {
        l += loss[k];
        c += ok[k];
    }
    for (int k = 1; k < T; k++) {
        const float *gk = m->w[k].grad;
        float *g = t->grad;
        const int64_t total = (int64_t)t->total;
#pragma omp parallel for schedule(static) num_threads(T)
        for (int64_t i = 0; i < total; i++) g[i] += gk[i];
    }
    if (correct) *correct = c;
    return l / n;
}

int classifier_loss_backward(classifier *m, const float *x, const int *labels, int n,
                             double *loss) {
    if (n <= 0) return mapo_error("classifier: empty training batch");
    if (!x) return mapo_error("classifier: no input images");
    if (check_labels(labels, n, m->cfg.num_classes)) return -1;
    double l = loss_backward(m, x, labels, n, NULL);
    if (loss) *loss = l;
    return 0;
}

void classifier_train_cfg_default(classifier_train_cfg *c) {
    memset(c, 0, sizeof *c);
    c->epochs = 2;
    c->batch_size = 64;
    c->lr = 1e-3;
    c->weight_decay = 0.01;
    c->seed = 0;
    c->quiet = 0;
}

int classifier_train(classifier *m, const float *x, const int *labels, int64_t n,
                     const classifier_train_cfg *cfg) {
    if (n <= 0) return mapo_error("classifier: no training images");
    if (!x) return mapo_error("classifier: no input images");
    if (cfg->epochs < 0) return mapo_error("classifier: negative number of epochs");
    if (cfg->batch_size < 1 || cfg->batch_size > INT_MAX)
        return mapo_error("classifier: batch_size %lld out of range",
                          (long long)cfg->batch_size);
    if (!isfinite(cfg->lr) || cfg->lr < 0)
        return mapo_error("classifier: learning rate %g is not a finite value >= 0", cfg->lr);
    if (!isfinite(cfg->weight_decay) || cfg->weight_decay < 0)
        return mapo_error("classifier: weight_decay %g is not a finite value >= 0",
                          cfg->weight_decay);
    if (check_labels(labels, n, m->cfg.num_classes)) return -1;
    const int64_t img = (int64_t)m->cfg.in_channels * m->cfg.image_size * m->cfg.image_size;
    const int64_t bs = cfg->batch_size < n ? cfg->batch_size : n;
    param_table *t = &m->params;
    float *mom = xcalloc(t->total, sizeof(float)), *vel = xcalloc(t->total, sizeof(float));
    float *bx = xmalloc((size_t)(bs * img) * sizeof(float));
    int *by = xmalloc((size_t)bs * sizeof(int));
    int64_t *perm = xmalloc((size_t)n * sizeof(int64_t));
    const adamw_config ac = {0.9, 0.999, 1e-8, cfg->weight_decay};
    int64_t step = 0;
    for (int64_t e = 0; e < cfg->epochs; e++) {
        philox r;
        philox_init(&r, cfg->seed, 0xc1a55ULL, (uint64_t)e);
        philox_permutation(&r, perm, n);
        double t0 = mapo_now(), loss_sum = 0;
        int64_t correct = 0;
        for (int64_t s = 0; s < n; s += bs) {
            const int B = (int)(n - s < bs ? n - s : bs);
            for (int i = 0; i < B; i++) {
                const int64_t k = perm[s + i];
                memcpy(bx + (int64_t)i * img, x + k * img, (size_t)img * sizeof(float));
                by[i] = labels[k];
            }
            params_zero_grad(t);
            int64_t ok;
            double l = loss_backward(m, bx, by, B, &ok);
            loss_sum += l * B;
            correct += ok;
            adamw_step(t->data, t->grad, mom, vel, t->total, ++step, cfg->lr, &ac);
        }
        double dt = mapo_now() - t0;
        if (!cfg->quiet)
            mapo_log(1, "classifier: epoch %lld/%lld loss %.4f train accuracy %.4f "
                     "(%.0f images/s)\n", (long long)e + 1, (long long)cfg->epochs,
                     loss_sum / n, (double)correct / n, n / (dt > 0 ? dt : 1e-9));
    }
    params_zero_grad(t);
    free(mom);
    free(vel);
    free(bx);
    free(by);
    free(perm);
    return 0;
}

/* ------------------------------------------------------------------ load / save */
int classifier_load(classifier **out, const char *dir) {
    *out = NULL;
    char p[4200];
    if (!mapo_is_dir(dir)) return mapo_error("%s: no such folder", dir);
    if (snprintf(p, sizeof p, "%s/config.json", dir) >= (int)sizeof p)
        return mapo_error("%s: path too long", dir);
    classifier_config c;
    if (config_parse(&c, p)) return -1;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (!mapo_is_file(p)) return mapo_error("%s: no model.safetensors", dir);
    classifier *m = build(&c);
    if (params_load(&m->params, p, "", 0)) {
        classifier_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* the parent folder of path ("." when none) */
static void parent_of(const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (!s) snprintf(out, n, ".");
    else if (s == out) out[1] = 0;
    else *s = 0;
}

static int is_ours(const char *name) {
    return !strcmp(name, "config.json") || !strcmp(name, "model.safetensors");
}

/* 1 when dir holds nothing but config.json / model.safetensors */
static int only_ours(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int ok = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && !is_ours(e->d_name)) ok = 0;
    closedir(d);
    return ok;
}

static void remove_ours(const char *dir) {
    char p[4300];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

static int write_files(const classifier *m, const char *dir) {
    char p[4300];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (params_save(&m->params, p)) return -1;
    char *js = config_dump(&m->cfg);
    if (!js) return mapo_error("%s: cannot serialise config", dir);
    snprintf(p, sizeof p, "%s/config.json", dir);
    int rc = mapo_write_file_atomic(p, js, strlen(js));
    free(js);
    return rc;
}

int classifier_save(const classifier *m, const char *dir_in) {
    char dir[4096], tmp[4200], old[4200], parent[4096];
    size_t len = strlen(dir_in);
    while (len > 1 && dir_in[len - 1] == '/') len--;
    if (len == 0 || len >= sizeof dir) return mapo_error("classifier: bad output folder name");
    memcpy(dir, dir_in, len);
    dir[len] = 0;
    struct stat st;
    int exists = stat(dir, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode)) return mapo_error("%s: exists and is not a folder", dir);
    if (exists && !only_ours(dir)) return write_files(m, dir); /* keep the other files */
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
    snprintf(old, sizeof old, "%s.old.%ld", dir, (long)getpid());
    remove_ours(tmp);
    if (mkdir(tmp, 0755))
        return mapo_error("%s: cannot create folder: %s", tmp, strerror(errno));
    if (write_files(m, tmp)) {
        remove_ours(tmp);
        return mapo_error_prefix("%s", dir);
    }
    if (exists && rename(dir, old)) {
        int e = errno;
        remove_ours(tmp);
        return mapo_error("%s: cannot move the previous model aside: %s", dir, strerror(e));
    }
    if (rename(tmp, dir)) {
        int e = errno;
        if (exists) rename(old, dir);
        remove_ours(tmp);
        return mapo_error("%s: cannot rename %s into place: %s", dir, tmp, strerror(e));
    }
    if (exists) remove_ours(old);
    parent_of(dir, parent, sizeof parent);
    fsync_path(parent);
    return 0;
}
