/* test_blocked.c -- src/ops/blocked.c against oneDNN's own reorders, byte for byte.
 *
 * blocked.c converts between mapo's plain float32 weights and the blocked layouts oneDNN's
 * bf16 convolutions and matmuls choose, in place of oneDNN's reorders; the reorder is the
 * reference. For each layout the engine meets on this machine (and neighbours of them: other
 * block widths, the pair-free Adcb16a) and for shapes that fill whole blocks and shapes that
 * leave padding in the edge blocks, both directions:
 *   plain float32 -> blocked bf16: the same bytes as a oneDNN reorder into the same
 *     descriptor, padding included (both buffers start as garbage; the padding must come out
 *     zero). Inputs are normal floats (no subnormals, no NaN), where oneDNN's rounding
 *     (vcvtneps2bf16, or its emulation) and mapo_bf16_bits agree: round to nearest even;
 *     ties are present (values with 16 trailing zero bits plus a half unit) and must match.
 *   plain bf16 (the float32 values rounded by mapo_bf16_bits: a weight held in bf16) ->
 *     blocked bf16: the same bytes as that reorder of the float32 values.
 *   blocked float32 -> plain float32, assigned and accumulated (+=): the same bytes as a
 *     oneDNN reorder (with a sum post-op for +=), the blocked padding holding NaN (never read).
 * A wrong stride, a swapped pair or a block read from the wrong origin moves some element and
 * fails the comparison; blocked_map_new must also decline a plain layout with inner blocks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "../src/ops/blocked.h"
#include "mapo/bf16.h"
#include "testutil.h"

static dnnl_engine_t eng;
static dnnl_stream_t strm;

#define DN(x) assert_int_equal((int)(x), (int)dnnl_success)

static dnnl_memory_desc_t md_tag(int nd, const int64_t *dims, dnnl_data_type_t dt,
                                 dnnl_format_tag_t tag) {
    dnnl_memory_desc_t m;
    dnnl_dims_t d = {0};
    memcpy(d, dims, nd * sizeof *dims);
    DN(dnnl_memory_desc_init_by_tag(&m, nd, d, dt, tag));
    return m;
}

/* oneDNN's reorder from (src_md, src) to (dst_md, dst); dst += when sum */
static void reorder(const dnnl_memory_desc_t *smd, void *src, const dnnl_memory_desc_t *dmd,
                    void *dst, int sum) {
    dnnl_primitive_attr_t attr;
    DN(dnnl_primitive_attr_create(&attr));
    if (sum) {
        dnnl_post_ops_t po;
        DN(dnnl_post_ops_create(&po));
        DN(dnnl_post_ops_append_sum(po, 1.0f));
        DN(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    DN(dnnl_reorder_primitive_desc_create(&pd, smd, eng, dmd, eng, attr));
    dnnl_primitive_t p;
    DN(dnnl_primitive_create(&p, pd));
    dnnl_memory_t s, d;
    DN(dnnl_memory_create(&s, smd, eng, src));
    DN(dnnl_memory_create(&d, dmd, eng, dst));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, s}, {DNNL_ARG_TO, d}};
    DN(dnnl_primitive_execute(p, strm, 2, args));
    DN(dnnl_stream_wait(strm));
    dnnl_memory_destroy(s), dnnl_memory_destroy(d);
    dnnl_primitive_destroy(p), dnnl_primitive_desc_destroy(pd), dnnl_primitive_attr_destroy(attr);
}

static uint32_t g_state = 2463534242u;
static uint32_t next(void) {
    g_state ^= g_state << 13, g_state ^= g_state >> 17, g_state ^= g_state << 5;
    return g_state;
}
/* normal floats in +-[0.5, 8); every eighth a bf16 tie (16 low bits 0x8000) */
static float value(int64_t i) {
    float f = (0.5f + (float)(next() % 15000) / 1000.0f) * (next() & 1 ? -1.0f : 1.0f);
    if (i % 8 == 3) {
        uint32_t u;
        memcpy(&u, &f, 4);
        u = (u & 0xffff0000u) | 0x8000u;
        memcpy(&f, &u, 4);
    }
    return f;
}

static void one_case(int nd, const int64_t *dims, dnnl_format_tag_t plain_tag,
                     dnnl_format_tag_t tag, const char *name) {
    const dnnl_memory_desc_t pu = md_tag(nd, dims, dnnl_f32, plain_tag);
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= dims[i];
    float *plain = malloc(n * 4);
    for (int64_t i = 0; i < n; i++) plain[i] = value(i);

    /* plain float32 -> blocked bf16 */
    const dnnl_memory_desc_t b16 = md_tag(nd, dims, dnnl_bf16, tag);
    blocked_map *m = blocked_map_new(&pu, &b16);
    if (!m) fail_msg("%s: blocked_map_new declined", name);
    const size_t nb16 = dnnl_memory_desc_get_size(&b16);
    unsigned char *want = malloc(nb16), *got = malloc(nb16);
    memset(want, 0xab, nb16), memset(got, 0xcd, nb16);
    reorder(&pu, plain, &b16, want, 0);
    blocked_from_plain_bf16(m, (uint16_t *)got, plain);
    if (memcmp(want, got, nb16)) {
        size_t i = 0;
        while (want[i] == got[i]) i++;
        fail_msg("%s: plain -> bf16 blocked differs from oneDNN's reorder at byte %zu of %zu",
                 name, i, nb16);
    }
    blocked_map_free(m);

    /* plain bf16 (a weight held in bf16: the float32 one rounded) -> blocked bf16: the same
       bytes as oneDNN's reorder of the float32 buffer. The plain buffer is exactly n elements
       long, so the vector path's gathers must stop short of its end (ASan builds check). */
    const dnnl_memory_desc_t pu16 = md_tag(nd, dims, dnnl_bf16, plain_tag);
    m = blocked_map_new(&pu16, &b16);
    if (!m) fail_msg("%s: blocked_map_new declined (bf16 plain)", name);
    uint16_t *plain16 = malloc(n * 2);
    for (int64_t i = 0; i < n; i++) plain16[i] = mapo_bf16_bits(plain[i]);
    memset(got, 0xcd, nb16);
    blocked_from_plain_u16(m, (uint16_t *)got, plain16);
    if (memcmp(want, got, nb16)) {
        size_t i = 0;
        while (want[i] == got[i]) i++;
        fail_msg("%s: bf16 plain -> bf16 blocked differs from oneDNN's reorder at byte %zu of %zu",
                 name, i, nb16);
    }
    free(plain16);
    blocked_map_free(m);

    /* blocked float32 -> plain float32, assigned and accumulated */
    const dnnl_memory_desc_t b32 = md_tag(nd, dims, dnnl_f32, tag);
    m = blocked_map_new(&pu, &b32);
    if (!m) fail_msg("%s: blocked_map_new declined (float32)", name);
    const size_t nb32 = dnnl_memory_desc_get_size(&b32);
    float *blk = malloc(nb32);
    for (size_t i = 0; i < nb32 / 4; i++) blk[i] = NAN; /* the padding stays NaN */
    reorder(&pu, plain, &b32, blk, 0);                  /* the dims' elements */
    for (int acc = 0; acc < 2; acc++) {
        float *w = malloc(n * 4), *g = malloc(n * 4);
        for (int64_t i = 0; i < n; i++) w[i] = g[i] = acc ? value(i) : -1.0f;
        reorder(&b32, blk, &pu, w, acc);
        blocked_to_plain_f32(m, g, blk, acc);
        if (memcmp(w, g, n * 4))
            fail_msg("%s: float32 blocked -> plain (%s) differs from oneDNN's reorder", name,
                     acc ? "+=" : "=");
        free(w), free(g);
    }
    printf("  %-34s %lld elements, %zu blocked bytes: equal to oneDNN's reorders\n", name,
           (long long)n, nb16);
    blocked_map_free(m);
    free(blk), free(want), free(got), free(plain);
}

static void test_weights(void **st) {
    (void)st;
    static const struct {
        int nd;
        int64_t dims[4];
        dnnl_format_tag_t plain, tag;
        const char *name;
    } c[] = {
        /* the matmuls' weights (B[K, N]): ab is dx's w, ba the forward's w^T */
        {2, {128, 128}, dnnl_ab, dnnl_BA16a64b2a, "128x128 ab -> BA16a64b2a"},
        {2, {128, 128}, dnnl_ba, dnnl_BA16a64b2a, "128x128 ba -> BA16a64b2a"},
        {2, {64, 512}, dnnl_ba, dnnl_BA16a64b2a, "64x512 ba -> BA16a64b2a"},
        {2, {77, 130}, dnnl_ab, dnnl_BA16a64b2a, "77x130 ab -> BA16a64b2a (padded)"},
        {2, {40, 24}, dnnl_ba, dnnl_BA16a32b2a, "40x24 ba -> BA16a32b2a (padded)"},
        {2, {33, 17}, dnnl_ab, dnnl_BA16a16b2a, "33x17 ab -> BA16a16b2a (padded)"},
        /* the convolutions' weights: forward, backward data, the weight gradient's layout */
        {4, {128, 128, 3, 3}, dnnl_abcd, dnnl_AcdB16b32a2b, "128x128x3x3 AcdB16b32a2b"},
        {4, {128, 128, 3, 3}, dnnl_abcd, dnnl_ABcd16a16b2a, "128x128x3x3 ABcd16a16b2a"},
        {4, {128, 128, 3, 3}, dnnl_abcd, dnnl_ABcd16b16a, "128x128x3x3 ABcd16b16a"},
        {4, {96, 64, 1, 1}, dnnl_abcd, dnnl_AcdB16b64a2b, "96x64x1x1 AcdB16b64a2b"},
        {4, {40, 24, 3, 3}, dnnl_abcd, dnnl_AcdB16b32a2b, "40x24x3x3 AcdB16b32a2b (padded)"},
        {4, {40, 24, 3, 3}, dnnl_abcd, dnnl_ABcd16a16b2a, "40x24x3x3 ABcd16a16b2a (padded)"},
        {4, {40, 24, 3, 3}, dnnl_abcd, dnnl_ABcd16b16a, "40x24x3x3 ABcd16b16a (padded)"},
        {4, {64, 4, 3, 3}, dnnl_abcd, dnnl_AcdB16b16a2b, "64x4x3x3 AcdB16b16a2b (conv_in)"},
        {4, {4, 64, 3, 3}, dnnl_abcd, dnnl_ABcd16a16b2a, "4x64x3x3 ABcd16a16b2a (conv_out)"},
        {4, {64, 4, 3, 3}, dnnl_abcd, dnnl_Adcb16a, "64x4x3x3 Adcb16a"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++)
        one_case(c[i].nd, c[i].dims, c[i].plain, c[i].tag, c[i].name);
}

static void test_declines(void **st) {
    (void)st;
    const int64_t d[2] = {64, 64};
    const dnnl_memory_desc_t blk = md_tag(2, d, dnnl_f32, dnnl_AB16b16a);
    const dnnl_memory_desc_t ab = md_tag(2, d, dnnl_f32, dnnl_ab);
    const dnnl_memory_desc_t ab16 = md_tag(2, d, dnnl_bf16, dnnl_ab);
    const dnnl_memory_desc_t abh = md_tag(2, d, dnnl_f16, dnnl_ab);
    assert_null(blocked_map_new(&blk, &blk)); /* the "plain" side has inner blocks */
    assert_null(blocked_map_new(&ab, &ab16)); /* nothing blocked: the caller's own copy */
    assert_null(blocked_map_new(&abh, &blk)); /* plain side neither float32 nor bf16 */
}

static int setup(void **st) {
    (void)st;
    DN(dnnl_engine_create(&eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    return 0;
}
static int teardown(void **st) {
    (void)st;
    dnnl_stream_destroy(strm);
    dnnl_engine_destroy(eng);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_declines),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
