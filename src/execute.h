/* execute: one /execute job from admission to its answer, without HTTP: waits for a slot, takes
 * a ready jail from the pool or starts one, runs the script in it and turns the outcome into the
 * response. The self-check at start-up runs through it too. */
#ifndef PYEXEC_EXECUTE_H
#define PYEXEC_EXECUTE_H

#include <stdatomic.h>

#include "admit.h"
#include "api.h"
#include "config.h"

struct jail;
struct pool;
struct metrics;

/* What runs need; owned by the server (server.h). */
struct execute {
	const struct config *cfg;
	const struct api_limits *lim;
	struct jail *jail;
	struct pool *pool; /* NULL: every run starts a jail of its own */
	struct metrics *metrics;
	int stop_fd; /* -1, or readable once in-flight runs must stop */
	const atomic_bool *stopping;
};

/* Runs one job; fills r. Returns the run's execution time in ms, or -1. client_fd (-1: none)
 * cancels the run when its client hangs up. */
long execute_job(const struct execute *x, const struct job *job, int client_fd, struct response *r,
                 const char *rid);
/* Waits for a slot in a (watching client_fd for a hang-up), then runs the job as execute_job
 * does (*ms its execution time, or -1). r is filled only when the answer is ADMIT_OK. */
enum admit_rc execute_admitted(const struct execute *x, struct admit *a, const struct job *job,
                               int client_fd, struct response *r, long *ms, const char *rid);

#endif
