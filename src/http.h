/* http: the only code that knows libmicrohttpd. Routes requests, reads bodies under their cap,
 * runs /execute through api and run, and writes one log line per request. */
#ifndef PYEXEC_HTTP_H
#define PYEXEC_HTTP_H

#include "config.h"
#include "err.h"

struct http;

/* Starts serving on c->host:c->port with one thread per connection. The config must outlive
 * the server. Returns NULL with e filled when the port cannot be opened. */
struct http *http_start(const struct config *c, struct err *e);
/* Stops accepting, waits for connection threads, frees everything. */
void http_stop(struct http *h);

#endif
