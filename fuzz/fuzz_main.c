/* fuzz_main.c -- the libFuzzer entry point of one target, compiled once per target by
 * fuzz/fuzz.mk with -DFUZZ_FN=fuzz_<target> (see targets.h) and -DFUZZ_ROOT=<repository>. */
#include <stdint.h>
#include <stdlib.h>

#include "targets.h"

#ifndef FUZZ_FN
#error "compile with -DFUZZ_FN=fuzz_<target>"
#endif
#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (fuzz_setup(FUZZ_ROOT)) abort();
    atexit(fuzz_teardown);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)FUZZ_FN(data, size); /* accepted or refused: both fine */
    return 0;
}
