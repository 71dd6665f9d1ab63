# pyexec: pyexecd + nsjail + Debian's CPython, numpy and pandas in one small image.
#
#   docker build -t pyexec .
#   docker run --rm -p 8080:8080 --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
#       --security-opt apparmor=unconfined --security-opt systempaths=unconfined pyexec
#
# README.md ("Run it in Docker") explains each flag.
#
# Build argument:
#   NSJAIL_SOURCE  path, inside the build context, of nsjail's release source archive (its
#                  sha256 is checked) or source tree, for machines that cannot reach GitHub,
#                  e.g. .local/nsjail-3.6-src.tar.gz (git-ignored; .dockerignore lets
#                  .local/*.tar.gz and .local/nsjail-src/ in). Empty by default: nsjail is
#                  built from a clone of its release tag. Either way scripts/build-nsjail
#                  builds it, as on a developer's machine.

# --- nsjail, built from source -----------------------------------------------------------------
FROM debian:trixie-slim AS nsjail
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends bison flex g++ make pkg-config libprotobuf-dev \
        libnl-route-3-dev protobuf-compiler git ca-certificates
ARG NSJAIL_SOURCE=
# COPY needs a source even when none is given: .dockerignore stands in and is not used.
COPY ${NSJAIL_SOURCE:-.dockerignore} /tmp/nsjail-source/
COPY scripts/build-nsjail /src/scripts/
RUN set -eux; \
    src=; \
    if [ -n "$NSJAIL_SOURCE" ]; then \
        if [ -f /tmp/nsjail-source/nsjail.cc ]; then src=/tmp/nsjail-source; \
        else src=/tmp/nsjail-source/$(basename "$NSJAIL_SOURCE"); fi; \
    fi; \
    NSJAIL_SOURCE=$src NSJAIL_PREFIX=/usr/local /src/scripts/build-nsjail; \
    strip /usr/local/bin/nsjail; \
    # Readable in the image: gVisor (Cloud Run's first generation) refuses to run a program its
    # user cannot read. On a real kernel that makes nsjail dumpable in the restricted tier; it
    # still runs under the server's own seccomp filter, and every other process of its uid is
    # killed before the uid is used again.
    chmod 0755 /usr/local/bin/nsjail

# --- pyexecd -----------------------------------------------------------------------------------
FROM debian:trixie-slim AS pyexecd
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config libmicrohttpd-dev \
        libjansson-dev libseccomp-dev
WORKDIR /src
COPY Makefile ./
COPY src/ src/
COPY init/ init/
# Served by pyexecd and compiled into it (scripts/embed).
COPY scripts/embed scripts/
COPY docs/openapi.json docs/
COPY web/ web/
RUN make && install -m 0755 -s build/pyexecd /usr/local/bin/pyexecd && \
    install -D -m 0755 -s build/pyexec-init /usr/lib/pyexec/pyexec-init

# --- the runtime's file tree -------------------------------------------------------------------
# Debian's packages installed (tests/image/run.sh compares what imports here and in the image),
# then everything no run reads removed: scripts/image-rootfs says what and why, and fails the
# build if a library something links is gone.
FROM debian:trixie-slim AS packages
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        python3 python3-numpy python3-pandas libmicrohttpd12t64 libjansson4 libseccomp2

FROM packages AS rootfs
COPY --from=nsjail /usr/local/bin/nsjail /usr/local/bin/nsjail
COPY --from=pyexecd /usr/local/bin/pyexecd /usr/local/bin/pyexecd
COPY --from=pyexecd /usr/lib/pyexec/pyexec-init /usr/lib/pyexec/pyexec-init
# pyexecd looks for these in /usr/lib/pyexec when it does not run from a checkout.
COPY runner/runner.py runner/zygote.py config/nsjail.cfg config/nsjail-restricted.cfg config/seccomp.kafel \
     /usr/lib/pyexec/
COPY scripts/image-rootfs /tmp/
RUN /tmp/image-rootfs && rm /tmp/image-rootfs

# --- runtime: that tree alone, in one layer ----------------------------------------------------
FROM scratch
COPY --from=rootfs / /

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
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
