/* json_check: validates JSON text without building it. jansson cannot hold integers beyond
 * 64 bits nor every double, but Python's json writes them, and the result must go out exactly as
 * the runner encoded it; so the result is checked here for grammar, UTF-8 and depth only. */
#ifndef PYEXEC_JSON_CHECK_H
#define PYEXEC_JSON_CHECK_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0..n) is exactly one JSON value (RFC 8259, surrounding whitespace allowed), its
 * strings are valid UTF-8, and arrays and objects nest at most max_depth deep. */
bool json_check(const char *s, size_t n, int max_depth);

#endif
