#include "admit.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"

#define HANGUP_CHECK_MS 100 /* how often a queued request looks at its client */

/* A queued request, on its waiting thread's stack. */
struct waiter {
	struct waiter *next;
};

struct admit {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned slots, queue;
	unsigned running, queued;
	bool stopping;
	/* Queued requests in arrival order: a free slot goes to the first, so under load no
	 * request waits behind ones that came later (p99 follows the queue, not luck). */
	struct waiter *head, **tail;
};

struct admit *admit_new(unsigned slots, unsigned queue)
{
	struct admit *a = calloc(1, sizeof(*a));

	if (!a)
		return NULL;
	a->slots = slots;
	a->queue = queue;
	a->tail = &a->head;
	pthread_mutex_init(&a->mu, NULL);
	clock_cond_init(&a->cv);
	return a;
}

void admit_free(struct admit *a)
{
	if (!a)
		return;
	pthread_cond_destroy(&a->cv);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

static bool client_gone(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLRDHUP};

	return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void queue_remove(struct admit *a, struct waiter *w)
{
	struct waiter **p = &a->head;

	while (*p != w)
		p = &(*p)->next;
	*p = w->next;
	if (a->tail == &w->next)
		a->tail = p;
	a->queued--;
	/* The next in line may now take a free slot. */
	pthread_cond_broadcast(&a->cv);
}

enum admit_rc admit_enter(struct admit *a, int client_fd, double *waited)
{
	double t0 = clock_now();
	enum admit_rc rc = ADMIT_OK;
	struct waiter me = {NULL};

	pthread_mutex_lock(&a->mu);
	if (!a->stopping && a->running < a->slots && !a->head)
		goto admitted;
	if (a->stopping || a->queued >= a->queue) {
		rc = a->stopping ? ADMIT_STOPPING : ADMIT_BUSY;
		goto out;
	}
	/* me is linked only until queue_remove below, before this frame ends. */
	*a->tail = &me;
	// cppcheck-suppress autoVariables
	a->tail = &me.next;
	a->queued++;
	while (!a->stopping && (a->running >= a->slots || a->head != &me)) {
		struct timespec ts = clock_after(HANGUP_CHECK_MS / 1e3);
		pthread_cond_timedwait(&a->cv, &a->mu, &ts);
		if (client_gone(client_fd)) {
			rc = ADMIT_GONE;
			break;
		}
	}
	queue_remove(a, &me);
	if (rc == ADMIT_OK && a->stopping)
		rc = ADMIT_STOPPING;
	if (rc != ADMIT_OK)
		goto out;
admitted:
	a->running++;
out:
	pthread_mutex_unlock(&a->mu);
	*waited = clock_now() - t0;
	return rc;
}

void admit_leave(struct admit *a)
{
	pthread_mutex_lock(&a->mu);
	a->running--;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

void admit_stop(struct admit *a)
{
	pthread_mutex_lock(&a->mu);
	a->stopping = true;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

unsigned admit_drain(struct admit *a, double seconds)
{
	double end = clock_now() + seconds;
	unsigned left;

	pthread_mutex_lock(&a->mu);
	/* admit_leave wakes this wait; the deadline ends it. */
	while (a->running && clock_now() < end) {
		struct timespec ts = clock_after(end - clock_now());
		pthread_cond_timedwait(&a->cv, &a->mu, &ts);
	}
	left = a->running;
	pthread_mutex_unlock(&a->mu);
	return left;
}

void admit_counts(struct admit *a, unsigned *running, unsigned *queued)
{
	pthread_mutex_lock(&a->mu);
	*running = a->running;
	*queued = a->queued;
	pthread_mutex_unlock(&a->mu);
}
