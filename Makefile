# diffuse: build, test, demo, bench.  `make test` and `make demo` install missing Debian
# packages first (as root; otherwise they print the apt command to run).

LUA        ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
CC         ?= cc
OPT        ?= -O3
CFLAGS     ?= $(OPT)
WARN        = -std=c99 -Wall -Wextra -Wshadow -Wno-unused-parameter
CPPFLAGS_DF = -D_POSIX_C_SOURCE=200809L -I$(LUA_INCDIR)
# Only luaopen_diffuse_core is exported; internal cross-file symbols stay hidden.
PICFLAGS    = -fPIC -fvisibility=hidden -fopenmp
LIBFLAG    ?= -shared
# -z nodelete: libgomp must not be unloaded under its idle worker threads when Lua closes.
LIBS        = -lpng -lz -ldl -lm -fopenmp -Wl,-z,nodelete

# luarocks passes these to `make install`; by hand they default to /usr/local.
INST_PREFIX ?= /usr/local
INST_LIBDIR ?= $(INST_PREFIX)/lib/lua/5.4
INST_LUADIR ?= $(INST_PREFIX)/share/lua/5.4

BUILD   ?= build
SRCS     = $(wildcard src/*.c)
OBJS     = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
MODULE   = $(BUILD)/diffuse/core.so

# luarocks: spec/install_spec.lua proves `luarocks make --deps-mode=none` installs a working module.
DEPS_PKGS = lua5.4 liblua5.4-dev libopenblas-dev libpng-dev zlib1g-dev lua-busted dataset-fashion-mnist luarocks
# Optional: MPI pools (diffuse.search.parallel loads libmpi at run time; spec/mpi_spec.lua runs
# mpirun).  Installed with the others when possible; their absence never fails a target.
DEPS_OPTIONAL = openmpi-bin libopenmpi-dev

BUSTED  ?= busted
SPEC_ENV = LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='$(BUILD)/?.so;;'

.PHONY: all test demo bench deps install clean check-asan check-valgrind fuzz

all: $(MODULE)

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_DF) $(WARN) $(CFLAGS) $(PICFLAGS) -c $< -o $@

$(MODULE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(CFLAGS) $(PICFLAGS) -o $@ $(OBJS) $(LIBS)

# Installs what is missing, or says the one command that would.
deps:
	@opt=""; \
	for p in $(DEPS_OPTIONAL); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || opt="$$opt $$p"; \
	done; \
	if [ -n "$$opt" ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing (optional):$$opt"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$opt >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$opt >/dev/null 2>&1; } || \
	    echo "optional packages not installed:$$opt (MPI pools and their spec are skipped)"; \
	  else \
	    echo "optional, for MPI pools: sudo apt-get install$$opt"; \
	  fi; \
	fi
	@missing=""; \
	for p in $(DEPS_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "diffuse needs:$$missing (Debian package names); install them with your package manager"; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	else \
	  echo "missing packages; run:  sudo apt-get install$$missing"; exit 1; \
	fi

test: deps all
	@$(SPEC_ENV) $(BUSTED) --lua=$(LUA) $(if $(TAGS),--tags=$(TAGS) --exclude-tags=none) $(SPECS)

demo: deps all
	@$(SPEC_ENV) $(LUA) examples/demo.lua

bench: all $(BUILD)/sgemm_direct
	@for b in examples/bench/*.lua; do echo "== $$b"; SGEMM_DIRECT=$(BUILD)/sgemm_direct $(SPEC_ENV) $(LUA) $$b || exit 1; done

# Reference for examples/bench/matmul_bench.lua: cblas_sgemm called from C, linked to OpenBLAS
# (only this benchmark program links it; the module loads OpenBLAS at run time).
$(BUILD)/sgemm_direct: examples/bench/sgemm_direct.c
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O2 -o $@ $< -lopenblas

install: all
	mkdir -p $(INST_LIBDIR)/diffuse $(INST_LUADIR)/diffuse
	cp $(MODULE) $(INST_LIBDIR)/diffuse/core.so
	cp -R lua/diffuse/. $(INST_LUADIR)/diffuse/
	mkdir -p $(INST_LUADIR)/diffuse/models
	for f in models/*.safetensors; do [ -e "$$f" ] && cp "$$f" $(INST_LUADIR)/diffuse/models/ || true; done
	mkdir -p $(INST_LUADIR)/diffuse/plans
	for f in plans/*.json; do [ -e "$$f" ] && cp "$$f" $(INST_LUADIR)/diffuse/plans/ || true; done

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.  The sanitizer
# runtimes must be loaded before lua5.4 itself, hence LD_PRELOAD; subprocesses that specs
# start inherit it and load the same instrumented module through DIFFUSE_BUILD.
ASAN_BUILD = build-asan
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
check-asan: deps
	$(MAKE) BUILD=$(ASAN_BUILD) OPT="$(ASAN_FLAGS)" all
	@LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='$(ASAN_BUILD)/?.so;;' DIFFUSE_BUILD=$(ASAN_BUILD) \
	  LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(BUSTED) --lua=$(LUA) --cpath='$(ASAN_BUILD)/?.so' --exclude-tags=slow,install $(SPECS)

# Representative specs under valgrind memcheck (tensor core, safetensors and PNG/libpng paths).
VALGRIND_SPEC ?= spec/tensor_spec.lua spec/safetensors_spec.lua spec/image_spec.lua
check-valgrind: all
	@$(SPEC_ENV) valgrind --trace-children=yes --error-exitcode=1 --leak-check=no --suppressions=.valgrind.supp \
	  $(LUA) $$(command -v $(BUSTED)) --lua=$(LUA) $(VALGRIND_SPEC)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz

# libFuzzer on the safetensors reader/writer (needs clang).  Runs FUZZ_SECONDS; new inputs go
# to build-fuzz/corpus, the seeds stay in fuzz/corpus/safetensors, crashes in build-fuzz/.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_BUILD    = build-fuzz
fuzz: $(FUZZ_BUILD)/safetensors_fuzz
	@mkdir -p $(FUZZ_BUILD)/corpus
	$(FUZZ_BUILD)/safetensors_fuzz -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/safetensors.dict \
	  -artifact_prefix=$(FUZZ_BUILD)/ $(FUZZ_BUILD)/corpus fuzz/corpus/safetensors

$(FUZZ_BUILD)/safetensors_fuzz: fuzz/safetensors_fuzz.c src/safetensors.c src/safetensors.h src/tensor.c src/tensor.h
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -D_POSIX_C_SOURCE=200809L -std=c99 -Wall -Wextra -Isrc \
	  fuzz/safetensors_fuzz.c src/safetensors.c src/tensor.c -o $@ -lm
