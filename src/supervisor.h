/* supervisor: the one owner of every process the server starts (nsjail for runs and pool jails,
 * the start-up probes) and of every process it is handed that is not its child (a run forked by
 * a warm interpreter inside a jail). Each is watched through a pidfd, killed with
 * pidfd_send_signal, reaped when it is a child, and then its resources are released by the
 * teardown its owner gave, exactly once, in proc_end or on the supervisor's thread (one epoll
 * loop over the pidfds of the processes handed to it). supervisor_stop ends and tears down
 * every process handed to it before it returns, so what the teardowns use may be freed after. */
#ifndef PYEXEC_SUPERVISOR_H
#define PYEXEC_SUPERVISOR_H

#include <stdbool.h>
#include <sys/types.h>

#include "err.h"
#include "spawn.h"

struct supervisor;
struct proc;

/* How a process ended, for its teardown and its owner. */
struct proc_end {
	int status;      /* exit code, 128 + signal, or -1 when unknown (not our child) */
	bool memory_hit; /* set by a teardown that learned the run met its memory limit */
};

/* Who the process is and what to release once it is gone. */
struct proc_opts {
	const char *tag; /* its name (a run's cgroup name), copied */
	/* Restricted tier: every kill of the process kills every process of uid too, and no
	 * teardown runs before none is left. 0: none. */
	uid_t uid;
	/* Called once the process is gone (and reaped), or when it could not be started. */
	void (*teardown)(void *ctx, const char *tag, uid_t uid, struct proc_end *end);
	void *ctx;
};

/* Starts the supervisor's thread. NULL with e filled. */
struct supervisor *supervisor_new(struct err *e);
/* Kills every process handed over with proc_release, waits for each, runs its teardown, joins
 * the thread and frees s. Processes still held by their owners must be ended before. */
void supervisor_stop(struct supervisor *s);

/* Starts argv as spawn_process does and takes charge of it. On failure the teardown has run
 * and NULL is returned with e filled. */
struct proc *sup_spawn(struct supervisor *s, char *const argv[], const int fds[SPAWN_FDS],
                       const struct spawn_user *user, const struct proc_opts *o, struct err *e);
/* Takes charge of a process that is not the server's child: pidfd when the caller has one
 * (ownership passes), else pid (opened with pidfd_open). Its exit status is unknown to us. */
struct proc *sup_adopt(struct supervisor *s, pid_t pid, int pidfd, const struct proc_opts *o,
                       struct err *e);
/* Runs o's teardown for a process that never started (status -1). */
void sup_abandon(const struct proc_opts *o);

pid_t proc_pid(const struct proc *p);
/* A descriptor that turns readable once the process has exited (its pidfd, the supervisor's:
 * poll it, never close it); -1 on a kernel without pidfds. */
int proc_fd(const struct proc *p);
/* True once the process has exited (it is not reaped here). */
bool proc_exited(struct proc *p);
/* SIGKILL, and with a uid every process of that uid (returns once none is left). */
void proc_kill(struct proc *p);
/* Waits up to `seconds` for the process to exit; true when it did. */
bool proc_wait(struct proc *p, double seconds);
/* Ends it here: with kill, kills it first; gives it `grace` seconds to exit, then kills it;
 * reaps it, runs the teardown and frees p. end may be NULL. */
void proc_end(struct proc *p, bool kill, double grace, struct proc_end *end);
/* The same on the supervisor's thread, without waiting: the caller no longer holds p. */
void proc_release(struct proc *p, double grace);

#endif
