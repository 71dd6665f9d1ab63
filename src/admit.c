#include "admit.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "run.h"

#define HANGUP_CHECK_MS 100 /* how often a queued request looks at its client */

struct admit {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned slots, queue;
	unsigned running, queued;
	bool stopping;
};

struct admit *admit_new(unsigned slots, unsigned queue)
{
	struct admit *a = calloc(1, sizeof(*a));
	pthread_condattr_t ca;

	if (!a)
		return NULL;
	a->slots = slots;
	a->queue = queue;
	pthread_mutex_init(&a->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->cv, &ca);
	pthread_condattr_destroy(&ca);
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

static void deadline_in_ms(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_nsec += ms * 1000000L;
	ts->tv_sec += ts->tv_nsec / 1000000000L;
	ts->tv_nsec %= 1000000000L;
}

enum admit_rc admit_enter(struct admit *a, int client_fd, double *waited)
{
	double t0 = run_now();
	enum admit_rc rc = ADMIT_OK;

	pthread_mutex_lock(&a->mu);
	if (!a->stopping && a->running < a->slots)
		goto admitted;
	if (a->stopping || a->queued >= a->queue) {
		rc = a->stopping ? ADMIT_STOPPING : ADMIT_BUSY;
		goto out;
	}
	a->queued++;
	while (!a->stopping && a->running >= a->slots) {
		struct timespec ts;
		deadline_in_ms(&ts, HANGUP_CHECK_MS);
		pthread_cond_timedwait(&a->cv, &a->mu, &ts);
		if (client_gone(client_fd)) {
			rc = ADMIT_GONE;
			break;
		}
	}
	a->queued--;
	if (rc == ADMIT_OK && a->stopping)
		rc = ADMIT_STOPPING;
	if (rc != ADMIT_OK)
		goto out;
admitted:
	a->running++;
out:
	pthread_mutex_unlock(&a->mu);
	*waited = run_now() - t0;
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
	double end = run_now() + seconds;
	unsigned left;

	pthread_mutex_lock(&a->mu);
	while (a->running && run_now() < end) {
		struct timespec ts;
		deadline_in_ms(&ts, 50);
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
