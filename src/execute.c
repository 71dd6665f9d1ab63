#include "execute.h"

#include <string.h>

#include "frame.h"
#include "jail.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "sandbox.h"

/* A jail started now for the request. busy is set when none could start for want of a free
 * run uid (restricted tier). */
static struct sandbox *sandbox_cold(const struct execute *x, const char *rid, bool *busy)
{
	struct run_result failed;
	struct err e;
	struct sandbox *sb = jail_start(x->jail, false, &e);

	if (!sb) {
		*busy = e.status == 503;
		log_error("request %s: %s", rid, e.message);
		return NULL;
	}
	if (sandbox_wait_ready(sb, x->cfg->start_timeout) == 0) {
		metrics_jail_start(x->metrics, sandbox_start_seconds(sb));
		return sb;
	}
	sandbox_destroy(sb, &failed);
	log_json("ERROR",
	         json_pack("{s:s,s:i,s:s}", "requestId", rid, "exitCode", failed.exit_code,
	                   "nsjail", failed.diag),
	         "jail did not start");
	return NULL;
}

/* A ready sandbox from the pool, else the first to be ready of the pool's and one started for
 * this request. Without a pool (PYEXEC_POOL=0), one started for it. */
static struct sandbox *sandbox_get(const struct execute *x, const char *rid, bool *busy)
{
	struct sandbox *sb;

	if (!x->pool || !x->cfg->pool)
		return sandbox_cold(x, rid, busy);
	if ((sb = pool_take(x->pool)) != NULL)
		return sb;
	/* The start's own deadlines end it first (the handshake's, then the pool's for READY):
	 * this one is the backstop. */
	sb = pool_take_wait(x->pool, 2 * x->cfg->start_timeout, busy);
	if (!sb)
		log_error("request %s: no jail became ready for it", rid);
	return sb;
}

long execute_job(const struct execute *x, const struct job *job, int client_fd, struct response *r,
                 const char *rid)
{
	const struct config *c = x->cfg;
	struct run_spec spec = {
	    .script = job->input,
	    .script_len = job->input_len,
	    .timeout = job->timeout,
	    .stdout_max = c->stdout_max,
	    .chan_max = c->result_max + FRAME_HEADER_MAX + 1, /* + the header's newline */
	    .files = &x->lim->files,
	    .cancel_fds = {client_fd, x->stop_fd},
	};
	bool busy = false;
	struct sandbox *sb = sandbox_get(x, rid, &busy);
	struct run_result run;

	if (busy) {
		api_error_response(
		    r, 429, "busy",
		    "Every run identity is in use or still being cleaned; retry after "
		    "the time in Retry-After.");
		return -1;
	}
	if (!sb) {
		memset(&run, 0, sizeof(run));
		run.end = RUN_START_FAILED;
	} else {
		sandbox_run(sb, &spec, &run);
		/* The zygote died under it (and with it its ready forks): once more, in a jail
		 * started now (a one-shot jail while the zygote restarts). Never outside one. */
		if (run.end == RUN_LOST && (sb = sandbox_cold(x, rid, &busy)) != NULL) {
			log_warn("request %s: its zygote died during the run; running it again",
			         rid);
			run_result_free(&run);
			sandbox_run(sb, &spec, &run);
		}
	}
	if (api_outcome_response(&run, job, x->lim, r) < 0)
		api_error_response(r, 500, "internal", "The server is out of memory; try again.");
	run_result_free(&run);
	if (run.end == RUN_CANCELLED && !atomic_load(x->stopping))
		r->code = "client_gone";
	return run.ready ? run.exec_ms : -1;
}

enum admit_rc execute_admitted(const struct execute *x, struct admit *a, const struct job *job,
                               int client_fd, struct response *r, long *ms, const char *rid)
{
	double waited;
	enum admit_rc rc = admit_enter(a, client_fd, &waited);

	metrics_queue_wait(x->metrics, waited);
	*ms = -1;
	if (rc == ADMIT_OK) {
		*ms = execute_job(x, job, client_fd, r, rid);
		admit_leave(a);
	}
	return rc;
}
