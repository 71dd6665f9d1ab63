/* outdir: collects what a run left under output/ in its working directory, as the records of
 * files.h. The restricted tier's server does this itself, after every process of the run's uid
 * is gone (in tier full the jail's init does the same inside the jail). Nothing is followed or
 * opened but directories and regular files, and those only without following a link and without
 * blocking; entries not owned by the run's uid are skipped (a hard link to someone else's file).
 * Caps end the walk with an "L" record. */
#ifndef PYEXEC_OUTDIR_H
#define PYEXEC_OUTDIR_H

#include <sys/types.h>

#include "buf.h"
#include "files.h"

/* Appends to out (limit: files_records_max) the records of dir/output/. */
void outdir_collect(const char *dir, uid_t uid, const struct files_limits *lim, struct buf *out);

#endif
