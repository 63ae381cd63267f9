# mapo -- build with `make`, test with `make test`, demo with `make demo`.
CC      ?= gcc
OPT     ?= -O3 -march=native
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Iinclude -MMD -MP
LDLIBS  := -ldnnl -lopenblas -ljansson -lpng -ljpeg -lsnappy -lzstd -lz -lm -fopenmp
TEST_LDLIBS := -lcmocka

BUILD   := build
BIN     := mapo
LIB_SRC := $(wildcard src/core/*.c src/io/*.c src/ops/*.c src/models/*.c \
                      src/diffusion/*.c src/align/*.c src/train/*.c \
                      src/eval/*.c src/study/*.c)
CLI_SRC := $(wildcard src/cli/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TESTS   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test demo study bench clean deps test-sanitize test-O0 test-O1 test-opt-levels
all: $(BIN)

deps:
	@bash tools/install_deps.sh

$(BUILD)/libmapo.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

$(BIN): $(CLI_OBJ) $(BUILD)/libmapo.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# AdamW's element loop vectorises only without sqrtf's errno path (src/train/adamw_update.c)
$(BUILD)/src/train/adamw_update.o: CFLAGS += -fno-math-errno

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmapo.a tests/testutil.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libmapo.a $(LDLIBS) $(TEST_LDLIBS)

# Runs every test binary (from the repo root, so fixture paths resolve), then the CLI
# checks; prints a closing "N passed, N failed" line and fails if any failed.
test: deps
	@$(MAKE) --no-print-directory $(BIN) $(TESTS)
	@MAPO=$${MAPO:-./$(BIN)} bash tests/run_all.sh $(TESTS)

# The whole suite (every test binary and tests/cli/*.sh) built with ASan + LSan + UBSan into
# build-san/ (binary build-san/mapo, never mixed with build/ and ./mapo); fails on any
# sanitizer report (tests/run_sanitized.sh; docs/RELIABILITY.md).
# gcc's -fsanitize=undefined leaves out float-cast-overflow (float -> int of NaN or out of
# range), so it is named. The runtimes are linked statically: with gcc's shared libasan +
# libubsan, UBSan's reports ignore log_path and go to stderr, where a CLI test expecting a
# refusal would swallow them.
SAN_OPT := -O1 -march=native -fno-omit-frame-pointer \
           -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
           -static-libasan -static-libubsan
SAN_TESTS := $(TEST_SRC:tests/%.c=build-san/tests/%)
test-sanitize: deps
	@$(MAKE) --no-print-directory BUILD=build-san BIN=build-san/mapo OPT="$(SAN_OPT)" \
	  build-san/mapo $(SAN_TESTS)
	@MAPO=./build-san/mapo bash tests/run_sanitized.sh build-san $(SAN_TESTS)

# The suite at -O0 / -O1 (build-O0/, build-O1/); `make test` is -O3.
test-O0 test-O1: test-%: deps
	@MAPO=./build-$*/mapo $(MAKE) --no-print-directory BUILD=build-$* BIN=build-$*/mapo \
	  OPT="-$* -march=native" test
test-opt-levels: test-O0 test-O1

demo: deps
	@$(MAKE) --no-print-directory mapo
	@bash tools/demo.sh

# the full Fashion-MNIST reference-mismatch study (docs/STUDY.md); resumes where it stopped
study: deps
	@$(MAKE) --no-print-directory mapo
	@bash tools/study.sh full out/study
	./mapo report --study out/study --out docs/study --md_prefix study/

# mapo's training step; with torch + diffusers installed (development only), PyTorch beside it
bench: mapo
	./mapo bench
	./mapo bench --loss dpo
	@if python3 -c "import torch, diffusers" 2>/dev/null; then \
	  bash bench/compare.sh bench/bench_unet.json mapo 3; \
	  bash bench/compare.sh bench/bench_unet_dh64.json mapo 3; \
	else echo "(install torch and diffusers with pip to time PyTorch beside it: bench/compare.sh)"; fi

clean:
	rm -rf $(BUILD) mapo build-san build-O0 build-O1

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
# libFuzzer targets for every reader of outside bytes (docs/RELIABILITY.md)
-include fuzz/fuzz.mk
