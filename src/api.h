/* api: the v1 contract as pure functions. Bytes in, a validated job out; a run's result in, the
 * HTTP status and body out. No syscalls, so it can be unit-tested and fuzzed. */
#ifndef PYEXEC_API_H
#define PYEXEC_API_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"
#include "files.h"
#include "sandbox.h"

struct api_limits {
	double timeout;     /* default seconds */
	double max_timeout; /* largest a request may ask for */
	size_t result_max;
	unsigned long memory_mb;
	struct files_limits files;
};

struct job {
	char *script; /* owned, NUL-terminated (may also hold NULs) */
	size_t script_len;
	double timeout;
	/* What the runner reads on its stdin: a JSON header line {"script": <bytes>, "stdin":
	 * <bytes>, "files": [[<path>, <bytes>], ...]}, then the script, the stdin text and each
	 * file's content, back to back. Owned. */
	char *input;
	size_t input_len;
};

struct response {
	int status;
	const char *code; /* "ok" or the error code: a static string */
	char *body;       /* owned; release with api_response_free */
	size_t len;
	bool stdout_truncated;
};

/* True when a Content-Type header names JSON in UTF-8. */
bool api_content_type_ok(const char *content_type);

/* Validates a request body into job (released with api_job_free). */
int api_request_parse(const char *body, size_t len, const struct api_limits *lim, struct job *job,
                      struct err *e);
/* A job of script alone (no files, empty stdin), as the server's own checks send. */
int api_job_script(const char *script, double timeout, struct job *job, struct err *e);
void api_job_free(struct job *job);

/* {"error": code, "message": message}. Returns -1 when out of memory. */
int api_error_response(struct response *r, int status, const char *code, const char *message);

/* Turns a finished run into the contract's answer. Returns -1 when out of memory. */
int api_outcome_response(const struct run_result *run, const struct job *job,
                         const struct api_limits *lim, struct response *r);

void api_response_free(struct response *r);

#endif
