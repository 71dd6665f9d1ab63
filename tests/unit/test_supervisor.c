/* Unit tests for the supervisor with real processes: children and, as a warm interpreter in a
 * jail will hand it, processes that are not the server's children. */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "supervisor.h"
#include "unit.h"

struct torn {
	int calls;
	int status;
	char tag[32];
};

static void note_teardown(void *ctx, const char *tag, uid_t uid, struct proc_end *end)
{
	struct torn *t = ctx;

	(void)uid;
	t->calls++;
	t->status = end->status;
	snprintf(t->tag, sizeof(t->tag), "%s", tag);
}

/* A process that is not ours: a grandchild whose parent has exited (and been reaped). */
static pid_t orphan_sleeper(void)
{
	int p[2];
	pid_t child, grandchild = -1;

	assert_int_equal(pipe(p), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		pid_t g = fork();
		if (g == 0) {
			close(p[0]), close(p[1]);
			execl("/bin/sleep", "sleep", "30", (char *)NULL);
			_exit(127);
		}
		(void)!write(p[1], &g, sizeof(g));
		_exit(0);
	}
	close(p[1]);
	assert_int_equal(read(p[0], &grandchild, sizeof(grandchild)), sizeof(grandchild));
	close(p[0]);
	waitpid(child, NULL, 0);
	return grandchild;
}

static void sup_ends_a_child_and_tears_down_once(void **state)
{
	char *argv[] = {"/bin/sleep", "30", NULL};
	int null[SPAWN_FDS] = {0, 1, 2, 2, 2};
	struct torn t = {0};
	struct proc_opts o = {.tag = "child", .teardown = note_teardown, .ctx = &t};
	struct err e;
	struct supervisor *s = supervisor_new(&e);
	struct proc *p;
	struct proc_end end;

	(void)state;
	assert_non_null(s);
	p = sup_spawn(s, argv, null, NULL, &o, &e);
	assert_non_null(p);
	assert_false(proc_exited(p));
	assert_false(proc_wait(p, 0.05));
	proc_end(p, true, 5, &end);
	assert_int_equal(end.status, 128 + SIGKILL);
	assert_int_equal(t.calls, 1);
	assert_string_equal(t.tag, "child");
	supervisor_stop(s);
	assert_int_equal(t.calls, 1);
}

static void sup_kills_and_tears_down_a_process_that_is_not_its_child(void **state)
{
	pid_t pid = orphan_sleeper();
	struct torn t = {0};
	struct proc_opts o = {.tag = "adopted", .teardown = note_teardown, .ctx = &t};
	struct err e;
	struct supervisor *s = supervisor_new(&e);
	struct proc *p;
	struct proc_end end;

	(void)state;
	assert_non_null(s);
	p = sup_adopt(s, pid, -1, &o, &e);
	assert_non_null(p);
	assert_int_equal(proc_pid(p), pid);
	assert_false(proc_exited(p));
	/* What the zygote's keeper polls: readable once the process is gone, not before. */
	assert_true(proc_fd(p) >= 0);
	assert_int_equal(poll(&(struct pollfd){.fd = proc_fd(p), .events = POLLIN}, 1, 0), 0);
	proc_kill(p);
	assert_true(proc_wait(p, 5));
	assert_int_equal(poll(&(struct pollfd){.fd = proc_fd(p), .events = POLLIN}, 1, 0), 1);
	proc_end(p, false, 5, &end);
	assert_int_equal(end.status, -1); /* not ours to reap: its status is unknown */
	assert_int_equal(t.calls, 1);
	assert_string_equal(t.tag, "adopted");
	supervisor_stop(s);
}

static void sup_stop_ends_what_was_released_to_it(void **state)
{
	pid_t pid = orphan_sleeper();
	char *argv[] = {"/bin/sleep", "30", NULL};
	int null[SPAWN_FDS] = {0, 1, 2, 2, 2};
	struct torn adopted = {0}, child = {0};
	struct proc_opts oa = {.tag = "a", .teardown = note_teardown, .ctx = &adopted};
	struct proc_opts oc = {.tag = "c", .teardown = note_teardown, .ctx = &child};
	struct err e;
	struct supervisor *s = supervisor_new(&e);
	struct proc *a, *c;

	(void)state;
	assert_non_null(s);
	a = sup_adopt(s, pid, -1, &oa, &e);
	c = sup_spawn(s, argv, null, NULL, &oc, &e);
	assert_non_null(a);
	assert_non_null(c);
	/* Long graces: only the stop ends them. */
	proc_release(a, 60);
	proc_release(c, 60);
	supervisor_stop(s);
	assert_int_equal(adopted.calls, 1);
	assert_int_equal(child.calls, 1);
	assert_int_equal(child.status, 128 + SIGKILL);
}

static void sup_adopt_takes_a_pidfd_handed_to_it(void **state)
{
	pid_t pid = orphan_sleeper();
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	struct torn t = {0};
	struct proc_opts o = {.tag = "handed", .teardown = note_teardown, .ctx = &t};
	struct err e;
	struct supervisor *s = supervisor_new(&e);
	struct proc *p;
	struct proc_end end;

	(void)state;
	assert_non_null(s);
	assert_true(pidfd >= 0);
	p = sup_adopt(s, pid, pidfd, &o, &e);
	assert_non_null(p);
	/* Ended in one call: killed, waited for, torn down; the pidfd is closed with it. */
	proc_end(p, true, 5, &end);
	assert_int_equal(end.status, -1);
	assert_int_equal(t.calls, 1);
	assert_int_equal(fcntl(pidfd, F_GETFD), -1);
	supervisor_stop(s);
}

int unit_supervisor(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(sup_ends_a_child_and_tears_down_once),
	    cmocka_unit_test(sup_kills_and_tears_down_a_process_that_is_not_its_child),
	    cmocka_unit_test(sup_stop_ends_what_was_released_to_it),
	    cmocka_unit_test(sup_adopt_takes_a_pidfd_handed_to_it),
	};

	return cmocka_run_group_tests_name("supervisor", tests, NULL, NULL);
}
