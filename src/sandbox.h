/* sandbox: one started jail, nsjail and the parent's ends of its pipes, that runs exactly one
 * script. Whoever holds the pointer owns it and must end it with sandbox_run or
 * sandbox_destroy; its process belongs to the supervisor, which kills, reaps and tears down. */
#ifndef PYEXEC_SANDBOX_H
#define PYEXEC_SANDBOX_H

#include <stdbool.h>

#include "buf.h"
#include "err.h"
#include "files.h"
#include "spawn.h"
#include "supervisor.h"

enum run_end {
	RUN_EXITED,       /* the jail exited by itself */
	RUN_TIMEOUT,      /* the server killed it at the deadline */
	RUN_START_FAILED, /* it never became ready (could not start, or too slow) */
	RUN_CANCELLED,    /* the client went away or the server is stopping */
	RUN_LOST,         /* the zygote the run was forked from died during it */
};

struct run_result;

struct run_spec {
	const char *script; /* what the runner reads on stdin: api.h's job input */
	size_t script_len;
	double timeout; /* seconds, counted from the hand-over */
	size_t stdout_max;
	size_t chan_max; /* bytes of result channel kept after the ready line */
	/* What a run may leave under output/ (files.h); the records of the init, or of the
	 * server's own walk in the restricted tier, are capped by it. */
	const struct files_limits *files;
	int cancel_fds[2]; /* -1 or descriptors whose hang-up or readability cancels the run */
};

struct run_result {
	enum run_end end;
	bool ready;
	int exit_code; /* nsjail's: the script's code, or 128 + signal */
	struct buf out;
	struct buf chan;  /* result channel after the ready line */
	struct buf files; /* records of what the script left under output/ (files.h) */
	long exec_ms;     /* from hand-over to end */
	bool memory_hit;  /* its cgroup reached the memory limit (from the jail's teardown) */
	char diag[512];   /* tail of nsjail's own messages, for the server log only */
};

struct sandbox;

/* Starts nsjail with argv through the supervisor, which runs o's teardown once nsjail is gone
 * (or at once when it cannot start). With user (restricted tier), nsjail starts as that user,
 * and o->uid makes every kill of the sandbox kill all of user's processes. NULL with e filled
 * when it cannot start. */
struct sandbox *sandbox_start(struct supervisor *sup, char *const *argv,
                              const struct spawn_user *user, const struct proc_opts *o,
                              struct err *e);
/* A sandbox whose process another starts (a zygote's run, zygote.h): the pipes are made and
 * child gets the process's ends of them, which the caller hands over and closes. NULL with e
 * filled. Until sandbox_adopt, only sandbox_discard may be called on it. */
struct sandbox *sandbox_prepare(int child[SPAWN_FDS], struct err *e);
/* Gives a prepared sandbox its process, which the supervisor took with sup_adopt, the pid of
 * its script's process (not a child of proc's: its priority is restored at the hand-over too),
 * and holder: -1 or a descriptor (owned from now on) that turns readable when the process the
 * run depends on (its zygote) is gone; the run then counts as lost, not as failed. */
void sandbox_adopt(struct sandbox *sb, struct proc *proc, pid_t script, int holder);
/* Frees a prepared sandbox that was never given a process. */
void sandbox_discard(struct sandbox *sb);
/* Reads what the jail sent before the hand-over. Returns 1 once the runner said it is ready,
 * 0 while it is still starting, -1 when it died or misbehaved (then destroy it). */
int sandbox_check(struct sandbox *sb);
/* False when the sandbox's nsjail has exited or its result channel says it died. */
bool sandbox_alive(struct sandbox *sb);
/* Blocks until ready; returns 0, or -1 on death or when `seconds` pass. */
int sandbox_wait_ready(struct sandbox *sb, double seconds);
/* Gives its processes known so far this nice value. */
void sandbox_renice(struct sandbox *sb, int nice);
/* The descriptor to poll for sandbox_check. */
int sandbox_fd(const struct sandbox *sb);
/* Monotonic seconds at which it was started. */
double sandbox_started_at(const struct sandbox *sb);
/* Seconds from start to ready, or -1 while not ready. */
double sandbox_start_seconds(const struct sandbox *sb);

/* Hands the script to a ready sandbox, collects its output, enforces the deadline, and ends
 * the sandbox (consumed: sb is freed). It returns as soon as the jail's init reports that the
 * script's process is gone; when that process exited 0 the rest of the jail is handed to the
 * supervisor, which reaps it and releases its resources in the background. r is released with
 * run_result_free. */
void sandbox_run(struct sandbox *sb, const struct run_spec *spec, struct run_result *r);
/* Kills and frees a sandbox that will not run a script; a zygote's run not dead at once is
 * reaped and torn down by the supervisor, without waiting for its death. r may be NULL, else
 * it gets the start-failure result for logging (diag and exit code). */
void sandbox_destroy(struct sandbox *sb, struct run_result *r);

void run_result_free(struct run_result *r);

#endif
