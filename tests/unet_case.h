/* unet_case.h -- the UNet parity fixtures' cases (tests/fixtures/unet/<case>/), shared by
 * test_unet_parity.c and test_bf16_parity.c. */
#ifndef MAPO_TESTS_UNET_CASE_H
#define MAPO_TESTS_UNET_CASE_H
#include <stdio.h>

#include "mapo/common.h"
#include "mapo/pairs.h"
#include "mapo/step.h"
#include "testutil.h"

/* the fixture's policy model (with gradients) and its batch; dir gets the case's folder */
static void load_case(const char *cs, char dir[256], unet *u, debug_batch *b, unet_inputs *in) {
    char p[512];
    snprintf(dir, 256, "tests/fixtures/unet/%s", cs);
    snprintf(p, sizeof p, "%s/model", dir);
    if (unet_load_dir(u, p, 1)) fail_msg("%s", mapo_last_error());
    snprintf(p, sizeof p, "%s/batch.safetensors", dir);
    if (debug_batch_load(b, p, &u->cfg)) fail_msg("%s", mapo_last_error());
    debug_batch_inputs(b, in);
}
#endif
