#include "jail.h"

#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ARGS_MAX 64

struct jail {
	char *argv[ARGS_MAX + 1];
	int argc;
};

static int jail_add(struct jail *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int jail_add(struct jail *j, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	if (j->argc >= ARGS_MAX)
		return -1;
	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	j->argv[j->argc++] = s;
	return 0;
}

static int need_file(const char *path, int mode, const char *what, const char *setting,
                     struct err *e)
{
	if (path[0] && access(path, mode) == 0)
		return 0;
	return err_set(e, 500, "internal", "%s not found at '%s'; install it or set %s", what,
	               path[0] ? path : "(nothing on PATH)", setting);
}

/* The interpreter's standard library lives at <prefix>/lib/<name of the real binary>. */
static int stdlib_dir(const char *python_real, char *out, size_t n)
{
	char a[PATH_MAX], b[PATH_MAX];

	snprintf(a, sizeof(a), "%s", python_real);
	snprintf(b, sizeof(b), "%s", python_real);
	snprintf(out, n, "%s/lib/%s", dirname(dirname(a)), basename(b));
	return access(out, R_OK);
}

static int jail_build(struct jail *j, const struct config *c, const char *py, const char *lib)
{
	/* The server's deadline is the real limit; nsjail's are a backstop should it vanish. */
	unsigned long backstop = (unsigned long)ceil(c->max_timeout + c->start_timeout) + 5;
	int rc = 0;

	rc |= jail_add(j, "%s", c->nsjail);
	rc |= jail_add(j, "--config=%s", c->jail_config);
	rc |= jail_add(j, "--seccomp_policy=%s", c->seccomp);
	rc |= jail_add(j, "--time_limit=%lu", backstop);
	rc |= jail_add(j, "--rlimit_cpu=%lu", backstop);
	rc |= jail_add(j, "--rlimit_as=%lu", c->memory_mb);
	rc |= jail_add(j, "--rlimit_fsize=%lu", c->tmp_mb);
	rc |= jail_add(j, "--rlimit_nofile=%lu", c->max_files);
	rc |= jail_add(j, "--rlimit_nproc=%lu", c->max_procs);
	rc |= jail_add(j, "--pass_fd=%d", JAIL_RESULT_FD);
	rc |= jail_add(j, "--bindmount_ro=%s", py);
	rc |= jail_add(j, "--bindmount_ro=%s", lib);
	rc |= jail_add(j, "--bindmount_ro=%s:/pyexec/runner.py", c->runner);
	rc |= jail_add(j, "--mount=none:/tmp:tmpfs:size=%lum,mode=0700", c->tmp_mb);
	rc |= jail_add(j, "--");
	/* -I: ignore PYTHON* variables and user site; -u: prints survive a kill at the deadline. */
	rc |= jail_add(j, "%s", py);
	rc |= jail_add(j, "-I");
	rc |= jail_add(j, "-u");
	rc |= jail_add(j, "/pyexec/runner.py");
	rc |= jail_add(j, "%d", JAIL_RESULT_FD);
	rc |= jail_add(j, "%lu", c->result_max);
	return rc ? -1 : 0;
}

struct jail *jail_new(const struct config *c, struct err *e)
{
	char py[PATH_MAX], lib[PATH_MAX];
	struct jail *j;

	if (need_file(c->nsjail, X_OK, "nsjail", "PYEXEC_NSJAIL", e) < 0 ||
	    need_file(c->runner, R_OK, "runner.py", "PYEXEC_RUNNER", e) < 0 ||
	    need_file(c->jail_config, R_OK, "the nsjail config", "PYEXEC_JAIL_CONFIG", e) < 0 ||
	    need_file(c->seccomp, R_OK, "the seccomp policy", "PYEXEC_SECCOMP", e) < 0 ||
	    need_file(c->python, X_OK, "Python", "PYEXEC_PYTHON", e) < 0)
		return NULL;
	/* Bind the real binary so the interpreter finds its prefix from its own path. */
	if (!realpath(c->python, py) || stdlib_dir(py, lib, sizeof(lib)) < 0) {
		err_set(e, 500, "internal", "no standard library found for '%s' (PYEXEC_PYTHON)",
		        c->python);
		return NULL;
	}
	j = calloc(1, sizeof(*j));
	if (!j || jail_build(j, c, py, lib) < 0) {
		jail_free(j);
		err_set(e, 500, "internal", "out of memory building the jail command");
		return NULL;
	}
	return j;
}

char *const *jail_argv(const struct jail *j)
{
	return j->argv;
}

void jail_free(struct jail *j)
{
	if (!j)
		return;
	for (int i = 0; i < j->argc; i++)
		free(j->argv[i]);
	free(j);
}
