#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "buf.h"
#include "jail.h"
#include "log.h"
#include "run.h"

#define FRAME_HEADER_MAX (256 * 1024 + 64) /* matches frame.c's header cap */
#define PROBE_SCRIPT "def main():\n    return 1\n"

struct http {
	const struct config *cfg;
	struct MHD_Daemon *daemon;
	struct jail *jail; /* NULL when the jail cannot be built; jail_problem says why */
	char jail_problem[512];
	bool probe_ok;
	struct api_limits lim;
};

struct request {
	struct buf body;
	bool started;
	char id[65];
	struct timespec t0;
};

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Reuse a well-formed client request id so logs can be joined; otherwise make one. */
static void request_id(struct MHD_Connection *conn, char id[65])
{
	const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
	unsigned char rnd[16];

	if (v && *v && strlen(v) <= 64 &&
	    strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") ==
	        strlen(v)) {
		strcpy(id, v);
		return;
	}
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		memset(rnd, 0, sizeof(rnd));
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(id + 2 * i, 3, "%02x", rnd[i]);
}

static void log_request(struct MHD_Connection *conn, const char *method, const char *url,
                        const struct request *rq, const struct response *r, const char *outcome)
{
	const char *ua = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "User-Agent");
	double ms = ms_since(&rq->t0);
	json_t *extra;
	char latency[32];

	snprintf(latency, sizeof(latency), "%.3fs", ms / 1e3);
	extra =
	    json_pack("{s:{s:s,s:s,s:i,s:s,s:s?},s:s,s:s,s:f}", "httpRequest", "requestMethod",
	              method, "requestUrl", url, "status", r->status, "latency", latency,
	              "userAgent", ua, "requestId", rq->id, "outcome", outcome, "durationMs", ms);
	log_json(r->status >= 500 ? "ERROR" : "INFO", extra, "%s %s %d", method, url, r->status);
}

/* Sends r (taking its body) with the contract's headers. */
static enum MHD_Result respond(struct MHD_Connection *conn, const char *method, const char *url,
                               struct request *rq, struct response *r, const char *allow,
                               long exec_ms)
{
	struct MHD_Response *mr;
	enum MHD_Result ret;
	char ms[32];
	const char *outcome = "ok";
	json_t *body = r->status == 200 ? NULL : json_loadb(r->body, r->len, 0, NULL);

	if (body)
		outcome = json_string_value(json_object_get(body, "error"));
	log_request(conn, method, url, rq, r, outcome ? outcome : "error");
	json_decref(body);
	mr = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
	r->body = NULL;
	if (!mr)
		return MHD_NO;
	MHD_add_response_header(mr, "Content-Type", "application/json");
	MHD_add_response_header(mr, "X-Request-Id", rq->id);
	if (allow)
		MHD_add_response_header(mr, "Allow", allow);
	if (exec_ms >= 0) {
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
                                     const char *code, const char *message, const char *allow)
{
	struct response r;

	if (api_error_response(&r, status, code, message) < 0)
		return MHD_NO;
	return respond(conn, method, url, rq, &r, allow, -1);
}

/* Runs one job in a fresh jail; fills r. Returns the run's execution time or -1. */
static long execute_job(struct http *h, const struct job *job, struct response *r, const char *rid)
{
	const struct config *c = h->cfg;
	struct run_spec spec = {
	    .argv = jail_argv(h->jail),
	    .script = job->script,
	    .script_len = job->script_len,
	    .timeout = job->timeout,
	    .start_timeout = c->start_timeout,
	    .stdout_max = c->stdout_max,
	    .chan_max = c->result_max + FRAME_HEADER_MAX,
	};
	struct run_result run;
	struct err e;
	long ms;

	if (run_script(&spec, &run, &e) < 0) {
		log_error("request %s: %s", rid, e.message);
		api_error_response(
		    r, 500, "internal",
		    "The sandbox could not start; this is a problem with the server, "
		    "not your script (the server log has details).");
		return -1;
	}
	if (!run.ready)
		log_json("ERROR",
		         json_pack("{s:s,s:i,s:s}", "requestId", rid, "exitCode", run.exit_code,
		                   "nsjail", run.diag),
		         "jail did not start");
	ms = run.ready ? run.exec_ms : -1;
	if (api_outcome_response(&run, job, &h->lim, r) < 0)
		api_error_response(r, 500, "internal", "The server is out of memory; try again.");
	run_result_free(&run);
	return ms;
}

static enum MHD_Result execute(struct http *h, struct MHD_Connection *conn, const char *url,
                               struct request *rq)
{
	struct response r;
	struct job job;
	struct err e;
	long ms = -1;

	if (!h->jail)
		return respond_error(conn, "POST", url, rq, 500, "internal",
		                     "The sandbox is not available on this server (nsjail or its "
		                     "files are missing); the operator must fix the installation.",
		                     NULL);
	if (api_request_parse(rq->body.data ? rq->body.data : "", rq->body.len, &h->lim, &job, &e) <
	    0) {
		if (api_error_response(&r, e.status, e.code, e.message) < 0)
			return MHD_NO;
	} else {
		ms = execute_job(h, &job, &r, rq->id);
		api_job_free(&job);
	}
	if (!r.body)
		return MHD_NO;
	return respond(conn, "POST", url, rq, &r, NULL, ms);
}

static bool healthy(const struct http *h)
{
	return h->jail && h->probe_ok && access(h->cfg->nsjail, X_OK) == 0;
}

static enum MHD_Result healthz(struct http *h, struct MHD_Connection *conn, const char *method,
                               const char *url, struct request *rq)
{
	struct response r = {.status = 200};
	json_t *o = json_object();

	if (!healthy(h)) {
		r.status = 503;
		json_object_set_new(o, "status", json_string("unavailable"));
		json_object_set_new(o, "message",
		                    json_string(h->jail ? "the sandbox self-check failed or nsjail "
		                                          "is no longer executable"
		                                        : h->jail_problem));
	} else {
		json_object_set_new(o, "status", json_string("ok"));
	}
	r.body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!r.body)
		return MHD_NO;
	r.len = strlen(r.body);
	return respond(conn, method, url, rq, &r, NULL, -1);
}

/* First call for a request: decide from the headers alone whether to read its body. */
static enum MHD_Result route(struct http *h, struct MHD_Connection *conn, const char *url,
                             const char *method, struct request *rq)
{
	const char *ct, *cl;

	if (strcmp(url, "/healthz") == 0) {
		if (strcmp(method, "GET") && strcmp(method, "HEAD"))
			return respond_error(conn, method, url, rq, 405, "method_not_allowed",
			                     "Use GET for /healthz.", "GET, HEAD");
		return healthz(h, conn, method, url, rq);
	}
	if (strcmp(url, "/execute") != 0)
		return respond_error(conn, method, url, rq, 404, "not_found",
		                     "There is nothing here; POST your script to /execute.", NULL);
	if (strcmp(method, "POST") != 0)
		return respond_error(conn, method, url, rq, 405, "method_not_allowed",
		                     "Use POST for /execute.", "POST");
	ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
	if (!api_content_type_ok(ct))
		return respond_error(conn, method, url, rq, 415, "unsupported_media_type",
		                     "Send the body as JSON with the header Content-Type: "
		                     "application/json.",
		                     NULL);
	cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
	if (cl && strtoull(cl, NULL, 10) > h->cfg->body_max)
		goto too_large;
	rq->started = true;
	return MHD_YES;
too_large : {
	char msg[160];
	snprintf(msg, sizeof(msg),
	         "The request body is over the %lu-byte limit; send a smaller "
	         "script.",
	         h->cfg->body_max);
	return respond_error(conn, method, url, rq, 413, "payload_too_large", msg, NULL);
}
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
		clock_gettime(CLOCK_MONOTONIC, &rq->t0);
		request_id(conn, rq->id);
		*state = rq;
		return route(h, conn, url, method, rq);
	}
	if (*data_size) {
		if (buf_append(&rq->body, data, *data_size) < 0)
			return MHD_NO;
		*data_size = 0;
		return MHD_YES;
	}
	if (rq->body.truncated || rq->body.len > h->cfg->body_max) {
		char msg[160];
		snprintf(msg, sizeof(msg),
		         "The request body is over the %lu-byte limit; send a smaller script.",
		         h->cfg->body_max);
		return respond_error(conn, method, url, rq, 413, "payload_too_large", msg, NULL);
	}
	return execute(h, conn, url, rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **state,
                         enum MHD_RequestTerminationCode toe)
{
	struct request *rq = *state;

	(void)cls, (void)conn, (void)toe;
	if (!rq)
		return;
	buf_free(&rq->body);
	free(rq);
	*state = NULL;
}

/* Runs a trivial script end to end so a broken sandbox shows at start-up, not on a request. */
static void self_check(struct http *h)
{
	struct job job = {
	    .script = (char *)PROBE_SCRIPT, .script_len = strlen(PROBE_SCRIPT), .timeout = 5};
	struct response r = {0};
	struct timespec t0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	execute_job(h, &job, &r, "self-check");
	h->probe_ok = r.status == 200;
	log_json(h->probe_ok ? "INFO" : "ERROR",
	         json_pack("{s:b,s:f}", "ok", h->probe_ok, "durationMs", ms_since(&t0)),
	         "sandbox self-check %s", h->probe_ok ? "passed" : "failed");
	api_response_free(&r);
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

struct http *http_start(const struct config *c, struct err *e)
{
	struct http *h = calloc(1, sizeof(*h));
	struct sockaddr_in sa;
	struct err je;

	if (!h || parse_addr(c, &sa, e) < 0) {
		free(h);
		return NULL;
	}
	h->cfg = c;
	h->lim = (struct api_limits){c->timeout, c->max_timeout, c->result_max, c->memory_mb};
	h->jail = jail_new(c, &je);
	if (h->jail)
		self_check(h);
	else {
		snprintf(h->jail_problem, sizeof(h->jail_problem), "%s", je.message);
		log_error("sandbox unavailable: %s", je.message);
	}
	h->daemon = MHD_start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, (uint16_t)c->port,
	    NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
	    MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
	    (size_t)(64 * 1024), MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
	if (!h->daemon) {
		err_set(e, 0, "config", "cannot listen on %s:%lu (in use, or not permitted)",
		        c->host, c->port);
		jail_free(h->jail);
		free(h);
		return NULL;
	}
	log_json("INFO", json_pack("{s:s,s:i}", "host", c->host, "port", (int)c->port),
	         "listening on %s:%lu", c->host, c->port);
	return h;
}

void http_stop(struct http *h)
{
	MHD_stop_daemon(h->daemon);
	jail_free(h->jail);
	free(h);
}
