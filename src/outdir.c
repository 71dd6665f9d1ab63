#include "outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OPEN_FLAGS (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)

struct walk {
	uid_t uid;
	dev_t dev;
	const struct files_limits *lim;
	struct buf *out;
	size_t files, bytes;
	char path[4096];
};

static int cap(struct walk *w, const char *which)
{
	char rec[16];

	snprintf(rec, sizeof(rec), "L %s\n", which);
	buf_append(w->out, rec, strlen(rec));
	return -1;
}

/* The names in dir, sorted bytewise so the answer does not depend on the file system. */
static int names_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **names_of(int fd, size_t *n)
{
	int copy = dup(fd);
	DIR *d = copy >= 0 ? fdopendir(copy) : NULL;
	char **names = NULL, **grown;
	struct dirent *de;
	size_t alloc = 0;

	*n = 0;
	if (!d) {
		if (copy >= 0)
			close(copy);
		return NULL;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (*n == alloc) {
			alloc = alloc ? alloc * 2 : 16;
			grown = realloc(names, alloc * sizeof(*names));
			if (!grown)
				break;
			names = grown;
		}
		if (!(names[*n] = strdup(de->d_name)))
			break;
		(*n)++;
	}
	closedir(d);
	if (names)
		qsort(names, *n, sizeof(*names), names_cmp);
	return names;
}

/* Reads the regular file open at fd, whose size st tells, into one record. */
static int add_file(struct walk *w, int fd, const struct stat *st, size_t plen)
{
	size_t size = (size_t)st->st_size, got = 0;
	char head[64], *data;

	if (w->files + 1 > w->lim->out_files)
		return cap(w, "files");
	if (st->st_size < 0 || size > w->lim->out_bytes - w->bytes)
		return cap(w, "bytes");
	data = malloc(size ? size : 1);
	if (!data)
		return cap(w, "bytes");
	while (got < size) {
		ssize_t n = read(fd, data + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* shorter than it said: what is there */
		got += (size_t)n;
	}
	w->files++;
	w->bytes += got;
	snprintf(head, sizeof(head), "F %zu %zu\n", plen, got);
	buf_append(w->out, head, strlen(head));
	buf_append(w->out, w->path, plen);
	buf_append(w->out, data, got);
	free(data);
	return 0;
}

static int walk_dir(struct walk *w, int dfd, size_t plen, size_t depth);

/* One entry of the directory open at dfd; w->path[0..plen) is its path under output/. */
static int walk_entry(struct walk *w, int dfd, const char *name, size_t plen, size_t depth)
{
	struct stat ls, st;
	int fd, rc = 0;

	if (fstatat(dfd, name, &ls, AT_SYMLINK_NOFOLLOW) < 0 || ls.st_uid != w->uid ||
	    ls.st_dev != w->dev || !(S_ISREG(ls.st_mode) || S_ISDIR(ls.st_mode)))
		return 0; /* gone, someone else's, or a link, FIFO, socket or device: skipped */
	if (depth > w->lim->path_depth)
		return cap(w, "depth");
	if (plen > w->lim->path_max)
		return cap(w, "path");
	fd = openat(dfd, name, OPEN_FLAGS | (S_ISDIR(ls.st_mode) ? O_DIRECTORY : 0));
	if (fd < 0)
		return 0;
	/* The same inode as the one looked at, still of its kind. */
	if (fstat(fd, &st) == 0 && st.st_ino == ls.st_ino && st.st_dev == ls.st_dev &&
	    st.st_uid == w->uid) {
		if (S_ISREG(st.st_mode))
			rc = add_file(w, fd, &st, plen);
		else if (S_ISDIR(st.st_mode))
			rc = walk_dir(w, fd, plen, depth);
	}
	close(fd);
	return rc;
}

static int walk_dir(struct walk *w, int dfd, size_t plen, size_t depth)
{
	size_t n;
	char **names = names_of(dfd, &n);
	int rc = 0;

	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(names[i]), at = plen ? plen + 1 : 0;
		if (rc == 0 && at + len >= sizeof(w->path))
			rc = cap(w, "path");
		if (rc == 0) {
			if (plen)
				w->path[plen] = '/';
			memcpy(w->path + at, names[i], len);
			rc = walk_entry(w, dfd, names[i], at + len, depth + 1);
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

void outdir_collect(const char *dir, uid_t uid, const struct files_limits *lim, struct buf *out)
{
	struct walk w = {.uid = uid, .lim = lim, .out = out};
	int top = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), fd;
	struct stat st;

	if (top < 0)
		return;
	fd = openat(top, "output", OPEN_FLAGS | O_DIRECTORY);
	close(top);
	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && st.st_uid == uid) {
		w.dev = st.st_dev;
		walk_dir(&w, fd, 0, 0);
	}
	close(fd);
}
