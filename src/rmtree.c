#include "rmtree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Below this depth a tree is moved up to top before it is walked: removal never holds more
 * than this many open directories however deep the tree. */
#define RM_DEPTH 16

typedef char moved_name[32];

struct removal {
	int top;
	dev_t dev;
	moved_name *moved; /* trees renamed into top, still to remove; grows on the heap */
	size_t nmoved, cap;
	size_t entries, max_entries;
	bool failed;
};

/* Renames a tree too deep to walk from here into top, under a name no run can guess. */
static void move_up(struct removal *rm, int parent, const char *name)
{
	unsigned long long r;

	if (rm->nmoved == rm->cap) {
		size_t cap = rm->cap ? rm->cap * 2 : 64;
		moved_name *grown = realloc(rm->moved, cap * sizeof(*grown));
		if (!grown) {
			rm->failed = true;
			return;
		}
		rm->moved = grown;
		rm->cap = cap;
	}
	if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
		rm->failed = true;
		return;
	}
	snprintf(rm->moved[rm->nmoved], sizeof(moved_name), ".pyexec-gone-%016llx", r);
	if (renameat2(parent, name, rm->top, rm->moved[rm->nmoved], RENAME_NOREPLACE) == 0)
		rm->nmoved++;
	else if (errno != ENOENT)
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

bool rmtree_at(int top, const char *name, size_t max_entries)
{
	struct removal rm = {.top = top, .max_entries = max_entries};
	struct stat st;

	if (fstat(top, &st) < 0)
		return false;
	rm.dev = st.st_dev;
	rm_at(&rm, top, name, 0);
	while (!rm.failed && rm.nmoved) {
		moved_name next;
		memcpy(next, rm.moved[--rm.nmoved], sizeof(next));
		rm_at(&rm, top, next, 0);
	}
	free(rm.moved);
	return !rm.failed;
}
