/* filter: the seccomp filter pyexecd itself puts on nsjail in the restricted tier.
 *
 * nsjail applies its policy only to the jailed process. Without namespaces nsjail runs as the
 * run's uid; it is not dumpable (installed unreadable), but were a script to take it over, it
 * would run outside nsjail's policy. This filter is installed before nsjail is exec'd, so
 * nsjail and everything it starts carry it: what it denies (sockets but AF_UNIX, io_uring,
 * System V and message-queue IPC, memfd, tracing, namespaces, mounts, bpf, keys) stays denied
 * even to code that took nsjail over. */
#ifndef PYEXEC_FILTER_H
#define PYEXEC_FILTER_H

#include <linux/filter.h>

#include "err.h"

/* Builds the filter (libseccomp, for this machine's architecture) into out; free it with
 * filter_free. Returns -1 with e filled on failure. */
int filter_build_restricted(struct sock_fprog *out, struct err *e);
/* The full tier's policy, for runs forked by the zygote (zygote.h). */
int filter_build_full(struct sock_fprog *out, struct err *e);
void filter_free(struct sock_fprog *f);

#endif
