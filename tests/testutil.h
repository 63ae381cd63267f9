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
#endif
