#include "rmtree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Below this depth a subtree is moved up into the tree's own top directory before it is
 * walked: removal never holds more than this many open directories however deep the tree, and
 * needs no memory that grows with it. */
#define RM_DEPTH 16

struct removal {
	int top; /* the directory being emptied: deep subtrees are moved up into it */
	dev_t dev;
	size_t entries, max_entries;
	bool failed;
};

/* Renames a subtree too deep to walk from here into top, under a name no run can guess; the
 * next pass over top finds it there. */
static void move_up(struct removal *rm, int parent, const char *name)
{
	unsigned long long r;
	char moved[32];

	if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
		rm->failed = true;
		return;
	}
	snprintf(moved, sizeof(moved), ".pyexec-gone-%016llx", r);
	if (renameat2(parent, name, rm->top, moved, RENAME_NOREPLACE) < 0 && errno != ENOENT)
		rm->failed = true;
}

static void rm_at(struct removal *rm, int parent, const char *name, int depth)
{
	struct stat st;
	struct dirent *de;
	DIR *d;
	int fd;

	if (++rm->entries > rm->max_entries) {
		rm->failed = true;
		return;
	}
	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return; /* gone already */
	if (st.st_dev != rm->dev) {
		rm->failed = true; /* something mounted there: not ours to walk */
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(parent, name, 0) < 0 && errno != ENOENT)
			rm->failed = true;
		return;
	}
	if (depth >= RM_DEPTH) {
		move_up(rm, parent, name);
		return;
	}
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	/* A directory the run made unreadable is still ours to open: root ignores modes. */
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		rm->failed = true;
		return;
	}
	while (!rm->failed && (de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			rm_at(rm, dirfd(d), de->d_name, depth + 1);
	closedir(d);
	if (!rm->failed && unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rm->failed = true;
}

/* Removes every entry of top, pass after pass, until a pass finds it empty: subtrees moved up
 * by one pass are removed by the next. */
static void empty_dir(struct removal *rm)
{
	bool found = true;

	while (!rm->failed && found) {
		int fd = openat(rm->top, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		struct dirent *de;

		if (!d) {
			if (fd >= 0)
				close(fd);
			rm->failed = true;
			return;
		}
		found = false;
		while (!rm->failed && (de = readdir(d)))
			if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
				found = true;
				rm_at(rm, rm->top, de->d_name, 1);
			}
		closedir(d);
	}
}

bool rmtree_at(int parent, const char *name, size_t max_entries)
{
	struct removal rm = {.max_entries = max_entries};
	struct stat st;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(parent, name, 0) == 0 || errno == ENOENT;
	rm.dev = st.st_dev;
	rm.top = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rm.top < 0)
		return false;
	empty_dir(&rm);
	close(rm.top);
	if (rm.failed)
		return false;
	return unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno == ENOENT;
}
