/* test_tokenizer.c -- the C CLIP tokenizer against transformers' CLIPTokenizer.
 *
 * Fixtures: tests/fixtures/tokenizer/ from tools/make_tokenizer_fixtures.py: the real CLIP
 * vocabulary (vocab.json, merges.txt from open_clip's bpe_simple_vocab_16e6), config variants
 * (sd15, sdxl2, sdxl2_modern; "bare" = no config files; sdxl2_json = a tokenizer.json folder
 * as transformers 5.x saves it, with a cut vocabulary) and cases.json: 281 prompts (71
 * written by hand: punctuation, contractions, digits, accents composed and decomposed, CJK,
 * Hangul, emoji, mixed white space, empty, truncation, special tokens typed in the prompt,
 * invalid UTF-8; 210 random) with transformers 5.x's ids for
 *     tokenizer(prompt, padding="max_length", max_length=77, truncation=True)
 * and the untruncated length. Ids are integers: the tolerance is zero, every id must match.
 * Also: loading from a folder, bad folders (each must give -1 and a message, never a crash),
 * BPE details on a tiny vocabulary (ids from transformers, see the comment there), hostile
 * arguments. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "mapo/common.h"
#include "mapo/tokenizer.h"
#include "testutil.h"

#define FIX "tests/fixtures/tokenizer"

static char g_tmp[64];

static unsigned char *unhex(const char *h, size_t *n) {
    size_t len = strlen(h);
    assert_int_equal(len % 2, 0);
    unsigned char *b = malloc(len / 2 + 1);
    for (size_t i = 0; i < len / 2; i++) {
        unsigned x;
        assert_int_equal(sscanf(h + 2 * i, "%2x", &x), 1);
        b[i] = (unsigned char)x;
    }
    b[len / 2] = 0;
    *n = len / 2;
    return b;
}

static clip_tokenizer *load_variant(const char *v) {
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s", v);
    clip_tokenizer *t = NULL;
    char tj[300];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    struct stat st;
    int rc = !stat(tj, &st) ? clip_tokenizer_load(&t, dir) /* a transformers 5.x folder */
                            : clip_tokenizer_load_files(&t, FIX "/vocab.json", FIX "/merges.txt",
                                                        strcmp(v, "bare") ? dir : NULL);
    if (rc) fail_msg("load %s: %s", v, mapo_last_error());
    assert_non_null(t);
    return t;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    printf("    %s:", what);
    for (int i = 0; i < n; i++)
        printf(" %d", (int)ids[i]);
    printf("\n");
}

/* every case of cases.json, every variant: all 77 ids and the untruncated count */
static void test_transformers_ids(void **s) {
    (void)s;
    json_error_t je;
    json_t *root = json_load_file(FIX "/cases.json", 0, &je);
    if (!root) fail_msg("cases.json: %s (line %d)", je.text, je.line);
    int maxlen = (int)json_integer_value(json_object_get(root, "max_length"));
    assert_int_equal(maxlen, 77);
    json_t *variants = json_object_get(root, "variants"), *cases = json_object_get(root, "cases");
    assert_true(json_array_size(variants) == 5 && json_array_size(cases) >= 40);
    int checked = 0, bad = 0;
    for (size_t vi = 0; vi < json_array_size(variants); vi++) {
        const char *v = json_string_value(json_array_get(variants, vi));
        clip_tokenizer *t = load_variant(v);
        assert_int_equal(clip_tokenizer_max_length(t), 77);
        for (size_t ci = 0; ci < json_array_size(cases); ci++) {
            json_t *c = json_array_get(cases, ci);
            size_t nb;
            unsigned char *text = unhex(json_string_value(json_object_get(c, "hex")), &nb);
            json_t *want = json_object_get(json_object_get(c, "ids"), v);
            int want_n = (int)json_integer_value(json_object_get(json_object_get(c, "n"), v));
            assert_int_equal(json_array_size(want), maxlen);
            int32_t ids[77], ref[77];
            for (int i = 0; i < maxlen; i++)
                ref[i] = (int32_t)json_integer_value(json_array_get(want, (size_t)i));
            int n = clip_tokenize(t, (const char *)text, ids, maxlen);
            checked++;
            if (n != want_n || memcmp(ids, ref, sizeof ids)) {
                if (bad++ < 5) {
                    printf("  MISMATCH %s case %zu (%s) hex %s: n %d want %d\n", v, ci,
                           json_string_value(json_object_get(c, "why")),
                           json_string_value(json_object_get(c, "hex")), n, want_n);
                    print_ids("got ", ids, maxlen);
                    print_ids("want", ref, maxlen);
                }
            }
            free(text);
        }
        clip_tokenizer_free(t);
    }
    json_decref(root);
    printf("  %d prompt x variant cases, %d mismatching (tolerance: none)\n", checked, bad);
    assert_int_equal(bad, 0);
}

/* untruncated ids: a larger max_len continues where 77 stopped; max_len 2 = bos, eos */
static void test_truncation_consistency(void **s) {
    (void)s;
    clip_tokenizer *t = load_variant("sdxl2");
    const char *p = "portrait of a beautiful woman with long flowing hair, intricate, elegant, "
                    "highly detailed, digital painting, artstation, concept art, smooth, sharp "
                    "focus, illustration, art by artgerm and greg rutkowski and alphonse mucha, "
                    "8k, volumetric lighting, cinematic, golden hour, bokeh, ultra realistic";
    char p2[1024];
    snprintf(p2, sizeof p2, "%s, %s", p, p); /* 2 x 66 tokens */
    p = p2;
    int32_t a[77], b[200];
    int n = clip_tokenize(t, p, a, 77);
    printf("  long prompt: %d tokens\n", n);
    assert_true(n > 77 && n < 190);
    assert_int_equal(clip_tokenize(t, p, b, 200), n);
    assert_memory_equal(a, b, 76 * sizeof(int32_t));
    assert_int_equal(a[76], clip_tokenizer_eos_id(t));
    assert_int_equal(b[n - 1], clip_tokenizer_eos_id(t));
    for (int i = n; i < 200; i++)
        assert_int_equal(b[i], clip_tokenizer_pad_id(t));
    int32_t two[2];
    assert_int_equal(clip_tokenize(t, p, two, 2), n);
    assert_int_equal(two[0], 49406);
    assert_int_equal(two[1], 49407);
    clip_tokenizer_free(t);
}

static void write_file(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *dir, const char *name) {
    FILE *f = fopen(from, "rb");
    assert_non_null(f);
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *g = fopen(p, "wb");
    assert_non_null(g);
    char buf[65536];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0)
        assert_int_equal(fwrite(buf, 1, k, g), k);
    fclose(f);
    fclose(g);
}

/* a pipeline-style folder: clip_tokenizer_load(dir) with everything in one place */
static void test_load_folder(void **s) {
    (void)s;
    const char *v[2] = {"sd15", "sdxl2"};
    const int pad[2] = {49407, 0};
    for (int k = 0; k < 2; k++) {
        char dir[128], src[256];
        snprintf(dir, sizeof dir, "%s/%s", g_tmp, v[k]);
        assert_int_equal(mkdir(dir, 0700), 0);
        char cwd[4096], target[4200];
        assert_non_null(getcwd(cwd, sizeof cwd));
        const char *big[2] = {"vocab.json", "merges.txt"};
        for (int i = 0; i < 2; i++) {
            char link[256];
            snprintf(target, sizeof target, "%s/" FIX "/%s", cwd, big[i]);
            snprintf(link, sizeof link, "%s/%s", dir, big[i]);
            assert_int_equal(symlink(target, link), 0);
        }
        const char *cfg[2] = {"tokenizer_config.json", "special_tokens_map.json"};
        for (int i = 0; i < 2; i++) {
            snprintf(src, sizeof src, FIX "/%s/%s", v[k], cfg[i]);
            copy_file(src, dir, cfg[i]);
        }
        clip_tokenizer *t = NULL;
        if (clip_tokenizer_load(&t, dir)) fail_msg("%s", mapo_last_error());
        assert_int_equal(clip_tokenizer_max_length(t), 77);
        assert_int_equal(clip_tokenizer_bos_id(t), 49406);
        assert_int_equal(clip_tokenizer_eos_id(t), 49407);
        assert_int_equal(clip_tokenizer_pad_id(t), pad[k]);
        assert_int_equal(clip_tokenizer_vocab_size(t), 49408);
        int32_t ids[77];
        /* "a photo of a cat" -> 320 1125 539 320 2368 (also open_clip's ids) */
        assert_int_equal(clip_tokenize(t, "a photo of a cat", ids, 77), 7);
        const int32_t want[8] = {49406, 320, 1125, 539, 320, 2368, 49407, pad[k]};
        assert_memory_equal(ids, want, sizeof want);
        assert_int_equal(ids[76], pad[k]);
        clip_tokenizer_free(t);
    }
}

/* A tiny vocabulary: BPE order, unknown bytes, the "</w>" marker. Expected ids are what
 * transformers 5.24 CLIPTokenizer.from_pretrained gives on these exact files:
 *   "ab ba c" -> 7 4 1 2 8 8 (n 6)   "aab" -> 7 6 8 (n 3)   "abab" -> 7 5 4 8 (n 4)
 *   "cc" -> 7 8 8 8 (n 4: one unk per unknown byte)      "aaab" -> 7 0 6 8 (n 4) */
static void test_tiny_vocab(void **s) {
    (void)s;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/tiny", g_tmp);
    assert_int_equal(mkdir(dir, 0700), 0);
    write_file(dir, "vocab.json",
               "{\"a\":0,\"b\":1,\"a</w>\":2,\"b</w>\":3,\"ab</w>\":4,\"ab\":5,\"aab</w>\":6,"
               "\"<|startoftext|>\":7,\"<|endoftext|>\":8}");
    write_file(dir, "merges.txt", "#version: 0.2\na b</w>\na b\na ab</w>\n");
    clip_tokenizer *t = NULL;
    if (clip_tokenizer_load(&t, dir)) fail_msg("%s", mapo_last_error());
    assert_int_equal(clip_tokenizer_vocab_size(t), 9);
    struct {
        const char *text;
        int n;
        int32_t ids[10];
    } c[] = {
        {"ab ba c", 6, {7, 4, 1, 2, 8, 8, 8, 8, 8, 8}}, {"aab", 3, {7, 6, 8, 8, 8, 8, 8, 8, 8, 8}},
        {"abab", 4, {7, 5, 4, 8, 8, 8, 8, 8, 8, 8}},    {"cc", 4, {7, 8, 8, 8, 8, 8, 8, 8, 8, 8}},
        {"aaab", 4, {7, 0, 6, 8, 8, 8, 8, 8, 8, 8}},
    };
    for (int crlf = 0; crlf < 2; crlf++) {
        if (crlf) { /* the same merges with CRLF line ends and no final newline: same ids */
            clip_tokenizer_free(t);
            write_file(dir, "merges.txt", "#version: 0.2\r\na b</w>\r\na b\r\na ab</w>");
            if (clip_tokenizer_load(&t, dir)) fail_msg("%s", mapo_last_error());
        }
        for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
            int32_t ids[10];
            assert_int_equal(clip_tokenize(t, c[i].text, ids, 10), c[i].n);
            assert_memory_equal(ids, c[i].ids, sizeof ids);
        }
    }
    clip_tokenizer_free(t);
}

/* dir/<name>/ holding the given files (NULL content = file absent) */
static void bad_case(const char *name, const char *vocab, const char *merges, const char *cfg,
                     const char *stm, const char *expect) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/bad_%s", g_tmp, name);
    assert_int_equal(mkdir(dir, 0700), 0);
    if (vocab) write_file(dir, "vocab.json", vocab);
    if (merges) write_file(dir, "merges.txt", merges);
    if (cfg) write_file(dir, "tokenizer_config.json", cfg);
    if (stm) write_file(dir, "special_tokens_map.json", stm);
    clip_tokenizer *t = (clip_tokenizer *)&t; /* must be reset to NULL */
    mapo_error("(none)");
    int rc = clip_tokenizer_load(&t, dir);
    printf("  %-22s -> %s\n", name, mapo_last_error());
    assert_int_equal(rc, -1);
    assert_null(t);
    if (!strstr(mapo_last_error(), expect))
        fail_msg("%s: message '%s' lacks '%s'", name, mapo_last_error(), expect);
}

/* a folder with tokenizer.json (+ optional tokenizer_config.json) that must fail */
static void bad_json(const char *name, const char *tokjson, const char *cfg, const char *expect) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/badjson_%s", g_tmp, name);
    assert_int_equal(mkdir(dir, 0700), 0);
    write_file(dir, "tokenizer.json", tokjson);
    if (cfg) write_file(dir, "tokenizer_config.json", cfg);
    clip_tokenizer *t = (clip_tokenizer *)&t;
    int rc = clip_tokenizer_load(&t, dir);
    printf("  %-22s -> %s\n", name, mapo_last_error());
    assert_int_equal(rc, -1);
    assert_null(t);
    if (!strstr(mapo_last_error(), expect))
        fail_msg("%s: message '%s' lacks '%s'", name, mapo_last_error(), expect);
}

static void test_bad_tokenizer_json(void **s) {
    (void)s;
#define TJ_VOCAB "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<|startoftext|>\":3,\"<|endoftext|>\":4}"
    bad_json("broken", "{\"model\": {", NULL, "tokenizer.json: invalid JSON");
    bad_json("no_model", "{\"added_tokens\": []}", NULL, "no \"model\" object");
    bad_json("not_bpe", "{\"model\": {\"type\": \"WordPiece\", " TJ_VOCAB "}}", NULL,
             "model.type is not \"BPE\"");
    bad_json("no_vocab", "{\"model\": {\"merges\": []}}", NULL, "model.vocab: expected");
    bad_json("no_merges", "{\"model\": {" TJ_VOCAB "}}", NULL, "model.merges is not an array");
    bad_json("merge_type", "{\"model\": {" TJ_VOCAB ", \"merges\": [1]}}", NULL,
             "model.merges[0]: neither");
    bad_json("merge_3", "{\"model\": {" TJ_VOCAB ", \"merges\": [[\"a\", \"b\", \"c\"]]}}", NULL,
             "model.merges[0]: neither");
    bad_json("merge_unknown", "{\"model\": {" TJ_VOCAB ", \"merges\": [\"a b\", [\"a\", \"q\"]]}}",
             NULL, "model.merges[1]: token 'q' is not in the vocabulary");
    bad_json("added_not_array", "{\"model\": {" TJ_VOCAB ", \"merges\": []}, \"added_tokens\": 3}",
             NULL, "added_tokens is not an array");
    bad_json("added_no_id",
             "{\"model\": {" TJ_VOCAB ", \"merges\": []}, \"added_tokens\": "
             "[{\"content\": \"ab\"}]}",
             NULL, "added_tokens[0] has no valid id");
    bad_json("added_wrong_id",
             "{\"model\": {" TJ_VOCAB ", \"merges\": []}, \"added_tokens\": "
             "[{\"id\": 9, \"content\": \"ab\"}]}",
             NULL, "has id 9, but the vocabulary gives it 2");
#undef TJ_VOCAB
}

static void test_bad_folders(void **s) {
    (void)s;
    const char *V = "{\"a\":0,\"b\":1,\"ab\":2,\"<|startoftext|>\":3,\"<|endoftext|>\":4}";
    const char *M = "#version: 0.2\na b\n";
    bad_case("no_vocab", NULL, M, NULL, NULL, "vocab.json: cannot open");
    bad_case("no_merges", V, NULL, NULL, NULL, "merges.txt: cannot open");
    bad_case("vocab_broken", "{\"a\": 0,", M, NULL, NULL, "vocab.json: invalid JSON");
    bad_case("vocab_empty", "", M, NULL, NULL, "vocab.json: invalid JSON");
    bad_case("vocab_array", "[1, 2]", M, NULL, NULL, "expected a non-empty JSON object");
    bad_case("vocab_str_id", "{\"a\": \"0\"}", M, NULL, NULL, "id of token 'a'");
    bad_case("vocab_neg_id", "{\"a\": -1}", M, NULL, NULL, "id of token 'a'");
    bad_case("vocab_huge_id", "{\"a\": 99999999999}", M, NULL, NULL, "id of token 'a'");
    bad_case("merge_unknown", V, "#version: 0.2\na b\nq b\n", NULL, NULL,
             "line 3: token 'q' is not in the vocabulary");
    bad_case("merge_unknown2", V, "a zz\n", NULL, NULL,
             "line 1: token 'zz' is not in the vocabulary");
    bad_case("merge_result", V, "b a\n", NULL, NULL, "merged token 'ba' is not in the vocabulary");
    bad_case("merge_3parts", V, "a b c\n", NULL, NULL, "line 1: expected two tokens");
    bad_case("merge_1part", V, "ab\n", NULL, NULL, "line 1: expected two tokens");
    bad_case("merge_blank", V, "a b\n\na b\n", NULL, NULL, "line 2: expected two tokens");
    bad_case("cfg_broken", V, M, "{\"model_max_length\": 77", NULL,
             "tokenizer_config.json: invalid JSON");
    bad_case("cfg_array", V, M, "[]", NULL, "tokenizer_config.json: not a JSON object");
    bad_case("stm_broken", V, M, "{}", "{\"pad_token\": ", "special_tokens_map.json: invalid JSON");
    bad_case("pad_unknown", V, M, "{\"pad_token\": \"<pad>\"}", NULL,
             "pad_token '<pad>' is not in the vocabulary");
    bad_case("eos_unknown", V, M, NULL, "{\"eos_token\": {\"content\": \"</s>\"}}",
             "eos_token '</s>' is not in the vocabulary");
    bad_case("bos_default_missing", "{\"a\":0,\"<|endoftext|>\":1}", "", NULL, NULL,
             "bos_token '<|startoftext|>' is not in the vocabulary");
    bad_case("pad_null", V, M, "{\"pad_token\": null}", NULL, "pad_token is null");
    bad_case("pad_number", V, M, "{\"pad_token\": 5}", NULL,
             "pad_token is neither a string nor an object");
    bad_case("tok_no_content", V, M, "{\"eos_token\": {\"normalized\": true}}", NULL,
             "no non-empty string 'content'");
    bad_case("tok_lstrip", V, M,
             "{\"eos_token\": {\"content\": \"<|endoftext|>\", \"lstrip\": true}}", NULL,
             "lstrip/rstrip/single_word are not supported");
    bad_case("tok_flag_type", V, M,
             "{\"eos_token\": {\"content\": \"<|endoftext|>\", \"normalized\": 1}}", NULL,
             "'normalized' is not a boolean");
    bad_case("maxlen_small", V, M, "{\"model_max_length\": 1}", NULL, "model_max_length");
    bad_case("maxlen_float", V, M, "{\"model_max_length\": 1e30}", NULL, "model_max_length");
    bad_case("atd_bad_key", V, M, "{\"added_tokens_decoder\": {\"x\": {\"content\": \"a\"}}}", NULL,
             "added_tokens_decoder key 'x'");
    bad_case("atd_wrong_id", V, M,
             "{\"added_tokens_decoder\": {\"7\": {\"content\": \"<|endoftext|>\"}}}", NULL,
             "has id 7, but the vocabulary gives it 4");
    bad_case("atd_not_object", V, M, "{\"added_tokens_decoder\": [1]}", NULL,
             "added_tokens_decoder is not an object");
    /* a folder path that does not exist */
    clip_tokenizer *t = NULL;
    assert_int_equal(clip_tokenizer_load(&t, "/nonexistent/mapo/tokenizer"), -1);
    assert_null(t);
    assert_int_equal(clip_tokenizer_load(NULL, FIX), -1);
    /* a config folder that does not exist is an error, not silently the defaults */
    assert_int_equal(
        clip_tokenizer_load_files(&t, FIX "/vocab.json", FIX "/merges.txt", FIX "/no_such_variant"),
        -1);
    assert_null(t);
    assert_non_null(strstr(mapo_last_error(), "not a directory"));
    assert_int_equal(clip_tokenizer_load(&t, NULL), -1);
}

/* Hostile sizes (docs/RELIABILITY.md): files that declare absurd tables are refused before the
 * tables are allocated, with one message naming the file and the size. */
static void test_hostile_sizes(void **s) {
    (void)s;
    const char *V = "{\"a\":0,\"b\":1,\"ab\":2,\"<|startoftext|>\":3,\"<|endoftext|>\":4}";
    /* 2^20 + 1 merge lines: without the limit, 32 MB of hash table before line 1 is read
       (a 256 MiB merges.txt of newlines: 16 GB) */
    size_t nl = (1u << 20) + 1;
    char *m = malloc(4 * nl + 1);
    for (size_t i = 0; i < nl; i++) memcpy(m + 4 * i, "a b\n", 4);
    m[4 * nl] = 0;
    bad_case("merges_count", V, m, NULL, NULL, "1048577 lines, more than the limit of 1048576");
    free(m);
    /* 2^20 + 1 vocabulary entries */
    size_t nv = (1u << 20) + 1, k = 0;
    char *v = malloc(nv * 24 + 64);
    k += (size_t)sprintf(v + k, "{");
    for (size_t i = 0; i < nv; i++) k += (size_t)sprintf(v + k, "%s\"t%zu\":%zu", i ? "," : "", i, i);
    sprintf(v + k, "}");
    bad_case("vocab_count", v, "", NULL, NULL, "1048577 tokens, more than the limit of 1048576");
    free(v);
    /* one token of 4096 bytes */
    char *lt = malloc(4096 + 64);
    k = (size_t)sprintf(lt, "{\"a\":0,\"");
    memset(lt + k, 'x', 4096);
    k += 4096;
    sprintf(lt + k, "\":1}");
    bad_case("vocab_long_token", lt, "", NULL, NULL, "has 4096 bytes, more than the limit of 1024");
    free(lt);
    /* a 65 MiB vocab.json (sparse: a brace, then a hole): refused from its size, unread */
    char dir[256], p[300];
    snprintf(dir, sizeof dir, "%s/bad_vocab_huge", g_tmp);
    assert_int_equal(mkdir(dir, 0700), 0);
    write_file(dir, "merges.txt", "");
    snprintf(p, sizeof p, "%s/vocab.json", dir);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("{", f);
    assert_int_equal(ftruncate(fileno(f), (off_t)65 << 20), 0);
    fclose(f);
    clip_tokenizer *t = NULL;
    assert_int_equal(clip_tokenizer_load(&t, dir), -1);
    assert_null(t);
    printf("  %-22s -> %s\n", "vocab_huge", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "vocab.json: 68157440 bytes, more than the limit"));
    /* tokenizer.json with 2^20 + 1 merges */
    k = 0;
    char *tj = malloc(nl * 8 + 256);
    k += (size_t)sprintf(tj, "{\"model\": {\"vocab\": %s, \"merges\": [", V);
    for (size_t i = 0; i < nl; i++) k += (size_t)sprintf(tj + k, "%s\"a b\"", i ? "," : "");
    sprintf(tj + k, "]}}");
    bad_json("merges_count", tj, NULL, "model.merges has 1048577 entries, more than the limit");
    free(tj);
}

/* hostile arguments and inputs: errors, not crashes */
static void test_hostile(void **s) {
    (void)s;
    clip_tokenizer *t = load_variant("sd15");
    int32_t ids[77];
    assert_int_equal(clip_tokenize(NULL, "x", ids, 77), -1);
    assert_int_equal(clip_tokenize(t, NULL, ids, 77), -1);
    assert_int_equal(clip_tokenize(t, "x", NULL, 77), -1);
    assert_int_equal(clip_tokenize(t, "x", ids, 1), -1);
    assert_int_equal(clip_tokenize(t, "x", ids, -5), -1);
    assert_int_equal(clip_tokenizer_max_length(NULL), -1);
    clip_tokenizer_free(NULL);
    /* 256 KiB of pseudo-random bytes (mostly invalid UTF-8): tokenizes, gets truncated */
    size_t n = 256 << 10;
    char *big = malloc(n + 1);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        big[i] = (char)(1 + x % 255);
    }
    big[n] = 0;
    double t0 = mapo_now();
    int k = clip_tokenize(t, big, ids, 77);
    printf("  256 KiB random bytes: %d tokens in %.3f s\n", k, mapo_now() - t0);
    assert_true(k > 77);
    assert_int_equal(ids[76], 49407);
    /* one long word: the BPE heap on 256 Ki symbols */
    memset(big, 'z', n);
    assert_true(clip_tokenize(t, big, ids, 77) > 77);
    free(big);
    /* 1 MiB of combining marks of mixed classes after one letter: NFC's canonical reordering
     * must stay (near) linear, not quadratic (an insertion sort takes minutes here) */
    const char *marks[4] = {"\xCC\x81", "\xCC\xA3", "\xCC\xB4", "\xCD\x85"}; /* 230 220 1 240 */
    size_t m = 0;
    big = malloc((1 << 20) + 8);
    big[m++] = 'a';
    for (uint64_t y = 1; m + 2 < (1u << 20);
         y = y * 6364136223846793005ull + 1442695040888963407ull) {
        memcpy(big + m, marks[(y >> 33) & 3], 2);
        m += 2;
    }
    big[m] = 0;
    t0 = mapo_now();
    k = clip_tokenize(t, big, ids, 77);
    double dt = mapo_now() - t0;
    printf("  1 MiB of combining marks: %d tokens in %.3f s\n", k, dt);
    assert_true(k > 77);
    assert_true(dt < 5.0);
    free(big);
    /* longer than the 16 MiB limit */
    size_t huge = (16u << 20) + 1;
    char *h = malloc(huge + 1);
    memset(h, 'a', huge);
    h[huge] = 0;
    assert_int_equal(clip_tokenize(t, h, ids, 77), -1);
    assert_non_null(strstr(mapo_last_error(), "longer than"));
    free(h);
    clip_tokenizer_free(t);
}

static int rm_rf(const char *dir) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mapo_tok_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transformers_ids), cmocka_unit_test(test_truncation_consistency),
        cmocka_unit_test(test_load_folder),      cmocka_unit_test(test_tiny_vocab),
        cmocka_unit_test(test_bad_folders),      cmocka_unit_test(test_bad_tokenizer_json),
        cmocka_unit_test(test_hostile),          cmocka_unit_test(test_hostile_sizes),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rm_rf(g_tmp)) fprintf(stderr, "could not remove %s\n", g_tmp);
    return rc;
}
