/* test_rng.c -- Philox4x32-10: known answers, stream layout, determinism, distributions.
 *
 * Known-answer vectors: Random123 (D. E. Shaw Research) tests/kat_vectors, lines
 * "philox4x32 10 <ctr0..3> <key0..1> <out0..3>"; the same three vectors appear in
 * Random123's kat_main / kat_cpp tests and in many independent ports.
 * Statistical checks use 4-sigma bounds (a false alarm about once in 16000 runs -- and the
 * streams are fixed, so the outcome is deterministic anyway). */
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/rng.h"
#include "testutil.h"

static void test_kat(void **s) {
    (void)s;
    static const uint32_t kat[3][10] = {
        {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
         0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        philox_block(out, kat[i], kat[i] + 4);
        for (int k = 0; k < 4; k++)
            if (out[k] != kat[i][6 + k])
                fail_msg("KAT %d word %d: got %08x, expected %08x", i, k, out[k], kat[i][6 + k]);
    }
}

/* the documented layout: key = seed, ctr = {block, b, a_lo, a_hi} */
static void test_layout(void **s) {
    (void)s;
    const uint64_t seed = 0x0123456789abcdefull, a = 0xfedcba9876543210ull, b = 0x13579bdfu;
    philox r;
    philox_init(&r, seed, a, b);
    for (uint32_t blk = 0; blk < 3; blk++) {
        const uint32_t ctr[4] = {blk, (uint32_t)b, (uint32_t)a, (uint32_t)(a >> 32)};
        const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t out[4];
        philox_block(out, ctr, key);
        for (int k = 0; k < 4; k++) assert_int_equal(philox_u32(&r), out[k]);
    }
}

static void test_determinism(void **s) {
    (void)s;
    philox a, b;
    philox_init(&a, 42, 7, 3);
    philox_init(&b, 42, 7, 3);
    for (int i = 0; i < 1000; i++) assert_int_equal(philox_u32(&a), philox_u32(&b));
    /* mixed draws replay exactly */
    philox_init(&a, 42, 7, 3);
    philox_init(&b, 42, 7, 3);
    for (int i = 0; i < 200; i++) {
        assert_true(philox_normal(&a) == philox_normal(&b));
        assert_true(philox_uniform(&a) == philox_uniform(&b));
        assert_int_equal(philox_below(&a, 1000), philox_below(&b, 1000));
    }
    /* fill_normal is the same as repeated philox_normal */
    float x[101];
    philox_init(&a, 9, 1, 2);
    philox_init(&b, 9, 1, 2);
    philox_fill_normal(&a, x, 101);
    for (int i = 0; i < 101; i++) assert_true(x[i] == (float)philox_normal(&b));
}

static void first_words(uint64_t seed, uint64_t a, uint64_t b, uint32_t out[8]) {
    philox r;
    philox_init(&r, seed, a, b);
    for (int i = 0; i < 8; i++) out[i] = philox_u32(&r);
}

static void test_streams_differ(void **s) {
    (void)s;
    const uint64_t ids[][3] = {
        {1, 0, 0}, {1, 0, 1}, {1, 1, 0}, {2, 0, 0}, {1, 1ull << 32, 0}, {1, 0, 0xffffffffull},
        {1, 0xffffffffull, 0}, {1ull << 32, 0, 0}, {1, (2ull << 40) | 5, 17}, {1, (2ull << 40) | 17, 5},
        {1, (2ull << 40) | 5, 18}, {1, (1ull << 40) | 5, 17},
    };
    const int n = sizeof ids / sizeof ids[0];
    uint32_t w[16][8];
    for (int i = 0; i < n; i++) first_words(ids[i][0], ids[i][1], ids[i][2], w[i]);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (!memcmp(w[i], w[j], sizeof w[i]))
                fail_msg("streams %d and %d coincide", i, j);
    /* and a stream's later blocks are not another stream's start: block k of (s,a,b) has
       counter {k, b, a...}, never {0, b', a'...} with (a', b') != (a, b) */
    philox r;
    philox_init(&r, 1, 0, 0);
    uint32_t later[8];
    for (int i = 0; i < 4; i++) philox_u32(&r);
    for (int i = 0; i < 8; i++) later[i] = philox_u32(&r);
    for (int i = 0; i < n; i++) assert_true(memcmp(later, w[i], sizeof later) != 0);
}

static void test_normal_moments(void **s) {
    (void)s;
    const int n = 1000000;
    philox r;
    philox_init(&r, 2024, 5, 6);
    double sum = 0, sq = 0, m3 = 0, m4 = 0;
    int tail = 0;
    for (int i = 0; i < n; i++) {
        const double x = philox_normal(&r);
        assert_true(isfinite(x));
        sum += x;
        sq += x * x;
        m3 += x * x * x;
        m4 += x * x * x * x;
        tail += fabs(x) > 3;
    }
    const double mean = sum / n, var = sq / n - mean * mean;
    printf("  1e6 normals: mean %.5f (4 sigma %.5f), var %.5f (4 sigma %.5f), skew %.4f, "
           "kurt %.4f, |x|>3: %d (expect %.0f)\n",
           mean, 4 / sqrt(n), var, 4 * sqrt(2.0 / n), m3 / n, m4 / n, tail, 0.0026998 * n);
    assert_true(fabs(mean) < 4 / sqrt((double)n));
    assert_true(fabs(var - 1) < 4 * sqrt(2.0 / n));
    assert_true(fabs(m3 / n) < 4 * sqrt(15.0 / n));
    assert_true(fabs(m4 / n - 3) < 4 * sqrt(96.0 / n));
    /* P(|x| > 3) = 0.0026998, binomial sd sqrt(n p (1-p)) */
    assert_true(fabs(tail - 0.0026998 * n) < 4 * sqrt(n * 0.0026998 * (1 - 0.0026998)));
    /* float fill: same moments */
    float *x = malloc(n * sizeof(float));
    philox_fill_normal(&r, x, n);
    sum = sq = 0;
    for (int i = 0; i < n; i++) {
        sum += x[i];
        sq += (double)x[i] * x[i];
    }
    assert_true(fabs(sum / n) < 4 / sqrt((double)n));
    assert_true(fabs(sq / n - 1) < 4 * sqrt(2.0 / n));
    free(x);
}

static void test_uniform(void **s) {
    (void)s;
    const int n = 1000000;
    philox r;
    philox_init(&r, 77, 0, 0);
    double sum = 0;
    int bins[10] = {0};
    for (int i = 0; i < n; i++) {
        const double u = philox_uniform(&r);
        assert_true(u >= 0 && u < 1);
        sum += u;
        bins[(int)(u * 10)]++;
    }
    assert_true(fabs(sum / n - 0.5) < 4 * sqrt(1.0 / 12 / n));
    double chi2 = 0;
    for (int b = 0; b < 10; b++) chi2 += (bins[b] - n / 10.0) * (bins[b] - n / 10.0) / (n / 10.0);
    printf("  uniform: mean %.5f, chi2 over 10 bins %.2f (9 dof)\n", sum / n, chi2);
    assert_true(chi2 < 9 + 4 * sqrt(18.0)); /* mean 9, sd sqrt(18) */
}

static void test_below(void **s) {
    (void)s;
    philox r;
    philox_init(&r, 5, 4, 3);
    assert_int_equal(philox_below(&r, 0), 0);
    assert_int_equal(philox_below(&r, 1), 0);
    const int n = 600000;
    int c[3] = {0};
    for (int i = 0; i < n; i++) {
        const uint32_t x = philox_below(&r, 3);
        assert_true(x < 3);
        c[x]++;
    }
    for (int k = 0; k < 3; k++)
        assert_true(fabs(c[k] - n / 3.0) < 4 * sqrt(n * (1 / 3.0) * (2 / 3.0)));
    /* n just above 2^31: nearly half the words are rejected; the result is still uniform */
    const uint32_t big = 0x80000001u;
    int hi = 0;
    for (int i = 0; i < 100000; i++) {
        const uint32_t x = philox_below(&r, big);
        assert_true(x < big);
        hi += x >= big / 2;
    }
    assert_true(fabs(hi - 50000.0) < 4 * sqrt(100000 * 0.25));
    /* 1000 timesteps: every value reachable */
    char seen[1000] = {0};
    for (int i = 0; i < 20000; i++) seen[philox_below(&r, 1000)] = 1;
    for (int k = 0; k < 1000; k++) assert_true(seen[k]);
}

static void test_permutation(void **s) {
    (void)s;
    philox r;
    for (int64_t n = 0; n <= 1000; n += n < 10 ? 1 : 331) {
        int64_t *p = malloc((n ? n : 1) * sizeof(int64_t));
        char *seen = calloc(n ? n : 1, 1);
        philox_init(&r, 11, 1, (uint64_t)n);
        philox_permutation(&r, p, n);
        for (int64_t i = 0; i < n; i++) {
            assert_true(p[i] >= 0 && p[i] < n);
            assert_false(seen[p[i]]);
            seen[p[i]] = 1;
        }
        free(p);
        free(seen);
    }
    /* different epochs give different orders; the same epoch the same order */
    int64_t a[100], b[100], c[100];
    philox_init(&r, 3, 1, 0);
    philox_permutation(&r, a, 100);
    philox_init(&r, 3, 1, 1);
    philox_permutation(&r, b, 100);
    philox_init(&r, 3, 1, 0);
    philox_permutation(&r, c, 100);
    assert_memory_equal(a, c, sizeof a);
    assert_true(memcmp(a, b, sizeof a) != 0);
    /* position of element 0 is uniform over 10 slots */
    int pos[10] = {0};
    const int trials = 50000;
    for (int t = 0; t < trials; t++) {
        int64_t q[10];
        philox_init(&r, 8, 2, (uint64_t)t);
        philox_permutation(&r, q, 10);
        for (int i = 0; i < 10; i++)
            if (q[i] == 0) pos[i]++;
    }
    for (int i = 0; i < 10; i++)
        assert_true(fabs(pos[i] - trials / 10.0) < 4 * sqrt(trials * 0.1 * 0.9));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kat),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_streams_differ),
        cmocka_unit_test(test_normal_moments),
        cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_below),
        cmocka_unit_test(test_permutation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
