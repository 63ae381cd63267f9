/* test_fuzz_regress.c -- every input the fuzzers found (tests/fixtures/fuzz/<target>/) and a few
 * hand-made hostile inputs per reader, fed through the very functions the libFuzzer harnesses
 * call (fuzz/targets.c is compiled into this test), in the plain build of `make test`.
 *
 * A regression file may have a sidecar <file>.expect: "ok" (must be accepted) or
 * "error: <text>" (must be refused with a message containing <text>). Without one, the file
 * must only be accepted or refused (0 / -1), which is what it failed to do before its fix
 * (and under `make fuzz` / ASan it must also be free of sanitizer reports). */
#include "../fuzz/targets.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#define FIX "tests/fixtures/fuzz"

/* the last result: rc 0 / -1, and the message when refused */
static void expect_err(int rc, const char *want, const char *what) {
    if (rc != -1 || !strstr(mapo_last_error(), want))
        fail_msg("%s: rc %d, message '%s'; expected a refusal naming '%s'", what, rc,
                 mapo_last_error(), want);
}
static void expect_ok(int rc, const char *what) {
    if (rc != 0) fail_msg("%s: refused (%s); expected it to be accepted", what, mapo_last_error());
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    b[sz] = 0;
    *n = (size_t)sz;
    return b;
}

static void regression_files(void **state) {
    (void)state;
    int total = 0;
    for (const fuzz_target *t = FUZZ_TARGETS; t->name; t++) {
        char dir[512];
        snprintf(dir, sizeof dir, FIX "/%s", t->name);
        DIR *d = opendir(dir);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || ends_with(e->d_name, ".expect")) continue;
            char p[1024], q[1100];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            size_t n;
            uint8_t *b = slurp(p, &n);
            mapo_error("%s", "");
            const int rc = t->fn(b, n);
            free(b);
            if (rc != 0 && rc != -1) fail_msg("%s: returned %d", p, rc);
            snprintf(q, sizeof q, "%s.expect", p);
            FILE *f = fopen(q, "r");
            if (f) {
                char want[512] = "";
                if (!fgets(want, sizeof want, f)) want[0] = 0;
                fclose(f);
                want[strcspn(want, "\n")] = 0;
                if (!strcmp(want, "ok")) expect_ok(rc, p);
                else if (!strncmp(want, "error: ", 7)) expect_err(rc, want + 7, p);
                else fail_msg("%s: bad expectation '%s'", q, want);
            }
            total++;
        }
        closedir(d);
    }
    assert_true(total > 0);
}

/* ------------------------------------------------------------------ hand-made inputs */

#define RUN(fn, lit) fn((const uint8_t *)(lit), sizeof(lit) - 1)

/* a safetensors file: u64 header length, header, data */
static int st(const char *hdr, const void *data, size_t n, uint64_t hlen_override) {
    size_t h = strlen(hdr);
    uint8_t *b = calloc(8 + h + n + 1, 1);
    uint64_t L = hlen_override ? hlen_override : h;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(L >> (8 * i));
    memcpy(b + 8, hdr, h);
    if (n) memcpy(b + 8 + h, data, n);
    int rc = fuzz_safetensors(b, 8 + h + n);
    free(b);
    return rc;
}

static void hostile_safetensors(void **state) {
    (void)state;
    const float one[2] = {1, 2};
    expect_ok(st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", one, 8, 0),
              "valid");
    expect_err(RUN(fuzz_safetensors, "\x01\x00"), "too short", "3 bytes");
    expect_err(RUN(fuzz_safetensors, ""), "empty", "empty file");
    expect_err(st("{}", NULL, 0, (uint64_t)1 << 62), "absurd", "header length 2^62");
    expect_err(st("{}", NULL, 0, 100), "past the end", "header length past the end");
    expect_err(st("{\"a\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,8]}}", one, 8, 0),
               "unknown dtype", "dtype F8");
    expect_err(st("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", one, 8, 0),
               "does not match", "shape / offsets mismatch");
    expect_err(st("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", one, 8, 0),
               "negative", "negative dim");
    expect_err(st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", one, 8, 0),
               "past data", "end past the data");
    expect_err(st("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", one, 8, 0),
               "overlap", "overlapping tensors");
    expect_err(st("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                  "\"data_offsets\":[0,8]}}", one, 8, 0),
               "overflows", "shape product overflow");
    expect_err(st("{\"a\":1,\"a\":2}", NULL, 0, 0), "duplicate", "duplicate names");
    expect_err(st("{\"__metadata__\":{\"k\":1}}", NULL, 0, 0), "not a string", "metadata value");
}

static void hostile_parquet(void **state) {
    (void)state;
    expect_err(RUN(fuzz_parquet, "PAR1"), "x.parquet", "magic only");
    expect_err(RUN(fuzz_parquet, "PAR1\xff\xff\xff\x7fPAR1"), "x.parquet", "footer length 2^31");
    expect_err(RUN(fuzz_parquet, "PAR1\x00\x00\x00\x00PAR1"), "x.parquet", "empty footer");
    expect_err(RUN(fuzz_parquet, "PAR1\x15\x00\x15\x02\x01\x00\x00\x00PAR1"), "x.parquet",
               "footer of garbage");
    /* a well-formed file with a nested column: the flat ones are read, the nested one is
       refused by name (the first refusal is the one returned) */
    size_t n;
    uint8_t *b = slurp("tests/fixtures/parquet/t_snappy_plain_v1.parquet", &n);
    expect_err(fuzz_parquet(b, n), "'tags.list.element': nested or repeated", "nested column");
    free(b);
    b = slurp("tests/fixtures/dataset/pickapic.parquet", &n);
    expect_ok(fuzz_parquet(b, n), "Pick-a-Pic shard");
    free(b);
}

static void hostile_image(void **state) {
    (void)state;
    expect_err(RUN(fuzz_image, ""), "fuzz", "empty");
    expect_err(RUN(fuzz_image, "GIF89a"), "fuzz", "not PNG / JPEG");
    expect_err(RUN(fuzz_image, "\x89PNG\r\n\x1a\n"), "fuzz", "PNG signature only");
    expect_err(RUN(fuzz_image, "\xff\xd8\xff\xe0"), "fuzz", "JPEG SOI only");
    /* IHDR of 100000 x 100000 (CRC correct) and no data */
    expect_err(RUN(fuzz_image, "\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x01\x86\xa0\x00\x01\x86"
                               "\xa0\x08\x02\x00\x00\x00\x3c\x7f\x2c\x6e"),
               "fuzz", "PNG 100000 x 100000");
    size_t n;
    uint8_t *b = slurp("tests/fixtures/dataset/img/jpeg_prog.jpg", &n);
    expect_ok(fuzz_image(b, n), "progressive JPEG");
    expect_err(fuzz_image(b, n / 2), "fuzz", "truncated progressive JPEG");
    free(b);
}

/* selector byte + JSON */
static int cfg(int sel, const char *json) {
    size_t n = strlen(json);
    uint8_t *b = malloc(n + 1);
    b[0] = (uint8_t)sel;
    memcpy(b + 1, json, n);
    int rc = fuzz_config(b, n + 1);
    free(b);
    return rc;
}

static void hostile_configs(void **state) {
    (void)state;
    expect_err(cfg(FUZZ_CFG_UNET, "[]"), "not a JSON object", "unet: array");
    expect_err(cfg(FUZZ_CFG_UNET, "{\"block_out_channels\":[32,32,32,32,32,32,32,32,32],"
                                  "\"down_block_types\":[],\"up_block_types\":[]}"),
               "blocks", "unet: 9 blocks");
    expect_err(cfg(FUZZ_CFG_UNET, "{\"block_out_channels\":[-32],\"down_block_types\":"
                                  "[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"]}"),
               "out of range", "unet: negative channels");
    expect_err(cfg(FUZZ_CFG_VAE, "{\"block_out_channels\":\"x\"}"), "config.json", "vae");
    expect_err(cfg(FUZZ_CFG_CLIP, "{\"hidden_size\":{}}"), "config.json", "clip: object width");
    /* scheduler: 1 step (selector 3) of a schedule with 0 training timesteps */
    expect_err(cfg(FUZZ_CFG_SCHEDULER, "{\"num_train_timesteps\":0}"), "num_train_timesteps",
               "scheduler: T = 0");
    expect_ok(cfg(FUZZ_CFG_SCHEDULER, "{}"), "scheduler: defaults");
    expect_ok(cfg(FUZZ_CFG_MODEL_INDEX, "{\"vae\":[null,null]}"), "model_index: pixel");
    assert_int_equal(cfg(FUZZ_CFG_MODEL_INDEX, "{\"vae\":[\"diffusers\",\"AutoencoderKL\"]}"),
                     -1);
    assert_int_equal(cfg(FUZZ_CFG_MODEL_INDEX, "{\"vae\""), -1);
    expect_err(cfg(FUZZ_CFG_TRAINER_STATE, "{\"global_step\":0}"), "bad global_step",
               "trainer_state: step 0");
    expect_err(cfg(FUZZ_CFG_TRAINER_STATE, "{\"global_step\":3,\"seed\":41,"
                                           "\"train_batch_size\":2,"
                                           "\"gradient_accumulation_steps\":1}"),
               "exact resume", "trainer_state: other seed");
    expect_err(cfg(FUZZ_CFG_TRAINER_STATE, "nul\x01"), "cannot read checkpoint state",
               "trainer_state: not JSON");
    expect_err(cfg(FUZZ_CFG_CLASSIFIER, "{\"in_channels\":1,\"image_size\":32,\"width\":8,"
                                        "\"features\":16,\"num_classes\":1}"),
               "num_classes", "classifier: 1 class");
    expect_err(cfg(FUZZ_CFG_CLASSIFIER, "{\"depth\":1}"), "unknown key", "classifier: key");
}

static int tok(int sel, const char *s) {
    size_t n = strlen(s);
    uint8_t *b = malloc(n + 1);
    b[0] = (uint8_t)sel;
    memcpy(b + 1, s, n);
    int rc = fuzz_tokenizer(b, n + 1);
    free(b);
    return rc;
}

static void hostile_tokenizer(void **state) {
    (void)state;
    expect_err(tok(FUZZ_TOK_VOCAB, "[1,2]"), "vocab.json", "vocab: array");
    expect_err(tok(FUZZ_TOK_VOCAB, "{\"a\":-1}"), "vocab.json", "vocab: negative id");
    expect_err(tok(FUZZ_TOK_MERGES, "#version: 0.2\nqq zz\n"), "merges.txt",
               "merges: tokens not in the vocabulary");
    expect_err(tok(FUZZ_TOK_CONFIG, "{\"model_max_length\":1}"), "model_max_length",
               "config: max length 1");
    expect_err(tok(FUZZ_TOK_SPECIAL, "{\"bos_token\":\"<|nope|>\"}"), "not in the vocabulary",
               "special_tokens_map: unknown bos");
    expect_err(tok(FUZZ_TOK_JSON, "{\"model\":{\"vocab\":[]}}"), "tokenizer.json",
               "tokenizer.json: vocab array");
    expect_ok(tok(FUZZ_TOK_PROMPT, ""), "empty prompt");
    expect_ok(tok(FUZZ_TOK_PROMPT, "<|startoftext|>"), "special token only");
    expect_ok(tok(FUZZ_TOK_PROMPT, "\xff\xfe\xc3"), "invalid UTF-8");
}

static void hostile_manifest(void **state) {
    (void)state;
    expect_ok(RUN(fuzz_manifest, "{\"caption\":\"c\",\"chosen\":\"a.jpg\",\"rejected\":\"b.png\"}\n"),
              "valid pair");
    expect_err(RUN(fuzz_manifest, ""), "no pairs", "empty manifest");
    expect_err(RUN(fuzz_manifest, "[1]\n"), "not a JSON object", "array line");
    expect_err(RUN(fuzz_manifest, "{\"caption\":\"c\",\"chosen\":\"a.jpg\"}\n"),
               "missing \"rejected\"", "missing rejected");
    expect_err(RUN(fuzz_manifest, "{\"caption\":\"c\",\"image\":\"a.jpg\"}\n"
                                  "{\"caption\":\"c\",\"chosen\":\"a.jpg\",\"rejected\":\"b.png\"}\n"),
               "not both", "mixed kinds");
    expect_err(RUN(fuzz_manifest, "{\"caption\":\"c\",\"chosen\":\"\",\"rejected\":\"b.png\"}\n"),
               "empty path", "empty path");
    expect_err(RUN(fuzz_manifest, "{\"caption\":\"c\",\"chosen\":\"a.jpg\",\"rejected\":\"b.png\""),
               "invalid JSON", "cut line");
}

/* an IDX header: magic 0 0 type nd, dims big-endian */
static int idx(int type, int nd, const uint32_t *dims, const uint8_t *payload, size_t n) {
    uint8_t b[64 + 64];
    size_t k = 0;
    b[k++] = 0;
    b[k++] = 0;
    b[k++] = (uint8_t)type;
    b[k++] = (uint8_t)nd;
    for (int i = 0; i < nd && i < 8; i++)
        for (int s = 24; s >= 0; s -= 8) b[k++] = (uint8_t)(dims[i] >> s);
    memcpy(b + k, payload, n);
    return fuzz_idx(b, k + n);
}

static void hostile_idx(void **state) {
    (void)state;
    const uint8_t px[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    expect_ok(idx(8, 2, (const uint32_t[]){2, 4}, px, 8), "valid 2x4");
    expect_err(RUN(fuzz_idx, ""), "empty", "empty");
    expect_err(RUN(fuzz_idx, "\x00\x00"), "truncated", "2 bytes");
    expect_err(RUN(fuzz_idx, "\x01\x02\x08\x01"), "bad magic", "magic");
    expect_err(idx(0x0D, 1, (const uint32_t[]){2}, px, 8), "not supported", "float32 type");
    expect_err(idx(8, 0, NULL, px, 0), "dimensions", "0 dims");
    expect_err(idx(8, 5, (const uint32_t[]){1, 1, 1, 1, 1}, px, 1), "dimensions", "5 dims");
    expect_err(idx(8, 2, (const uint32_t[]){0, 4}, px, 0), "x-idx-ubyte", "zero dim");
    expect_err(idx(8, 4, (const uint32_t[]){0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff},
                   px, 8), "x-idx-ubyte", "product overflow");
    expect_err(idx(8, 2, (const uint32_t[]){2, 4}, px, 7), "x-idx-ubyte", "truncated data");
    expect_err(idx(8, 1, (const uint32_t[]){7}, px, 8), "x-idx-ubyte", "trailing byte");
}

static int setup(void **state) {
    (void)state;
    return fuzz_setup(".");
}
static int teardown(void **state) {
    (void)state;
    fuzz_teardown();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(regression_files),   cmocka_unit_test(hostile_safetensors),
        cmocka_unit_test(hostile_parquet),    cmocka_unit_test(hostile_image),
        cmocka_unit_test(hostile_configs),    cmocka_unit_test(hostile_tokenizer),
        cmocka_unit_test(hostile_manifest),   cmocka_unit_test(hostile_idx),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
