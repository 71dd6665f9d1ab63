/* spawn: the only code that starts processes. */
#ifndef PYEXEC_SPAWN_H
#define PYEXEC_SPAWN_H

#include <sys/types.h>

#include "err.h"

/* Starts argv with fds[0..3] as its descriptors 0-3 and every other descriptor closed, in a new
 * session, with an empty signal mask, default signal dispositions and an empty environment.
 * Returns the pid, which the caller then owns (it must kill and reap it), or -1 with e filled. */
pid_t spawn_process(char *const argv[], const int fds[4], struct err *e);

#endif
