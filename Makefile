# wsgate build. `make` builds build/wsgate; `make test` installs what the tests
# need, builds, and runs every test (unit, sanitizers, integration, fuzz smoke).
# Variants: `make SAN=1` builds into build/san with ASan+UBSan.

CC ?= cc
SAN ?= 0
ifeq ($(SAN),1)
B := build/san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all
OPT := -O1
else
B := build
SANFLAGS :=
OPT := -O2
endif

VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKGS := openssl zlib jansson hiredis libnghttp2 libprotobuf-c
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lssl -lcrypto -lz -ljansson -lhiredis -lnghttp2 -lprotobuf-c)

WARN := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes \
        -Wformat=2 -Wundef -Wimplicit-fallthrough -Wvla -Wno-missing-field-initializers
CFLAGS := -std=c17 -D_GNU_SOURCE -g $(OPT) -fno-omit-frame-pointer $(WARN) $(SANFLAGS) -Isrc -I$(B)/gen $(PKG_CFLAGS) \
          -DGW_VERSION='"$(VERSION)"' $(EXTRA_CFLAGS)
LDLIBS := $(PKG_LIBS) -lpthread -lm

SRCS := $(shell find src -name '*.c' | sort)
# Messages from proto/ compiled by protoc-c into $(B)/gen at build time (no
# generated code is committed); the descriptor set is embedded for reflection.
PROTOS := proto/wsgate/v1/edge_gateway.proto proto/grpc/health/v1/health.proto \
          proto/grpc/reflection/v1alpha/reflection.proto
GEN_SRCS := $(PROTOS:proto/%.proto=$(B)/gen/%.pb-c.c)
GEN_HDRS := $(GEN_SRCS:.c=.h)
GEN_OBJS := $(GEN_SRCS:$(B)/gen/%.c=$(B)/obj/gen/%.o) $(B)/obj/gen/descriptors.o
OBJS := $(SRCS:%.c=$(B)/obj/%.o) $(GEN_OBJS)
LIB_OBJS := $(filter-out $(B)/obj/src/main.o,$(OBJS))
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%)
FUZZ_SRCS := $(sort $(wildcard fuzz/fuzz_*.c))

.PHONY: all wsgate deps unit unit-san integration integration-san fuzz-smoke fuzz test demo clean bench-echo bench-relay bench-store bench-fanout bench-revoke \
        format tools

all: $(B)/wsgate

wsgate: $(B)/wsgate

$(B)/wsgate: $(OBJS)
	@echo "  LD $@"
	@$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/obj/%.o: %.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC $<"
	@$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(B)/gen/%.pb-c.c $(B)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(B)/gen
	@echo "  PROTOC-C $<"
	@protoc-c --proto_path=proto --c_out=$(B)/gen $<

.SECONDARY: $(GEN_SRCS) $(GEN_HDRS) $(B)/gen/descriptors.c

# The FileDescriptorSet of proto/ (server reflection serves it), as a C array.
$(B)/gen/descriptors.c: $(PROTOS)
	@mkdir -p $(B)/gen
	@echo "  PROTOC $@"
	@protoc --proto_path=proto --include_imports --descriptor_set_out=$(B)/gen/descriptors.pb $(PROTOS:proto/%=%)
	@{ echo '#include <stddef.h>'; echo '#include <stdint.h>'; \
	   echo 'extern const uint8_t gw_proto_descriptors[]; extern const size_t gw_proto_descriptors_len;'; \
	   echo 'const uint8_t gw_proto_descriptors[] = {'; \
	   od -An -v -tx1 $(B)/gen/descriptors.pb | sed 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	   echo '};'; echo 'const size_t gw_proto_descriptors_len = sizeof gw_proto_descriptors;'; } > $@

# Generated code is not held to the project's warnings.
$(B)/obj/gen/%.o: $(B)/gen/%.c
	@mkdir -p $(dir $@)
	@echo "  CC $<"
	@$(CC) $(filter-out -Werror -Wmissing-prototypes -Wstrict-prototypes,$(CFLAGS)) -MMD -MP -c -o $@ $<

$(B)/tests/%: tests/unit/%.c $(LIB_OBJS) tests/unit/test.h
	@mkdir -p $(dir $@)
	@echo "  LD $@"
	@$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(LIB_OBJS) $(LDLIBS)

-include $(OBJS:.o=.d)
$(B)/obj/src/server/status.o build/fuzz/obj/src/server/status.o: web/status/index.html web/status/status.js web/status/status.css \
	web/status/favicon.svg

deps:
	@scripts/install-deps.sh

# Unit tests: one binary per module, each prints TAP lines and a closing
# "N passed, N failed" line; the runner sums them.
unit: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

unit-san:
	@$(MAKE) --no-print-directory SAN=1 unit

integration: $(B)/wsgate
	@WSGATE_BIN=$(abspath $(B)/wsgate) scripts/run-integration.sh

integration-san:
	@$(MAKE) --no-print-directory SAN=1 integration

# libFuzzer targets (clang). fuzz-smoke runs each briefly; `make fuzz` longer.
FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -g -O1 -Isrc -Ibuild/gen $(PKG_CFLAGS) -DGW_VERSION='"fuzz"'
FUZZ_BINS := $(FUZZ_SRCS:fuzz/%.c=build/fuzz/%)
FUZZ_LIB_OBJS := $(patsubst %.c,build/fuzz/obj/%.o,$(filter-out src/main.c,$(SRCS)) \
                   $(PROTOS:proto/%.proto=build/gen/%.pb-c.c) build/gen/descriptors.c)
build/fuzz/obj/%.o: %.c | $(PROTOS:proto/%.proto=build/gen/%.pb-c.h)
	@mkdir -p $(dir $@)
	@echo "  CC (fuzz) $<"
	@clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c -o $@ $<
build/fuzz/%: fuzz/%.c $(FUZZ_LIB_OBJS)
	@echo "  LD $@"
	@clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_LIB_OBJS) $(LDLIBS)
-include $(FUZZ_LIB_OBJS:.o=.d)
.SECONDARY: $(FUZZ_LIB_OBJS)

FUZZ_SECONDS ?= 300
fuzz-smoke: $(FUZZ_BINS)
	@scripts/run-fuzz.sh 15 $(FUZZ_BINS)
fuzz: $(FUZZ_BINS)
	@scripts/run-fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

# Every step runs even after one fails; each writes its counts to
# build/test-summary/<step>.txt and scripts/test-summary.sh prints the overall
# "N passed, N failed, N skipped" line last (and fails if any step failed).
# The two integration runs (plain and ASan+UBSan) run at the same time: they
# mostly wait on sockets and timers (about 25 s of CPU in 2 minutes each), so
# together they take the time of one; their logs are printed one after the
# other. INTEGRATION_PARALLEL=0 runs them one after the other.
INTEGRATION_PARALLEL ?= 1
INTEGRATION_STEPS := integration integration-san
TS := build/test-summary
run_step = SUMMARY_FILE=$(abspath $(TS))/$(1).txt $(MAKE) --no-print-directory $(1); echo $$? > $(TS)/$(1).status
test: deps
	@$(MAKE) --no-print-directory all
	@rm -rf $(TS) && mkdir -p $(TS)
	@$(call run_step,unit); $(call run_step,unit-san); \
	if [ "$(INTEGRATION_PARALLEL)" = 1 ]; then \
	    echo "== integration and integration-san, at the same time (logs follow)"; \
	    for s in $(INTEGRATION_STEPS); do ( $(call run_step,$$s) ) > $(TS)/$$s.log 2>&1 & done; \
	    wait; \
	    for s in $(INTEGRATION_STEPS); do echo "== $$s"; cat $(TS)/$$s.log; done; \
	else \
	    for s in $(INTEGRATION_STEPS); do $(call run_step,$$s); done; \
	fi; \
	$(call run_step,fuzz-smoke); \
	scripts/test-summary.sh $(TS)

demo: deps all
	@scripts/demo.sh

bench-echo: deps all
	@$(MAKE) --no-print-directory -C bench echo

bench-relay: deps all
	@$(MAKE) --no-print-directory -C bench relay

# Token mint+consume through the store, embedded against Redis (bench/README.md).
build/bench/store_bench: bench/store_bench.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	@echo "  LD $@"
	@$(CC) $(CFLAGS) -o $@ $< $(LIB_OBJS) $(LDLIBS)

bench-store: build/bench/store_bench
	@bench/run-store.sh

# Revocation latency: XADD of a revoked snapshot to the stream's close frame, three processes on one Redis.
bench-revoke: deps all
	@/usr/bin/python3 bench/revoke.py

# Push fan-out: N subscribers of one user, events at a fixed rate, against Nchan and Node (bench/README.md).
bench-fanout: deps all
	@bench/run-fanout.sh

format:
	clang-format -i $(SRCS) $(shell find src -name '*.h')

clean:
	rm -rf build
