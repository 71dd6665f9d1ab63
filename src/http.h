/* http: the only code that knows libmicrohttpd. Routes requests, reads bodies under their cap,
 * admits /execute runs, runs them on a ready or a fresh jail, and logs one line per request. */
#ifndef PYEXEC_HTTP_H
#define PYEXEC_HTTP_H

#include "config.h"
#include "err.h"

struct http;

/* Checks the sandbox, starts the pool and serves on c->host:c->port with one thread per
 * connection. The config must outlive the server. NULL with e filled when it cannot listen. */
struct http *http_start(const struct config *c, struct err *e);
/* SIGTERM: refuses new runs (503), gives in-flight runs c->grace seconds, then stops them.
 * Returns the number of runs that had to be stopped. */
unsigned http_shutdown(struct http *h);
/* Stops accepting, waits for connection threads, frees everything. */
void http_stop(struct http *h);

#endif
