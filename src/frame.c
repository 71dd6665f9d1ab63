#include "frame.h"

#include "errcodes.h"
#include "json_check.h"

#include <string.h>

#define MESSAGE_MAX 4096
#define TRACEBACK_MAX ((size_t)128 * 1024)
/* The answer wraps the result in one object; .NET's System.Text.Json reads 64 levels by
 * default, the fewest of the common parsers (Ruby's json 100, Rust's serde_json 128). */
#define RESULT_DEPTH_MAX 63

/* Every /execute code with who may report it; a runner may report only its own. */
#define CODE_ENTRY(name, source) {#name, source},
static const struct {
	const char *name;
	enum err_source source;
} codes[] = {ERRCODES_EXECUTE(CODE_ENTRY)};

/* The static name of a code the runner may report, or NULL: anything else is a forgery or a
 * bug. */
static const char *code_lookup(const char *s)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i].source == ERR_BY_RUNNER && strcmp(s, codes[i].name) == 0)
			return codes[i].name;
	return NULL;
}

static int bad(struct err *e, const char *why)
{
	return err_set(e, 422, "result_not_json", "%s", why);
}

/* A well-formed result that clients could not read: reported as the runner would have. */
static int unreadable(struct frame *f, const char *message)
{
	f->ok = false;
	f->code = "result_not_json";
	f->message = message;
	f->traceback = NULL;
	return 0;
}

static int frame_parse_ok(const char *rest, size_t n, struct frame *f, struct err *e)
{
	size_t lead = 0;

	if (json_object_size(f->header) != 1)
		return bad(e, "success header has extra fields");
	/* The bytes are passed on as they are, so they are checked, not re-encoded. A result that
	 * is JSON but that common parsers refuse by default is the script's error, not a forgery.
	 */
	switch (json_check(rest, n, RESULT_DEPTH_MAX)) {
	case JSON_OK:
		break;
	case JSON_TOO_DEEP:
		return unreadable(f,
		                  "main() returned a value nested more than 63 levels deep, which "
		                  "common JSON parsers refuse to read (.NET's stops at 64 levels "
		                  "with the answer's own); flatten it.");
	case JSON_NUMBER_BIG:
		return unreadable(f, "main() returned a number beyond the range of a double (about "
		                     "1.8e308), which common JSON parsers refuse to read (Python's "
		                     "json stops at 4300 digits, Go's and Rust's at a double's "
		                     "range); return it as a str, for example str(n).");
	default:
		return bad(e, "result is not valid JSON");
	}
	while (lead < n && rest[lead] && strchr(" \t\r\n", rest[lead]))
		lead++;
	if (rest[lead] == 'n')
		return bad(e, "result is null");
	f->ok = true;
	f->result = rest;
	f->result_len = n;
	return 0;
}

static int frame_parse_error(size_t rest_len, struct frame *f, struct err *e)
{
	const char *code, *message, *traceback = NULL;
	json_t *tb = json_object_get(f->header, "traceback");
	size_t fields = 3;

	if (rest_len)
		return bad(e, "error frame has trailing bytes");
	code = json_string_value(json_object_get(f->header, "error"));
	message = json_string_value(json_object_get(f->header, "message"));
	if (!code || !message || !(f->code = code_lookup(code)))
		return bad(e, "error frame lacks a known code or a message");
	if (json_string_length(json_object_get(f->header, "message")) > MESSAGE_MAX)
		return bad(e, "error message too long");
	if (tb) {
		traceback = json_string_value(tb);
		if (!traceback || json_string_length(tb) > TRACEBACK_MAX)
			return bad(e, "traceback is not a string of bounded size");
		fields++;
	}
	if (json_object_size(f->header) != fields)
		return bad(e, "error header has extra fields");
	f->message = message;
	f->traceback = traceback;
	return 0;
}

int frame_parse(const char *data, size_t len, struct frame *f, struct err *e)
{
	const char *nl = memchr(data, '\n', len < FRAME_HEADER_MAX ? len : FRAME_HEADER_MAX);
	const char *status;
	json_error_t jerr;

	memset(f, 0, sizeof(*f));
	if (!nl)
		return bad(e, "no header line");
	f->header = json_loadb(data, (size_t)(nl - data), JSON_REJECT_DUPLICATES, &jerr);
	if (!f->header || !json_is_object(f->header))
		return bad(e, "header is not a JSON object");
	status = json_string_value(json_object_get(f->header, "status"));
	if (status && strcmp(status, "ok") == 0)
		return frame_parse_ok(nl + 1, len - (size_t)(nl + 1 - data), f, e);
	if (status && strcmp(status, "error") == 0)
		return frame_parse_error(len - (size_t)(nl + 1 - data), f, e);
	return bad(e, "header status is neither ok nor error");
}

void frame_free(struct frame *f)
{
	json_decref(f->header);
	memset(f, 0, sizeof(*f));
}
