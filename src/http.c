#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "api.h"
#include "buf.h"
#include "clock.h"
#include "execute.h"
#include "jail.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "runuser.h"
#include "server.h"
#include "static.h"

#define STOP_DRAIN_SECONDS 3.0

/* Threads of the event loop: they only parse and answer, never wait for a run. */
#define HTTP_THREADS 2

struct http {
	const struct config *cfg;
	struct MHD_Daemon *daemon;
	struct server srv; /* what it serves */
	/* Under mu, with changes broadcast on cv: */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned answering; /* /execute requests whose answer is not yet sent */
	unsigned workers;   /* request threads still running (they hold suspended connections) */
	struct worker *finished; /* request threads that are done, to be joined */
	/* Request bodies held in memory, and how much they may hold together: many half-sent
	 * bodies must not take the server's memory. */
	atomic_size_t body_bytes;
	size_t body_budget;
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
	struct worker *worker; /* its thread, once started */
	enum { RQ_NEW, RQ_RUNNING, RQ_DONE } phase;
	enum admit_rc admitted;
	struct response r;
	long ms;
};

/* A request thread, joined by the next one to start or by http_stop once it is done. */
struct worker {
	pthread_t thread;
	struct worker *next;
};

/* Joins every finished request thread. */
static void join_finished(struct http *h)
{
	struct worker *w;

	pthread_mutex_lock(&h->mu);
	w = h->finished;
	h->finished = NULL;
	pthread_mutex_unlock(&h->mu);
	while (w) {
		struct worker *next = w->next;
		pthread_join(w->thread, NULL);
		free(w);
		w = next;
	}
}

static void count_answering(struct http *h, int delta)
{
	pthread_mutex_lock(&h->mu);
	h->answering = (unsigned)((int)h->answering + delta);
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
}

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
	double s = clock_now() - rq->t0;
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

static int client_fd(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

	return ci ? ci->connect_fd : -1;
}

static enum MHD_Result refuse(struct http *h, struct MHD_Connection *conn, const char *url,
                              struct request *rq, enum admit_rc rc)
{
	metrics_run(h->srv.metrics, rc == ADMIT_BUSY ? "busy" : "shutting_down", -1);
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
	struct worker *self = rq->worker;

	rq->admitted =
	    execute_admitted(&h->srv.exec, h->srv.admit, &rq->job, rq->fd, &rq->r, &rq->ms, rq->id);
	api_job_free(&rq->job);
	rq->phase = RQ_DONE;
	MHD_resume_connection(rq->conn); /* rq may be freed from here on */
	pthread_mutex_lock(&h->mu);
	self->next = h->finished;
	h->finished = self;
	h->workers--;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

static enum MHD_Result start_request_thread(struct http *h, struct MHD_Connection *conn,
                                            struct request *rq)
{
	int rc = -1;

	join_finished(h);
	rq->conn = conn;
	rq->fd = client_fd(conn);
	rq->phase = RQ_RUNNING;
	rq->worker = calloc(1, sizeof(*rq->worker));
	pthread_mutex_lock(&h->mu);
	h->workers++;
	pthread_mutex_unlock(&h->mu);
	MHD_suspend_connection(conn);
	if (rq->worker)
		rc = pthread_create(&rq->worker->thread, NULL, request_thread, rq);
	if (rc != 0) {
		free(rq->worker);
		pthread_mutex_lock(&h->mu);
		h->workers--;
		pthread_cond_broadcast(&h->cv);
		pthread_mutex_unlock(&h->mu);
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
			metrics_run(h->srv.metrics, "client_gone", -1);
			return MHD_NO;
		}
		return refuse(h, conn, url, rq, rq->admitted);
	}
	metrics_run(h->srv.metrics, r->code, rq->ms >= 0 ? (double)rq->ms / 1e3 : -1);
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
	if (!h->srv.tier.jail)
		return respond_error(conn, "POST", url, rq, 500, "internal", h->srv.tier.problem,
		                     no_header);
	if (api_request_parse(rq->body.data ? rq->body.data : "", rq->body.len, &h->srv.lim,
	                      &rq->job, &e) < 0) {
		metrics_run(h->srv.metrics, e.code, -1);
		return respond_error(conn, "POST", url, rq, e.status, e.code, e.message, no_header);
	}
	return start_request_thread(h, conn, rq);
}

/* Restricted tier: too many quarantined uids (clean-ups that failed) mean too few for runs. */
static bool uids_degraded(const struct http *h)
{
	struct runusers_stats s;

	return jail_users_stats(h->srv.tier.jail, &s) && s.quarantined * 2 > s.count;
}

static bool healthy(const struct http *h)
{
	return h->srv.tier.jail && h->srv.tier.ok && !atomic_load(&h->srv.stopping) &&
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

/* Tier full: whether runs are forked from the zygote, whether it is up, its restarts. */
static void zygote_details(struct http *h, json_t *o)
{
	unsigned long restarts = 0;
	bool up = false, on = jail_zygote_stats(h->srv.tier.jail, &up, &restarts);

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
	const char *why =
	    !h->srv.tier.jail               ? (details ? h->srv.tier.problem
	                                               : "the sandbox (nsjail) could not start in a tier "
	                                                 "PYEXEC_ISOLATION accepts; the start-up log says "
	                                                 "why")
	    : atomic_load(&h->srv.stopping) ? "the server is shutting down"
	    : uids_degraded(h) ? "over half of the run uids are quarantined after failed "
	                         "clean-ups (see the log); restart the server"
	                       : "the sandbox self-check failed, "
	                         "or nsjail is no longer executable";
	bool ok = healthy(h);
	char *body;

	json_object_set_new(o, "status", json_string(ok ? "ok" : "unavailable"));
	if (!ok)
		json_object_set_new(o, "message", json_string(why));
	json_object_set_new(o, "tier",
	                    h->srv.tier.jail ? json_string(jail_tier_name(h->srv.tier.kind))
	                                     : json_null());
	json_object_set_new(o, "poolReady", json_integer(pool_ready(h->srv.pool)));
	if (details && h->srv.tier.report) {
		json_object_set(o, "isolation", h->srv.tier.report);
		json_object_set_new(o, "limits",
		                    json_string(tier_limits_name(&h->srv.tier, &h->srv.cg)));
		zygote_details(h, o);
	}
	body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return text_response(conn, method, url, rq, ok ? 200 : 503, body);
}

static enum MHD_Result metrics(struct http *h, struct MHD_Connection *conn, const char *method,
                               const char *url, struct request *rq)
{
	struct metrics_gauges g = {.ready = pool_ready(h->srv.pool),
	                           .starting = pool_starting(h->srv.pool),
	                           .pool_size = (unsigned)h->cfg->pool,
	                           .slots = (unsigned)h->cfg->concurrency};
	struct MHD_Response *mr;
	enum MHD_Result ret;
	char *text;

	struct runusers_stats us;

	admit_counts(h->srv.admit, &g.running, &g.queued);
	if (jail_users_stats(h->srv.tier.jail, &us)) {
		g.uids_cleaning = us.cleaning;
		g.uids_quarantined = us.quarantined;
	}
	{
		bool up = false;
		if (jail_zygote_stats(h->srv.tier.jail, &up, &g.zygote_restarts))
			g.zygote_up = up;
	}
	text = metrics_render(h->srv.metrics, &g);
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
	metrics_run(h->srv.metrics, "payload_too_large", -1);
	return respond_error(conn, "POST", url, rq, 413, "payload_too_large", msg, no_header);
}

static enum MHD_Result shed(struct http *h, struct MHD_Connection *conn, const char *url,
                            struct request *rq)
{
	metrics_run(h->srv.metrics, "busy", -1);
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
	return clock_now() - rq->t0 > (double)h->cfg->connection_timeout;
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
	if (atomic_load(&h->srv.stopping))
		return refuse(h, conn, url, rq, ADMIT_STOPPING);
	ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
	if (!api_content_type_ok(ct)) {
		metrics_run(h->srv.metrics, "unsupported_media_type", -1);
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
		rq->t0 = clock_now();
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
	/* Counted from its whole body until its answer is sent, so a shutdown does not cut it
	 * off; a client still sending (or stalled mid-body) holds no shutdown up. */
	if (!rq->counted) {
		count_answering(h, 1);
		rq->counted = true;
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
		count_answering(rq->h, -1);
	api_response_free(&rq->r);
	atomic_fetch_sub(&rq->h->body_bytes, rq->held);
	buf_free(&rq->body);
	free(rq);
	*state = NULL;
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

static void http_free(struct http *h)
{
	server_free(&h->srv);
	pthread_cond_destroy(&h->cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

struct http *http_start(const struct config *c, struct err *e)
{
	struct http *h = calloc(1, sizeof(*h));
	struct sockaddr_in sa;

	if (!h)
		return NULL;
	h->cfg = c;
	h->srv.stop_fd = -1;
	/* Room for every run and queue place, and a few bodies still arriving. */
	h->body_budget = (c->concurrency + c->queue + 4) * (c->body_max + 1);
	pthread_mutex_init(&h->mu, NULL);
	clock_cond_init(&h->cv);
	if (parse_addr(c, &sa, e) < 0 || server_init(&h->srv, c, e) < 0) {
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
	double end = clock_now() + h->cfg->grace + STOP_DRAIN_SECONDS;
	unsigned left;

	atomic_store(&h->srv.stopping, true);
	admit_stop(h->srv.admit);
	left = admit_drain(h->srv.admit, h->cfg->grace);
	if (left) {
		server_stop_runs(&h->srv);
		admit_drain(h->srv.admit, STOP_DRAIN_SECONDS);
	}
	/* Answers already decided still go out: on_completed wakes this wait. */
	pthread_mutex_lock(&h->mu);
	while (h->answering && clock_now() < end) {
		struct timespec ts = clock_after(end - clock_now());
		pthread_cond_timedwait(&h->cv, &h->mu, &ts);
	}
	pthread_mutex_unlock(&h->mu);
	return left;
}

void http_stop(struct http *h)
{
	/* Runs were told to stop by http_shutdown; their threads hold suspended connections and
	 * must hand them back before the daemon goes. */
	pthread_mutex_lock(&h->mu);
	while (h->workers)
		pthread_cond_wait(&h->cv, &h->mu);
	pthread_mutex_unlock(&h->mu);
	join_finished(h);
	MHD_stop_daemon(h->daemon);
	http_free(h);
}
