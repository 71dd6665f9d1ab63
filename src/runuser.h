/* runuser: the restricted tier's per-run identities. Each jail gets a uid and gid no other live
 * jail has, and a private 0700 working directory. Giving one back kills what still runs as it,
 * removes its directory and every file it left in the shared writable directories, without
 * following links, so the next jail that gets the uid inherits nothing. */
#ifndef PYEXEC_RUNUSER_H
#define PYEXEC_RUNUSER_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include "err.h"

#define RUNUSER_COUNT 1024

struct runusers;

/* Uids base .. base + RUNUSER_COUNT - 1 must belong to nobody else on the host. root must be a
 * directory of the server's own that only it can write, or a path it can create. NULL with e
 * filled on failure. Free with runusers_free. */
struct runusers *runusers_new(uid_t base, const char *root, struct err *e);
/* Takes a free uid and makes its working directory (written to dir). -1 when none is free or
 * the directory cannot be made. */
int runusers_take(struct runusers *ru, uid_t *uid, char dir[PATH_MAX], struct err *e);
/* Removes what uid left in its directory and the shared directories, while its processes
 * (already sent SIGKILL) may still be going away: so that the next run finds nothing of it.
 * runusers_give_back follows once they are gone. */
void runusers_sweep(struct runusers *ru, uid_t uid);
/* Ends what runs as uid and removes its files; the uid is free again only once that worked. */
void runusers_give_back(struct runusers *ru, uid_t uid);
/* True when uid is one of ours. */
bool runusers_owns(const struct runusers *ru, uid_t uid);
void runusers_free(struct runusers *ru);

#endif
