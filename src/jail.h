/* jail: turns the configuration into nsjail's command line. The command is the same for every
 * run (per-run values travel on the runner's stdin), so it is built once at start-up. */
#ifndef PYEXEC_JAIL_H
#define PYEXEC_JAIL_H

#include "config.h"
#include "err.h"

/* The descriptor on which the runner writes its ready line and its result frame. */
#define JAIL_RESULT_FD 3

struct jail;

/* Checks that nsjail, the interpreter, the runner and the configs exist, and builds the command.
 * Returns NULL with e filled when something is missing. Free with jail_free. */
struct jail *jail_new(const struct config *c, struct err *e);
/* NULL-terminated argv, owned by j. */
char *const *jail_argv(const struct jail *j);
void jail_free(struct jail *j);

#endif
