/* Unit tests for rmtree on real files: depth and width without limit, links never followed. */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "rmtree.h"
#include "unit.h"

/* A scratch directory holding "victim" (the tree to remove) and "outside" (what must stay). */
struct scratch {
	char path[64];
	int fd;
};

static void scratch_make(struct scratch *s)
{
	/* A tmpfs where there is one: a disk file system makes the thousands of creates slow. */
	snprintf(s->path, sizeof(s->path), "%s/pyexec-rmtree-XXXXXX",
	         access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	assert_non_null(mkdtemp(s->path));
	s->fd = open(s->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(s->fd >= 0);
	assert_int_equal(mkdirat(s->fd, "victim", 0700), 0);
	assert_int_equal(mkdirat(s->fd, "outside", 0700), 0);
	int f = openat(s->fd, "outside/keep", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(f >= 0);
	close(f);
}

/* Only "outside" with its file is left. */
static void scratch_check(struct scratch *s)
{
	struct stat st;
	assert_int_equal(fstatat(s->fd, "victim", &st, AT_SYMLINK_NOFOLLOW), -1);
	assert_int_equal(fstatat(s->fd, "outside/keep", &st, 0), 0);
	assert_true(rmtree_at(s->fd, "outside", 100));
	assert_int_equal(unlinkat(AT_FDCWD, s->path, AT_REMOVEDIR), 0);
	close(s->fd);
}

/* 1000 levels (far past the 16 open directories removal may hold), 20 files per level. */
static void rmtree_deep(void **state)
{
	struct scratch s;
	int fd;

	(void)state;
	scratch_make(&s);
	fd = openat(s.fd, "victim", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	for (int level = 0; level < 1000; level++) {
		char name[16];
		for (int i = 0; i < 20; i++) {
			snprintf(name, sizeof(name), "f%d", i);
			close(openat(fd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
		}
		assert_int_equal(mkdirat(fd, "d", 0700), 0);
		int next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		/* Unreadable and unsearchable to its owner: root removes it anyway. */
		if (level % 100 == 0)
			fchmod(fd, 0);
		close(fd);
		fd = next;
	}
	close(fd);
	assert_true(rmtree_at(s.fd, "victim", 1000000));
	scratch_check(&s);
}

/* Thousands of deep subtrees under one directory at depth 16: each is moved up and removed
 * (the old bounded list gave up after 64). */
static void rmtree_wide_at_depth(void **state)
{
	struct scratch s;
	char path[256] = "victim";
	int fd;

	(void)state;
	scratch_make(&s);
	for (int level = 0; level < 15; level++) {
		strcat(path, "/d");
		assert_int_equal(mkdirat(s.fd, path, 0700), 0);
	}
	fd = openat(s.fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	for (int i = 0; i < 3000; i++) {
		char name[32];
		snprintf(name, sizeof(name), "w%d", i);
		assert_int_equal(mkdirat(fd, name, 0700), 0);
		snprintf(name, sizeof(name), "w%d/x", i);
		assert_int_equal(mkdirat(fd, name, 0700), 0);
	}
	close(fd);
	assert_true(rmtree_at(s.fd, "victim", 1000000));
	scratch_check(&s);
}

/* Links inside the tree (to a directory and to a file outside) are removed, not followed. */
static void rmtree_links_not_followed(void **state)
{
	struct scratch s;
	char target[128];

	(void)state;
	scratch_make(&s);
	snprintf(target, sizeof(target), "%s/outside", s.path);
	assert_int_equal(symlinkat(target, s.fd, "victim/dir-link"), 0);
	snprintf(target, sizeof(target), "%s/outside/keep", s.path);
	assert_int_equal(symlinkat(target, s.fd, "victim/file-link"), 0);
	assert_int_equal(linkat(s.fd, "outside/keep", s.fd, "victim/hard-link", 0), 0);
	assert_true(rmtree_at(s.fd, "victim", 100));
	scratch_check(&s);
}

/* Entries of the scratch directory itself. */
static int scratch_entries(struct scratch *s)
{
	int n = 0, fd = openat(s->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fdopendir(fd);
	struct dirent *de;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
	closedir(d);
	return n;
}

/* A tree bigger than the entry budget is reported as a failure, not removed forever; what is
 * left stays under its name (nothing moved up beside it), and a second call finishes it. */
static void rmtree_budget(void **state)
{
	struct scratch s;
	char path[512] = "victim";

	(void)state;
	scratch_make(&s);
	for (int level = 0; level < 40; level++) {
		strcat(path, "/d");
		assert_int_equal(mkdirat(s.fd, path, 0700), 0);
	}
	for (int i = 0; i < 50; i++) {
		char name[32];
		snprintf(name, sizeof(name), "victim/f%d", i);
		close(openat(s.fd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
	}
	assert_false(rmtree_at(s.fd, "victim", 30));
	assert_int_equal(scratch_entries(&s), 2);
	assert_true(rmtree_at(s.fd, "victim", 1000));
	scratch_check(&s);
}

int unit_rmtree(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(rmtree_deep),
	    cmocka_unit_test(rmtree_wide_at_depth),
	    cmocka_unit_test(rmtree_links_not_followed),
	    cmocka_unit_test(rmtree_budget),
	};
	return cmocka_run_group_tests_name("rmtree", tests, NULL, NULL);
}
