/* run: one script in one fresh jail. Owns the jail's pipes and process for the whole run: it
 * waits for the runner to say it is ready, hands over the script, collects stdout and the result
 * channel under their caps, enforces the deadline by killing the jail, and reaps it. */
#ifndef PYEXEC_RUN_H
#define PYEXEC_RUN_H

#include <stdbool.h>

#include "buf.h"
#include "err.h"

enum run_end {
	RUN_EXITED,       /* the jail exited by itself */
	RUN_TIMEOUT,      /* the server killed it at the deadline */
	RUN_START_FAILED, /* it never became ready (could not start, or too slow) */
};

struct run_spec {
	char *const *argv; /* nsjail command line */
	const char *script;
	size_t script_len;
	double timeout;       /* seconds, counted from the hand-over */
	double start_timeout; /* seconds to become ready */
	size_t stdout_max;
	size_t chan_max; /* bytes of result channel kept after the ready line */
};

struct run_result {
	enum run_end end;
	bool ready;
	int exit_code; /* nsjail's: the script's code, or 128 + signal */
	struct buf out;
	struct buf chan; /* result channel after the ready line */
	long exec_ms;    /* from hand-over to end */
	char diag[512];  /* tail of nsjail's own messages, for the server log only */
};

/* Runs the spec. Returns -1 only when the server itself could not set the run up (e->message
 * is for the log); otherwise fills r, which the caller releases with run_result_free. */
int run_script(const struct run_spec *spec, struct run_result *r, struct err *e);
void run_result_free(struct run_result *r);

#endif
