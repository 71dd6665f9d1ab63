#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "pool.h"

enum kind { K_STR, K_ULONG, K_SECONDS, K_BOOL };

struct setting {
	const char *flag; /* without the leading "--" */
	const char *env;
	enum kind kind;
	size_t offset;
	size_t size; /* for K_STR */
	const char *def;
	const char *help;
};

#define STR(f) K_STR, offsetof(struct config, f), sizeof(((struct config *)0)->f)
#define NUM(k, f) k, offsetof(struct config, f), 0

static const struct setting settings[] = {
    {"host", "PYEXEC_HOST", STR(host), "0.0.0.0", "address to listen on"},
    {"port", "PORT", NUM(K_ULONG, port), "8080", "TCP port to listen on"},
    {"python", "PYEXEC_PYTHON", STR(python), "/usr/bin/python3", "Python interpreter in the jail"},
    {"nsjail", "PYEXEC_NSJAIL", STR(nsjail), "",
     "nsjail binary (default: .local/bin/nsjail of the checkout, else found on PATH)"},
    {"runner", "PYEXEC_RUNNER", STR(runner), "", "runner.py (default: in-tree, else installed)"},
    {"init", "PYEXEC_INIT", STR(init), "",
     "pyexec-init, PID 1 of the zygote's runs (default: in-tree build/, else installed)"},
    {"jail-config", "PYEXEC_JAIL_CONFIG", STR(jail_config), "",
     "nsjail config (default: in-tree, else installed)"},
    {"seccomp", "PYEXEC_SECCOMP", STR(seccomp), "",
     "kafel seccomp policy (default: in-tree, else installed)"},
    {"isolation", "PYEXEC_ISOLATION", STR(isolation), "full",
     "sandbox tier required: full, restricted or auto (the strongest this host allows)"},
    {"restricted-config", "PYEXEC_RESTRICTED_CONFIG", STR(restricted_config), "",
     "nsjail config of the restricted tier (default: in-tree, else installed)"},
    {"run-uid", "PYEXEC_RUN_UID", NUM(K_ULONG, run_uid), "200000",
     "restricted tier: first of the PYEXEC_RUN_UIDS uids no one else uses"},
    {"run-uids", "PYEXEC_RUN_UIDS", NUM(K_ULONG, run_uids), "1024",
     "restricted tier: how many uids, one per live or cleaning jail (2 to 65536)"},
    {"work-dir", "PYEXEC_WORK_DIR", STR(work_dir), "/tmp/pyexec",
     "restricted tier: where each run gets its private directory"},
    {"timeout", "PYEXEC_TIMEOUT", NUM(K_SECONDS, timeout), "10",
     "default wall-clock seconds per run"},
    {"max-timeout", "PYEXEC_MAX_TIMEOUT", NUM(K_SECONDS, max_timeout), "60",
     "largest timeout a request may ask for"},
    {"start-timeout", "PYEXEC_START_TIMEOUT", NUM(K_SECONDS, start_timeout), "10",
     "seconds a jail may take to start before the run fails"},
    {"memory-mb", "PYEXEC_MEMORY_MB", NUM(K_ULONG, memory_mb), "512",
     "memory (address space) per run, MiB"},
    {"max-procs", "PYEXEC_MAX_PROCS", NUM(K_ULONG, max_procs), "32",
     "processes and threads per run"},
    {"max-files", "PYEXEC_MAX_FILES", NUM(K_ULONG, max_files), "256",
     "open files per process in a run"},
    {"tmp-mb", "PYEXEC_TMP_MB", NUM(K_ULONG, tmp_mb), "64",
     "size of the run's /tmp and largest file, MiB"},
    {"tmp-files", "PYEXEC_TMP_FILES", NUM(K_ULONG, tmp_files), "16384",
     "files and directories a run may create in its /tmp"},
    {"stdout-max", "PYEXEC_STDOUT_MAX", NUM(K_ULONG, stdout_max), "1048576",
     "bytes of stdout kept per run"},
    {"result-max", "PYEXEC_RESULT_MAX", NUM(K_ULONG, result_max), "1048576",
     "bytes of JSON result allowed"},
    {"body-max", "PYEXEC_BODY_MAX", NUM(K_ULONG, body_max), "16777216",
     "bytes of request body allowed (room for PYEXEC_INPUT_BYTES as base64)"},
    {"input-files", "PYEXEC_INPUT_FILES", NUM(K_ULONG, input_files), "64",
     "files a request may send"},
    {"input-bytes", "PYEXEC_INPUT_BYTES", NUM(K_ULONG, input_bytes), "8388608",
     "decoded bytes of a request's files and stdin together"},
    {"output-files", "PYEXEC_OUTPUT_FILES", NUM(K_ULONG, output_files), "64",
     "files a run may leave under output/"},
    {"output-bytes", "PYEXEC_OUTPUT_BYTES", NUM(K_ULONG, output_bytes), "8388608",
     "bytes of the files a run leaves under output/, together"},
    {"path-max", "PYEXEC_PATH_MAX", NUM(K_ULONG, path_max), "512",
     "bytes of a file's path, sent or left"},
    {"path-depth", "PYEXEC_PATH_DEPTH", NUM(K_ULONG, path_depth), "16",
     "components of a file's path, sent or left"},
    {"max-connections", "PYEXEC_MAX_CONNECTIONS", NUM(K_ULONG, max_connections), "2048",
     "open HTTP connections at once"},
    {"concurrency", "PYEXEC_CONCURRENCY", NUM(K_ULONG, concurrency), "0",
     "runs at once (0: the number of CPUs)"},
    {"queue", "PYEXEC_QUEUE", NUM(K_ULONG, queue), "16",
     "requests waiting for a run slot before 429 busy"},
    {"pool", "PYEXEC_POOL", NUM(K_ULONG, pool), "2",
     "ready jails to keep (0: every run starts cold)"},
    {"preload", "PYEXEC_PRELOAD", STR(preload), "numpy,pandas",
     "modules a ready jail imports ahead of its script (comma-separated)"},
    {"zygote", "PYEXEC_ZYGOTE", NUM(K_BOOL, zygote), "on",
     "tier full: fork every run from one warm interpreter (on) or start a jail per run (off)"},
    {"pool-max-age", "PYEXEC_POOL_MAX_AGE", NUM(K_SECONDS, pool_max_age), "300",
     "seconds a ready jail may wait before it is replaced"},
    {"connection-timeout", "PYEXEC_CONNECTION_TIMEOUT", NUM(K_ULONG, connection_timeout), "30",
     "seconds a connection may stay idle or stalled mid-request"},
    {"grace", "PYEXEC_GRACE", NUM(K_SECONDS, grace), "8",
     "seconds in-flight runs get to finish after SIGTERM"},
    {"playground", "PYEXEC_PLAYGROUND", NUM(K_BOOL, playground), "on",
     "serve the playground page at / (on or off)"},
    {"health-details", "PYEXEC_HEALTH_DETAILS", NUM(K_BOOL, health_details), "off",
     "on: /healthz also shows the host's kernel and protections (always in the start-up log)"},
};

#define NSETTINGS (sizeof(settings) / sizeof(settings[0]))

static int bool_apply(bool *p, const struct setting *s, const char *v, struct err *e)
{
	static const char *const on[] = {"on", "true", "yes", "1"};
	static const char *const off[] = {"off", "false", "no", "0"};

	for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
		if (strcasecmp(v, on[i]) == 0 || strcasecmp(v, off[i]) == 0) {
			*p = strcasecmp(v, on[i]) == 0;
			return 0;
		}
	}
	return err_set(e, 0, "config", "--%s (%s) must be on or off, not '%s'", s->flag, s->env, v);
}

static int setting_apply(struct config *c, const struct setting *s, const char *v, struct err *e)
{
	char *p = (char *)c + s->offset;
	char *end;

	if (s->kind == K_STR) {
		if (strlen(v) >= s->size)
			return err_set(e, 0, "config", "--%s is too long", s->flag);
		memcpy(p, v, strlen(v) + 1);
		return 0;
	}
	if (s->kind == K_BOOL)
		return bool_apply((bool *)p, s, v, e);
	errno = 0;
	if (s->kind == K_ULONG) {
		unsigned long n = strtoul(v, &end, 10);
		if (errno || end == v || *end || v[0] == '-')
			return err_set(e, 0, "config", "--%s (%s) must be a whole number, not '%s'",
			               s->flag, s->env, v);
		memcpy(p, &n, sizeof(n));
		return 0;
	}
	double d = strtod(v, &end);
	if (errno || end == v || *end || !isfinite(d) || d <= 0)
		return err_set(e, 0, "config",
		               "--%s (%s) must be a positive number of seconds, not '%s'", s->flag,
		               s->env, v);
	memcpy(p, &d, sizeof(d));
	return 0;
}

static void config_usage(void)
{
	printf("usage: pyexecd [--FLAG VALUE]...\n\n"
	       "Runs untrusted Python scripts in nsjail behind POST /execute.\n"
	       "Every flag has an environment variable; a flag wins over its variable.\n\n");
	for (size_t i = 0; i < NSETTINGS; i++)
		printf("  --%-16s %-22s %s (default: %s)\n", settings[i].flag, settings[i].env,
		       settings[i].help, settings[i].def[0] ? settings[i].def : "see text");
}

/* Writes the path of intree in the checkout the server runs from; 0 when it is there and
 * accessible with mode (access(2)). */
static int intree_path(char *out, size_t n, const char *intree, int mode)
{
	char exe[PATH_MAX];
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (len <= 0)
		return -1;
	exe[len] = '\0';
	char *slash = strrchr(exe, '/');
	if (!slash)
		return -1;
	*slash = '\0';
	int len2 = snprintf(out, n, "%s/../%s", exe, intree);
	return len2 > 0 && (size_t)len2 < n && access(out, mode) == 0 ? 0 : -1;
}

/* The in-tree file when running from a checkout, the installed one otherwise. */
static void default_path(char *out, size_t n, const char *intree, const char *installed)
{
	if (intree_path(out, n, intree, R_OK) < 0)
		snprintf(out, n, "%s", installed);
}

static int find_on_path(char *out, size_t n, const char *name)
{
	const char *path = getenv("PATH");
	char dir[PATH_MAX];

	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	while (*path) {
		size_t len = strcspn(path, ":");
		if (len && len < sizeof(dir)) {
			memcpy(dir, path, len);
			dir[len] = '\0';
			int len2 = snprintf(out, n, "%s/%s", dir, name);
			if (len2 > 0 && (size_t)len2 < n && access(out, X_OK) == 0)
				return 0;
		}
		path += len + (path[len] == ':');
	}
	out[0] = '\0';
	return -1;
}

static const struct setting *setting_by_flag(const char *flag)
{
	for (size_t i = 0; i < NSETTINGS; i++)
		if (strcmp(settings[i].flag, flag) == 0)
			return &settings[i];
	return NULL;
}

static int config_defaults(struct config *c, struct err *e)
{
	/* scripts/build-nsjail's build in the checkout comes first, then PATH. */
	if (!c->nsjail[0] && intree_path(c->nsjail, sizeof(c->nsjail), ".local/bin/nsjail", X_OK))
		find_on_path(c->nsjail, sizeof(c->nsjail), "nsjail");
	if (!c->runner[0])
		default_path(c->runner, sizeof(c->runner), "runner/runner.py",
		             "/usr/lib/pyexec/runner.py");
	if (!c->init[0])
		default_path(c->init, sizeof(c->init), "build/pyexec-init",
		             "/usr/lib/pyexec/pyexec-init");
	if (!c->jail_config[0])
		default_path(c->jail_config, sizeof(c->jail_config), "config/nsjail.cfg",
		             "/usr/lib/pyexec/nsjail.cfg");
	if (!c->restricted_config[0])
		default_path(c->restricted_config, sizeof(c->restricted_config),
		             "config/nsjail-restricted.cfg",
		             "/usr/lib/pyexec/nsjail-restricted.cfg");
	if (strcmp(c->isolation, "full") != 0 && strcmp(c->isolation, "restricted") != 0 &&
	    strcmp(c->isolation, "auto") != 0)
		return err_set(e, 0, "config",
		               "PYEXEC_ISOLATION must be full, restricted or auto, not '%s'",
		               c->isolation);
	if (c->run_uids < 2 || c->run_uids > 65536)
		return err_set(e, 0, "config",
		               "PYEXEC_RUN_UIDS must be between 2 and 65536, not %lu", c->run_uids);
	if (c->run_uid < 1000 || c->run_uid > 4000000000UL)
		return err_set(e, 0, "config",
		               "PYEXEC_RUN_UID must be between 1000 and 4000000000, not %lu",
		               c->run_uid);
	if (!c->seccomp[0])
		default_path(c->seccomp, sizeof(c->seccomp), "config/seccomp.kafel",
		             "/usr/lib/pyexec/seccomp.kafel");
	if (c->concurrency == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		c->concurrency = n > 0 ? (unsigned long)n : 1;
	}
	if (c->pool > POOL_MAX)
		return err_set(e, 0, "config", "PYEXEC_POOL must be at most %d, not %lu", POOL_MAX,
		               c->pool);
	if (c->preload[strspn(c->preload, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                                  "0123456789_.,")])
		return err_set(e, 0, "config",
		               "PYEXEC_PRELOAD must be module names separated by commas, not '%s'",
		               c->preload);
	if (c->timeout > c->max_timeout)
		return err_set(e, 0, "config",
		               "PYEXEC_TIMEOUT (%g) is above PYEXEC_MAX_TIMEOUT (%g)", c->timeout,
		               c->max_timeout);
	if (c->port == 0 || c->port > 65535)
		return err_set(e, 0, "config", "PORT must be 1-65535, not %lu", c->port);
	if (c->memory_mb < 64 || c->max_procs < 1 || c->tmp_mb < 1 || c->tmp_files < 64 ||
	    c->max_files < 16)
		return err_set(
		    e, 0, "config",
		    "limits too small: memory-mb >= 64, max-procs >= 1, tmp-mb >= 1, "
		    "tmp-files >= 64 and max-files >= 16 are needed for Python to start");
	if (c->stdout_max < 1 || c->result_max < 16 || c->body_max < 16)
		return err_set(e, 0, "config", "stdout-max >= 1, result-max and body-max >= 16");
	if (c->input_bytes > c->tmp_mb << 20 || c->output_bytes > 1UL << 30 ||
	    c->output_files > 100000 || c->input_files > 100000 || c->path_max < 1 ||
	    c->path_max > 4000 || c->path_depth < 1 || c->path_depth > 64)
		return err_set(e, 0, "config",
		               "file caps: input-bytes at most tmp-mb MiB (the inputs must fit the "
		               "run's directory), output-bytes at most 1 GiB, input-files and "
		               "output-files at most 100000, path-max 1-4000, path-depth 1-64");
	return 0;
}

int config_load(struct config *c, int argc, char **argv, struct err *e)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < NSETTINGS; i++) {
		const char *v = getenv(settings[i].env);
		if (setting_apply(c, &settings[i], settings[i].def, e) < 0)
			return -1;
		/* An empty string is a value for text settings (PYEXEC_PRELOAD= means none). */
		if (v && (*v || settings[i].kind == K_STR) &&
		    setting_apply(c, &settings[i], v, e) < 0)
			return -1;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			config_usage();
			return 1;
		}
		const struct setting *s = strncmp(a, "--", 2) == 0 ? setting_by_flag(a + 2) : NULL;
		if (!s)
			return err_set(e, 0, "config", "unknown argument '%s' (see --help)", a);
		if (i + 1 >= argc)
			return err_set(e, 0, "config", "%s needs a value", a);
		if (setting_apply(c, s, argv[++i], e) < 0)
			return -1;
	}
	return config_defaults(c, e);
}
