/* runinit: a zygote run's PID 1 (docs/security.md). A clone of the spawner (spawner.c) into new
 * user, mount, PID, IPC, UTS and network namespaces, it never runs Python nor user code: it sets
 * the namespaces up, hands them to the zygote (which forks the script's process into them), then
 * relays that process's output, learns how it ended, ends the jail, collects output/ and reports
 * on the status channel, as runner.py's init does in a one-shot jail. */
#ifndef PYEXEC_RUNINIT_H
#define PYEXEC_RUNINIT_H

#include <linux/filter.h>
#include <stddef.h>
#include <sys/types.h>

#include "files.h"

/* The descriptors a run's init holds, at these numbers. */
enum {
	INIT_OUT = 1,    /* the server's stdout pipe: the script's output is relayed there */
	INIT_ERR = 2,    /* the server's stderr pipe: the init's own failures */
	INIT_STATUS = 3, /* the status channel to the server */
	INIT_SCRIPT = 4, /* the script's stdout (a pipe of the run's uid), read end */
	INIT_DONE = 5,   /* the script's process says "D" here once its frame is written */
	INIT_EXITED = 6, /* the zygote writes "<code>\n" here once it reaped the script's process */
	INIT_READY = 7,  /* to the zygote: "I" and the namespaces, once they are set up */
	INIT_FDS = 8
};

struct run_config {
	uid_t uid;
	gid_t gid;
	unsigned long tmp_mb, tmp_inodes;
	struct files_limits out;  /* output/'s caps (out_files, out_bytes, path_max, path_depth) */
	size_t records_max;       /* what they allow, in records (files_records_max) */
	struct sock_fprog filter; /* the full tier's seccomp program */
};

/* In the clone, with fds[0..INIT_FDS) (fds[0] unused) still where the spawner got them: becomes
 * the run's init and never returns. */
void runinit_main(const struct run_config *c, const int fds[INIT_FDS]);

#endif
