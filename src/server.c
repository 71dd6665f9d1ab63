#include "server.h"

#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "pool.h"

static void limits(struct server *s, const struct config *c)
{
	s->lim = (struct api_limits){
	    c->timeout,
	    c->max_timeout,
	    c->result_max,
	    c->memory_mb,
	    {c->input_files, c->input_bytes, c->output_files, c->output_bytes, c->path_max,
	     c->path_depth},
	};
}

/* A zygote's forks start side by side: each mostly waits on the kernel (the fork's handshake, the
 * cgroup move). One-shot jails start one at a time: each is a whole interpreter's start
 * competing with the runs for the CPU. */
static struct pool_opts pool_opts(struct jail *j, const struct config *c)
{
	bool up;
	unsigned long restarts;
	bool zygote = jail_zygote_stats(j, &up, &restarts);

	return (struct pool_opts){.size = (unsigned)c->pool,
	                          .fillers = zygote ? 4 : 1,
	                          .max_age = c->pool_max_age,
	                          .start_timeout = c->start_timeout,
	                          .renice = jail_renices()};
}

int server_init(struct server *s, const struct config *c, struct err *e)
{
	struct tier_env env = {.cfg = c, .cg = &s->cg, .exec = &s->exec};

	s->cfg = c;
	limits(s, c);
	s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->metrics = metrics_new();
	s->admit = admit_new((unsigned)c->concurrency, (unsigned)c->queue);
	if (s->stop_fd < 0 || !s->metrics || !s->admit)
		return err_set(e, 0, "config", "out of memory or descriptors at start-up");
	s->exec = (struct execute){.cfg = c,
	                           .lim = &s->lim,
	                           .metrics = s->metrics,
	                           .stop_fd = s->stop_fd,
	                           .stopping = &s->stopping};
	cgroup_init(&s->cg);
	if (s->cg.mode == CGROUP_NONE)
		log_warn("no cgroup limits: %s; memory and processes are capped per process by "
		         "rlimits only",
		         s->cg.why);
	else
		log_info("per-run memory and process limits: cgroup %s", cgroup_mode_name(&s->cg));
	s->sup = supervisor_new(e);
	if (!s->sup)
		return -1;
	env.sup = s->sup;
	/* Self-checks first, before any pool, so each check starts a jail itself. */
	tier_choose(&s->tier, &env);
	s->exec.jail = s->tier.jail;
	struct pool_opts po = pool_opts(s->tier.jail, c);
	s->pool = pool_new(s->tier.jail, &po, s->metrics, e);
	if (!s->pool)
		return -1;
	s->exec.pool = s->pool;
	return 0;
}

void server_stop_runs(struct server *s)
{
	uint64_t one = 1;

	(void)!write(s->stop_fd, &one, sizeof(one));
}

void server_free(struct server *s)
{
	/* The pool's jails end first, then the zygote, then whatever the supervisor still ends and
	 * tears down (its teardowns use the jail), and only then the jail. */
	if (s->pool)
		pool_free(s->pool);
	jail_stop(s->tier.jail);
	supervisor_stop(s->sup);
	tier_free(&s->tier);
	admit_free(s->admit);
	metrics_free(s->metrics);
	if (s->stop_fd >= 0)
		close(s->stop_fd);
}
