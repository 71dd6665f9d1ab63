#include "frame.h"

#include "json_check.h"

#include <string.h>

#define MESSAGE_MAX 4096
#define TRACEBACK_MAX ((size_t)128 * 1024)
#define RESULT_DEPTH_MAX 2048

/* The only codes a runner may report; anything else is a forgery or a bug. */
static const char *const script_codes[] = {
    "syntax_error",    "no_main",          "main_not_callable", "exception",
    "result_not_json", "result_too_large", "memory_limit",
};

static const char *code_lookup(const char *s)
{
	for (size_t i = 0; i < sizeof(script_codes) / sizeof(script_codes[0]); i++)
		if (strcmp(s, script_codes[i]) == 0)
			return script_codes[i];
	return NULL;
}

static int bad(struct err *e, const char *why)
{
	return err_set(e, 422, "result_not_json", "%s", why);
}

static int frame_parse_ok(const char *rest, size_t n, struct frame *f, struct err *e)
{
	size_t lead = 0;

	if (json_object_size(f->header) != 1)
		return bad(e, "success header has extra fields");
	/* The bytes are passed on as they are, so they are checked, not re-encoded. */
	if (!json_check(rest, n, RESULT_DEPTH_MAX))
		return bad(e, "result is not valid JSON");
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
