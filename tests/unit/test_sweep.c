/* Unit tests for the restricted tier's sweep of shared directories, on real files owned by real
 * uids (as root, like the server): what a run's uid owns goes, links are never followed, other
 * owners' world-writable directories are searched, SWEEP_DEPTH levels deep and no deeper. */
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
#include "runuser.h"
#include "unit.h"

#define RUN_LO 70001 /* the swept uids: RUN_LO and RUN_LO + 1 */
#define OTHER 70005  /* a uid outside the range */

static char top[64];
static int top_fd = -1;

static void make_file(int dir, const char *name, uid_t uid)
{
	int f = openat(dir, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);

	assert_true(f >= 0);
	assert_int_equal(fchown(f, uid, uid), 0);
	close(f);
}

static void make_dir(int dir, const char *name, uid_t uid, mode_t mode)
{
	assert_int_equal(mkdirat(dir, name, 0700), 0);
	assert_int_equal(fchownat(dir, name, uid, uid, 0), 0);
	assert_int_equal(fchmodat(dir, name, mode, 0), 0); /* mkdir's mode is masked */
}

static void make_link(int dir, const char *name, const char *target, uid_t uid)
{
	assert_int_equal(symlinkat(target, dir, name), 0);
	assert_int_equal(fchownat(dir, name, uid, uid, AT_SYMLINK_NOFOLLOW), 0);
}

static bool exists(const char *path)
{
	struct stat st;

	return fstatat(top_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* top/shared is the swept directory; top/outside is beyond it, reached only through links. */
static int setup(void **state)
{
	(void)state;
	if (geteuid() != 0)
		return 0; /* each test skips */
	snprintf(top, sizeof(top), "/tmp/pyexec-sweep-XXXXXX");
	if (!mkdtemp(top))
		return -1;
	top_fd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (top_fd < 0 || mkdirat(top_fd, "shared", 01777) < 0 || mkdirat(top_fd, "outside", 0755))
		return -1;
	return fchmodat(top_fd, "shared", 01777, 0);
}

static int teardown(void **state)
{
	(void)state;
	if (top_fd < 0)
		return 0;
	rmtree_at(top_fd, "shared", 100000);
	rmtree_at(top_fd, "outside", 100000);
	close(top_fd);
	top_fd = -1;
	return rmdir(top);
}

static int shared_fd(void)
{
	int fd = openat(top_fd, "shared", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	return fd;
}

static void sweep_removes_what_the_uids_own(void **state)
{
	int sh;

	(void)state;
	if (top_fd < 0)
		skip();
	sh = shared_fd();
	make_file(sh, "mine", RUN_LO);
	make_file(sh, "mine-too", RUN_LO + 1);
	make_file(sh, "other", OTHER);
	make_file(sh, "root", 0);
	make_dir(sh, "tree", RUN_LO, 0700);
	make_file(sh, "tree/inner", OTHER); /* all of a tree the run owns goes, whoever owns it */
	assert_true(runusers_sweep(sh, RUN_LO, RUN_LO + 1, 1000));
	assert_false(exists("shared/mine"));
	assert_false(exists("shared/mine-too"));
	assert_false(exists("shared/tree"));
	assert_true(exists("shared/other"));
	assert_true(exists("shared/root"));
	assert_true(exists("shared"));
	close(sh);
}

static void sweep_never_follows_links(void **state)
{
	char target[128];
	int sh, out;

	(void)state;
	if (top_fd < 0)
		skip();
	sh = shared_fd();
	out = openat(top_fd, "outside", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(out >= 0);
	make_file(out, "file", RUN_LO);
	make_dir(out, "open", 0, 01777); /* world-writable, but not under the swept directory */
	make_file(out, "open/file", RUN_LO);
	make_file(out, "root-file", 0);
	/* A link is judged by its own owner, never by its target's: the run's link to root's file
	 * goes (the file stays), root's links to the run's file and to an open directory stay and
	 * are not walked. */
	snprintf(target, sizeof(target), "%s/outside/root-file", top);
	make_link(sh, "run-link", target, RUN_LO);
	snprintf(target, sizeof(target), "%s/outside/file", top);
	make_link(sh, "root-link", target, 0);
	snprintf(target, sizeof(target), "%s/outside/open", top);
	make_link(sh, "root-dir-link", target, 0);
	assert_true(runusers_sweep(sh, RUN_LO, RUN_LO, 1000));
	assert_false(exists("shared/run-link"));
	assert_true(exists("shared/root-link"));
	assert_true(exists("shared/root-dir-link"));
	assert_true(exists("outside/root-file"));
	assert_true(exists("outside/file"));
	assert_true(exists("outside/open/file"));
	close(out);
	close(sh);
}

static void sweep_searches_only_world_writable_dirs(void **state)
{
	int sh;

	(void)state;
	if (top_fd < 0)
		skip();
	sh = shared_fd();
	make_dir(sh, "open", OTHER, 0777);
	make_file(sh, "open/mine", RUN_LO);
	make_file(sh, "open/theirs", OTHER);
	make_dir(sh, "closed", OTHER, 0755);
	make_file(sh, "closed/mine", RUN_LO);
	assert_true(runusers_sweep(sh, RUN_LO, RUN_LO, 1000));
	assert_false(exists("shared/open/mine"));
	assert_true(exists("shared/open/theirs"));
	assert_true(exists("shared/open"));
	/* only its owner could have let the run in there */
	assert_true(exists("shared/closed/mine"));
	close(sh);
}

static void sweep_depth_is_bounded(void **state)
{
	char path[512] = "shared";
	int sh;

	(void)state;
	if (top_fd < 0)
		skip();
	sh = shared_fd();
	/* shared/d/d/.../d, SWEEP_DEPTH + 1 levels of other owners' open directories, each with
	 * a file of the run */
	for (int level = 1; level <= SWEEP_DEPTH + 1; level++) {
		char name[sizeof(path) + 8];

		strcat(path, "/d");
		make_dir(top_fd, path, OTHER, 0777);
		snprintf(name, sizeof(name), "%s/mine", path);
		make_file(top_fd, name, RUN_LO);
	}
	assert_true(runusers_sweep(sh, RUN_LO, RUN_LO, 1000));
	strcpy(path, "shared");
	for (int level = 1; level <= SWEEP_DEPTH + 1; level++) {
		char name[sizeof(path) + 8];

		strcat(path, "/d");
		snprintf(name, sizeof(name), "%s/mine", path);
		assert_true(exists(path));
		if (level <= SWEEP_DEPTH)
			assert_false(exists(name));
		else
			assert_true(exists(name));
	}
	close(sh);
}

static void sweep_budget(void **state)
{
	int sh;

	(void)state;
	if (top_fd < 0)
		skip();
	sh = shared_fd();
	make_dir(sh, "tree", RUN_LO, 0700);
	for (int i = 0; i < 50; i++) {
		char name[32];
		snprintf(name, sizeof(name), "tree/%d", i);
		make_file(sh, name, RUN_LO);
	}
	/* a tree too big for the budget is reported, and a later sweep finishes it */
	assert_false(runusers_sweep(sh, RUN_LO, RUN_LO, 10));
	assert_true(runusers_sweep(sh, RUN_LO, RUN_LO, 1000));
	assert_false(exists("shared/tree"));
	close(sh);
}

int unit_sweep(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(sweep_removes_what_the_uids_own, setup, teardown),
	    cmocka_unit_test_setup_teardown(sweep_never_follows_links, setup, teardown),
	    cmocka_unit_test_setup_teardown(sweep_searches_only_world_writable_dirs, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(sweep_depth_is_bounded, setup, teardown),
	    cmocka_unit_test_setup_teardown(sweep_budget, setup, teardown),
	};
	return cmocka_run_group_tests_name("sweep", tests, NULL, NULL);
}
