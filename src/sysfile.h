/* sysfile: the short files of /proc, /sys and cgroupfs, read or written whole with one call
 * (the kernel makes each such file in one go, so one read or write is the whole of it). */
#ifndef PYEXEC_SYSFILE_H
#define PYEXEC_SYSFILE_H

#include <stddef.h>
#include <sys/types.h>

/* Reads path (relative to dir, or absolute with AT_FDCWD) into out, NUL-terminated, at most
 * n - 1 bytes. Returns the length, or -1 with errno set. */
ssize_t sysfile_read(int dir, const char *path, char *out, size_t n);
/* Writes text to path in one write. 0 when all of it went in, else -1 with errno set (the
 * kernel's refusal: EBUSY, ESRCH, ...). */
int sysfile_write(const char *path, const char *text);

#endif
