/* jail: turns the configuration into nsjail's command line, for one of two tiers. The command
 * is built once at start-up (per-run values travel on the runner's stdin); only a run's cgroup,
 * or in the restricted tier its uid and directory, are added per run. */
#ifndef PYEXEC_JAIL_H
#define PYEXEC_JAIL_H

#include <stdbool.h>

#include "cgroup.h"
#include "config.h"
#include "err.h"
#include "sandbox.h"
#include "runuser.h"
#include "supervisor.h"

/* The descriptor on which the runner writes its ready line and its result frame. */
#define JAIL_RESULT_FD 3
/* The descriptor on which the jail's init, which runs no user code, writes the script
 * process's exit status once it is gone. */
#define JAIL_STATUS_FD 4

/* The two ways to jail a run, both through nsjail (docs/security.md compares them). */
enum jail_tier {
	JAIL_FULL,       /* namespaces, read-only binds, a tmpfs, seccomp, cgroups or rlimits */
	JAIL_RESTRICTED, /* no namespaces: a uid of its own, rlimits, a private directory, seccomp
	                  */
};

struct jail;

/* Checks that nsjail, the interpreter, the runner and the configs exist, and builds the command
 * for tier. cg (from cgroup_init) must outlive j; sup starts and ends its jails and must be
 * stopped before j is freed. Returns NULL with e filled when something is
 * missing. Free with jail_free. */
struct jail *jail_new(const struct config *c, const struct cgroup *cg, struct supervisor *sup,
                      enum jail_tier tier, struct err *e);
const char *jail_tier_name(enum jail_tier tier);
/* Starts one jail in a cgroup of its own (restricted tier: as a uid of its own). A jail for the
 * pool imports the preload modules before it says it is ready; a cold one imports nothing the
 * script does not. Its cgroup, or uid and directory, are released by the supervisor once its
 * nsjail is gone, whichever way the sandbox ends (sandbox_run or sandbox_destroy). */
struct sandbox *jail_start(struct jail *j, bool for_pool, struct err *e);
/* Restricted tier: how its run uids stand (runuser.h); false in tier full. */
bool jail_users_stats(struct jail *j, struct runusers_stats *s);
/* Tier full with the zygote: whether it is up and how often it was restarted; false when
 * runs are one-shot jails. */
bool jail_zygote_stats(struct jail *j, bool *up, unsigned long *restarts);
/* Whether jails for the pool wait at nice 19: only a server that can give a run its priority
 * back (CAP_SYS_NICE) lowers them. */
bool jail_renices(void);
/* Ends what the jail runs itself (the zygote, and with it its runs); before supervisor_stop. */
void jail_stop(struct jail *j);
/* Calls jail_stop; the supervisor must still run when the jail has a zygote. */
void jail_free(struct jail *j);

#endif
