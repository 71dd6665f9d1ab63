# pyexec: `make` builds build/pyexecd; `make test` runs every test (unit and black-box, plain
# and under ASan+UBSan); `make asan` builds the sanitizer server in build-asan/; `make bench`
# prints the benchmark.

CC       ?= cc
PYTHON   ?= /usr/bin/python3
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wpointer-arith -Wvla
CPPFLAGS += -std=c11 -D_GNU_SOURCE -D_FORTIFY_SOURCE=2
LIBS     := -lmicrohttpd -ljansson -lm
SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

SRCS     := $(wildcard src/*.c)
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
UNIT     := $(wildcard tests/unit/*.c)
HDRS     := $(wildcard src/*.h)

all: build/pyexecd

build/pyexecd: $(SRCS) $(HDRS) | build
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $(SRCS) $(LIBS)

build-asan/pyexecd: $(SRCS) $(HDRS) | build-asan
	$(CC) $(CPPFLAGS) -O1 -g $(SAN) $(WARN) -o $@ $(SRCS) $(LIBS)

build/unit: $(UNIT) $(LIB_SRCS) $(HDRS) | build
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -iquote src -o $@ $(UNIT) $(LIB_SRCS) $(LIBS) -lcmocka

build-asan/unit: $(UNIT) $(LIB_SRCS) $(HDRS) | build-asan
	$(CC) $(CPPFLAGS) -O1 -g $(SAN) $(WARN) -iquote src -o $@ $(UNIT) $(LIB_SRCS) $(LIBS) -lcmocka

build build-asan:
	mkdir -p $@

asan: build-asan/pyexecd

unit: build/unit build-asan/unit
	./build/unit
	./build-asan/unit

# The black-box suite runs against the plain server, then the sanitizer build.
http: build/pyexecd build-asan/pyexecd
	$(PYTHON) -m pytest -q tests/http
	PYEXEC_TEST_BINARY=build-asan/pyexecd $(PYTHON) -m pytest -q tests/http

test: unit http

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c

clean:
	rm -rf build build-asan

# Latency and throughput, cold against ready jails: prints one table (see bench/README.md).
bench: build/pyexecd
	$(PYTHON) bench/bench.py --binary build/pyexecd

.PHONY: all asan unit http test bench format clean

# Builds the Docker image, checks its size, and runs the black-box suite against a container
# of it (tests/image/run.sh; needs a Docker engine; NSJAIL_BINARY=path passes a local nsjail).
image-test:
	tests/image/run.sh

.PHONY: image-test
