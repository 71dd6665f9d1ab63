/* pool: jails started ahead of time, each with the runner up and the preload modules imported,
 * waiting for exactly one script. A background thread keeps `size` of them ready, replaces any
 * that die or grow too old, and never hands out one that is not ready. */
#ifndef PYEXEC_POOL_H
#define PYEXEC_POOL_H

#include "err.h"
#include "sandbox.h"

/* The most ready jails a pool keeps (PYEXEC_POOL). */
#define POOL_MAX 64

struct pool;
struct metrics;
struct jail;

/* Starts the refill thread. size 0 (or no jail) gives a pool that is always empty. The jail
 * must outlive the pool. Returns NULL with e filled. */
struct pool *pool_new(struct jail *j, unsigned size, double max_age, double start_timeout,
                      struct metrics *m, struct err *e);
/* A ready sandbox, now owned by the caller, or NULL when none is ready. */
struct sandbox *pool_take(struct pool *p);
/* Ready sandboxes right now. */
unsigned pool_ready(struct pool *p);
/* Stops the thread and destroys every sandbox it holds. */
void pool_free(struct pool *p);

#endif
