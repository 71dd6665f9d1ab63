/* pool: jails started ahead of time, each with the runner up and the preload modules imported,
 * waiting for exactly one script. A background thread keeps `size` of them ready, replaces any
 * that die or grow too old, and never hands out one that is not ready. */
#ifndef PYEXEC_POOL_H
#define PYEXEC_POOL_H

#include "err.h"
#include "sandbox.h"

/* The most ready jails a pool keeps (PYEXEC_POOL). */
#define POOL_MAX 64
/* The most sandboxes it starts side by side. */
#define POOL_FILLERS_MAX 8

struct pool;
struct metrics;
struct jail;

struct pool_opts {
	unsigned size;        /* ready sandboxes to keep; 0 gives a pool that is always empty */
	unsigned fillers;     /* started side by side (at most POOL_FILLERS_MAX, at least one) */
	double max_age;       /* a ready one older than this is replaced */
	double start_timeout; /* one not ready by then is replaced */
	bool renice;          /* ready ones wait at nice 19 (jail_renices) */
};

/* Starts the pool's thread and its fillers. No jail gives a pool that is always empty. The jail
 * must outlive the pool. Returns NULL with e filled. */
struct pool *pool_new(struct jail *j, const struct pool_opts *o, struct metrics *m, struct err *e);
/* A ready sandbox, now owned by the caller, or NULL when none is ready. */
struct sandbox *pool_take(struct pool *p);
/* For a request that found none ready (pool_take): starts one for it, at the normal priority,
 * and returns the first sandbox to be ready, owned by the caller; the other stays in the pool.
 * NULL when a start fails meanwhile (busy: for want of a run uid), or after `seconds`. */
struct sandbox *pool_take_wait(struct pool *p, double seconds, bool *busy);
/* Ready sandboxes right now. */
unsigned pool_ready(struct pool *p);
/* Sandboxes being started now (not yet ready). */
unsigned pool_starting(struct pool *p);
/* Stops the thread and destroys every sandbox it holds. */
void pool_free(struct pool *p);

#endif
