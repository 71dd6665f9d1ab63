#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errcodes.h"

static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                0.5,   1,      2.5,   5,    10,    30,   60};
#define NB (sizeof(bounds) / sizeof(bounds[0]))

/* Every outcome an /execute request can have; anything else counts as "other". */
#define OUTCOME(name, source) #name,
static const char *const outcomes[] = {
    "ok",
    ERRCODES_EXECUTE(OUTCOME) "client_gone",
    "other",
};
#define NO (sizeof(outcomes) / sizeof(outcomes[0]))

static const char *const jail_events[] = {"died", "expired", "failed", "slow"};
#define NE (sizeof(jail_events) / sizeof(jail_events[0]))

struct hist {
	unsigned long long counts[NB + 1]; /* last: +Inf */
	double sum;
	unsigned long long n;
};

struct metrics {
	pthread_mutex_t mu;
	unsigned long long runs[NO];
	unsigned long long events[NE];
	struct hist run, queue, start;
};

struct metrics *metrics_new(void)
{
	struct metrics *m = calloc(1, sizeof(*m));

	if (m)
		pthread_mutex_init(&m->mu, NULL);
	return m;
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	pthread_mutex_destroy(&m->mu);
	free(m);
}

static void hist_add(struct hist *h, double v)
{
	size_t i = 0;

	while (i < NB && v > bounds[i])
		i++;
	h->counts[i]++;
	h->sum += v;
	h->n++;
}

static size_t index_of(const char *const *names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (name && strcmp(names[i], name) == 0)
			return i;
	return n - 1;
}

void metrics_run(struct metrics *m, const char *outcome, double run_seconds)
{
	pthread_mutex_lock(&m->mu);
	m->runs[index_of(outcomes, NO, outcome)]++;
	if (run_seconds >= 0)
		hist_add(&m->run, run_seconds);
	pthread_mutex_unlock(&m->mu);
}

void metrics_queue_wait(struct metrics *m, double seconds)
{
	pthread_mutex_lock(&m->mu);
	hist_add(&m->queue, seconds);
	pthread_mutex_unlock(&m->mu);
}

void metrics_jail_start(struct metrics *m, double seconds)
{
	pthread_mutex_lock(&m->mu);
	hist_add(&m->start, seconds);
	pthread_mutex_unlock(&m->mu);
}

void metrics_jail_event(struct metrics *m, const char *event)
{
	pthread_mutex_lock(&m->mu);
	for (size_t i = 0; i < NE; i++)
		if (strcmp(jail_events[i], event) == 0)
			m->events[i]++;
	pthread_mutex_unlock(&m->mu);
}

static void hist_print(FILE *f, const char *name, const char *help, const struct hist *h)
{
	unsigned long long cum = 0;

	fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (size_t i = 0; i < NB; i++) {
		cum += h->counts[i];
		fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], cum);
	}
	fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, h->n, name,
	        h->sum, name, h->n);
}

static void gauge(FILE *f, const char *name, const char *help, unsigned v)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %u\n", name, help, name, name, v);
}

char *metrics_render(struct metrics *m, const struct metrics_gauges *g)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return NULL;
	pthread_mutex_lock(&m->mu);
	fprintf(f, "# HELP pyexec_requests_total /execute requests by outcome.\n"
	           "# TYPE pyexec_requests_total counter\n");
	for (size_t i = 0; i < NO; i++)
		fprintf(f, "pyexec_requests_total{outcome=\"%s\"} %llu\n", outcomes[i], m->runs[i]);
	fprintf(f, "# HELP pyexec_pool_discarded_total Ready jails ended without a run, by "
	           "reason.\n# TYPE pyexec_pool_discarded_total counter\n");
	for (size_t i = 0; i < NE; i++)
		fprintf(f, "pyexec_pool_discarded_total{reason=\"%s\"} %llu\n", jail_events[i],
		        m->events[i]);
	hist_print(f, "pyexec_run_seconds", "Run time from hand-over to end.", &m->run);
	hist_print(f, "pyexec_queue_wait_seconds", "Time waiting for an execution slot.",
	           &m->queue);
	hist_print(f, "pyexec_jail_start_seconds", "Time from starting a jail to its ready line.",
	           &m->start);
	pthread_mutex_unlock(&m->mu);
	gauge(f, "pyexec_queue_depth", "Requests waiting for an execution slot.", g->queued);
	gauge(f, "pyexec_running", "Runs in progress.", g->running);
	gauge(f, "pyexec_slots", "Execution slots (PYEXEC_CONCURRENCY).", g->slots);
	gauge(f, "pyexec_pool_ready", "Ready jails waiting for a script.", g->ready);
	gauge(f, "pyexec_pool_starting", "Jails the pool is starting now.", g->starting);
	gauge(f, "pyexec_pool_size", "Ready jails the pool keeps (PYEXEC_POOL).", g->pool_size);
	gauge(f, "pyexec_run_uids_cleaning",
	      "Restricted tier: run uids whose processes and files are being removed.",
	      g->uids_cleaning);
	gauge(f, "pyexec_run_uids_quarantined",
	      "Restricted tier: run uids never used again because their clean-up failed.",
	      g->uids_quarantined);
	gauge(f, "pyexec_zygote_up",
	      "Tier full: 1 while the zygote that runs are forked from is up.", g->zygote_up);
	fprintf(f,
	        "# HELP pyexec_zygote_restarts_total Times the zygote died and was started "
	        "again.\n# TYPE pyexec_zygote_restarts_total counter\n"
	        "pyexec_zygote_restarts_total %lu\n",
	        g->zygote_restarts);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}
