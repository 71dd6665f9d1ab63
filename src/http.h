/* http: the only code that knows libmicrohttpd. Routes requests, reads bodies under their cap,
 * hands each /execute job to a request thread of its own (execute.h does the rest), answers
 * with the contract's headers, and logs one line per request. */
#ifndef PYEXEC_HTTP_H
#define PYEXEC_HTTP_H

#include "config.h"
#include "err.h"

struct http;

/* Builds the server (server.h: tier, self-check, pool) and serves on c->host:c->port from a
 * few event threads; each run gets a thread of its own. The config must outlive the server. NULL
 * with e filled when it cannot listen. */
struct http *http_start(const struct config *c, struct err *e);
/* SIGTERM: refuses new runs (503), gives in-flight runs c->grace seconds, then stops them.
 * Returns the number of runs that had to be stopped. */
unsigned http_shutdown(struct http *h);
/* Joins the request threads, stops accepting, then frees the server (ending every process it
 * started before what their teardowns use). */
void http_stop(struct http *h);

#endif
