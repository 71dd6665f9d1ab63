/* server: the composition root. Builds what serving needs in order (metrics, admission,
 * cgroups, the supervisor, the tier and its jail, the pool) and frees it in reverse, ending the
 * pool's jails and every process the supervisor still holds before the jail they use. */
#ifndef PYEXEC_SERVER_H
#define PYEXEC_SERVER_H

#include <stdatomic.h>

#include "admit.h"
#include "api.h"
#include "cgroup.h"
#include "config.h"
#include "execute.h"
#include "supervisor.h"
#include "tier.h"

struct server {
	const struct config *cfg;
	struct api_limits lim;
	struct metrics *metrics;
	struct admit *admit;
	struct cgroup cg;
	struct supervisor *sup; /* every jail's and probe's processes */
	struct tier tier;
	struct pool *pool;
	struct execute exec; /* what runs need, pointing into the above */
	int stop_fd;         /* eventfd, readable once in-flight runs must stop */
	atomic_bool stopping;
};

/* -1 with e filled when something the server needs cannot be had; a host where no accepted
 * tier works is not an error (s->tier.jail is NULL and s->tier.problem says why). Call
 * server_free either way. */
int server_init(struct server *s, const struct config *c, struct err *e);
/* Tells in-flight runs to stop. */
void server_stop_runs(struct server *s);
void server_free(struct server *s);

#endif
