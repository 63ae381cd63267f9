# fuzz/fuzz.mk -- libFuzzer targets for every reader of outside bytes (docs/RELIABILITY.md,
# "Fuzzing"). Included by the top-level Makefile, so every name here is FUZZ_ prefixed.
#   make fuzz-build   the library with clang -fsanitize=fuzzer-no-link,address,undefined and
#                     one harness per target in build-fuzz/
#   make fuzz         each target in turn for FUZZ_RUNS executions (default 10000000) or
#                     FUZZ_SECONDS seconds; FUZZ_TARGETS="image idx" picks some
#   make fuzz-smoke   each target over its seed corpus + 20000 runs / 20 s of mutation (CI)
#   make fuzz-clean   removes build-fuzz/ (kept corpora and logs included)
# Needs, besides the packages of `make deps`: clang, libclang-rt-dev (libFuzzer and the
# sanitizer runtimes; on Debian 12 it pulls libclang-rt-14-dev) and libomp-dev (clang's
# -fopenmp).
#   FUZZ_MODE=fast    the same without sanitizers at -O2 into build-fuzz-fast/: 5-25x the
#                     executions a second, for volume (crashes, hangs and out-of-memory are
#                     still caught; memory errors that do not crash are not)
FUZZ_CC      ?= clang
FUZZ_B       := build-fuzz
FUZZ_OPT     := -O1
FUZZ_NAMES   := safetensors parquet image config tokenizer manifest idx
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
ifeq ($(FUZZ_MODE),fast)
FUZZ_B       := build-fuzz-fast
FUZZ_SAN     :=
FUZZ_OPT     := -O2
endif
FUZZ_CFLAGS  := $(FUZZ_OPT) -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-pass-failed -fopenmp -Iinclude $(FUZZ_SAN)
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_B)/obj/%.o)
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_B)/fuzz_%)

.PHONY: fuzz-build fuzz fuzz-smoke fuzz-clean

fuzz-build: $(FUZZ_BINS)

$(FUZZ_B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_B)/libmapo-fuzz.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_B)/fuzz_%: fuzz/fuzz_main.c fuzz/targets.c fuzz/targets.h $(FUZZ_B)/libmapo-fuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DFUZZ_FN=fuzz_$* -DFUZZ_ROOT='"$(CURDIR)"' \
	  -o $@ fuzz/fuzz_main.c fuzz/targets.c $(FUZZ_B)/libmapo-fuzz.a $(LDLIBS)

fuzz: fuzz-build
	@FUZZ_BUILD=$(FUZZ_B) bash fuzz/run.sh campaign $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	@FUZZ_BUILD=$(FUZZ_B) bash fuzz/run.sh smoke $(FUZZ_TARGETS)

fuzz-clean:
	rm -rf $(FUZZ_B)

-include $(FUZZ_LIB_OBJ:.o=.d)
