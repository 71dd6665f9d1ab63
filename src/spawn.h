/* spawn: the only code that starts processes. */
#ifndef PYEXEC_SPAWN_H
#define PYEXEC_SPAWN_H

#include <sys/types.h>

#include "err.h"

#define SPAWN_FDS 5

/* Starts argv with fds[i] as its descriptor i (0 <= i < SPAWN_FDS) and every other descriptor
 * closed, in a new session, with an empty signal mask, default signal dispositions and an empty
 * environment. Returns the pid, which the caller then owns (it must kill and reap it), or -1
 * with e filled. */
pid_t spawn_process(char *const argv[], const int fds[SPAWN_FDS], struct err *e);

#endif
