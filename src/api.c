#include "api.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "frame.h"
#include "log.h"
#include "text.h"

#define EXAMPLE "{\"script\": \"def main():\\n    return 42\\n\"}"

/* ---- request ---- */

static bool token_is(const char *s, size_t n, const char *word)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	if (n >= 2 && s[0] == '"' && s[n - 1] == '"')
		s++, n -= 2;
	return n == strlen(word) && strncasecmp(s, word, n) == 0;
}

bool api_content_type_ok(const char *ct)
{
	size_t n;

	if (!ct)
		return false;
	n = strcspn(ct, ";");
	if (!token_is(ct, n, "application/json"))
		return false;
	/* Parameters: only a UTF-8 charset is acceptable, since that is what we decode. */
	for (const char *p = ct + n; *p == ';';) {
		const char *param = p + 1;
		size_t plen = strcspn(param, ";");
		const char *eq = memchr(param, '=', plen);
		if (eq && token_is(param, (size_t)(eq - param), "charset") &&
		    !token_is(eq + 1, plen - (size_t)(eq + 1 - param), "utf-8"))
			return false;
		p = param + plen;
	}
	return true;
}

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	default:
		return "null";
	}
}

static int parse_timeout(const json_t *t, const struct api_limits *lim, double *out, struct err *e)
{
	double v;

	if (!t) {
		*out = lim->timeout;
		return 0;
	}
	if (!json_is_number(t))
		return err_set(e, 400, "invalid_request",
		               "\"timeout\" must be a number of seconds, not %s.", json_kind(t));
	v = json_number_value(t);
	if (!(v > 0) || v > lim->max_timeout)
		return err_set(e, 400, "invalid_request",
		               "\"timeout\" must be above 0 and at most %g seconds (the server's "
		               "maximum), not %g.",
		               lim->max_timeout, v);
	*out = v;
	return 0;
}

/* ---- input: files and stdin ---- */

#define FILE_EXAMPLE "{\"path\": \"data/in.csv\", \"content\": \"<base64>\"}"

static int bad_file(struct err *e, size_t i, const char *what)
{
	return err_set(e, 400, "invalid_request",
	               "\"files\"[%zu] %s; send objects like " FILE_EXAMPLE ".", i, what);
}

/* Checks files[i] and adds its decoded size to *total. */
static int check_file(const json_t *f, size_t i, const struct api_limits *lim, size_t *total,
                      struct err *e)
{
	const json_t *path = json_object_get(f, "path"), *content = json_object_get(f, "content");
	const char *problem;
	long long size;

	if (!json_is_object(f) || json_object_size(f) != 2 || !json_is_string(path) ||
	    !json_is_string(content))
		return bad_file(e, i,
		                "must be an object with exactly a string \"path\" and a "
		                "string \"content\"");
	problem =
	    files_path_problem(json_string_value(path), json_string_length(path), &lim->files);
	if (problem)
		return err_set(e, 400, "invalid_request",
		               "The file path \"%.200s\" %s; send a relative path of at most %zu "
		               "bytes and %zu components, without '.', '..' or empty components.",
		               json_string_value(path), problem, lim->files.path_max,
		               lim->files.path_depth);
	size = files_b64_size(json_string_value(content), json_string_length(content));
	if (size < 0)
		return err_set(e, 400, "invalid_request",
		               "The content of \"%.200s\" is not standard base64 (A-Z, a-z, 0-9, "
		               "'+', '/', '=' padding, no line breaks; e.g. `base64 -w0`).",
		               json_string_value(path));
	*total += (size_t)size;
	return 0;
}

/* True when a and b name the same file, or one is a directory the other needs as a file. */
static bool paths_clash(const json_t *a, const json_t *b)
{
	const char *pa = json_string_value(a), *pb = json_string_value(b);
	size_t na = json_string_length(a), nb = json_string_length(b);
	size_t n = na < nb ? na : nb;

	return memcmp(pa, pb, n) == 0 && (na == nb || (na < nb ? pb : pa)[n] == '/');
}

static int check_files(const json_t *files, const struct api_limits *lim, size_t *total,
                       struct err *e)
{
	size_t n = json_array_size(files);

	if (!json_is_array(files))
		return err_set(e, 400, "invalid_request",
		               "\"files\" must be an array of objects like " FILE_EXAMPLE
		               ", not %s.",
		               json_kind(files));
	if (n > lim->files.in_files)
		return err_set(e, 413, "payload_too_large",
		               "The request sends %zu files, over the cap of %zu "
		               "(PYEXEC_INPUT_FILES); send fewer, for example one archive.",
		               n, lim->files.in_files);
	for (size_t i = 0; i < n; i++)
		if (check_file(json_array_get(files, i), i, lim, total, e) < 0)
			return -1;
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++) {
			const json_t *a = json_object_get(json_array_get(files, i), "path");
			const json_t *b = json_object_get(json_array_get(files, j), "path");
			if (paths_clash(a, b))
				return err_set(
				    e, 400, "invalid_request",
				    "The file paths \"%.200s\" and \"%.200s\" clash (the "
				    "same file, or a file where a directory must be); send "
				    "each path once.",
				    json_string_value(a), json_string_value(b));
		}
	return 0;
}

/* The header line of the runner's input; NULL when out of memory. */
static char *input_header(const json_t *files, size_t script_len, size_t stdin_len)
{
	json_t *list = json_array(), *h;
	char *text;

	for (size_t i = 0; list && i < json_array_size(files); i++) {
		const json_t *f = json_array_get(files, i);
		const json_t *content = json_object_get(f, "content");
		long long size =
		    files_b64_size(json_string_value(content), json_string_length(content));
		json_array_append_new(list, json_pack("[O,I]", (json_t *)json_object_get(f, "path"),
		                                      (json_int_t)size));
	}
	h = json_pack("{s:I,s:I,s:o}", "script", (json_int_t)script_len, "stdin",
	              (json_int_t)stdin_len, "files", list);
	text = h ? json_dumps(h, JSON_COMPACT) : NULL;
	json_decref(h);
	return text;
}

static int build_input(const json_t *files, const json_t *in, const struct api_limits *lim,
                       struct job *job, struct err *e)
{
	size_t total = 0, stdin_len = in ? json_string_length(in) : 0, hlen;
	char *header, *p;

	if (in && !json_is_string(in))
		return err_set(e, 400, "invalid_request",
		               "\"stdin\" must be a string (the script's standard input), not %s.",
		               json_kind(in));
	if (files && check_files(files, lim, &total, e) < 0)
		return -1;
	if (total > lim->files.in_bytes || stdin_len > lim->files.in_bytes - total)
		return err_set(
		    e, 413, "payload_too_large",
		    "The files and stdin hold %zu bytes together (decoded), over the cap "
		    "of %zu (PYEXEC_INPUT_BYTES); send less data.",
		    total + stdin_len, lim->files.in_bytes);
	header = input_header(files, job->script_len, stdin_len);
	if (!header)
		return err_set(e, 500, "internal", "The server is out of memory; try again.");
	hlen = strlen(header);
	job->input_len = hlen + 1 + job->script_len + stdin_len + total;
	job->input = p = malloc(job->input_len);
	if (job->input) {
		memcpy(p, header, hlen);
		p[hlen] = '\n';
		p += hlen + 1;
		memcpy(p, job->script, job->script_len);
		p += job->script_len;
		if (stdin_len)
			memcpy(p, json_string_value(in), stdin_len);
		p += stdin_len;
		for (size_t i = 0; i < json_array_size(files); i++) {
			const json_t *c = json_object_get(json_array_get(files, i), "content");
			files_b64_decode(json_string_value(c), json_string_length(c),
			                 (unsigned char *)p);
			p += files_b64_size(json_string_value(c), json_string_length(c));
		}
	}
	free(header);
	if (!job->input)
		return err_set(e, 500, "internal", "The server is out of memory; try again.");
	return 0;
}

static int parse_fields(json_t *root, const struct api_limits *lim, struct job *job, struct err *e)
{
	const char *key;
	json_t *val, *script;

	json_object_foreach(root, key, val)
	{
		if (strcmp(key, "script") != 0 && strcmp(key, "timeout") != 0 &&
		    strcmp(key, "files") != 0 && strcmp(key, "stdin") != 0)
			return err_set(
			    e, 400, "invalid_request",
			    "Unknown field \"%.64s\"; the accepted fields are \"script\", "
			    "\"timeout\", \"files\" and \"stdin\".",
			    key);
	}
	script = json_object_get(root, "script");
	if (!script)
		return err_set(e, 400, "invalid_request",
		               "The field \"script\" is required: Python source that defines "
		               "main(), e.g. %s.",
		               EXAMPLE);
	if (!json_is_string(script))
		return err_set(e, 400, "invalid_request",
		               "\"script\" must be a string of Python source, not %s.",
		               json_kind(script));
	if (json_string_length(script) == 0)
		return err_set(e, 400, "invalid_request",
		               "\"script\" is empty; send Python source that defines main().");
	if (parse_timeout(json_object_get(root, "timeout"), lim, &job->timeout, e) < 0)
		return -1;
	job->script_len = json_string_length(script);
	job->script = malloc(job->script_len + 1);
	if (!job->script)
		return err_set(e, 500, "internal", "The server is out of memory; try again.");
	memcpy(job->script, json_string_value(script), job->script_len + 1);
	return build_input(json_object_get(root, "files"), json_object_get(root, "stdin"), lim, job,
	                   e);
}

int api_request_parse(const char *body, size_t len, const struct api_limits *lim, struct job *job,
                      struct err *e)
{
	json_error_t jerr;
	json_t *root;
	int rc;

	memset(job, 0, sizeof(*job));
	root =
	    json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	if (!root)
		return err_set(e, 400, "invalid_json",
		               "The request body is not valid UTF-8 JSON (%s, line %d column %d); "
		               "send an object like %s.",
		               jerr.text, jerr.line, jerr.column, EXAMPLE);
	if (!json_is_object(root))
		rc = err_set(e, 400, "invalid_request",
		             "The request body must be a JSON object like %s, not %s.", EXAMPLE,
		             json_kind(root));
	else
		rc = parse_fields(root, lim, job, e);
	json_decref(root);
	if (rc < 0)
		api_job_free(job);
	return rc;
}

int api_job_script(const char *script, double timeout, struct job *job, struct err *e)
{
	static const struct api_limits none = {0};

	memset(job, 0, sizeof(*job));
	job->timeout = timeout;
	job->script_len = strlen(script);
	job->script = strdup(script);
	if (!job->script)
		return err_set(e, 500, "internal", "out of memory");
	if (build_input(NULL, NULL, &none, job, e) < 0) {
		api_job_free(job);
		return -1;
	}
	return 0;
}

void api_job_free(struct job *job)
{
	free(job->script);
	free(job->input);
	memset(job, 0, sizeof(*job));
}

/* ---- response ---- */

static int response_from_json(struct response *r, int status, const char *code, json_t *o)
{
	r->status = status;
	r->code = code;
	r->body = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!r->body)
		return -1;
	r->len = strlen(r->body);
	return 0;
}

/* A JSON string from bytes that may not be valid UTF-8 (cut: they were truncated). */
static json_t *json_text(const char *s, size_t n, bool cut)
{
	size_t len;
	char *clean = text_utf8_clean(s, n, cut, &len);
	json_t *v = clean ? json_stringn_nocheck(clean, len) : NULL;

	free(clean);
	return v;
}

static json_t *error_object(const char *code, const char *message)
{
	json_t *o = json_object();

	json_object_set_new(o, "error", json_string(code));
	/* Messages may quote user input cut at a byte limit: clean them. */
	json_object_set_new(o, "message", json_text(message, strlen(message), true));
	return o;
}

int api_error_response(struct response *r, int status, const char *code, const char *message)
{
	memset(r, 0, sizeof(*r));
	return response_from_json(r, status, code, error_object(code, message));
}

static json_t *run_stdout(const struct run_result *run)
{
	return json_text(run->out.data ? run->out.data : "", run->out.len, run->out.truncated);
}

static int script_error(struct response *r, const struct run_result *run, const char *code,
                        const char *message, const char *traceback)
{
	json_t *o = error_object(code, message);

	json_object_set_new(o, "stdout", run_stdout(run));
	if (traceback)
		json_object_set_new(o, "traceback", json_text(traceback, strlen(traceback), false));
	return response_from_json(r, 422, code, o);
}

static int ok_response(struct response *r, const struct run_result *run, const struct frame *f)
{
	json_t *out = run_stdout(run);
	char *out_text = out ? json_dumps(out, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	size_t cap;

	json_decref(out);
	if (!out_text)
		return -1;
	/* The result's bytes were validated by frame_parse and go out as the runner encoded them.
	 */
	cap = f->result_len + strlen(out_text) + 32;
	r->body = malloc(cap);
	if (r->body)
		r->len = (size_t)snprintf(r->body, cap, "{\"result\":%.*s,\"stdout\":%s}",
		                          (int)f->result_len, f->result, out_text);
	free(out_text);
	r->status = 200;
	r->code = "ok";
	return r->body ? 0 : -1;
}

static int memory_error(struct response *r, const struct run_result *run,
                        const struct api_limits *lim)
{
	char msg[256];

	snprintf(msg, sizeof(msg),
	         "The script ran out of memory (the limit is %lu MiB); use less memory, for "
	         "example by processing the data in smaller pieces.",
	         lim->memory_mb);
	return script_error(r, run, "memory_limit", msg, NULL);
}

static int too_large(struct response *r, const struct run_result *run, const struct api_limits *lim)
{
	char msg[256];

	snprintf(msg, sizeof(msg),
	         "main() returned a value whose JSON encoding is over the %zu-byte limit; return "
	         "less data.",
	         lim->result_max);
	return script_error(r, run, "result_too_large", msg, NULL);
}

/* Adds "files" to an answer's JSON object text (it ends with its closing brace). */
static int add_files(struct response *r, json_t *files)
{
	char *text = json_dumps(files, JSON_COMPACT), *body;
	size_t n;

	json_decref(files);
	if (!text || !r->body || r->len == 0 || r->body[r->len - 1] != '}') {
		free(text);
		return -1;
	}
	n = strlen(text);
	body = realloc(r->body, r->len + n + 12);
	if (!body) {
		free(text);
		return -1;
	}
	r->body = body;
	r->len += (size_t)sprintf(body + r->len - 1, ",\"files\":%s}", text) - 1;
	free(text);
	return 0;
}

static int frame_response(struct response *r, const struct run_result *run,
                          const struct api_limits *lim)
{
	json_t *files = NULL;
	struct frame f;
	struct err e;
	int rc;

	/* A run that left nothing under output/ answers exactly as v1. */
	if (run->files.len || run->files.truncated) {
		files = run->files.truncated
		            ? NULL
		            : files_output_parse(run->files.data, run->files.len, &lim->files, &e);
		if (run->files.truncated)
			err_set(&e, 500, "internal", "the run's output records are over their cap");
		if (!files && e.status == 422)
			return script_error(r, run, e.code, e.message, NULL);
		if (!files)
			return api_error_response(r, 500, "internal",
			                          "The server could not read the files the script "
			                          "left; this is a problem with the server (the "
			                          "server log has details).");
		if (json_array_size(files) == 0) {
			json_decref(files);
			files = NULL;
		}
	}

	if (frame_parse(run->chan.data, run->chan.len, &f, &e) < 0) {
		/* The client learns only that the bytes were unreadable; the operator, why. */
		log_warn("a run's result frame was refused: %s", e.message);
		rc = script_error(r, run, "result_not_json",
		                  "The script wrote bytes the server cannot read as a result onto "
		                  "its result channel; return the value from main() instead of "
		                  "writing to inherited file descriptors.",
		                  NULL);
	} else if (f.ok && f.result_len > lim->result_max)
		rc = too_large(r, run, lim);
	else if (f.ok)
		rc = ok_response(r, run, &f);
	else if (strcmp(f.code, "memory_limit") == 0)
		rc = memory_error(r, run, lim);
	else
		rc = script_error(r, run, f.code, f.message, f.traceback);
	frame_free(&f);
	if (files && rc == 0 && r->status != 500)
		return add_files(r, files);
	json_decref(files);
	return rc;
}

static int no_frame_response(struct response *r, const struct run_result *run,
                             const struct job *job, const struct api_limits *lim)
{
	char msg[256];
	int code = run->exit_code;

	if (run->memory_hit && code > 128)
		return memory_error(r, run, lim);
	if (code > 128 && code < 128 + 65) {
		int sig = code - 128;
		const char *name = sigabbrev_np(sig);
		if (sig == SIGXCPU) {
			snprintf(msg, sizeof(msg),
			         "The script used all the CPU time it had (about %g s); make it "
			         "faster or send a larger \"timeout\".",
			         job->timeout);
			return script_error(r, run, "timeout", msg, NULL);
		}
		snprintf(msg, sizeof(msg),
		         "The script was killed by signal SIG%s before main() returned%s.",
		         name ? name : "?",
		         sig == SIGKILL ? " (it may have passed its memory or process limit)" : "");
		return script_error(r, run, "killed", msg, NULL);
	}
	snprintf(msg, sizeof(msg),
	         "The script exited with status %d before main() returned; return a value from "
	         "main() instead of exiting.",
	         code);
	return script_error(r, run, "exception", msg, NULL);
}

int api_outcome_response(const struct run_result *run, const struct job *job,
                         const struct api_limits *lim, struct response *r)
{
	memset(r, 0, sizeof(*r));
	r->stdout_truncated = run->out.truncated;
	if (!run->ready)
		return api_error_response(r, 500, "internal",
		                          "The sandbox could not start; this is a problem with the "
		                          "server, not your script (the server log has details).");
	if (run->end == RUN_CANCELLED)
		return api_error_response(r, 503, "shutting_down",
		                          "The server is shutting down and stopped this run; send "
		                          "it again.");
	if (run->end == RUN_LOST)
		return api_error_response(
		    r, 500, "internal",
		    "The sandbox failed during the run; this is a problem with "
		    "the server, not your script: send it again.");
	if (run->end == RUN_TIMEOUT) {
		char msg[256];
		snprintf(msg, sizeof(msg),
		         "The script did not finish within its %g s time limit; make it faster "
		         "or send a larger \"timeout\" (at most %g s).",
		         job->timeout, lim->max_timeout);
		return script_error(r, run, "timeout", msg, NULL);
	}
	if (run->chan.truncated)
		return too_large(r, run, lim);
	/* The runner exits 0 right after its frame; a frame followed by a death or an exit is
	 * not trusted. */
	if (run->chan.len && run->exit_code == 0)
		return frame_response(r, run, lim);
	return no_frame_response(r, run, job, lim);
}

void api_response_free(struct response *r)
{
	free(r->body);
	memset(r, 0, sizeof(*r));
}
