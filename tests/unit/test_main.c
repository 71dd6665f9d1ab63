/* Unit tests for the pure modules: api (request parsing, responses), frame, text, buf, config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "buf.h"
#include "config.h"
#include "errcodes.h"
#include "frame.h"
#include "json_check.h"
#include "metrics.h"
#include "pool.h"
#include "static.h"
#include "text.h"
#include "unit.h"

static const struct api_limits lim = {
    .timeout = 10, .max_timeout = 60, .result_max = 100, .memory_mb = 512};

static int parse(const char *body, struct job *job, struct err *e)
{
	return api_request_parse(body, strlen(body), &lim, job, e);
}

static void expect_reject(const char *body, int status, const char *code, const char *in_message)
{
	struct job job;
	struct err e;

	assert_int_equal(parse(body, &job, &e), -1);
	assert_int_equal(e.status, status);
	assert_string_equal(e.code, code);
	if (in_message)
		assert_non_null(strstr(e.message, in_message));
	assert_null(job.script);
}

static void request_valid(void **state)
{
	struct job job;
	struct err e;

	(void)state;
	assert_int_equal(parse("{\"script\": \"def main(): return 1\"}", &job, &e), 0);
	assert_string_equal(job.script, "def main(): return 1");
	assert_true(job.timeout == 10);
	api_job_free(&job);
	assert_int_equal(parse("{\"script\": \"x\", \"timeout\": 2.5}", &job, &e), 0);
	assert_true(job.timeout == 2.5);
	api_job_free(&job);
	assert_int_equal(parse("{\"script\": \"a\\u0000b\", \"timeout\": 60}", &job, &e), 0);
	assert_int_equal(job.script_len, 3);
	assert_memory_equal(job.script, "a\0b", 3);
	api_job_free(&job);
}

static void request_invalid_json(void **state)
{
	(void)state;
	expect_reject("", 400, "invalid_json", NULL);
	expect_reject("{\"script\": ", 400, "invalid_json", NULL);
	expect_reject("{\"script\": \"\xff\"}", 400, "invalid_json", NULL);
	expect_reject("{\"script\": \"a\", \"script\": \"b\"}", 400, "invalid_json", NULL);
	expect_reject("{\"script\": \"a\"} trailing", 400, "invalid_json", NULL);
}

static void request_invalid_fields(void **state)
{
	(void)state;
	expect_reject("[]", 400, "invalid_request", "object");
	expect_reject("\"def main(): pass\"", 400, "invalid_request", "object");
	expect_reject("{}", 400, "invalid_request", "\"script\" is required");
	expect_reject("{\"script\": 3}", 400, "invalid_request", "not a number");
	expect_reject("{\"script\": \"\"}", 400, "invalid_request", "empty");
	expect_reject("{\"scirpt\": \"x\"}", 400, "invalid_request", "scirpt");
	expect_reject("{\"script\": \"x\", \"timeout\": 0}", 400, "invalid_request", "timeout");
	expect_reject("{\"script\": \"x\", \"timeout\": -1}", 400, "invalid_request", "timeout");
	expect_reject("{\"script\": \"x\", \"timeout\": 61}", 400, "invalid_request", "at most 60");
	expect_reject("{\"script\": \"x\", \"timeout\": \"5\"}", 400, "invalid_request", "string");
	expect_reject("{\"script\": \"x\", \"timeout\": true}", 400, "invalid_request", "boolean");
	expect_reject("{\"script\": \"x\", \"timeout\": null}", 400, "invalid_request", "null");
}

static void content_type(void **state)
{
	(void)state;
	assert_true(api_content_type_ok("application/json"));
	assert_true(api_content_type_ok("Application/JSON; charset=utf-8"));
	assert_true(api_content_type_ok("application/json;charset=\"UTF-8\""));
	assert_false(api_content_type_ok(NULL));
	assert_false(api_content_type_ok("text/plain"));
	assert_false(api_content_type_ok("application/jsonx"));
	assert_false(api_content_type_ok("application/json; charset=latin-1"));
	assert_false(api_content_type_ok("application/x-www-form-urlencoded"));
}

/* A run_result as the jail would leave it. */
static void fake_run(struct run_result *r, const char *chan, const char *out, bool out_cut)
{
	memset(r, 0, sizeof(*r));
	r->ready = true;
	buf_init(&r->chan, 1 << 20);
	buf_init(&r->out, 1 << 20);
	buf_append(&r->chan, chan, strlen(chan));
	buf_append(&r->out, out, strlen(out));
	r->out.truncated = out_cut;
}

static char *respond(const char *chan, const char *out, int *status)
{
	struct job job = {.timeout = 3};
	struct run_result run;
	struct response r;
	char *body;

	fake_run(&run, chan, out, false);
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	run_result_free(&run);
	*status = r.status;
	body = r.body;
	return body;
}

static void outcome_ok_exact(void **state)
{
	int status;
	char *body = respond("{\"status\":\"ok\"}\n{\"answer\":42}", "hi\n", &status);

	(void)state;
	assert_int_equal(status, 200);
	assert_string_equal(body, "{\"result\":{\"answer\":42},\"stdout\":\"hi\\n\"}");
	free(body);
	/* Numbers pass through as Python wrote them, not re-rounded nor narrowed. */
	body =
	    respond("{\"status\":\"ok\"}\n[0.1,1e300,123456789012345678901234567890]", "", &status);
	assert_int_equal(status, 200);
	assert_string_equal(
	    body, "{\"result\":[0.1,1e300,123456789012345678901234567890],\"stdout\":\"\"}");
	free(body);
}

static void outcome_stdout_hostile(void **state)
{
	int status;
	char *body = respond("{\"status\":\"ok\"}\n1",
	                     "a\xff\x00"
	                     "b",
	                     &status);

	(void)state;
	/* strlen stops at the NUL: build the buffer by hand for the NUL case below. */
	assert_int_equal(status, 200);
	assert_string_equal(body, "{\"result\":1,\"stdout\":\"a\xef\xbf\xbd\"}");
	free(body);
	{
		struct job job = {.timeout = 3};
		struct run_result run;
		struct response r;
		fake_run(&run, "{\"status\":\"ok\"}\n1", "", false);
		buf_append(&run.out, "a\0b\xc3", 4);
		run.out.truncated = true;
		assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
		assert_string_equal(r.body, "{\"result\":1,\"stdout\":\"a\\u0000b\"}");
		assert_true(r.stdout_truncated);
		api_response_free(&r);
		run_result_free(&run);
	}
}

static void outcome_script_errors(void **state)
{
	int status;
	char *body;

	(void)state;
	body = respond("{\"status\":\"error\",\"error\":\"exception\",\"message\":\"m\","
	               "\"traceback\":\"t\"}\n",
	               "x", &status);
	assert_int_equal(status, 422);
	assert_string_equal(body, "{\"error\":\"exception\",\"message\":\"m\",\"stdout\":\"x\","
	                          "\"traceback\":\"t\"}");
	free(body);
	/* The runner cannot choose a code outside the allowlist, nor add fields. */
	const char *forged[] = {
	    "{\"status\":\"error\",\"error\":\"internal\",\"message\":\"m\"}\n",
	    "{\"status\":\"error\",\"error\":\"exception\",\"message\":\"m\",\"x\":1}\n",
	    "{\"status\":\"ok\",\"x\":1}\n1",
	    "{\"status\":\"ok\"}\n1 2",
	    "{\"status\":\"ok\"}\nnull",
	    "{\"status\":\"ok\"}\n",
	    "{\"status\":\"ok\"}",
	    "garbage",
	    "{\"status\":\"ok\"}\n\"\xff\"",
	};
	for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
		body = respond(forged[i], "", &status);
		assert_int_equal(status, 422);
		assert_non_null(strstr(body, "\"error\":\"result_not_json\""));
		free(body);
	}
}

static void outcome_limits(void **state)
{
	struct job job = {.timeout = 3};
	struct run_result run;
	struct response r;
	char big[200];

	(void)state;
	fake_run(&run, "", "partial", false);
	run.end = RUN_TIMEOUT;
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_int_equal(r.status, 422);
	assert_non_null(strstr(r.body, "\"error\":\"timeout\""));
	assert_non_null(strstr(r.body, "\"stdout\":\"partial\""));
	api_response_free(&r);
	run_result_free(&run);

	fake_run(&run, "", "", false);
	run.exit_code = 128 + 9;
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_non_null(strstr(r.body, "\"error\":\"killed\""));
	assert_non_null(strstr(r.body, "SIGKILL"));
	api_response_free(&r);
	run_result_free(&run);

	fake_run(&run, "", "", false);
	run.exit_code = 3;
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_non_null(strstr(r.body, "\"error\":\"exception\""));
	assert_non_null(strstr(r.body, "status 3"));
	api_response_free(&r);
	run_result_free(&run);

	/* The server's own cap holds even when a forged frame claims success. */
	memset(big, '1', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	fake_run(&run, "{\"status\":\"ok\"}\n", "", false);
	buf_append(&run.chan, big, strlen(big));
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_non_null(strstr(r.body, "\"error\":\"result_too_large\""));
	api_response_free(&r);
	run_result_free(&run);

	fake_run(&run, "{\"status\":\"error\",\"error\":\"memory_limit\",\"message\":\"x\"}\n", "",
	         false);
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_non_null(strstr(r.body, "512 MiB"));
	api_response_free(&r);
	run_result_free(&run);

	fake_run(&run, "", "", false);
	run.ready = false;
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_int_equal(r.status, 500);
	assert_non_null(strstr(r.body, "\"error\":\"internal\""));
	api_response_free(&r);
	run_result_free(&run);
}

static void error_message_cut_utf8(void **state)
{
	struct response r;
	char msg[8] = "ab\xc3"; /* a message cut inside a character */

	(void)state;
	assert_int_equal(api_error_response(&r, 400, "invalid_request", msg), 0);
	assert_string_equal(r.body, "{\"error\":\"invalid_request\",\"message\":\"ab\"}");
	api_response_free(&r);
}

/* Cleans s and compares the whole output, so a count of replacements is checked exactly. */
static void expect_clean(const char *s, size_t n, bool cut, const char *want)
{
	size_t len;
	char *out = text_utf8_clean(s, n, cut, &len);

	assert_non_null(out);
	assert_string_equal(out, want);
	assert_int_equal(len, strlen(want));
	free(out);
}

#define FFFD "\xef\xbf\xbd"

static void text_clean(void **state)
{
	(void)state;
	expect_clean("h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10, false,
	             "h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	/* One U+FFFD per maximal subpart, as Unicode recommends and Python's decode does: an
	 * overlong, a surrogate or a value past U+10FFFF starts no valid sequence, so each of its
	 * bytes is one; a stray continuation is one. */
	expect_clean("\xc0\xaf|", 3, false, FFFD FFFD "|");
	expect_clean("\xed\xa0\x80|", 4, false, FFFD FFFD FFFD "|");
	expect_clean("\xf4\x90\x80\x80|", 5, false, FFFD FFFD FFFD FFFD "|");
	expect_clean("a\x80"
	             "b",
	             3, false, "a" FFFD "b");
	expect_clean("\xff\xfe", 2, false, FFFD FFFD);
	/* Cut by the cap: an incomplete sequence at the very end is dropped, not replaced. */
	expect_clean("ab\xe2\x82", 4, true, "ab");
	expect_clean("ab\xe2\x82", 4, false, "ab" FFFD FFFD);
}

static void buf_caps(void **state)
{
	struct buf b;

	(void)state;
	buf_init(&b, 5);
	assert_int_equal(buf_append(&b, "abc", 3), 0);
	assert_false(b.truncated);
	assert_int_equal(buf_append(&b, "defg", 4), 0);
	assert_true(b.truncated);
	assert_int_equal(b.len, 5);
	assert_string_equal(b.data, "abcde");
	buf_free(&b);
}

static void frame_header_needs_newline(void **state)
{
	struct frame f;
	struct err e;

	(void)state;
	assert_int_equal(frame_parse("{\"status\":\"ok\"}", 15, &f, &e), -1);
	assert_string_equal(e.code, "result_not_json");
	assert_string_equal(e.message, "no header line");
	frame_free(&f);
	/* the newline is there, but past the first len bytes */
	assert_int_equal(frame_parse("{\"status\":\"ok\"}\n1", 15, &f, &e), -1);
	assert_string_equal(e.message, "no header line");
	frame_free(&f);
}

/* Nesting deeper than the parser's limit is refused, not recursed into: a script's error,
 * named, not a forgery. */
static void frame_result_too_deep(void **state)
{
	struct frame f;
	struct err e;
	const char *deep_prefix = "{\"status\":\"ok\"}\n";
	size_t depth = 5000, n = strlen(deep_prefix) + 2 * depth;
	char *deep = malloc(n + 1);

	(void)state;
	assert_non_null(deep);
	strcpy(deep, deep_prefix);
	memset(deep + strlen(deep_prefix), '[', depth);
	memset(deep + strlen(deep_prefix) + depth, ']', depth);
	deep[n] = '\0';
	assert_int_equal(frame_parse(deep, n, &f, &e), 0);
	assert_false(f.ok);
	assert_string_equal(f.code, "result_not_json");
	assert_non_null(strstr(f.message, "nested"));
	frame_free(&f);
	free(deep);
}

/* The one list of codes: a runner may report exactly its own, and /metrics counts each. */
#define CODE_CASE(name, source) {#name, source},
static const struct {
	const char *name;
	enum err_source source;
} all_codes[] = {ERRCODES_EXECUTE(CODE_CASE)};

static void errcodes_frame_and_metrics(void **state)
{
	struct metrics *m = metrics_new();
	struct metrics_gauges g = {0};
	char *text;

	(void)state;
	assert_non_null(m);
	for (size_t i = 0; i < sizeof(all_codes) / sizeof(all_codes[0]); i++) {
		char frame[128], line[128];
		struct frame f;
		struct err e;
		int n = snprintf(frame, sizeof(frame),
		                 "{\"status\":\"error\",\"error\":\"%s\",\"message\":\"m\"}\n",
		                 all_codes[i].name);

		if (all_codes[i].source == ERR_BY_RUNNER) {
			assert_int_equal(frame_parse(frame, (size_t)n, &f, &e), 0);
			assert_string_equal(f.code, all_codes[i].name);
		} else {
			assert_int_equal(frame_parse(frame, (size_t)n, &f, &e), -1);
		}
		frame_free(&f);
		metrics_run(m, all_codes[i].name, -1);
		text = metrics_render(m, &g);
		assert_non_null(text);
		snprintf(line, sizeof(line), "pyexec_requests_total{outcome=\"%s\"} 1\n",
		         all_codes[i].name);
		assert_non_null(strstr(text, line));
		free(text);
	}
	metrics_free(m);
}

static void json_check_grammar(void **state)
{
	const char *good[] = {
	    "1",     "-0.5e+10", "123456789012345678901234567890",      "\"a\\u00e9\\n\"",
	    "[]",    "{}",       " [1, {\"a\": [true, false, null]}] ", "\"h\xc3\xa9\"",
	    "1E300", "-1e-400",
	};
	const char *bad[] = {
	    "",       "01",    "1.",       ".5",      "+1",        "[1,]",     "{\"a\"}",
	    "{1: 2}", "[1 2]", "\"\x01\"", "\"\\x\"", "\"\\u12\"", "\"\xff\"", "tru",
	    "nul",    "NaN",   "Infinity", "1 2",     "[",         "\"abc",
	};
	char deep[64], big[JSON_NUMBER_TEXT_MAX + 2];

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_int_equal(json_check(good[i], strlen(good[i]), 8), JSON_OK);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(json_check(bad[i], strlen(bad[i]), 8), JSON_INVALID);
	memset(deep, '[', 9);
	memset(deep + 9, ']', 9);
	assert_int_equal(json_check(deep, 18, 8), JSON_TOO_DEEP);
	assert_int_equal(json_check(deep + 1, 16, 8), JSON_OK);
	assert_int_equal(json_check("\"a\0b\"", 5, 8), JSON_INVALID); /* raw NUL in a string */
	/* Numbers parsers read into doubles: beyond its range, or a text too long to bother. */
	assert_int_equal(json_check("[1E400]", 7, 8), JSON_NUMBER_BIG);
	assert_int_equal(json_check("-1e309", 6, 8), JSON_NUMBER_BIG);
	memset(big, '9', sizeof(big) - 1);
	assert_int_equal(json_check(big, 308, 8), JSON_OK);
	assert_int_equal(json_check(big, 309, 8), JSON_NUMBER_BIG);
	big[0] = '0';
	big[1] = '.';
	assert_int_equal(json_check(big, JSON_NUMBER_TEXT_MAX, 8), JSON_OK);
	assert_int_equal(json_check(big, JSON_NUMBER_TEXT_MAX + 1, 8), JSON_NUMBER_BIG);
}

static void frame_then_death_not_trusted(void **state)
{
	struct job job = {.timeout = 3};
	struct run_result run;
	struct response r;

	(void)state;
	fake_run(&run, "{\"status\":\"ok\"}\n\"forged\"", "", false);
	run.exit_code = 128 + 9;
	assert_int_equal(api_outcome_response(&run, &job, &lim, &r), 0);
	assert_int_equal(r.status, 422);
	assert_non_null(strstr(r.body, "\"error\":\"killed\""));
	api_response_free(&r);
	run_result_free(&run);
}

/* The config tests start from an environment with no PYEXEC_* (nor PORT) and leave it so,
 * whatever the developer has set and whether or not an assertion failed. */
static char **saved_env;

static void env_clear(void)
{
	for (size_t i = 0; environ[i];) {
		char name[256];
		size_t n = strcspn(environ[i], "=");

		if ((strncmp(environ[i], "PYEXEC_", 7) != 0 &&
		     strncmp(environ[i], "PORT=", 5) != 0) ||
		    n >= sizeof(name)) {
			i++;
			continue;
		}
		memcpy(name, environ[i], n);
		name[n] = '\0';
		unsetenv(name); /* environ shifts down: look at index i again */
	}
}

static int env_setup(void **state)
{
	size_t n = 0;

	(void)state;
	while (environ[n])
		n++;
	saved_env = calloc(n + 1, sizeof(*saved_env));
	for (size_t i = 0; saved_env && i < n; i++)
		saved_env[i] = strdup(environ[i]);
	env_clear();
	return saved_env ? 0 : -1;
}

static int env_teardown(void **state)
{
	(void)state;
	env_clear();
	for (size_t i = 0; saved_env && saved_env[i]; i++) {
		char *eq = strchr(saved_env[i], '=');

		if (eq && (strncmp(saved_env[i], "PYEXEC_", 7) == 0 ||
		           strncmp(saved_env[i], "PORT=", 5) == 0)) {
			*eq = '\0';
			setenv(saved_env[i], eq + 1, 1);
		}
		free(saved_env[i]);
	}
	free(saved_env);
	saved_env = NULL;
	return 0;
}

/* A developer's own settings must not reach config_load in these tests. */
static void config_ignores_outer_env(void **state)
{
	struct config c;
	struct err e;
	char *argv[] = {"pyexecd", NULL};

	(void)state;
	assert_null(getenv("PYEXEC_TIMEOUT"));
	assert_null(getenv("PORT"));
	assert_int_equal(config_load(&c, 1, argv, &e), 0);
	assert_true(c.timeout == 10);
}

/* The pool's one cap, as config checks it. */
static void config_pool_cap(void **state)
{
	struct config c;
	struct err e;
	char cap[16], over[16];
	char *at_cap[] = {"pyexecd", "--pool", cap, NULL};
	char *too_many[] = {"pyexecd", "--pool", over, NULL};

	(void)state;
	snprintf(cap, sizeof(cap), "%d", POOL_MAX);
	snprintf(over, sizeof(over), "%d", POOL_MAX + 1);
	assert_int_equal(config_load(&c, 3, at_cap, &e), 0);
	assert_int_equal(c.pool, POOL_MAX);
	assert_int_equal(config_load(&c, 3, too_many, &e), -1);
	assert_non_null(strstr(e.message, cap));
}

static void config_env_and_flags(void **state)
{
	struct config c;
	struct err e;
	char *argv[] = {"pyexecd", "--port", "9000", "--memory-mb", "256", NULL};
	char *bad[] = {"pyexecd", "--timeout", "abc", NULL};
	char *unknown[] = {"pyexecd", "--nope", "1", NULL};

	(void)state;
	setenv("PYEXEC_MAX_TIMEOUT", "30", 1);
	setenv("PORT", "7000", 1);
	assert_int_equal(config_load(&c, 5, argv, &e), 0);
	assert_int_equal(c.port, 9000); /* the flag wins over PORT */
	assert_int_equal(c.memory_mb, 256);
	assert_true(c.max_timeout == 30);
	assert_true(c.timeout == 10);
	assert_int_equal(config_load(&c, 3, bad, &e), -1);
	assert_non_null(strstr(e.message, "--timeout"));
	assert_int_equal(config_load(&c, 3, unknown, &e), -1);
	setenv("PYEXEC_TIMEOUT", "40", 1);
	assert_int_equal(config_load(&c, 1, argv, &e), -1);
	assert_non_null(strstr(e.message, "PYEXEC_MAX_TIMEOUT"));
}

static void config_isolation(void **state)
{
	struct config c;
	struct err e;
	char *argv[] = {"pyexecd", NULL};
	char *restricted[] = {"pyexecd", "--isolation", "restricted", "--run-uid", "70000", NULL};

	(void)state;
	assert_int_equal(config_load(&c, 1, argv, &e), 0);
	assert_string_equal(c.isolation, "full"); /* never weaker unless asked */
	assert_int_equal(c.run_uid, 200000);
	assert_int_equal(config_load(&c, 5, restricted, &e), 0);
	assert_string_equal(c.isolation, "restricted");
	assert_int_equal(c.run_uid, 70000);
	setenv("PYEXEC_ISOLATION", "none", 1);
	assert_int_equal(config_load(&c, 1, argv, &e), -1);
	assert_non_null(strstr(e.message, "full, restricted or auto"));
	setenv("PYEXEC_ISOLATION", "auto", 1);
	setenv("PYEXEC_RUN_UID", "0", 1);
	assert_int_equal(config_load(&c, 1, argv, &e), -1);
	assert_non_null(strstr(e.message, "PYEXEC_RUN_UID"));
	unsetenv("PYEXEC_RUN_UID");
	assert_int_equal(config_load(&c, 1, argv, &e), 0);
	assert_string_equal(c.isolation, "auto");
}

static void config_playground(void **state)
{
	struct config c;
	struct err e;
	char *off[] = {"pyexecd", "--playground", "off", NULL};
	char *bad[] = {"pyexecd", "--playground", "maybe", NULL};

	(void)state;
	assert_int_equal(config_load(&c, 1, off, &e), 0);
	assert_true(c.playground); /* on unless turned off */
	assert_int_equal(config_load(&c, 3, off, &e), 0);
	assert_false(c.playground);
	setenv("PYEXEC_PLAYGROUND", "FALSE", 1);
	assert_int_equal(config_load(&c, 1, off, &e), 0);
	assert_false(c.playground);
	setenv("PYEXEC_PLAYGROUND", "1", 1);
	assert_int_equal(config_load(&c, 1, off, &e), 0);
	assert_true(c.playground);
	unsetenv("PYEXEC_PLAYGROUND");
	assert_int_equal(config_load(&c, 3, bad, &e), -1);
	assert_non_null(strstr(e.message, "on or off"));
}

static void static_files(void **state)
{
	(void)state;
	assert_non_null(static_find("/", true));
	assert_non_null(static_find("/playground.js", true));
	assert_null(static_find("/", false));
	assert_null(static_find("/playground.css", false));
	/* the API's description stays when the playground is off */
	assert_non_null(static_find("/openapi.json", false));
	assert_null(static_find("/playground", true));
	assert_null(static_find("", true));
}

/* The file caps: defaults that take a few MB of CSV, and settings that cannot work refused. */
static void config_file_caps(void **state)
{
	struct config c;
	struct err e;
	char *argv[] = {"pyexecd", NULL};
	char *too_big[] = {"pyexecd", "--tmp-mb", "4", "--input-bytes", "5000000", NULL};
	char *no_depth[] = {"pyexecd", "--path-depth", "0", NULL};
	char *no_path[] = {"pyexecd", "--path-max", "0", NULL};

	(void)state;
	assert_int_equal(config_load(&c, 1, argv, &e), 0);
	assert_int_equal(c.input_bytes, 8 << 20);
	assert_int_equal(c.output_bytes, 8 << 20);
	assert_true(c.body_max >= c.input_bytes / 3 * 4 + (1 << 20)); /* base64 and a script */
	assert_int_equal(c.input_files, 64);
	assert_int_equal(c.output_files, 64);
	assert_int_equal(c.path_max, 512);
	assert_int_equal(c.path_depth, 16);
	assert_int_equal(config_load(&c, 5, too_big, &e), -1);
	assert_non_null(strstr(e.message, "input-bytes"));
	assert_int_equal(config_load(&c, 3, no_depth, &e), -1);
	assert_non_null(strstr(e.message, "path-depth"));
	assert_int_equal(config_load(&c, 3, no_path, &e), -1);
	assert_non_null(strstr(e.message, "path-max"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(config_playground, env_setup, env_teardown),
	    cmocka_unit_test_setup_teardown(config_ignores_outer_env, env_setup, env_teardown),
	    cmocka_unit_test_setup_teardown(config_pool_cap, env_setup, env_teardown),
	    cmocka_unit_test(static_files),
	    cmocka_unit_test(request_valid),
	    cmocka_unit_test(request_invalid_json),
	    cmocka_unit_test(request_invalid_fields),
	    cmocka_unit_test(content_type),
	    cmocka_unit_test(outcome_ok_exact),
	    cmocka_unit_test(outcome_stdout_hostile),
	    cmocka_unit_test(outcome_script_errors),
	    cmocka_unit_test(outcome_limits),
	    cmocka_unit_test(error_message_cut_utf8),
	    cmocka_unit_test(text_clean),
	    cmocka_unit_test(buf_caps),
	    cmocka_unit_test(frame_header_needs_newline),
	    cmocka_unit_test(frame_result_too_deep),
	    cmocka_unit_test_setup_teardown(config_env_and_flags, env_setup, env_teardown),
	    cmocka_unit_test_setup_teardown(config_isolation, env_setup, env_teardown),
	    cmocka_unit_test_setup_teardown(config_file_caps, env_setup, env_teardown),
	    cmocka_unit_test(errcodes_frame_and_metrics),
	    cmocka_unit_test(json_check_grammar),
	    cmocka_unit_test(frame_then_death_not_trusted),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);
	return failed + unit_rmtree() + unit_files() + unit_sweep() + unit_admit() +
	       unit_supervisor();
}
