/* runuser: the restricted tier's per-run identities. Each jail gets a uid and gid no other live
 * jail has, and a private 0700 working directory: a size- and file-capped tmpfs of its own where
 * the host lets the server mount one, else a plain directory. Giving a uid back hands it to the
 * cleaner threads, off every answer's path: they make sure the kernel shows no task of the uid,
 * remove its directory (and, on hosts without Landlock, what it left in the shared writable
 * directories), and only then free the uid. A fast lane takes every run first; what is too big
 * to remove there goes on in a slow lane, so that one huge clean-up holds back no other uid. A
 * uid whose clean-up fails is quarantined, never reused. */
#ifndef PYEXEC_RUNUSER_H
#define PYEXEC_RUNUSER_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include "err.h"

struct runusers;

struct runusers_opts {
	uid_t base;              /* uids base .. base + count - 1 belong to nobody else */
	unsigned count;          /* at least 2 */
	const char *root;        /* made if missing; only the server may write it */
	unsigned long tmp_bytes; /* a run directory's size, where it is a tmpfs */
	unsigned long tmp_files; /* and its inodes */
	bool sweep_shared;       /* runs can write /tmp and the like (no Landlock): sweep them */
};

struct runusers_stats {
	unsigned used, cleaning, quarantined, count;
	bool tmpfs; /* run directories are capped tmpfs mounts */
};

/* Kills what runs as any of the uids and removes what an earlier server left under root, then
 * starts the cleaner. NULL with e filled on failure. Free with runusers_free. */
struct runusers *runusers_new(const struct runusers_opts *o, struct err *e);
/* Takes a free uid and makes its working directory (written to dir). -1 with e filled (503
 * busy when every uid is in use, being cleaned or quarantined). */
int runusers_take(struct runusers *ru, uid_t *uid, char dir[PATH_MAX], struct err *e);
/* Queues uid for its clean-up and returns at once; the caller has already killed its
 * processes (spawn_kill_user) and reaped the one it started. */
void runusers_give_back(struct runusers *ru, uid_t uid);
/* True when uid is one of ours. */
bool runusers_owns(const struct runusers *ru, uid_t uid);
void runusers_stats(struct runusers *ru, struct runusers_stats *s);
/* Stops the cleaner after the clean-up it is doing, and frees ru. */
void runusers_free(struct runusers *ru);

/* How deep a sweep looks through world-writable directories of other owners. */
#define SWEEP_DEPTH 16

/* Removes from the directory dir every entry a uid in [lo, hi] owns, without following links
 * or leaving dir's file system, and looks for more in the world-writable directories of other
 * owners, SWEEP_DEPTH levels down; entries count against budget as in rmtree_at. True when all
 * such entries are gone. What the cleaners do to shared directories; here for its tests. */
bool runusers_sweep(int dir, uid_t lo, uid_t hi, size_t budget);

#endif
