/* hostfs: keeps the host's storage layout out of the jails' mount tables.
 *
 * In a container, /usr and /etc sit on the container's root overlay, whose mount options name
 * the host's directories (lowerdir=/var/lib/docker/overlay2/...). A bind mount shows the
 * options of the file system it comes from, so every jail's /proc/self/mountinfo would show
 * them. The server therefore moves into a mount namespace of its own and mounts a fresh
 * read-only overlay over each of those directories, whose only layers are the directory itself
 * and an empty, read-only tmpfs: the jails bind from that, and their mount tables name only
 * container paths. */
#ifndef PYEXEC_HOSTFS_H
#define PYEXEC_HOSTFS_H

#include <stddef.h>

/* Call before any thread exists (a mount namespace is per process only then). Returns 0, or -1
 * with why[0..n) saying what the host refused: the server then runs on, and the jails' mount
 * tables may show the host's paths. */
int hostfs_hide(char *why, size_t n);

#endif
