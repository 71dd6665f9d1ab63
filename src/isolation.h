/* isolation: what this host lets a jail have, learned at start-up from probe jails (nsjail
 * running a one-line Python check), so the service can pick its tier and say what is missing. */
#ifndef PYEXEC_ISOLATION_H
#define PYEXEC_ISOLATION_H

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "config.h"
#include "supervisor.h"

enum isolation_probe {
	ISO_USER_NS,
	ISO_PID_NS,
	ISO_MOUNT_NS,
	ISO_NET_NS,
	ISO_IPC_NS,
	ISO_UTS_NS,
	ISO_CGROUP_NS,
	ISO_PROC,    /* a fresh /proc in a new pid and mount namespace */
	ISO_SETUID,  /* the server can run a jail as another uid */
	ISO_SECCOMP, /* a seccomp policy installed by nsjail holds */
	ISO_PROBES
};

struct isolation {
	bool ok[ISO_PROBES];
	double ms;       /* how long the probes took */
	char kernel[96]; /* "Linux <release>", or "gVisor (Linux <release>)" under runsc */
};

/* Runs every probe (through sup); probe_uid is a uid no one uses (probes run as it). */
void isolation_probe(const struct config *c, struct supervisor *sup, uid_t probe_uid,
                     struct isolation *iso);
/* What the full tier needs that the host refused, comma-separated, or "" when nothing. */
void isolation_missing_full(const struct isolation *iso, char *out, size_t n);
/* {"userNamespace": true, ...}: a new reference. */
json_t *isolation_json(const struct isolation *iso);

#endif
