/* Unit tests for admission control, with real threads and real sockets: slots, the queue
 * behind them, refusals beyond it, a queued client that hangs up, stopping and draining. */
#include <pthread.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "admit.h"
#include "unit.h"

struct waiter {
	struct admit *a;
	int fd;
	enum admit_rc rc;
	double waited;
	pthread_t t;
};

static void *wait_main(void *arg)
{
	struct waiter *w = arg;

	__atomic_store_n(&w->rc, admit_enter(w->a, w->fd, &w->waited), __ATOMIC_SEQ_CST);
	return NULL;
}

static void waiter_start(struct waiter *w, struct admit *a, int fd)
{
	w->a = a;
	w->fd = fd;
	w->rc = -1;
	assert_int_equal(pthread_create(&w->t, NULL, wait_main, w), 0);
}

static enum admit_rc waiter_join(struct waiter *w)
{
	assert_int_equal(pthread_join(w->t, NULL), 0);
	return w->rc;
}

/* Waits (up to 10 s) until `queued` requests wait behind the slots. */
static void until_queued(struct admit *a, unsigned queued)
{
	unsigned r, q;

	for (int i = 0; i < 10000; i++) {
		admit_counts(a, &r, &q);
		if (q == queued)
			return;
		nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
	}
	fail_msg("never %u queued (now %u)", queued, q);
}

static void admit_slots_queue_and_refusal(void **state)
{
	struct admit *a = admit_new(2, 1);
	struct waiter w;
	unsigned running, queued;
	double waited;

	(void)state;
	assert_non_null(a);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	waiter_start(&w, a, -1);
	until_queued(a, 1);
	/* both slots and the one queue place are taken */
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_BUSY);
	admit_counts(a, &running, &queued);
	assert_int_equal(running, 2);
	assert_int_equal(queued, 1);
	admit_leave(a);
	assert_int_equal(waiter_join(&w), ADMIT_OK);
	assert_true(w.waited > 0);
	admit_counts(a, &running, &queued);
	assert_int_equal(running, 2);
	assert_int_equal(queued, 0);
	admit_leave(a);
	admit_leave(a);
	admit_counts(a, &running, &queued);
	assert_int_equal(running, 0);
	admit_free(a);
}

static void admit_no_queue(void **state)
{
	struct admit *a = admit_new(1, 0);
	double waited;

	(void)state;
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_BUSY);
	admit_leave(a);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	admit_leave(a);
	admit_free(a);
}

static void admit_queued_client_hangs_up(void **state)
{
	struct admit *a = admit_new(1, 2);
	struct waiter w;
	unsigned running, queued;
	double waited;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	waiter_start(&w, a, sv[0]);
	until_queued(a, 1);
	close(sv[1]); /* the client goes while its request waits */
	assert_int_equal(waiter_join(&w), ADMIT_GONE);
	admit_counts(a, &running, &queued);
	assert_int_equal(running, 1); /* the slot holder is untouched, the place is free */
	assert_int_equal(queued, 0);
	close(sv[0]);
	admit_leave(a);
	admit_free(a);
}

static void admit_stop_refuses_new_and_queued(void **state)
{
	struct admit *a = admit_new(1, 2);
	struct waiter w;
	double waited;
	int sv[2];

	(void)state;
	/* a connected client that stays: only the stop may end its wait */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	waiter_start(&w, a, sv[0]);
	until_queued(a, 1);
	admit_stop(a);
	assert_int_equal(waiter_join(&w), ADMIT_STOPPING);
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_STOPPING);
	/* the run already going keeps its slot until it leaves */
	assert_int_equal(admit_drain(a, 0.05), 1);
	admit_leave(a);
	assert_int_equal(admit_drain(a, 0.05), 0);
	close(sv[0]);
	close(sv[1]);
	admit_free(a);
}

static void *leave_later(void *arg)
{
	nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
	admit_leave(arg);
	return NULL;
}

/* Drain sees the last run leave while it waits. */
static void admit_drain_wakes_on_leave(void **state)
{
	struct admit *a = admit_new(1, 0);
	pthread_t t;
	double waited;

	(void)state;
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	admit_stop(a);
	assert_int_equal(pthread_create(&t, NULL, leave_later, a), 0);
	assert_int_equal(admit_drain(a, 30), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	admit_free(a);
}

/* Waits (up to 10 s) until w has been answered; false if it never was. */
static bool until_answered(struct waiter *w)
{
	for (int i = 0; i < 10000; i++) {
		if (__atomic_load_n(&w->rc, __ATOMIC_SEQ_CST) != (enum admit_rc) - 1)
			return true;
		nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
	}
	return false;
}

/* A freed slot goes to the request that has waited longest, every time. */
static void admit_serves_in_arrival_order(void **state)
{
	struct admit *a = admit_new(1, 8);
	struct waiter w[4];
	double waited;

	(void)state;
	assert_int_equal(admit_enter(a, -1, &waited), ADMIT_OK);
	for (unsigned i = 0; i < 4; i++) {
		waiter_start(&w[i], a, -1);
		until_queued(a, i + 1);
	}
	for (unsigned i = 0; i < 4; i++) {
		admit_leave(a);
		if (!until_answered(&w[i]))
			fail_msg("the slot did not go to request %u, the first in line", i);
		assert_int_equal(waiter_join(&w[i]), ADMIT_OK);
		for (unsigned j = i + 1; j < 4; j++)
			assert_true(__atomic_load_n(&w[j].rc, __ATOMIC_SEQ_CST) ==
			            (enum admit_rc) - 1);
	}
	admit_leave(a);
	admit_free(a);
}

int unit_admit(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(admit_slots_queue_and_refusal),
	    cmocka_unit_test(admit_no_queue),
	    cmocka_unit_test(admit_queued_client_hangs_up),
	    cmocka_unit_test(admit_stop_refuses_new_and_queued),
	    cmocka_unit_test(admit_drain_wakes_on_leave),
	    cmocka_unit_test(admit_serves_in_arrival_order),
	};
	return cmocka_run_group_tests_name("admit", tests, NULL, NULL);
}
