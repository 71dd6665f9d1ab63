# pyexec: pyexecd + nsjail + Debian's CPython, numpy and pandas in one small image.
#
#   docker build -t pyexec .
#   docker run --rm -p 8080:8080 --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
#       --security-opt apparmor=unconfined --security-opt systempaths=unconfined pyexec
#
# README.md ("Run it in Docker") explains each flag.
#
# Build arguments:
#   NSJAIL_BINARY  path (inside the build context) of an nsjail binary built for Debian trixie;
#                  when set, it is used instead of building nsjail from source, for machines
#                  that cannot reach GitHub. Empty by default: nsjail is built from its tag.
#   NSJAIL_TAG / NSJAIL_COMMIT  the upstream release built, and the commit that tag must name.

# --- nsjail, from its upstream release tag ---------------------------------------------------
FROM debian:trixie-slim AS nsjail
ARG NSJAIL_TAG=3.6
ARG NSJAIL_COMMIT=f78475530b46d0186111a9096b30725f816b55fe
ARG NSJAIL_BINARY=
# COPY needs a source even when no binary is given: .dockerignore stands in and is not used.
COPY ${NSJAIL_BINARY:-.dockerignore} /tmp/nsjail.local
RUN set -eux; \
    if [ -n "$NSJAIL_BINARY" ]; then \
        install -m 0755 /tmp/nsjail.local /usr/local/bin/nsjail; \
    else \
        export DEBIAN_FRONTEND=noninteractive; \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates autoconf bison flex gcc g++ \
            git libprotobuf-dev libnl-route-3-dev libtool make pkg-config protobuf-compiler; \
        git clone --depth 1 --branch "$NSJAIL_TAG" --recursive --shallow-submodules \
            https://github.com/google/nsjail /src/nsjail; \
        test "$(git -C /src/nsjail rev-parse HEAD)" = "$NSJAIL_COMMIT"; \
        make -C /src/nsjail -j"$(nproc)"; \
        install -m 0755 -s /src/nsjail/nsjail /usr/local/bin/nsjail; \
    fi; \
    rm -f /tmp/nsjail.local

# --- pyexecd ---------------------------------------------------------------------------------
FROM debian:trixie-slim AS pyexecd
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev make libmicrohttpd-dev \
        libjansson-dev libseccomp-dev
WORKDIR /src
COPY Makefile ./
COPY src/ src/
# Served by pyexecd and compiled into it (scripts/embed).
COPY scripts/embed scripts/
COPY docs/openapi.json docs/
COPY web/ web/
RUN make && install -m 0755 -s build/pyexecd /usr/local/bin/pyexecd

# --- runtime ---------------------------------------------------------------------------------
FROM debian:trixie-slim

# One layer: install, then strip what a run never reads. A file deleted in a later layer would
# still count in the image size. Every path below is a file that no import of numpy or pandas
# reads:
#   - test suites (*/tests/ under dist-packages: pandas alone has 36 MB of them);
#   - C headers, Cython sources and type stubs (*.h, *.pxd, *.pyx, *.pxi*, *.pyi): only a
#     compiler or a type checker reads them;
#   - numpy.f2py (generates Fortran wrappers and needs a compiler; loaded only on demand),
#     numpy's static libraries and headers (python3-numpy-dev, a dependency of python3-numpy);
#   - CPython's own test suite (the "test" package and the _test*/xx* extension modules);
#   - docs (the copyright files stay), man pages, locales, lintian overrides; apt's lists and
#     caches; logs.
# The compiled bytecode in __pycache__ stays, except in the deleted directories: the jail's
# file system is read-only, so without it Python would compile numpy and pandas from source on
# every run.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        python3 python3-numpy python3-pandas \
        libmicrohttpd12t64 libjansson4 libseccomp2 libprotobuf32t64 libnl-route-3-200; \
    apt-get clean; \
    dist=/usr/lib/python3/dist-packages; \
    find "$dist" -depth -type d -name tests -exec rm -rf {} +; \
    find "$dist" -type f \( -name '*.h' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.pxi' \
        -o -name '*.pxi.in' -o -name '*.pyi' -o -name '*.c' \) -delete; \
    rm -rf "$dist/numpy/f2py" /usr/lib/x86_64-linux-gnu/python3-numpy; \
    stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))'); \
    rm -rf "$stdlib/test" "$stdlib"/lib-dynload/_test*.so "$stdlib"/lib-dynload/_ctypes_test*.so \
        "$stdlib"/lib-dynload/_xxtestfuzz*.so "$stdlib"/lib-dynload/xx*.so; \
    find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete; \
    find /usr/share/doc -mindepth 1 -type d -empty -delete; \
    rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian/* \
        /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
        /var/log/apt /var/log/dpkg.log /var/log/alternatives.log; \
    # No setuid or setgid programs: nothing a script could run to gain privileges.
    find / -xdev -type f -perm /6000 -exec chmod ug-s {} +; \
    python3 -c 'import numpy, pandas; print("numpy", numpy.__version__, "pandas", pandas.__version__)'

COPY --from=nsjail /usr/local/bin/nsjail /usr/local/bin/nsjail
COPY --from=pyexecd /usr/local/bin/pyexecd /usr/local/bin/pyexecd
# pyexecd looks for these in /usr/lib/pyexec when it does not run from a checkout.
COPY runner/runner.py config/nsjail.cfg config/nsjail-restricted.cfg config/seccomp.kafel \
     /usr/lib/pyexec/

# Cloud Run sets PORT; 8080 is also pyexecd's default.
ENV PORT=8080
EXPOSE 8080

# pyexecd is PID 1 itself (src/init.c): one process stays PID 1, reaps what outlives a jail and
# passes SIGTERM on; the server is its child and exits 0 after draining. No other init: every
# process that received the container's environment overwrites it at once, because under
# gVisor any uid can read any process's /proc/<pid>/environ, and a generic init would keep it.
# pyexecd starts as root: nsjail needs it to create the namespaces, and the restricted tier to
# give each run its own uid. The script never runs as root (see README.md, "Run it in Docker").
ENTRYPOINT ["/usr/local/bin/pyexecd"]
