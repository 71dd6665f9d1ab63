/* frame: reads the result frame the runner writes on the result channel. The bytes come from a
 * jail, so they are hostile: one header line (a JSON object, parsed strictly), then on success
 * the raw JSON of main()'s return value, which is validated but passed on byte for byte. */
#ifndef PYEXEC_FRAME_H
#define PYEXEC_FRAME_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "err.h"

/* The longest header line a frame may have; the result channel may hold this much beyond the
 * result itself. */
#define FRAME_HEADER_MAX ((size_t)256 * 1024)

struct frame {
	bool ok;
	const char *code;      /* on error: a contract code from the allowlist (static) */
	const char *message;   /* on error: points into header */
	const char *traceback; /* on error: points into header, or NULL */
	const char *result;    /* on success: points into the input bytes */
	size_t result_len;
	json_t *header; /* owned; release with frame_free */
};

/* Parses data[0..len). Returns -1 with e->message saying what was wrong when the frame is
 * malformed. On success the frame borrows from data and owns header. */
int frame_parse(const char *data, size_t len, struct frame *f, struct err *e);
void frame_free(struct frame *f);

#endif
