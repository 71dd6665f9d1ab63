/* static: the files served as they are (the OpenAPI document and the playground), with the
 * headers that keep a browser from doing more with them than they say. */
#ifndef PYEXEC_STATIC_H
#define PYEXEC_STATIC_H

#include <stdbool.h>
#include <stddef.h>

struct MHD_Response;
struct static_file;

/* The file served at url, or NULL; the playground's files only when playground is on. */
const struct static_file *static_find(const char *url, bool playground);

/* A 200 response for f with its Content-Type and security headers; NULL when out of memory. */
struct MHD_Response *static_response(const struct static_file *f);

#endif
