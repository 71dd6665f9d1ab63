#include "hostfs.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

/* The directories the jails bind from (config/nsjail.cfg). */
static const char *const covered[] = {"/usr", "/etc"};

static int fail(char *why, size_t n, const char *what, const char *path)
{
	snprintf(why, n, "%s %s: %s", what, path, strerror(errno));
	return -1;
}

/* Where the empty layer is mounted; the same for every start, so none is left behind. Ours
 * only if it is our own directory: in the sticky /tmp no other uid can then replace it. */
static const char empty[] = "/tmp/pyexec-empty";

static int empty_dir(char *why, size_t n)
{
	struct stat st;

	if (mkdir(empty, 0555) < 0 && errno != EEXIST)
		return fail(why, n, "mkdir", empty);
	if (lstat(empty, &st) < 0)
		return fail(why, n, "lstat", empty);
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
		errno = EPERM;
		return fail(why, n, "not our own directory:", empty);
	}
	return 0;
}

int hostfs_hide(char *why, size_t n)
{
	char opts[256];

	if (unshare(CLONE_NEWNS) < 0)
		return fail(why, n, "unshare", "a mount namespace");
	/* Nothing mounted here may reach the container's namespace, nor the other way round. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return fail(why, n, "make private", "/");
	/* Read-only, so nothing can ever be added to the layer it lends every covered directory. */
	if (empty_dir(why, n) < 0)
		return -1;
	if (mount("tmpfs", empty, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
	          "size=4k,mode=0555") < 0)
		return fail(why, n, "mount tmpfs on", empty);
	for (size_t i = 0; i < sizeof(covered) / sizeof(covered[0]); i++) {
		/* Overlayfs wants two layers when there is no upper one. */
		snprintf(opts, sizeof(opts), "lowerdir=%s:%s", covered[i], empty);
		if (mount("overlay", covered[i], "overlay", MS_RDONLY, opts) < 0)
			return fail(why, n, "mount overlay on", covered[i]);
	}
	return 0;
}
