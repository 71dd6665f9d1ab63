/* metrics: counters and histograms for GET /metrics, in Prometheus text format. Thread-safe. */
#ifndef PYEXEC_METRICS_H
#define PYEXEC_METRICS_H

struct metrics;

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* A finished /execute request: its outcome (ok or an error code) and run seconds (< 0: none). */
void metrics_run(struct metrics *m, const char *outcome, double run_seconds);
void metrics_queue_wait(struct metrics *m, double seconds);
void metrics_jail_start(struct metrics *m, double seconds);
/* A pool jail left the pool without running: died, expired, failed, slow. */
void metrics_jail_event(struct metrics *m, const char *event);

struct metrics_gauges {
	unsigned queued, running, ready, starting, pool_size, slots;
	unsigned uids_cleaning, uids_quarantined; /* restricted tier's run uids */
	unsigned zygote_up;                       /* tier full's zygote: 1 when it is up */
	unsigned long zygote_restarts;            /* and how often it was started again */
};

/* The exposition text, malloc'd (caller frees), or NULL when out of memory. */
char *metrics_render(struct metrics *m, const struct metrics_gauges *g);

#endif
