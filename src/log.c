#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void log_json(const char *severity, json_t *extra, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	json_t *o = json_object();
	char *line;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_set_new(o, "severity", json_string(severity));
	json_object_set_new(o, "message", json_string(msg));
	if (extra) {
		json_object_update(o, extra);
		json_decref(extra);
	}
	line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
	if (line) {
		/* One write per line keeps lines whole when threads log at once. */
		size_t n = strlen(line);
		line[n] = '\n';
		(void)!write(STDERR_FILENO, line, n + 1);
		free(line);
	}
	json_decref(o);
}
