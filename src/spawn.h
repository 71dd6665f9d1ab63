/* spawn: the only code that starts processes, and that ends a run user's processes. */
#ifndef PYEXEC_SPAWN_H
#define PYEXEC_SPAWN_H

#include <linux/filter.h>
#include <stdbool.h>
#include <sys/types.h>

#include "err.h"

#define SPAWN_FDS 5
#define SPAWN_LIMITS 9

/* Who a process of the restricted tier runs as, and what it may use: set by the server before
 * exec, because nsjail cannot set them without namespaces on every host. */
struct spawn_user {
	uid_t uid;
	gid_t gid;
	const char *dir; /* its working directory */
	struct {
		int resource;
		unsigned long long value; /* soft and hard */
		bool optional;            /* a host may refuse it (gVisor: RLIMIT_MSGQUEUE) */
	} limits[SPAWN_LIMITS];
	int nlimits;
	/* Installed with no_new_privs just before exec, so nsjail itself carries it (filter.h). */
	const struct sock_fprog *filter;
	/* The host's Landlock ABI, 0 for none: with one, the process may write only beneath dir
	 * (landlock.h). */
	int landlock_abi;
};

/* Starts argv with fds[i] as its descriptor i (0 <= i < SPAWN_FDS) and every other descriptor
 * closed, in a new session, with an empty signal mask, default signal dispositions and an empty
 * environment. With user, the process first takes user's limits, directory, umask 077, no
 * supplementary groups, and user's uid and gid. Returns the pid, which the caller then owns (it
 * must kill and reap it), or -1 with e filled. */
pid_t spawn_process(char *const argv[], const int fds[SPAWN_FDS], const struct spawn_user *user,
                    struct err *e);

/* Sends SIGKILL to every process of uid (never 0) once, the kernel's way (kill(-1) as uid),
 * without waiting for them to die. Returns -1 when it could not be attempted. */
int spawn_signal_user(uid_t uid);
/* spawn_kill_user for every uid in [lo, hi] that has a process. 0 when none is left. */
int spawn_kill_range(uid_t lo, uid_t hi);
/* Sends SIGKILL to every process of uid (never 0) until none is left. Returns 0 when none is
 * left, -1 when some survived or the kill could not be attempted. */
int spawn_kill_user(uid_t uid);

#endif
