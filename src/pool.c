#include "pool.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "clock.h"
#include "jail.h"
#include "log.h"
#include "metrics.h"

#define BACKOFF_MAX 30.0

/* A request in pool_take_wait. Waiters are served oldest first: a sandbox that becomes ready
 * goes to the oldest, so that later requests do not pass one over again and again. */
struct pool_waiter {
	struct pool_waiter *next;
	struct sandbox *sb; /* handed over by pool_event */
};

struct pool {
	pthread_mutex_t mu;
	pthread_t thread;
	int wake; /* eventfd: a sandbox was taken or started, or the pool is stopping */
	bool stopping;
	struct jail *jail;
	unsigned size;
	double max_age, start_timeout;
	bool renice;
	struct sandbox *sbs[POOL_MAX]; /* NULL: empty slot */
	bool ready[POOL_MAX];
	bool starting[POOL_MAX]; /* a filler is starting this slot's sandbox */
	/* Fillers start sandboxes side by side: a zygote's fork mostly waits (for the fork's
	 * handshake and the kernel's cgroup move), so one at a time could not keep up with one
	 * client calling in a loop. */
	pthread_cond_t need; /* an empty slot, or stopping */
	/* A request that finds none ready has one started for it, by a thread of its own, into a
	 * slot from `size` on, and takes whichever sandbox is ready first: the pool's are further
	 * along than its own, which then waits here for the next request. */
	pthread_cond_t ready_cv; /* one became ready or failed, an extra start ended, or stopping */
	unsigned extra_starting; /* extra starts under way (each a detached thread) */
	unsigned long failures;  /* extra starts that failed, for waiters to notice (the pool's
	                          * own may fail slowly at nice 19 behind a busy run) */
	unsigned long busy_starts;   /* of those, for want of a run uid (restricted tier) */
	struct pool_waiter *waiters; /* oldest first */
	pthread_t fillers[POOL_FILLERS_MAX];
	unsigned nfillers;
	unsigned n_ready;
	double backoff, retry_at; /* after failed starts, so a broken sandbox is not a spin */
	struct metrics *m;
};

static void pool_wake(struct pool *p)
{
	uint64_t one = 1;

	(void)!write(p->wake, &one, sizeof(one));
}

/* An empty slot no filler is starting, or -1 (lock held). */
static int pool_empty_slot(struct pool *p)
{
	for (unsigned i = 0; i < p->size; i++)
		if (!p->sbs[i] && !p->starting[i])
			return (int)i;
	return -1;
}

/* Starts sandboxes into empty slots, outside the lock, until the pool stops. */
static void *pool_filler(void *arg)
{
	struct pool *p = arg;

	pthread_mutex_lock(&p->mu);
	while (!p->stopping) {
		int i = pool_empty_slot(p);
		double now = clock_now();
		struct sandbox *sb;
		struct err e;

		if (i < 0 || now < p->retry_at) {
			struct timespec until = clock_after(i < 0 ? 1 : p->retry_at - now);
			pthread_cond_timedwait(&p->need, &p->mu, &until);
			continue;
		}
		p->starting[i] = true;
		pthread_mutex_unlock(&p->mu);
		sb = jail_start(p->jail, true, &e);
		pthread_mutex_lock(&p->mu);
		p->starting[i] = false;
		if (!sb) {
			log_error("pool: %s", e.message);
			p->retry_at = clock_now() + 1;
			continue;
		}
		p->sbs[i] = sb;
		p->ready[i] = false;
		pool_wake(p); /* the pool thread watches it from now on */
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* why: "failed" (it ended before it was ready) or "slow" (PYEXEC_START_TIMEOUT passed). Both
 * back off, so that a sandbox that cannot start in time is not a spin either. */
static void pool_failed_start(struct pool *p, const char *why, struct run_result *r)
{
	bool slow = strcmp(why, "slow") == 0;

	p->backoff = p->backoff ? fmin(p->backoff * 2, BACKOFF_MAX) : 0.5;
	p->retry_at = clock_now() + p->backoff;
	metrics_jail_event(p->m, why);
	log_json(slow ? "WARNING" : "ERROR",
	         json_pack("{s:i,s:s,s:f,s:f}", "exitCode", r->exit_code, "nsjail", r->diag,
	                   "retryInSeconds", p->backoff, "startTimeout", p->start_timeout),
	         slow ? "pool: a ready jail did not start within the start timeout; it was killed"
	              : "pool: a ready jail failed to start");
}

/* Detaches slot i (lock held) and destroys it without the lock. */
static void pool_drop(struct pool *p, unsigned i, const char *why)
{
	struct sandbox *sb = p->sbs[i];
	bool was_ready = p->ready[i];
	struct run_result r;

	p->sbs[i] = NULL;
	if (was_ready)
		p->n_ready--;
	pthread_mutex_unlock(&p->mu);
	sandbox_destroy(sb, &r);
	pthread_mutex_lock(&p->mu);
	if (!was_ready && i >= p->size) {
		p->failures++;
		pthread_cond_broadcast(&p->ready_cv);
	}
	if (!was_ready && strcmp(why, "expired") != 0)
		pool_failed_start(p, why, &r);
	else
		metrics_jail_event(p->m, why);
}

static void pool_event(struct pool *p, unsigned i)
{
	int rc = sandbox_check(p->sbs[i]);

	if (rc > 0 && !p->ready[i]) {
		p->backoff = 0;
		metrics_jail_start(p->m, sandbox_start_seconds(p->sbs[i]));
		if (p->waiters) {
			struct pool_waiter *w = p->waiters;
			p->waiters = w->next;
			w->sb = p->sbs[i];
			p->sbs[i] = NULL;
			pthread_cond_signal(&p->need);
			pthread_cond_broadcast(&p->ready_cv);
			return;
		}
		p->ready[i] = true;
		p->n_ready++;
		/* One started for a request that took another waits like the pool's own. */
		if (i >= p->size && p->renice)
			sandbox_renice(p->sbs[i], 19);
	} else if (rc < 0) {
		pool_drop(p, i, p->ready[i] ? "died" : "failed");
	}
}

/* Drops jails that took too long to start or lived too long; returns seconds until the next
 * such deadline. */
static double pool_expire(struct pool *p)
{
	double next = 1.0;

	for (unsigned i = 0; i < POOL_MAX; i++) {
		if (!p->sbs[i])
			continue;
		double limit = p->ready[i] ? p->max_age : p->start_timeout;
		double left = sandbox_started_at(p->sbs[i]) + limit - clock_now();
		if (left <= 0)
			pool_drop(p, i, p->ready[i] ? "expired" : "slow");
		else
			next = fmin(next, left);
	}
	return next;
}

static void *pool_main(void *arg)
{
	struct pool *p = arg;

	pthread_mutex_lock(&p->mu);
	while (!p->stopping) {
		struct pollfd pfd[POOL_MAX + 1] = {{.fd = p->wake, .events = POLLIN}};
		struct sandbox *seen[POOL_MAX] = {0};
		double wait;

		if (pool_empty_slot(p) >= 0)
			pthread_cond_broadcast(&p->need);
		wait = pool_expire(p);
		if (p->retry_at > clock_now())
			wait = fmin(wait, p->retry_at - clock_now());
		for (unsigned i = 0; i < POOL_MAX; i++) {
			seen[i] = p->sbs[i];
			pfd[i + 1] = (struct pollfd){.fd = seen[i] ? sandbox_fd(seen[i]) : -1,
			                             .events = POLLIN};
		}
		pthread_mutex_unlock(&p->mu);
		poll(pfd, POOL_MAX + 1, (int)ceil(wait * 1000));
		pthread_mutex_lock(&p->mu);
		if (pfd[0].revents) {
			uint64_t n;
			(void)!read(p->wake, &n, sizeof(n));
		}
		/* A slot taken meanwhile belongs to a request now: leave it alone. */
		for (unsigned i = 0; i < POOL_MAX; i++)
			if (pfd[i + 1].revents && p->sbs[i] && p->sbs[i] == seen[i])
				pool_event(p, i);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Stops and joins the threads started so far (lock not held). */
static void pool_stop_threads(struct pool *p, bool main_started)
{
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	pthread_cond_broadcast(&p->need);
	pthread_cond_broadcast(&p->ready_cv);
	pool_wake(p);
	pthread_mutex_unlock(&p->mu);
	if (main_started)
		pthread_join(p->thread, NULL);
	for (unsigned i = 0; i < p->nfillers; i++)
		pthread_join(p->fillers[i], NULL);
	pthread_mutex_lock(&p->mu);
	while (p->extra_starting)
		pthread_cond_wait(&p->ready_cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

static int pool_start_threads(struct pool *p, unsigned fillers)
{
	if (pthread_create(&p->thread, NULL, pool_main, p) != 0)
		return -1;
	for (unsigned i = 0; i < fillers && i < p->size; i++) {
		if (pthread_create(&p->fillers[i], NULL, pool_filler, p) != 0) {
			pool_stop_threads(p, true);
			return -1;
		}
		p->nfillers++;
	}
	return 0;
}

struct pool *pool_new(struct jail *j, const struct pool_opts *o, struct metrics *m, struct err *e)
{
	struct pool *p;

	if (o->size > POOL_MAX) {
		err_set(e, 0, "config", "PYEXEC_POOL must be at most %d", POOL_MAX);
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		err_set(e, 0, "internal", "cannot start the pool: out of memory");
		return NULL;
	}
	p->jail = j;
	p->size = j ? o->size : 0;
	p->max_age = o->max_age;
	p->start_timeout = o->start_timeout;
	p->renice = o->renice;
	p->m = m;
	pthread_mutex_init(&p->mu, NULL);
	p->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (clock_cond_init(&p->need) != 0 || clock_cond_init(&p->ready_cv) != 0 || p->wake < 0 ||
	    pool_start_threads(p, o->fillers ? o->fillers : 1) < 0) {
		err_set(e, 0, "config", "cannot start the pool: %s", strerror(errno));
		if (p->wake >= 0)
			close(p->wake);
		pthread_cond_destroy(&p->need);
		pthread_cond_destroy(&p->ready_cv);
		pthread_mutex_destroy(&p->mu);
		free(p);
		return NULL;
	}
	return p;
}

/* The oldest ready slot (it is the nearest to being retired unused), or -1; lock held. */
static int pool_oldest_ready(struct pool *p)
{
	int best = -1;

	for (unsigned i = 0; i < POOL_MAX; i++)
		if (p->sbs[i] && p->ready[i] &&
		    (best < 0 || sandbox_started_at(p->sbs[i]) < sandbox_started_at(p->sbs[best])))
			best = (int)i;
	return best;
}

/* Detaches the oldest ready sandbox, or returns NULL (lock held). */
static struct sandbox *pool_detach_ready(struct pool *p)
{
	struct sandbox *sb;
	int best = pool_oldest_ready(p);

	if (best < 0)
		return NULL;
	sb = p->sbs[best];
	p->sbs[best] = NULL;
	p->n_ready--;
	pthread_cond_signal(&p->need);
	return sb;
}

/* One that died a moment ago is not handed a script: true once it is ended. */
static bool pool_discard_dead(struct pool *p, struct sandbox *sb)
{
	struct run_result r;

	if (sandbox_alive(sb))
		return false;
	sandbox_destroy(sb, &r);
	metrics_jail_event(p->m, "died");
	return true;
}

struct sandbox *pool_take(struct pool *p)
{
	struct sandbox *sb;

	pthread_mutex_lock(&p->mu);
	sb = pool_detach_ready(p);
	pthread_mutex_unlock(&p->mu);
	if (sb && pool_discard_dead(p, sb))
		return pool_take(p);
	return sb;
}

/* Puts sb into a free slot from `size` on (lock held; fillers start only the slots below
 * it); -1 when there is none. */
static int pool_put_extra(struct pool *p, struct sandbox *sb)
{
	for (unsigned i = p->size; i < POOL_MAX; i++) {
		if (p->sbs[i])
			continue;
		p->sbs[i] = sb;
		p->ready[i] = false;
		pool_wake(p); /* the pool thread watches it from now on */
		return 0;
	}
	return -1;
}

/* A start for a waiting request, at the normal priority. */
static void *pool_extra_start(void *arg)
{
	struct pool *p = arg;
	struct err e;
	struct sandbox *sb = jail_start(p->jail, false, &e);
	struct run_result r;

	pthread_mutex_lock(&p->mu);
	if (!sb) {
		log_error("pool: a start for a waiting request failed: %s", e.message);
		p->failures++;
		p->busy_starts += e.status == 503;
	} else if (!p->stopping && pool_put_extra(p, sb) == 0) {
		sb = NULL;
	}
	pthread_mutex_unlock(&p->mu);
	if (sb) /* the pool is stopping or full */
		sandbox_destroy(sb, &r);
	pthread_mutex_lock(&p->mu);
	p->extra_starting--;
	pthread_cond_broadcast(&p->ready_cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Starts one sandbox for a waiting request (lock held); false if no thread could start. */
static bool pool_start_extra(struct pool *p)
{
	pthread_attr_t attr;
	pthread_t t;
	bool ok;

	if (pthread_attr_init(&attr) != 0)
		return false;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	ok = pthread_create(&t, &attr, pool_extra_start, p) == 0;
	pthread_attr_destroy(&attr);
	p->extra_starting += ok;
	return ok;
}

/* Extra starts that may still become ready: under way, or in the pool and not ready yet (lock
 * held). */
static unsigned pool_extras_pending(struct pool *p)
{
	unsigned n = p->extra_starting;

	for (unsigned i = p->size; i < POOL_MAX; i++)
		n += p->sbs[i] && !p->ready[i];
	return n;
}

/* Queues w last (lock held). */
static void pool_queue(struct pool *p, struct pool_waiter *w)
{
	struct pool_waiter **at = &p->waiters;

	while (*at)
		at = &(*at)->next;
	*at = w;
}

/* Takes w out of the queue if it is still there (lock held). */
static void pool_unqueue(struct pool *p, struct pool_waiter *w)
{
	for (struct pool_waiter **at = &p->waiters; *at; at = &(*at)->next)
		if (*at == w) {
			*at = w->next;
			return;
		}
}

/* Waits, queued, for a sandbox handed over by pool_event (lock held). */
static struct sandbox *pool_wait_queued(struct pool *p, const struct timespec *until,
                                        unsigned long failures)
{
	struct pool_waiter me = {0};

	pool_queue(p, &me);
	/* A failed start ends the wait once no other start for a waiting request is left: one
	 * that failed for another request must not end this one's wait too. */
	while (!p->stopping && !me.sb && (p->failures == failures || pool_extras_pending(p)))
		if (pthread_cond_timedwait(&p->ready_cv, &p->mu, until) == ETIMEDOUT)
			break;
	if (!me.sb)
		pool_unqueue(p, &me);
	return me.sb;
}

struct sandbox *pool_take_wait(struct pool *p, double seconds, bool *busy)
{
	struct timespec until = clock_after(seconds);
	struct sandbox *sb = NULL;
	unsigned long failures, busy_starts;

	*busy = false;
	pthread_mutex_lock(&p->mu);
	failures = p->failures;
	busy_starts = p->busy_starts;
	if (!p->stopping && pool_start_extra(p)) {
		if (!(sb = pool_detach_ready(p)))
			sb = pool_wait_queued(p, &until, failures);
		*busy = !sb && p->busy_starts != busy_starts;
	}
	pthread_mutex_unlock(&p->mu);
	if (sb && pool_discard_dead(p, sb))
		return pool_take_wait(p, seconds, busy);
	return sb;
}

unsigned pool_ready(struct pool *p)
{
	unsigned n;

	pthread_mutex_lock(&p->mu);
	n = p->n_ready;
	pthread_mutex_unlock(&p->mu);
	return n;
}

unsigned pool_starting(struct pool *p)
{
	unsigned n = 0;

	pthread_mutex_lock(&p->mu);
	n = p->extra_starting;
	for (unsigned i = 0; i < POOL_MAX; i++)
		n += p->starting[i] || (p->sbs[i] && !p->ready[i]);
	pthread_mutex_unlock(&p->mu);
	return n;
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	pool_stop_threads(p, true);
	for (unsigned i = 0; i < POOL_MAX; i++) {
		struct run_result r;
		if (!p->sbs[i])
			continue;
		sandbox_destroy(p->sbs[i], &r);
	}
	close(p->wake);
	pthread_cond_destroy(&p->need);
	pthread_cond_destroy(&p->ready_cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}
