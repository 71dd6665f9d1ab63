#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include "admit.h"
#include "api.h"
#include "buf.h"
#include "cgroup.h"
#include "frame.h"
#include "isolation.h"
#include "jail.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "run.h"
#include "runuser.h"
#include "static.h"

/* Checks, from inside, what each tier promises: a uid that is not the server's, seccomp on the
 * script, and in the restricted tier no AF_INET socket and seccomp on nsjail itself (the
 * script's grandparent there; in tier full its parent is the namespace's init). */
#define PROBE_SCRIPT                                                                               \
	"import os, socket\n"                                                                      \
	"def status(pid):\n"                                                                       \
	"    try:\n"                                                                               \
	"        with open('/proc/%s/status' % pid) as f:\n"                                       \
	"            return dict(l.split(':', 1) for l in f if ':' in l)\n"                        \
	"    except OSError:\n"                                                                    \
	"        return {}\n"                                                                      \
	"def main():\n"                                                                            \
	"    me = status('self')\n"                                                                \
	"    init = int(me.get('PPid', '0'))\n"                                                    \
	"    jail = int(status(init).get('PPid', '0')) if init > 1 else 0\n"                       \
	"    try:\n"                                                                               \
	"        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"                      \
	"        inet = 0\n"                                                                       \
	"    except OSError as e:\n"                                                               \
	"        inet = e.errno\n"                                                                 \
	"    return {'uid': os.getuid(), 'seccomp': me.get('Seccomp', '').strip(),\n"              \
	"            'inet': inet, 'jailSeccomp': status(jail).get('Seccomp', '').strip()\n"       \
	"            if jail > 1 else ''}\n"
#define STOP_DRAIN_SECONDS 3.0

/* Threads of the event loop: they only parse and answer, never wait for a run. */
#define HTTP_THREADS 2

struct http {
	const struct config *cfg;
	struct MHD_Daemon *daemon;
	struct cgroup cg;
	struct jail *jail; /* NULL when no allowed tier works here; jail_problem says why */
	char jail_problem[2048];
	bool probe_ok;
	struct isolation iso;
	enum jail_tier tier; /* when jail is set */
	json_t *iso_report;  /* what tier_choose learned, shown by /healthz */
	atomic_bool shutting_down;
	atomic_uint answering; /* /execute requests whose answer is not yet sent */
	/* Request bodies held in memory, and how much they may hold together: many half-sent
	 * bodies must not take the server's memory. */
	atomic_size_t body_bytes;
	size_t body_budget;
	atomic_uint workers; /* request threads still running (they hold suspended connections) */
	int stop_fd;         /* eventfd, readable once in-flight runs must stop */
	struct api_limits lim;
	struct pool *pool;
	struct admit *admit;
	struct metrics *metrics;
};

struct request {
	struct buf body;
	struct http *h;
	bool counted;    /* in h->answering */
	bool over;       /* the body is over PYEXEC_BODY_MAX: read and discarded, then a 413 */
	bool shed;       /* the bodies held by all requests reached their budget: then a 429 */
	size_t received; /* body bytes so far */
	size_t held;     /* of them, counted in h->body_bytes */
	char id[65];
	double t0;
	/* /execute waits for a slot and runs on a thread of its own while its connection is
	 * suspended, so the event loop never blocks: an idle or stalled connection costs a
	 * descriptor and a little memory, not a thread. */
	struct MHD_Connection *conn;
	int fd;
	struct job job;
	enum { RQ_NEW, RQ_RUNNING, RQ_DONE } phase;
	enum admit_rc admitted;
	struct response r;
	long ms;
};

/* Extra header for a response, beyond the contract's own. */
struct header {
	const char *name, *value;
};

/* Reuse a well-formed client request id so logs can be joined; otherwise make one. */
static void request_id(struct MHD_Connection *conn, char id[65])
{
	const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
	unsigned char rnd[16];

	if (v && *v && strlen(v) <= 64 &&
	    strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") ==
	        strlen(v)) {
		memcpy(id, v, strlen(v) + 1);
		return;
	}
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		memset(rnd, 0, sizeof(rnd));
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(id + 2 * i, 3, "%02x", rnd[i]);
}

static void log_request(struct MHD_Connection *conn, const char *method, const char *url,
                        const struct request *rq, int status, const char *outcome)
{
	const char *ua = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "User-Agent");
	double s = run_now() - rq->t0;
	char latency[32];

	snprintf(latency, sizeof(latency), "%.6fs", s);
	log_json(status >= 500 ? "ERROR" : "INFO",
	         json_pack("{s:{s:s,s:s,s:i,s:s,s:s?},s:s,s:s,s:f}", "httpRequest", "requestMethod",
	                   method, "requestUrl", url, "status", status, "latency", latency,
	                   "userAgent", ua, "requestId", rq->id, "outcome", outcome, "durationMs",
	                   s * 1e3),
	         "%s %s %d %s", method, url, status, outcome);
}

/* Sends r (taking its body) with the contract's headers. */
static enum MHD_Result respond(struct MHD_Connection *conn, const char *method, const char *url,
                               struct request *rq, struct response *r, struct header extra,
                               long exec_ms)
{
	struct MHD_Response *mr;
	enum MHD_Result ret;

	log_request(conn, method, url, rq, r->status, r->code ? r->code : "ok");
	mr = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
	if (!mr) {
		api_response_free(r);
		return MHD_NO;
	}
	r->body = NULL;
	MHD_add_response_header(mr, "Content-Type", "application/json");
	MHD_add_response_header(mr, "X-Request-Id", rq->id);
	if (extra.name)
		MHD_add_response_header(mr, extra.name, extra.value);
	if (exec_ms >= 0) {
		char ms[32];
		snprintf(ms, sizeof(ms), "%ld", exec_ms);
		MHD_add_response_header(mr, "X-Execution-Time-Ms", ms);
	}
	if (r->stdout_truncated)
		MHD_add_response_header(mr, "X-Stdout-Truncated", "true");
	ret = MHD_queue_response(conn, (unsigned)r->status, mr);
	MHD_destroy_response(mr);
	return ret;
}

static enum MHD_Result respond_error(struct MHD_Connection *conn, const char *method,
                                     const char *url, struct request *rq, int status,
                                     const char *code, const char *message, struct header extra)
{
	struct response r;

	if (api_error_response(&r, status, code, message) < 0)
		return MHD_NO;
	return respond(conn, method, url, rq, &r, extra, -1);
}

static const struct header no_header = {NULL, NULL};

/* A ready jail from the pool, else one started now: never a wait longer than a start. busy
 * is set when none could start for want of a free run uid (restricted tier). */
static struct sandbox *sandbox_cold(struct http *h, const char *rid, bool *busy)
{
	struct run_result failed;
	struct err e;
	struct sandbox *sb = jail_start(h->jail, false, &e);

	if (!sb) {
		*busy = e.status == 503;
		log_error("request %s: %s", rid, e.message);
		return NULL;
	}
	if (sandbox_wait_ready(sb, h->cfg->start_timeout) == 0) {
		metrics_jail_start(h->metrics, sandbox_start_seconds(sb));
		return sb;
	}
	jail_discard(h->jail, sb, &failed);
	log_json("ERROR",
	         json_pack("{s:s,s:i,s:s}", "requestId", rid, "exitCode", failed.exit_code,
	                   "nsjail", failed.diag),
	         "jail did not start");
	return NULL;
}

static struct sandbox *sandbox_get(struct http *h, const char *rid, bool *busy)
{
	struct sandbox *sb = pool_take(h->pool);

	return sb ? sb : sandbox_cold(h, rid, busy);
}

/* Runs one job; fills r. Returns the run's execution time in ms, or -1. */
static long run_job(struct http *h, const struct job *job, int client_fd, struct response *r,
                    const char *rid)
{
	const struct config *c = h->cfg;
	struct run_spec spec = {
	    .script = job->input,
	    .script_len = job->input_len,
	    .timeout = job->timeout,
	    .stdout_max = c->stdout_max,
	    .chan_max = c->result_max + FRAME_HEADER_MAX + 1, /* + the header's newline */
	    .files = &h->lim.files,
	    .cancel_fds = {client_fd, h->stop_fd},
	    .reaped = jail_reaped,
	    .reaped_ctx = h->jail,
	};
	bool busy = false;
	struct sandbox *sb = sandbox_get(h, rid, &busy);
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
		jail_done(h->jail, &run);
		/* The zygote died under it (and with it its ready forks): once more, in a jail
		 * started now (a one-shot jail while the zygote restarts). Never outside one. */
		if (run.end == RUN_LOST && (sb = sandbox_cold(h, rid, &busy)) != NULL) {
			log_warn("request %s: its zygote died during the run; running it again",
			         rid);
			run_result_free(&run);
			sandbox_run(sb, &spec, &run);
			jail_done(h->jail, &run);
		}
	}
	if (api_outcome_response(&run, job, &h->lim, r) < 0)
		api_error_response(r, 500, "internal", "The server is out of memory; try again.");
	run_result_free(&run);
	if (run.end == RUN_CANCELLED && !atomic_load(&h->shutting_down))
		r->code = "client_gone";
	return run.ready ? run.exec_ms : -1;
}

static int client_fd(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

	return ci ? ci->connect_fd : -1;
}

static enum MHD_Result refuse(struct http *h, struct MHD_Connection *conn, const char *url,
                              struct request *rq, enum admit_rc rc)
{
	metrics_run(h->metrics, rc == ADMIT_BUSY ? "busy" : "shutting_down", -1);
	if (rc == ADMIT_BUSY)
		return respond_error(conn, "POST", url, rq, 429, "busy",
		                     "Every execution slot and queue place is taken; retry after "
		                     "the time in Retry-After.",
		                     (struct header){"Retry-After", "1"});
	return respond_error(conn, "POST", url, rq, 503, "shutting_down",
	                     "The server is shutting down; send the request again (another "
	                     "instance will take it).",
	                     (struct header){"Retry-After", "1"});
}

/* Off the event loop: waits for a slot, runs the job, then hands the connection back. */
static void *request_thread(void *arg)
{
	struct request *rq = arg;
	struct http *h = rq->h;
	double waited;

	rq->admitted = admit_enter(h->admit, rq->fd, &waited);
	metrics_queue_wait(h->metrics, waited);
	if (rq->admitted == ADMIT_OK) {
		rq->ms = run_job(h, &rq->job, rq->fd, &rq->r, rq->id);
		admit_leave(h->admit);
	}
	api_job_free(&rq->job);
	rq->phase = RQ_DONE;
	MHD_resume_connection(rq->conn);
	atomic_fetch_sub(&h->workers, 1);
	return NULL;
}

static enum MHD_Result start_request_thread(struct http *h, struct MHD_Connection *conn,
                                            struct request *rq)
{
	pthread_attr_t attr;
	pthread_t t;
	int rc;

	rq->conn = conn;
	rq->fd = client_fd(conn);
	rq->phase = RQ_RUNNING;
	atomic_fetch_add(&h->workers, 1);
	MHD_suspend_connection(conn);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&t, &attr, request_thread, rq);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		atomic_fetch_sub(&h->workers, 1);
		rq->phase = RQ_DONE;
		rq->admitted = ADMIT_BUSY;
		api_job_free(&rq->job);
		MHD_resume_connection(conn);
	}
	return MHD_YES;
}

/* Called again once the request thread resumed the connection. */
static enum MHD_Result finish(struct http *h, struct MHD_Connection *conn, const char *url,
                              struct request *rq)
{
	struct response *r = &rq->r;

	if (rq->admitted != ADMIT_OK) {
		if (rq->admitted == ADMIT_GONE) {
			metrics_run(h->metrics, "client_gone", -1);
			return MHD_NO;
		}
		return refuse(h, conn, url, rq, rq->admitted);
	}
	metrics_run(h->metrics, r->code, rq->ms >= 0 ? (double)rq->ms / 1e3 : -1);
	if (r->code && strcmp(r->code, "client_gone") == 0) {
		log_request(conn, "POST", url, rq, 499, "client_gone");
		return MHD_NO; /* nobody is listening */
	}
	if (!r->body)
		return MHD_NO;
	/* Busy for want of a free run uid (restricted tier): like a full queue. */
	return respond(conn, "POST", url, rq, r,
	               r->status == 429 ? (struct header){"Retry-After", "1"} : no_header, rq->ms);
}

static enum MHD_Result execute(struct http *h, struct MHD_Connection *conn, const char *url,
                               struct request *rq)
{
	struct err e;

	if (rq->phase == RQ_DONE)
		return finish(h, conn, url, rq);
	if (rq->phase == RQ_RUNNING)
		return MHD_YES; /* not resumed yet */
	/* Fail closed: no script runs outside a tier the operator accepted. */
	if (!h->jail)
		return respond_error(conn, "POST", url, rq, 500, "internal", h->jail_problem,
		                     no_header);
	if (api_request_parse(rq->body.data ? rq->body.data : "", rq->body.len, &h->lim, &rq->job,
	                      &e) < 0) {
		metrics_run(h->metrics, e.code, -1);
		return respond_error(conn, "POST", url, rq, e.status, e.code, e.message, no_header);
	}
	return start_request_thread(h, conn, rq);
}

/* Restricted tier: too many quarantined uids (clean-ups that failed) mean too few for runs. */
static bool uids_degraded(const struct http *h)
{
	struct runusers_stats s;

	return jail_users_stats(h->jail, &s) && s.quarantined * 2 > s.count;
}

static bool run_dirs_capped(const struct http *h)
{
	struct runusers_stats s;

	return jail_users_stats(h->jail, &s) && s.tmpfs;
}

static bool healthy(const struct http *h)
{
	return h->jail && h->probe_ok && !atomic_load(&h->shutting_down) &&
	       access(h->cfg->nsjail, X_OK) == 0 && !uids_degraded(h);
}

static enum MHD_Result text_response(struct MHD_Connection *conn, const char *method,
                                     const char *url, struct request *rq, int status, char *body)
{
	struct response r = {.status = status, .code = "ok", .body = body};

	if (!body)
		return MHD_NO;
	r.len = strlen(body);
	return respond(conn, method, url, rq, &r, no_header, -1);
}

static const char *limits_name(const struct http *h)
{
	if (h->jail && h->tier == JAIL_RESTRICTED)
		return run_dirs_capped(h) ? "rlimits and a capped tmpfs per run (restricted tier)"
		                          : "rlimits only (restricted tier)";
	return h->cg.mode == CGROUP_NONE ? "rlimits only (no writable cgroup)"
	       : h->cg.mode == CGROUP_V2 ? "cgroup v2 and rlimits"
	                                 : "cgroup v1 and rlimits";
}

/* Tier full: whether runs are forked from the zygote, whether it is up, its restarts. */
static void zygote_details(struct http *h, json_t *o)
{
	unsigned long restarts = 0;
	bool up = false, on = jail_zygote_stats(h->jail, &up, &restarts);

	json_object_set_new(o, "zygote",
	                    on ? json_pack("{s:b,s:I}", "up", up, "restarts", (json_int_t)restarts)
	                       : json_null());
}

/* Anyone may ask: status, tier and readiness only. The host's kernel and what it allows are in
 * the start-up log, and here only when the operator set PYEXEC_HEALTH_DETAILS. */
static enum MHD_Result healthz(struct http *h, struct MHD_Connection *conn, const char *method,
                               const char *url, struct request *rq)
{
	json_t *o = json_object();
	bool details = h->cfg->health_details;
	const char *why = !h->jail                         ? (details ? h->jail_problem
	                                                              : "the sandbox (nsjail) could not start in a tier "
	                                                                "PYEXEC_ISOLATION accepts; the start-up log says "
	                                                                "why")
	                  : atomic_load(&h->shutting_down) ? "the server is shutting down"
	                  : uids_degraded(h)
	                      ? "over half of the run uids are quarantined after failed "
	                        "clean-ups (see the log); restart the server"
	                      : "the sandbox self-check failed, "
	                        "or nsjail is no longer executable";
	bool ok = healthy(h);
	char *body;

	json_object_set_new(o, "status", json_string(ok ? "ok" : "unavailable"));
	if (!ok)
		json_object_set_new(o, "message", json_string(why));
	json_object_set_new(o, "tier",
	                    h->jail ? json_string(jail_tier_name(h->tier)) : json_null());
	json_object_set_new(o, "poolReady", json_integer(pool_ready(h->pool)));
	if (details && h->iso_report) {
		json_object_set(o, "isolation", h->iso_report);
		json_object_set_new(o, "limits", json_string(limits_name(h)));
		zygote_details(h, o);
	}
	body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return text_response(conn, method, url, rq, ok ? 200 : 503, body);
}

static enum MHD_Result metrics(struct http *h, struct MHD_Connection *conn, const char *method,
                               const char *url, struct request *rq)
{
	struct metrics_gauges g = {.ready = pool_ready(h->pool),
	                           .pool_size = (unsigned)h->cfg->pool,
	                           .slots = (unsigned)h->cfg->concurrency};
	struct MHD_Response *mr;
	enum MHD_Result ret;
	char *text;

	struct runusers_stats us;

	admit_counts(h->admit, &g.running, &g.queued);
	if (jail_users_stats(h->jail, &us)) {
		g.uids_cleaning = us.cleaning;
		g.uids_quarantined = us.quarantined;
	}
	{
		bool up = false;
		if (jail_zygote_stats(h->jail, &up, &g.zygote_restarts))
			g.zygote_up = up;
	}
	text = metrics_render(h->metrics, &g);
	if (!text)
		return MHD_NO;
	log_request(conn, method, url, rq, 200, "ok");
	mr = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!mr) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(mr, "Content-Type", "text/plain; version=0.0.4");
	MHD_add_response_header(mr, "X-Request-Id", rq->id);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, mr);
	MHD_destroy_response(mr);
	return ret;
}

static enum MHD_Result too_large(struct http *h, struct MHD_Connection *conn, const char *url,
                                 struct request *rq)
{
	char msg[160];

	snprintf(msg, sizeof(msg),
	         "The request body is over the %lu-byte limit; send a smaller script.",
	         h->cfg->body_max);
	metrics_run(h->metrics, "payload_too_large", -1);
	return respond_error(conn, "POST", url, rq, 413, "payload_too_large", msg, no_header);
}

static enum MHD_Result shed(struct http *h, struct MHD_Connection *conn, const char *url,
                            struct request *rq)
{
	metrics_run(h->metrics, "busy", -1);
	return respond_error(conn, "POST", url, rq, 429, "busy",
	                     "The server holds as many request bodies as it may; retry after the "
	                     "time in Retry-After.",
	                     (struct header){"Retry-After", "1"});
}

/* Counts n more body bytes against the budget; false when they do not fit. */
static bool body_hold(struct http *h, struct request *rq, size_t n)
{
	if (atomic_fetch_add(&h->body_bytes, n) + n > h->body_budget) {
		atomic_fetch_sub(&h->body_bytes, n);
		return false;
	}
	rq->held += n;
	return true;
}

static enum MHD_Result serve_static(struct MHD_Connection *conn, const char *method,
                                    const char *url, struct request *rq,
                                    const struct static_file *f)
{
	struct MHD_Response *mr = static_response(f);
	enum MHD_Result ret;

	if (!mr)
		return MHD_NO;
	log_request(conn, method, url, rq, 200, "ok");
	MHD_add_response_header(mr, "X-Request-Id", rq->id);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, mr);
	MHD_destroy_response(mr);
	return ret;
}

/* A client that writes its whole body before reading (Python's http.client) sees a 413 only if
 * the body is read: closing on unread bytes makes the kernel reset the connection, and the
 * answer is lost. So an oversized body is read and thrown away, up to Cloud Run's own request
 * limit and for at most PYEXEC_CONNECTION_TIMEOUT from the start of the request, as nginx's
 * lingering close does; past either, the connection is closed. */
#define DRAIN_MAX ((size_t)32 * 1024 * 1024)

/* A body must arrive in full within PYEXEC_CONNECTION_TIMEOUT of its headers, however often
 * bytes come: the idle timeout alone would let a trickle hold a connection for ever. */
static bool body_late(const struct http *h, const struct request *rq)
{
	return run_now() - rq->t0 > (double)h->cfg->connection_timeout;
}

static bool drain_over(const struct http *h, const struct request *rq)
{
	return rq->received > DRAIN_MAX || body_late(h, rq);
}

static bool expects_continue(struct MHD_Connection *conn)
{
	const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");

	return v && strcasecmp(v, "100-continue") == 0;
}

static bool is_get(const char *method)
{
	return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* First call for a request: decide from the headers alone whether to read its body. */
static enum MHD_Result route(struct http *h, struct MHD_Connection *conn, const char *url,
                             const char *method, struct request *rq)
{
	const struct static_file *f = static_find(url, h->cfg->playground);
	const char *ct, *cl;

	if (f || strcmp(url, "/healthz") == 0 || strcmp(url, "/metrics") == 0) {
		if (!is_get(method))
			return respond_error(conn, method, url, rq, 405, "method_not_allowed",
			                     "Use GET for this path.",
			                     (struct header){"Allow", "GET, HEAD"});
		if (f)
			return serve_static(conn, method, url, rq, f);
		return url[1] == 'h' ? healthz(h, conn, method, url, rq)
		                     : metrics(h, conn, method, url, rq);
	}
	if (strcmp(url, "/execute") != 0)
		return respond_error(conn, method, url, rq, 404, "not_found",
		                     "There is nothing here; POST your script to /execute.",
		                     no_header);
	if (strcmp(method, "POST") != 0)
		return respond_error(conn, method, url, rq, 405, "method_not_allowed",
		                     "Use POST for /execute.", (struct header){"Allow", "POST"});
	/* Counted until its answer is sent, so a shutdown does not cut it off. */
	atomic_fetch_add(&h->answering, 1);
	rq->counted = true;
	if (atomic_load(&h->shutting_down))
		return refuse(h, conn, url, rq, ADMIT_STOPPING);
	ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
	if (!api_content_type_ok(ct)) {
		metrics_run(h->metrics, "unsupported_media_type", -1);
		return respond_error(conn, method, url, rq, 415, "unsupported_media_type",
		                     "Send the body as JSON with the header Content-Type: "
		                     "application/json.",
		                     no_header);
	}
	cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
	if (cl && strtoull(cl, NULL, 10) > h->cfg->body_max) {
		/* A client waiting for 100 Continue reads the answer now; so does one whose body
		 * is too big to wait for. */
		if (expects_continue(conn) || strtoull(cl, NULL, 10) > DRAIN_MAX)
			return too_large(h, conn, url, rq);
		rq->over = true;
	}
	return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **state)
{
	struct http *h = cls;
	struct request *rq = *state;

	(void)version;
	if (!rq) {
		rq = calloc(1, sizeof(*rq));
		if (!rq)
			return MHD_NO;
		buf_init(&rq->body, h->cfg->body_max + 1);
		rq->h = h;
		rq->t0 = run_now();
		request_id(conn, rq->id);
		*state = rq;
		return route(h, conn, url, method, rq);
	}
	if (*data_size) {
		rq->received += *data_size;
		rq->over = rq->over || rq->received > h->cfg->body_max;
		rq->shed = rq->shed || (!rq->over && !body_hold(h, rq, *data_size));
		/* Read and thrown away, so that its client sees the answer (see DRAIN_MAX). */
		if (rq->over || rq->shed ? drain_over(h, rq) : body_late(h, rq))
			return MHD_NO;
		if (!rq->over && !rq->shed && buf_append(&rq->body, data, *data_size) < 0)
			return MHD_NO;
		*data_size = 0;
		return MHD_YES;
	}
	if (rq->over)
		return too_large(h, conn, url, rq);
	if (rq->shed)
		return shed(h, conn, url, rq);
	return execute(h, conn, url, rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **state,
                         enum MHD_RequestTerminationCode toe)
{
	struct request *rq = *state;

	(void)cls, (void)conn, (void)toe;
	if (!rq)
		return;
	if (rq->counted)
		atomic_fetch_sub(&rq->h->answering, 1);
	api_response_free(&rq->r);
	atomic_fetch_sub(&rq->h->body_bytes, rq->held);
	buf_free(&rq->body);
	free(rq);
	*state = NULL;
}

/* True when the answer to PROBE_SCRIPT shows what the tier promises. */
static bool probe_answer_ok(const struct response *r, enum jail_tier tier)
{
	json_t *o = r->status == 200 ? json_loadb(r->body, r->len, 0, NULL) : NULL;
	json_t *res = json_object_get(o, "result");
	json_int_t uid = json_integer_value(json_object_get(res, "uid"));
	const char *seccomp = json_string_value(json_object_get(res, "seccomp"));
	const char *jail = json_string_value(json_object_get(res, "jailSeccomp"));
	bool ok = json_is_integer(json_object_get(res, "uid")) && uid != 0 &&
	          uid != (json_int_t)geteuid() && seccomp && strcmp(seccomp, "2") == 0;

	if (ok && tier == JAIL_RESTRICTED)
		ok = json_integer_value(json_object_get(res, "inet")) == EAFNOSUPPORT && jail &&
		     strcmp(jail, "2") == 0;
	json_decref(o);
	return ok;
}

/* Runs the probe script end to end in h->jail, so a broken sandbox shows at start-up, not on a
 * request. A second try absorbs a start that was only slow. */
static bool self_check(struct http *h)
{
	struct job job;
	struct err e;
	double t0 = run_now();
	bool ok = false;

	if (api_job_script(PROBE_SCRIPT, 5, &job, &e) < 0)
		return false;
	for (int i = 0; i < 2 && !ok; i++) {
		struct response r = {0};
		run_job(h, &job, -1, &r, "self-check");
		ok = probe_answer_ok(&r, h->tier);
		api_response_free(&r);
	}
	api_job_free(&job);
	log_json(ok ? "INFO" : "WARNING",
	         json_pack("{s:b,s:s,s:f}", "ok", ok, "tier", jail_tier_name(h->tier), "durationMs",
	                   (run_now() - t0) * 1e3),
	         "sandbox self-check of tier %s %s", jail_tier_name(h->tier),
	         ok ? "passed" : "failed");
	return ok;
}

/* Builds the tier's jail and runs the self-check in it; on failure why says what failed. */
static bool tier_try(struct http *h, enum jail_tier tier, char *why, size_t n)
{
	struct err je;

	h->tier = tier;
	h->jail = jail_new(h->cfg, &h->cg, tier, &je);
	if (!h->jail) {
		/* The details (paths) go to the log; clients get what to look for. */
		log_error("tier %s: %s", jail_tier_name(tier), je.message);
		snprintf(why, n,
		         "nsjail or its files are missing, or the run uids or work "
		         "directory are unusable (the server log says which)");
		return false;
	}
	if (self_check(h))
		return true;
	jail_free(h->jail);
	h->jail = NULL;
	snprintf(why, n, "its jail could not start or failed its self-check (see the log)");
	return false;
}

/* Why the required tier is out of reach, and what to do about it. */
static void tier_problem(struct http *h, const char *full_why, const char *restricted_why)
{
	const char *want = h->cfg->isolation;
	char missing[256];

	isolation_missing_full(&h->iso, missing, sizeof(missing));
	if (strcmp(want, "restricted") == 0)
		snprintf(h->jail_problem, sizeof(h->jail_problem),
		         "The sandbox could not start in isolation tier restricted: %s. It needs "
		         "nsjail, root in the container (to run each script as its own uid) and "
		         "seccomp; setuid %s, seccomp %s here.",
		         restricted_why, h->iso.ok[ISO_SETUID] ? "works" : "is refused",
		         h->iso.ok[ISO_SECCOMP] ? "works" : "is refused");
	else
		snprintf(
		    h->jail_problem, sizeof(h->jail_problem),
		    "The sandbox could not start in isolation tier full: %s%s. Fix: give the "
		    "container what nsjail needs for namespaces (docker run --cap-add SYS_ADMIN "
		    "--security-opt seccomp=unconfined --security-opt systempaths=unconfined), "
		    "or set PYEXEC_ISOLATION=auto to accept the restricted tier (no namespaces: "
		    "each script runs as its own uid with rlimits, a private directory and "
		    "seccomp, and can see other processes and world-readable files)%s%s.",
		    missing[0] ? "this host refuses " : "", missing[0] ? missing : full_why,
		    strcmp(want, "auto") == 0 ? "; the restricted tier failed too: " : "",
		    strcmp(want, "auto") == 0 ? restricted_why : "");
}

/* Learns what the host allows and takes the strongest tier PYEXEC_ISOLATION accepts. */
static void tier_choose(struct http *h)
{
	const char *want = h->cfg->isolation;
	char full_why[512] = "not tried", restricted_why[512] = "not tried";
	bool ok = false;
	json_t *report;

	isolation_probe(h->cfg, (uid_t)(h->cfg->run_uid + h->cfg->run_uids - 1), &h->iso);
	if (strcmp(want, "restricted") != 0)
		ok = tier_try(h, JAIL_FULL, full_why, sizeof(full_why));
	if (!ok && strcmp(want, "full") != 0)
		ok = tier_try(h, JAIL_RESTRICTED, restricted_why, sizeof(restricted_why));
	h->probe_ok = ok;
	if (!ok)
		tier_problem(h, full_why, restricted_why);
	report = json_pack("{s:s,s:s?,s:s,s:o,s:s,s:s?,s:f}", "requested", want, "tier",
	                   ok ? jail_tier_name(h->tier) : NULL, "kernel", h->iso.kernel, "host",
	                   isolation_json(&h->iso), "limits", limits_name(h), "problem",
	                   ok ? NULL : h->jail_problem, "probeMs", h->iso.ms);
	h->iso_report = report;
	log_json(ok ? "INFO" : "ERROR", json_pack("{s:O}", "isolation", report),
	         "sandbox isolation: %s%s (requested %s)",
	         ok ? "tier " : "no tier: ", ok ? jail_tier_name(h->tier) : h->jail_problem, want);
}

static int parse_addr(const struct config *c, struct sockaddr_in *sa, struct err *e)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)c->port);
	if (inet_pton(AF_INET, c->host, &sa->sin_addr) != 1)
		return err_set(e, 0, "config", "PYEXEC_HOST '%s' is not an IPv4 address", c->host);
	return 0;
}

static int http_parts(struct http *h, const struct config *c, struct err *e)
{
	h->cfg = c;
	/* Room for every run and queue place, and a few bodies still arriving. */
	h->body_budget = (c->concurrency + c->queue + 4) * (c->body_max + 1);
	h->lim = (struct api_limits){
	    c->timeout,
	    c->max_timeout,
	    c->result_max,
	    c->memory_mb,
	    {c->input_files, c->input_bytes, c->output_files, c->output_bytes, c->path_max,
	     c->path_depth},
	};
	h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	h->metrics = metrics_new();
	h->admit = admit_new((unsigned)c->concurrency, (unsigned)c->queue);
	if (h->stop_fd < 0 || !h->metrics || !h->admit)
		return err_set(e, 0, "config", "out of memory or descriptors at start-up");
	cgroup_init(&h->cg);
	if (h->cg.mode == CGROUP_NONE)
		log_warn("no cgroup limits: %s; memory and processes are capped per process by "
		         "rlimits only",
		         h->cg.why);
	else
		log_info("per-run memory and process limits: cgroup %s", cgroup_mode_name(&h->cg));
	/* Self-checks first, with the pool still empty, so each check starts a jail itself. */
	h->pool = pool_new(NULL, 0, 1, 1, h->metrics, e);
	if (!h->pool)
		return -1;
	tier_choose(h);
	if (h->jail && c->pool) {
		pool_free(h->pool);
		h->pool = pool_new(h->jail, (unsigned)c->pool, c->pool_max_age, c->start_timeout,
		                   h->metrics, e);
		if (!h->pool)
			return -1;
	}
	return 0;
}

static void http_free(struct http *h)
{
	pool_free(h->pool);
	jail_free(h->jail);
	json_decref(h->iso_report);
	admit_free(h->admit);
	metrics_free(h->metrics);
	if (h->stop_fd >= 0)
		close(h->stop_fd);
	free(h);
}

struct http *http_start(const struct config *c, struct err *e)
{
	struct http *h = calloc(1, sizeof(*h));
	struct sockaddr_in sa;

	if (!h)
		return NULL;
	h->stop_fd = -1;
	if (parse_addr(c, &sa, e) < 0 || http_parts(h, c, e) < 0) {
		http_free(h);
		return NULL;
	}
	/* Event-driven: a few threads serve every connection; runs go to threads of their own. */
	h->daemon = MHD_start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME,
	    (uint16_t)c->port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
	    (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->connection_timeout,
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_NOTIFY_COMPLETED,
	    on_completed, NULL, MHD_OPTION_END);
	if (!h->daemon) {
		err_set(e, 0, "config", "cannot listen on %s:%lu (in use, or not permitted)",
		        c->host, c->port);
		http_free(h);
		return NULL;
	}
	log_json("INFO",
	         json_pack("{s:s,s:i,s:i,s:i,s:i}", "host", c->host, "port", (int)c->port,
	                   "concurrency", (int)c->concurrency, "queue", (int)c->queue, "pool",
	                   (int)c->pool),
	         "listening on %s:%lu", c->host, c->port);
	return h;
}

unsigned http_shutdown(struct http *h)
{
	double end = run_now() + h->cfg->grace + STOP_DRAIN_SECONDS;
	uint64_t one = 1;
	unsigned left;

	atomic_store(&h->shutting_down, true);
	admit_stop(h->admit);
	left = admit_drain(h->admit, h->cfg->grace);
	if (left) {
		(void)!write(h->stop_fd, &one, sizeof(one));
		admit_drain(h->admit, STOP_DRAIN_SECONDS);
	}
	/* Answers already decided still go out. */
	while (atomic_load(&h->answering) && run_now() < end)
		usleep(10000);
	return left;
}

void http_stop(struct http *h)
{
	/* Runs were told to stop by http_shutdown; their threads hold suspended connections and
	 * must hand them back before the daemon goes. */
	while (atomic_load(&h->workers))
		usleep(10000);
	MHD_stop_daemon(h->daemon);
	sandbox_reaper_drain(STOP_DRAIN_SECONDS);
	http_free(h);
}
