/* zygote: tier full's warm interpreter. One nsjail jail per server runs runner/zygote.py, which
 * imports the preload set once and never runs user code; every run's script process is a fork of
 * it that takes namespaces, limits and the full tier's seccomp filter of its own before the
 * runner's protocol starts, beside a small C init as the run's PID 1 (init/, docs/security.md).
 * The runs are not the server's children: the script process sends pidfds of its init and of
 * itself back over a socket of its own, the supervisor takes the init (sup_adopt), and the
 * server moves both into the run's cgroup before any of its code runs. A keeper thread restarts the
 * zygote when it dies; meanwhile zygote_fork fails and the caller falls back to one-shot jails. */
#ifndef PYEXEC_ZYGOTE_H
#define PYEXEC_ZYGOTE_H

#include <stdbool.h>

#include "cgroup.h"
#include "err.h"
#include "sandbox.h"
#include "supervisor.h"

/* The zygote's own descriptors: its control socket, and the pipe it reads the runs' seccomp
 * program from. */
#define ZYGOTE_CTL_FD 3
#define ZYGOTE_FILTER_FD 4

struct zygote_opts {
	struct supervisor *sup; /* starts the zygote's nsjail and takes each run's PID 1 */
	struct proc_opts run;   /* each run's teardown (the tag is the run's name) */
	char *const *argv;      /* nsjail's command line for the zygote; must outlive it */
	const struct cgroup *cg;
	unsigned long long mem_bytes; /* each run's cgroup limits */
	unsigned long max_procs;
	double start_timeout; /* for the zygote's start and for each fork's */
	bool renice;          /* the zygote and its pool forks wait at nice 19 (CAP_SYS_NICE) */
};

struct zygote;

/* Starts the zygote (through the supervisor) and waits until it is ready. NULL with e
 * filled. */
struct zygote *zygote_new(const struct zygote_opts *o, struct err *e);
/* A run forked from the zygote, in its cgroup, not yet ready (sandbox_check tells); one for the
 * pool goes on at nice 19 once started. NULL with e filled when the zygote is down or the fork
 * failed. */
struct sandbox *zygote_fork(struct zygote *z, const char *tag, bool for_pool, struct err *e);
bool zygote_up(struct zygote *z);
/* Times the zygote died and was started again. */
unsigned long zygote_restarts(struct zygote *z);
/* Ends the zygote, and with it every run forked from it; before supervisor_stop. */
void zygote_free(struct zygote *z);

#endif
