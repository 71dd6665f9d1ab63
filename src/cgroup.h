/* cgroup: per-run memory and process limits through nsjail's cgroup support, on cgroup v2 or
 * v1, detected at start-up. Each run gets its own parent group, so the server can tell
 * afterwards whether the run met its memory limit. Where no cgroup is writable the service
 * falls back to rlimits alone, and says so. */
#ifndef PYEXEC_CGROUP_H
#define PYEXEC_CGROUP_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum cgroup_mode { CGROUP_NONE, CGROUP_V1, CGROUP_V2 };

struct cgroup {
	enum cgroup_mode mode;
	char mem[PATH_MAX];  /* v1: memory group for runs; v2: the group for runs */
	char pids[PATH_MAX]; /* v1: pids group for runs */
	bool memsw;          /* v1: swap accounting, so memory+swap can be capped too */
	char why[256];       /* for the log and /healthz when mode is NONE */
};

/* Detects and prepares the groups. Moves the server into a leaf group on v2 (the kernel allows
 * no processes in a group that delegates controllers): call before any thread starts. */
void cgroup_init(struct cgroup *cg);
const char *cgroup_mode_name(const struct cgroup *cg);

/* A run's own group, named name. Returns -1 when it cannot be made (the run then has only its
 * rlimits; the caller logs it). */
int cgroup_run_create(const struct cgroup *cg, const char *name);
/* A run's own group, named name, with the limits set by the server itself, and pid moved into
 * it (a zygote's run, which nsjail does not start). Returns -1 when any step fails. */
int cgroup_run_adopt(const struct cgroup *cg, const char *name, pid_t pid, unsigned long long mem,
                     unsigned long procs);
/* Moves one more process into the group cgroup_run_adopt made (the script's process of a zygote
 * run, which is not its init's child). */
int cgroup_run_join(const struct cgroup *cg, const char *name, pid_t pid);
/* True when the run's group reached its memory limit (`limit` bytes): v2 counts OOM kills in
 * the group; v1 keeps only the peak usage, which reaches the limit when the kernel had to act. */
bool cgroup_run_hit_memory(const struct cgroup *cg, const char *name, unsigned long long limit);
void cgroup_run_remove(const struct cgroup *cg, const char *name);

#endif
