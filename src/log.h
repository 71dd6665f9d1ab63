/* log: one JSON object per line on stderr, in the shape Cloud Run's structured logging reads
 * (severity, message, extra fields). Never give it a script's source or output. */
#ifndef PYEXEC_LOG_H
#define PYEXEC_LOG_H

#include <jansson.h>

/* Logs severity + message and the fields of extra, which it steals (may be NULL). */
void log_json(const char *severity, json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_info(...) log_json("INFO", NULL, __VA_ARGS__)
#define log_warn(...) log_json("WARNING", NULL, __VA_ARGS__)
#define log_error(...) log_json("ERROR", NULL, __VA_ARGS__)

#endif
