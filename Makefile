# moed: plain make. `make` builds everything, `make test` runs the unit
# and end-to-end tests, `make test-asan` runs them again under ASan+UBSan,
# `make bench` prints the benchmarks, `make fuzz` fuzzes the parsers.

CC ?= cc
PKG_CONFIG ?= pkg-config
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR ?= $(shell $(PKG_CONFIG) --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
SYSUSERSDIR ?= $(shell $(PKG_CONFIG) --variable=sysusersdir systemd 2>/dev/null || echo /usr/lib/sysusers.d)
DESTDIR ?=
O ?= build
SAN ?=
FUZZ_SECONDS ?= 60
TEST_TIMEOUT ?= 300

PKGS := liburing numa hwloc jemalloc openblas
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null || echo -lcmocka)

CFLAGS ?= -O2 -g
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow \
	-Wno-unused-parameter -fno-strict-aliasing -pthread \
	-Iinclude -Idaemon -Iipc $(PKG_CFLAGS) -MMD -MP $(SAN)
LDLIBS := $(PKG_LIBS) -lm -pthread

ISA_AVX2 := -mavx2 -mfma -mf16c
ISA_AVX512 := $(ISA_AVX2) -mavx512f -mavx512bw -mavx512vl -mavx512dq

IPC_SRC := $(wildcard ipc/*.c)
IPC_OBJ := $(IPC_SRC:%.c=$(O)/%.o)
IPC_LIB := $(O)/libmoeipc.a

ENGINE_SRC := $(wildcard daemon/*.c) $(IPC_SRC)
ENGINE_SRC := $(filter-out daemon/main.c,$(ENGINE_SRC))
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(O)/%.o)
ENGINE_LIB := $(O)/libmoeengine.a

# moe-bench: client/moe-bench.c and its modules (client/bench_*.c); a
# program, not part of libmoeclient.
BENCH_CLIENT_SRC := client/moe-bench.c $(wildcard client/bench_*.c)
BENCH_CLIENT_OBJ := $(BENCH_CLIENT_SRC:%.c=$(O)/%.o)

# libmoeclient: client/*.c (moectl aside) and the ipc layer, built
# position-independent with everything hidden; the version script lists
# what is exported (only moe_*), the SONAME carries the ABI's major.
CLIENT_SRC := $(filter-out client/moectl.c $(BENCH_CLIENT_SRC),$(wildcard client/*.c)) $(IPC_SRC)
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(O)/pic/%.o)
CLIENT_MAP := client/libmoeclient.map
CLIENT_SONAME := libmoeclient.so.1
CLIENT_REAL := libmoeclient.so.1.0.0
CLIENT_LIB := $(O)/lib/$(CLIENT_REAL)
# Sanitizer runtimes are the executable's to bring: no -z defs then.
CLIENT_ZDEFS := $(if $(SAN),,-Wl,-z,defs)
VERSION := $(shell sed -n 's/^\#define MOE_VERSION_STRING "\(.*\)"/\1/p' include/moe/moe_version.h)

TOOLS := moe-gen moe-layer
TOOL_BIN := $(TOOLS:%=$(O)/bin/%)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(O)/tests/%)
TEST_SH := $(wildcard tests/e2e_*.sh)
BENCH_SRC := $(wildcard tests/bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(O)/bench/%)

all: $(ENGINE_LIB) $(TOOL_BIN) $(O)/bin/moed $(CLIENT_LIB) $(O)/bin/moectl \
	$(O)/bin/moe-bench

$(O)/daemon/quant_avx2.o: XFLAGS := $(ISA_AVX2)
$(O)/daemon/quant_avx512.o: XFLAGS := $(ISA_AVX512)

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XFLAGS) -c -o $@ $<

$(ENGINE_LIB): $(ENGINE_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

# ipc/ is libc only: its own tests and bench link it alone (so they build
# while the engine is in flux), as libmoeclient will.
$(IPC_LIB): $(IPC_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

IPC_TEST_BIN := $(O)/tests/test_ring $(O)/tests/test_ring_stress \
	$(O)/tests/test_shm
$(IPC_TEST_BIN): $(O)/tests/%: $(O)/tests/%.o $(IPC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) -pthread

$(O)/bench/bench_ipc: $(O)/tests/bench/bench_ipc.o $(IPC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ -pthread

# libmoeclient: built position-independent, everything hidden (CLIENT_*).
$(O)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -fvisibility=hidden -c -o $@ $<

$(CLIENT_LIB): $(CLIENT_OBJ) $(CLIENT_MAP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(CLIENT_SONAME) \
		-Wl,--version-script=$(CLIENT_MAP) $(CLIENT_ZDEFS) \
		-o $@ $(CLIENT_OBJ) -lm
	ln -sf $(CLIENT_REAL) $(O)/lib/$(CLIENT_SONAME)
	ln -sf $(CLIENT_SONAME) $(O)/lib/libmoeclient.so

# Only moe_* may be exported (the version script's job; this checks it).
check-exports: $(CLIENT_LIB)
	@bad=$$(nm -D --defined-only $(CLIENT_LIB) | \
		awk '$$2 != "A" && $$3 !~ /^moe_/ { print $$3 }'); \
	if [ -n "$$bad" ]; then \
		echo "libmoeclient exports more than moe_*:" $$bad; exit 1; fi; \
	echo "libmoeclient exports only:" $$(nm -D --defined-only \
		$(CLIENT_LIB) | awk '$$2 != "A" { print $$3 }')

# moectl: forward goes through libmoeclient (found next to the binary,
# build tree or install); status and stats are a question each on the
# socket, which it asks with ipc/ itself.
CLIENT_LINK := -L$(O)/lib -lmoeclient -Wl,-rpath,'$$ORIGIN/../lib'
$(O)/bin/moectl: $(O)/client/moectl.o $(CLIENT_LIB) $(IPC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(CLIENT_LINK) $(IPC_LIB) -pthread

# moe-bench: drives moed through libmoeclient; the engine library gives it
# the model's index (expert offsets for the I/O ceiling) and its routers.
$(O)/bin/moe-bench: $(BENCH_CLIENT_OBJ) $(ENGINE_LIB) $(CLIENT_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(BENCH_CLIENT_OBJ) $(ENGINE_LIB) $(CLIENT_LINK) $(LDLIBS)

# moe-bench's trace generators and cgroup handling, tested on their own.
$(O)/tests/test_bench_trace: $(O)/tests/test_bench_trace.o $(O)/client/bench_trace.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) -lm
$(O)/tests/test_bench_cgroup: $(O)/tests/test_bench_cgroup.o \
		$(O)/client/bench_cgroup.o $(O)/daemon/diag.o $(O)/ipc/errors.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS)

# test_client: the library as applications link it, plus ipc/ for the
# fake moed inside the test.
$(O)/tests/test_client: $(O)/tests/test_client.o $(CLIENT_LIB) $(IPC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(CLIENT_LINK) $(IPC_LIB) $(CMOCKA_LIBS) \
		-ldl -pthread

# test_client_moed: the library as applications link it, against a real
# moed; the engine in-process (testutil's reference) to check answers.
$(O)/tests/test_client_moed: $(O)/tests/test_client_moed.o $(O)/tests/testutil.o \
		$(ENGINE_LIB) $(CLIENT_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(O)/tests/testutil.o $(ENGINE_LIB) \
		$(CLIENT_LINK) $(CMOCKA_LIBS) $(LDLIBS)

$(O)/bin/moed: $(O)/daemon/main.o $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(O)/bin/%: $(O)/tools/%.o $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(O)/tests/%: $(O)/tests/%.o $(O)/tests/testutil.o $(O)/tests/ref.o $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS)

# bench_clients: clients through libmoeclient, the engine in-process as
# the baseline.
$(O)/bench/bench_clients: $(O)/tests/bench/bench_clients.o $(ENGINE_LIB) $(CLIENT_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(ENGINE_LIB) $(CLIENT_LINK) $(LDLIBS)

$(O)/bench/%: $(O)/tests/bench/%.o $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# Each test binary runs on its own under a timeout; the end-to-end scripts
# use the tools just built. The summary line counts test binaries.
test: all $(TEST_BIN) check-exports
	@MOE_BIN=$(O)/bin O=$(O) SAN="$(SAN)" TEST_TIMEOUT=$(TEST_TIMEOUT) sh tests/run.sh $(TEST_BIN) $(TEST_SH)

test-asan:
	$(MAKE) O=build-asan CFLAGS="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

# The whole suite again under ThreadSanitizer (ASan and TSan cannot share
# a build, hence its own tree); tests that need a memory cgroup run
# uncapped there and say so, TSan's shadow memory being larger than any cap.
test-tsan:
	$(MAKE) O=build-tsan CFLAGS="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=thread" test

# The README's main job: moed serving a model moe-gen writes.
demo: all
	MOE_BIN=$(O)/bin sh tools/demo.sh

BENCH_SH := $(wildcard tests/bench/bench_*.sh)

bench: all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done
	@for b in $(BENCH_SH); do echo "== $$b"; MOE_BIN=$(O)/bin sh $$b || exit 1; done

FUZZ_CC ?= clang
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(O)/fuzz/%)
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Idaemon -Iipc \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined
# Each target links only the sources its parser needs (FUZZ_DEPS_<name>),
# so it builds while other modules are in flux and needs no libraries.
FUZZ_QUANT := daemon/quant.c daemon/quant_ref.c daemon/quant_avx2.c \
	daemon/quant_avx512.c
FUZZ_DEPS_fuzz_gguf := daemon/gguf.c daemon/dtype.c daemon/diag.c \
	ipc/errors.c daemon/model.c $(FUZZ_QUANT)
FUZZ_DEPS_fuzz_hello := daemon/hello.c ipc/errors.c
FUZZ_DEPS_fuzz_desc := ipc/shm.c ipc/ring.c ipc/futex.c ipc/errors.c
$(O)/fuzz/obj/daemon/quant_avx2.o: XFLAGS := $(ISA_AVX2)
$(O)/fuzz/obj/daemon/quant_avx512.o: XFLAGS := $(ISA_AVX512)
$(O)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(XFLAGS) -MMD -MP \
		-c -o $@ $<
fuzz_objs = $(patsubst %.c,$(O)/fuzz/obj/%.o,$(FUZZ_DEPS_$(1)))
.SECONDEXPANSION:
$(O)/fuzz/%: $(O)/fuzz/obj/tests/fuzz/%.o $$(call fuzz_objs,$$*)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ -lm

# fuzz_X starts from tests/fuzz/seeds-X and keeps what it finds in
# $(O)/fuzz/corpus-fuzz_X; a crash leaves its input in $(O)/fuzz/. Each
# run's last line says how many inputs it executed.
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do \
		n=$$(basename $$f); mkdir -p $(O)/fuzz/corpus-$$n; \
		echo "== $$n for $(FUZZ_SECONDS)s"; \
		$$f -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
			-artifact_prefix=$(O)/fuzz/$$n- -print_final_stats=1 \
			$(O)/fuzz/corpus-$$n tests/fuzz/seeds-$${n#fuzz_} \
			2>$(O)/fuzz/$$n.log || { tail -40 $(O)/fuzz/$$n.log; exit 1; }; \
		grep -h "^Done\|stat::number_of_executed_units" $(O)/fuzz/$$n.log; \
	done

# test_fuzz_seeds replays every seed through each target's checks in
# `make test` (found crashes are kept as seeds): the targets are built
# into it with their entry points renamed.
$(O)/tests/fuzz/%.o: XFLAGS = -DLLVMFuzzerTestOneInput=$(basename $(notdir $@))_input
$(O)/tests/test_fuzz_seeds: $(O)/tests/test_fuzz_seeds.o \
		$(FUZZ_SRC:%.c=$(O)/%.o) $(ENGINE_LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS)

# test_faults makes its memory cgroup with moe-bench's helper.
$(O)/tests/test_faults: $(O)/tests/test_faults.o $(O)/tests/testutil.o \
		$(O)/tests/ref.o $(O)/client/bench_cgroup.o $(ENGINE_LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS)

# The soak (not part of `make test`): SOAK_CLIENTS clients for
# SOAK_MINUTES minutes against one moed, through libmoeclient, checked
# against the engine in-process (tests/soak.c says what it prints).
$(O)/tests/soak: $(O)/tests/soak.o $(O)/tests/testutil.o $(ENGINE_LIB) $(CLIENT_LIB)
	$(CC) $(CFLAGS) -o $@ $(O)/tests/soak.o $(O)/tests/testutil.o \
		$(ENGINE_LIB) $(CLIENT_LINK) $(LDLIBS)

# `make soak SOAK_MINUTES=1` is CI's bounded run: the exit status is
# the soak's (non-zero on any error, a dead moed or RSS growth past
# SOAK_MAX_RSS_GROWTH_MB).
SOAK_MINUTES ?= 5
SOAK_CLIENTS ?= 8
soak: all $(O)/tests/soak
	MOE_BIN=$(O)/bin SOAK_MINUTES=$(SOAK_MINUTES) SOAK_CLIENTS=$(SOAK_CLIENTS) \
		$(O)/tests/soak

# Rewrite the seed corpora: the hand-made ones and the headers of small
# moe-gen models of every architecture.
fuzz-seeds: $(O)/tests/fuzz/gen_seeds $(O)/bin/moe-gen
	sh tests/fuzz/make_seeds.sh $(O)
$(O)/tests/fuzz/gen_seeds: $(O)/tests/fuzz/gen_seeds.o $(O)/tests/testutil.o \
		$(ENGINE_LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# Man pages; each call of libmoeclient.3 gets a page that points to it.
MAN1 := client/moectl.1 tools/moe-gen.1 $(wildcard client/moe-bench.1)
MAN3_LINKS := moe_connect moe_close moe_model_info moe_layer_is_moe \
	moe_forward moe_submit moe_poll moe_wait moe_slot_acquire \
	moe_submit_slot moe_slot_release moe_strerror

install: all
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 $(TOOL_BIN) $(DESTDIR)$(BINDIR)/
	install -m 755 $(O)/bin/moectl $(DESTDIR)$(BINDIR)/
	install -m 755 $(O)/bin/moe-bench $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 \
		$(DESTDIR)$(MANDIR)/man8
	install -m 644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/
	install -m 644 client/libmoeclient.3 $(DESTDIR)$(MANDIR)/man3/
	for f in $(MAN3_LINKS); do \
		echo '.so man3/libmoeclient.3' > $(DESTDIR)$(MANDIR)/man3/$$f.3; done
	install -m 644 daemon/moed.8 $(DESTDIR)$(MANDIR)/man8/
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/moed
	install -m 755 $(O)/bin/moed $(DESTDIR)$(SBINDIR)/
	sed -e 's|/usr/local/sbin/moed|$(SBINDIR)/moed|' \
		-e 's|/etc/moed/|$(SYSCONFDIR)/moed/|' systemd/moed.service \
		> $(DESTDIR)$(UNITDIR)/moed.service
	chmod 644 $(DESTDIR)$(UNITDIR)/moed.service
	install -m 644 systemd/moed.conf.example $(DESTDIR)$(SYSCONFDIR)/moed/
	@# The file the unit reads: the example with every setting commented
	@# out, installed only where there is none (an admin's is never
	@# touched), as chrony's and redis's packages do.
	@conf=$(DESTDIR)$(SYSCONFDIR)/moed/moed.conf; \
	if [ -e "$$conf" ]; then echo "note: $$conf exists: left as it is"; \
	else sed 's/^\([a-z]\)/# \1/' systemd/moed.conf.example > "$$conf" && \
		chmod 644 "$$conf" && echo "installed $$conf (set model = in it)"; fi
	install -d $(DESTDIR)$(SYSUSERSDIR)
	install -m 644 systemd/moed.sysusers $(DESTDIR)$(SYSUSERSDIR)/moed.conf
	@if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then \
		systemd-sysusers $(SYSUSERSDIR)/moed.conf || \
		echo "note: systemd-sysusers could not create the moed user"; fi
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/moe
	install -m 755 $(CLIENT_LIB) $(DESTDIR)$(LIBDIR)/
	ln -sf $(CLIENT_REAL) $(DESTDIR)$(LIBDIR)/$(CLIENT_SONAME)
	ln -sf $(CLIENT_SONAME) $(DESTDIR)$(LIBDIR)/libmoeclient.so
	install -m 644 include/moe/moeclient.h include/moe/moe_version.h \
		$(DESTDIR)$(INCLUDEDIR)/moe/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
		client/moeclient.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/moeclient.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/moeclient.pc

clean:
	rm -rf build build-asan build-tsan

.PHONY: all test test-asan test-tsan bench fuzz fuzz-seeds soak install clean demo \
	check-exports
.SECONDARY:

-include $(shell find $(O) -name '*.d' 2>/dev/null)
