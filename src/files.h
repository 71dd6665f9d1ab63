/* files: the files a request sends in and a run leaves in output/, as pure functions. Paths are
 * relative and normal ("data/in.csv"), contents are base64 in JSON. What a run left travels
 * from the jail to the server as records that are parsed here as hostile bytes:
 *
 *   "F <path length> <size>\n" <path> <content>   one regular file under output/
 *   "L <cap>\n"                                   a cap was passed (files, bytes, path, depth)
 *
 * and nothing else: no record is optional, and a malformed one fails the whole parse. */
#ifndef PYEXEC_FILES_H
#define PYEXEC_FILES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "err.h"

struct files_limits {
	size_t in_files, in_bytes;   /* a request's files, and its files' and stdin's bytes */
	size_t out_files, out_bytes; /* what a run may leave under output/ */
	size_t path_max, path_depth; /* a path's bytes and components */
};

/* NULL when p[0..n) is a relative, normal path within lim, else why it is not (a phrase). */
const char *files_path_problem(const char *p, size_t n, const struct files_limits *lim);

/* Decoded size of strict standard base64 (padded, no whitespace); -1 when it is not that. */
long long files_b64_size(const char *s, size_t n);
/* Decodes s (checked with files_b64_size) into out. */
void files_b64_decode(const char *s, size_t n, unsigned char *out);
/* The base64 of p[0..n) as a JSON string; NULL when out of memory. */
json_t *files_b64_json(const unsigned char *p, size_t n);

/* The most bytes of records a run within lim can produce. */
size_t files_records_max(const struct files_limits *lim);

/* What a run left: the "files" array of the answer, or NULL with e filled (422
 * output_too_large or invalid_output, 500 internal for records no runner writes). An empty
 * array when it left nothing. */
json_t *files_output_parse(const char *data, size_t len, const struct files_limits *lim,
                           struct err *e);

#endif
