/* errcodes: every error code of the API contract, listed once. frame.c accepts from a runner
 * exactly the ERR_BY_RUNNER ones; /metrics counts each /execute code; tests/http/test_errcodes.py
 * checks runner/runner.py, the C sources and docs/openapi.json against this list. */
#ifndef PYEXEC_ERRCODES_H
#define PYEXEC_ERRCODES_H

enum err_source {
	ERR_BY_SERVER, /* only the server answers it */
	ERR_BY_RUNNER, /* the runner in the jail may report it in its result frame */
};

/* The codes an /execute request can end with, in /metrics' order: X(code, source). */
#define ERRCODES_EXECUTE(X)                                                                        \
	X(invalid_json, ERR_BY_SERVER)                                                             \
	X(invalid_request, ERR_BY_SERVER)                                                          \
	X(payload_too_large, ERR_BY_SERVER)                                                        \
	X(unsupported_media_type, ERR_BY_SERVER)                                                   \
	X(syntax_error, ERR_BY_RUNNER)                                                             \
	X(no_main, ERR_BY_RUNNER)                                                                  \
	X(main_not_callable, ERR_BY_RUNNER)                                                        \
	X(exception, ERR_BY_RUNNER)                                                                \
	X(result_not_json, ERR_BY_RUNNER)                                                          \
	X(result_too_large, ERR_BY_RUNNER)                                                         \
	X(output_too_large, ERR_BY_SERVER)                                                         \
	X(invalid_output, ERR_BY_SERVER)                                                           \
	X(timeout, ERR_BY_SERVER)                                                                  \
	X(memory_limit, ERR_BY_RUNNER)                                                             \
	X(killed, ERR_BY_SERVER)                                                                   \
	X(busy, ERR_BY_SERVER)                                                                     \
	X(internal, ERR_BY_SERVER)                                                                 \
	X(shutting_down, ERR_BY_SERVER)

/* Codes of routing, for any path: not counted as /execute outcomes. */
#define ERRCODES_ROUTING(X)                                                                        \
	X(not_found, ERR_BY_SERVER)                                                                \
	X(method_not_allowed, ERR_BY_SERVER)

#endif
