/* test_unet_config.c -- config parsing and the parameter table against diffusers.
 * The real SD 1.5 and SDXL UNet configs must build a parameter table with exactly the
 * names, shapes and total that diffusers gives (fixtures from tools/make_config_fixtures.py);
 * unsupported keys and values are refused by name. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/clip_text.h"
#include "mapo/unet.h"
#include "mapo/vae.h"
#include "testutil.h"

static void check_real_config(const char *name) {
    char p[256];
    snprintf(p, sizeof p, "tests/fixtures/configs/%s", name);
    unet_config c;
    if (unet_config_load(&c, p)) fail_msg("%s", mapo_last_error());
    unet u;
    assert_int_equal(unet_build(&u, &c), 0);
    json_error_t je;
    json_t *counts = json_load_file("tests/fixtures/configs/param_counts.json", 0, &je);
    assert_non_null(counts);
    json_int_t expect = json_integer_value(json_object_get(counts, name));
    printf("  %s: mapo %zu parameters in %d tensors, diffusers %lld\n", name, u.params.total,
           u.params.n, (long long)expect);
    assert_int_equal((long long)u.params.total, (long long)expect);
    /* name by name */
    char pp[300];
    snprintf(pp, sizeof pp, "tests/fixtures/configs/%.*s.params.json",
             (int)(strlen(name) - 5), name);
    json_t *pj = json_load_file(pp, 0, &je);
    assert_non_null(pj);
    json_t *list = json_object_get(pj, "params");
    assert_int_equal((int)json_array_size(list), u.params.n);
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        const char *nm = json_string_value(json_array_get(e, 0));
        int k = params_find(&u.params, nm);
        if (k < 0) fail_msg("%s: diffusers parameter '%s' is missing in mapo", name, nm);
        json_t *shape = json_array_get(e, 1);
        assert_int_equal((int)json_array_size(shape), u.params.p[k].ndim);
        for (size_t d = 0; d < json_array_size(shape); d++)
            assert_int_equal(json_integer_value(json_array_get(shape, d)), u.params.p[k].shape[d]);
    }
    json_decref(pj);
    json_decref(counts);
    unet_free(&u);
}

static void test_sd15_params(void **s) { (void)s; check_real_config("sd15_unet.json"); }
static void test_sdxl_params(void **s) { (void)s; check_real_config("sdxl_unet.json"); }

/* Write a modified copy of the SD1.5 config and expect refusal naming `needle`. */
static void expect_refused(const char *key, json_t *value, const char *needle) {
    json_error_t je;
    json_t *root = json_load_file("tests/fixtures/configs/sd15_unet.json", 0, &je);
    assert_non_null(root);
    if (value) json_object_set_new(root, key, value);
    else json_object_del(root, key);
    char dir[] = "/tmp/mapo_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[64];
    snprintf(p, sizeof p, "%s/config.json", dir);
    assert_int_equal(json_dump_file(root, p, 0), 0);
    json_decref(root);
    unet_config c;
    int rc = unet_config_load(&c, p);
    if (rc == 0) fail_msg("config with %s accepted", key);
    if (!strstr(mapo_last_error(), needle))
        fail_msg("message '%s' does not name '%s'", mapo_last_error(), needle);
    if (!strstr(mapo_last_error(), "config.json"))
        fail_msg("message '%s' does not name the file", mapo_last_error());
    unlink(p);
    rmdir(dir);
}

static void test_refusals(void **s) {
    (void)s;
    expect_refused("some_new_key", json_true(), "some_new_key");
    expect_refused("resnet_time_scale_shift", json_string("scale_shift"), "resnet_time_scale_shift");
    expect_refused("class_embed_type", json_string("timestep"), "class_embed_type");
    expect_refused("addition_embed_type", json_string("text"), "addition_embed_type");
    expect_refused("dropout", json_real(0.1), "dropout");
    expect_refused("mid_block_type", json_string("UNetMidBlock2DSimpleCrossAttn"), "mid_block_type");
    expect_refused("down_block_types",
                   json_pack("[s,s,s,s]", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "SimpleCrossAttnDownBlock2D", "DownBlock2D"),
                   "SimpleCrossAttnDownBlock2D");
    expect_refused("layers_per_block", json_pack("[i,i]", 1, 2), "layers_per_block");
    expect_refused("attention_head_dim", json_integer(7), "attention_head_dim");
    expect_refused("norm_num_groups", json_integer(48), "norm_num_groups");
    expect_refused("num_attention_heads", json_integer(8), "num_attention_heads");
    expect_refused("conv_in_kernel", json_integer(5), "conv_in_kernel");
    expect_refused("_class_name", json_string("UNet2DModel"), "UNet2DConditionModel");
    expect_refused("block_out_channels", json_string("wide"), "block_out_channels");
}

static void test_missing_and_broken(void **s) {
    (void)s;
    unet_config c;
    assert_int_equal(unet_config_load(&c, "/nonexistent/config.json"), -1);
    assert_non_null(strstr(mapo_last_error(), "/nonexistent/config.json"));
    char dir[] = "/tmp/mapo_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[64];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"block_out_channels\": [32, 64", f); /* truncated */
    fclose(f);
    assert_int_equal(unet_config_load(&c, p), -1);
    assert_non_null(strstr(mapo_last_error(), "config.json"));
    unlink(p);
    rmdir(dir);
    unet u;
    assert_int_equal(unet_load_dir(&u, "/nonexistent_model_dir", 0), -1);
    assert_non_null(strstr(mapo_last_error(), "/nonexistent_model_dir"));
}

/* Hostile sizes (docs/RELIABILITY.md): a config declaring an absurd model, or more parameters
 * than its weights file can hold, is refused before the parameter arena is allocated, with
 * one message naming the config and the declared count. Without the checks the first and
 * third would ask calloc for terabytes (xcalloc exits) and the others would allocate
 * gigabytes before the weights file is even opened. */
static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void expect_msg(const char *needle1, const char *needle2) {
    const char *e = mapo_last_error();
    printf("  %s\n", e);
    if (!strstr(e, needle1) || !strstr(e, needle2))
        fail_msg("message '%s' lacks '%s' / '%s'", e, needle1, needle2);
}

static void test_absurd_models(void **s) {
    (void)s;
    char dir[] = "/tmp/mapo_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cp[64], wp[128];
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    snprintf(wp, sizeof wp, "%s/diffusion_pytorch_model.safetensors", dir);
    /* UNet: block_out_channels of 2^20 each (every entry within its own range) */
    json_error_t je;
    json_t *root = json_load_file("tests/fixtures/configs/sd15_unet.json", 0, &je);
    assert_non_null(root);
    json_object_set_new(root, "block_out_channels",
                        json_pack("[i,i,i,i]", 1 << 20, 1 << 20, 1 << 20, 1 << 20));
    assert_int_equal(json_dump_file(root, cp, 0), 0);
    json_decref(root);
    unet u;
    assert_int_equal(unet_init_dir(&u, cp, 0, 1), -1);
    expect_msg("config.json: the config declares a model of", "more than the limit of 17179869184");
    /* UNet: SD 1.5's 860M parameters against a 16-byte weights file */
    root = json_load_file("tests/fixtures/configs/sd15_unet.json", 0, &je);
    assert_int_equal(json_dump_file(root, cp, 0), 0);
    json_decref(root);
    write_text(wp, "0123456789abcdef");
    assert_int_equal(unet_load_dir(&u, dir, 0), -1);
    expect_msg("config.json: the config declares 859520964 parameters but",
               "holds only 16 bytes");
    /* VAE: diffusers' defaults against the same 16 bytes */
    write_text(cp, "{\"_class_name\": \"AutoencoderKL\"}");
    vae *v = NULL;
    assert_int_equal(vae_load_dir(&v, dir), -1);
    assert_null(v);
    expect_msg("config.json: the config declares", "holds only 16 bytes");
    /* CLIP text encoder: a 2^26 x 2^16 token embedding alone is 2^42 parameters */
    write_text(cp, "{\"hidden_size\": 65536, \"num_attention_heads\": 1, \"vocab_size\": 67108864,"
                   " \"num_hidden_layers\": 1}");
    clip_text *m = NULL;
    assert_int_equal(clip_text_init_random(&m, cp, 0), -1);
    assert_null(m);
    expect_msg("config.json: the config declares a model of", "more than the limit");
    unlink(cp);
    unlink(wp);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15_params),
        cmocka_unit_test(test_sdxl_params),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_missing_and_broken),
        cmocka_unit_test(test_absurd_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
