# pyexec: `make` builds build/pyexecd; `make check` is the quick loop (unit tests and the
# black-box suite once, plain build, tier full: a few minutes); `make test` runs every test (unit
# and black-box, plain and under ASan+UBSan, both tiers, lint); `make asan` builds the sanitizer
# server in build-asan/; `make bench` prints the benchmark.

CC       ?= cc
PYTHON   ?= /usr/bin/python3
CFLAGS   ?= -O2 -g
# Warnings fail the build in `make check`, `make test` and CI (they set WERROR), not in a plain
# `make`: a newer compiler's new warning must not stop someone building the server or the image.
WERROR   ?=
WARN      = -Wall -Wextra $(WERROR) -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wpointer-arith -Wvla
CPPFLAGS += -std=c11 -D_GNU_SOURCE -D_FORTIFY_SOURCE=2
# The libraries as pkg-config finds them; the plain flags where there is no pkg-config.
PKG_CONFIG ?= pkg-config
PKGS     := libmicrohttpd jansson libseccomp
CPPFLAGS += $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
LIBS     := $(or $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null),-lmicrohttpd -ljansson -lseccomp) -lm
UNIT_LIBS := $(or $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null),-lcmocka)
SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

SRCS     := $(wildcard src/*.c)
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
UNIT     := $(wildcard tests/unit/*.c)
HDRS     := $(wildcard src/*.h)
# Files served as they are, compiled in (scripts/embed): NAME FILE pairs, names as in src/assets.h.
ASSETS   := asset_openapi_json docs/openapi.json asset_playground_html web/playground.html \
            asset_playground_js web/playground.js asset_playground_css web/playground.css
GEN      := build/assets.c

all: build/pyexecd build/pyexec-init

# The compiler and flags of the last build: a build with other flags (WERROR set or not)
# rebuilds everything instead of reusing objects made without them.
build/flags: FORCE | build
	@echo '$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(LIBS)' | cmp -s - $@ || \
		echo '$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(LIBS)' > $@

FORCE:

# The zygote's runs' PID 1 (init/), which the server binds into the zygote's jail: built with
# the server, whichever of its builds is asked for.
INIT_SRCS := $(wildcard init/*.c) src/outdir.c src/buf.c
build/pyexec-init: $(INIT_SRCS) $(wildcard init/*.h) $(HDRS) build/flags | build
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -iquote src -iquote init -o $@ $(INIT_SRCS)

build/pyexecd: $(SRCS) $(HDRS) $(GEN) build/flags | build build/pyexec-init
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -iquote src -o $@ $(SRCS) $(GEN) $(LIBS)

build-asan/pyexecd: $(SRCS) $(HDRS) $(GEN) build/flags | build-asan build/pyexec-init
	$(CC) $(CPPFLAGS) -O1 -g $(SAN) $(WARN) -iquote src -o $@ $(SRCS) $(GEN) $(LIBS)

build/unit: $(UNIT) $(LIB_SRCS) $(HDRS) $(GEN) tests/unit/unit.h build/flags | build
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -iquote src -o $@ $(UNIT) $(LIB_SRCS) $(GEN) $(LIBS) \
		$(UNIT_LIBS)

build-asan/unit: $(UNIT) $(LIB_SRCS) $(HDRS) $(GEN) tests/unit/unit.h build/flags \
		| build-asan
	$(CC) $(CPPFLAGS) -O1 -g $(SAN) $(WARN) -iquote src -o $@ $(UNIT) $(LIB_SRCS) $(GEN) \
		$(LIBS) $(UNIT_LIBS)

build/assets.c: scripts/embed $(filter-out asset_%,$(ASSETS)) | build
	sh scripts/embed $(ASSETS) > $@.tmp && mv $@.tmp $@

build build-asan:
	mkdir -p $@

asan: build-asan/pyexecd

unit: build/unit build-asan/unit
	./build/unit
	./build-asan/unit

# The black-box suite runs against the plain server and the sanitizer build in the full tier,
# then against the sanitizer build in the restricted tier (no namespaces); -rs lists the cases
# the restricted tier does not give (docs/security.md, tier table).
http: build/pyexecd build-asan/pyexecd
	$(PYTHON) -m pytest -q tests/http
	PYEXEC_TEST_BINARY=build-asan/pyexecd $(PYTHON) -m pytest -q tests/http
	PYEXEC_TEST_ISOLATION=restricted PYEXEC_TEST_BINARY=build-asan/pyexecd \
		$(PYTHON) -m pytest -q -rs tests/http

# Static analysis: the checks are chosen and explained in .clang-tidy and here.
CPPCHECK := cppcheck --enable=warning,style,performance,portability --std=c11 --inline-suppr \
	--error-exitcode=1 --quiet -D_GNU_SOURCE -I src --suppress=missingIncludeSystem
lint:
	$(CPPCHECK) -I init src/*.c init/*.c
	clang-tidy --quiet src/*.c init/*.c -- -std=c11 -D_GNU_SOURCE -iquote src -iquote init

# deploy/ checked without Google Cloud: deploy.sh against fake gcloud and docker commands.
deploy-check:
	$(PYTHON) -m pytest -q tests/deploy

# CPython's own test modules (Debian's libpython3.11-testsuite) inside the sandbox, one request
# per module, against the same code on the host as uid 65534; differences not listed with a
# reason in tests/stdlib_compat/expected.txt fail. `make test` runs the fast subset.
stdlib-compat: build/pyexecd
	$(PYTHON) tests/stdlib_compat/compat.py

# The same for numpy's and pandas' own suites (parts of them, with pytest inside the sandbox).
package-compat: build/pyexecd
	$(PYTHON) tests/stdlib_compat/compat.py --suite numpy
	$(PYTHON) tests/stdlib_compat/compat.py --suite pandas

stdlib-compat-fast: build/pyexecd
	$(PYTHON) tests/stdlib_compat/compat.py --fast

test: lint unit http deploy-check stdlib-compat-fast

# The quick loop while working: the unit tests and one black-box pass (plain build, tier full).
check: build/unit build/pyexecd
	./build/unit
	PYEXEC_TEST_ISOLATION=full $(PYTHON) -m pytest -q tests/http

# What is tested is built with warnings as errors.
test check unit http stdlib-compat-fast: WERROR = -Werror

format:
	clang-format -i src/*.c src/*.h init/*.c init/*.h tests/unit/*.c

clean:
	rm -rf build build-asan build-fuzz

# libFuzzer harnesses (clang) for what reads bytes from the network and from jails; each runs
# FUZZ_SECONDS on its seed corpus in tests/fuzz/corpus/ and keeps what it learns in build-fuzz/.
CLANG        ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SRCS    := src/api.c src/buf.c src/err.c src/files.c src/frame.c src/json_check.c src/log.c \
                src/text.c
FUZZERS      := fuzz_request fuzz_output

build-fuzz/%: tests/fuzz/%.c $(FUZZ_SRCS) $(HDRS) | build-fuzz
	$(CLANG) $(CPPFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all $(WARN) -iquote src -o $@ $< $(FUZZ_SRCS) -ljansson -lm

build-fuzz:
	mkdir -p $@

fuzz: $(addprefix build-fuzz/,$(FUZZERS))
	for f in $(FUZZERS); do \
		mkdir -p build-fuzz/corpus-$$f && \
		./build-fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 \
			-artifact_prefix=build-fuzz/$$f- build-fuzz/corpus-$$f \
			tests/fuzz/corpus/$${f#fuzz_} || exit 1; \
	done

# Latency and throughput, cold against ready jails: prints one table (see bench/README.md).
bench: build/pyexecd
	$(PYTHON) bench/bench.py --binary build/pyexecd
	$(PYTHON) bench/mounts.py

# Soak: 10 000 runs, legitimate and hostile mixed, then what the server holds.
soak: build/pyexecd
	$(PYTHON) bench/soak.py --binary build/pyexecd --runs 10000 --clients 4

.PHONY: all asan unit http lint deploy-check test check FORCE bench soak fuzz format clean \
	stdlib-compat \
	stdlib-compat-fast package-compat

# The playground in Debian's headless Chromium (scripts/install-deps --browser): types scripts,
# clicks Run, checks what the page shows, and saves a screenshot to SCREENSHOT
# (`make browser-test SCREENSHOT=docs/playground.png` renews the README's).
SCREENSHOT ?= build/playground.png
browser-test: build/pyexecd
	PYEXEC_SCREENSHOT=$(SCREENSHOT) $(PYTHON) -m pytest -q -s tests/browser

.PHONY: browser-test

# Builds the Docker image, checks its size, and runs the black-box suite against a container
# of it (tests/image/run.sh; needs a Docker engine; NSJAIL_SOURCE=path builds nsjail from that
# source archive in the build context instead of its tag).
image-test:
	tests/image/run.sh

.PHONY: image-test

# Runs the image on runc with the README's flags (tier full), on runc with Docker's defaults and
# on gVisor (tier restricted, full refused), with the black-box suite against each
# (tests/platforms/run.sh; needs docker-up --gvisor).
platform-test:
	tests/platforms/run.sh

.PHONY: platform-test
