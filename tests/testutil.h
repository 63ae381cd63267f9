/* testutil.h -- shared helpers for the cmocka tests: relative error of tensors,
 * fixture loading. Relative error is ||a - b||_2 / max(||b||_2, tiny) per tensor. */
#ifndef MAPO_TESTUTIL_H
#define MAPO_TESTUTIL_H
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

static inline double rel_err_f32(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (!isfinite(num)) return INFINITY;
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}
static inline double rel_err_f64(const double *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (!isfinite(num)) return INFINITY;
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}
/* The whole file (fails the test when unreadable); *n its size. free() the result. */
static inline uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}
#endif
