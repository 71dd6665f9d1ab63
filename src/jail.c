#include "jail.h"

#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "files.h"
#include "filter.h"
#include "landlock.h"
#include "log.h"
#include "runuser.h"
#include "sysfile.h"
#include "zygote.h"

#define ARGS_MAX 64

/* One command line: nsjail's options, then the per-run options, then "--" and the runner. */
struct args {
	char *argv[ARGS_MAX + 1];
	int argc;
	int split; /* index of "--" */
};

struct jail {
	enum jail_tier tier;
	const struct cgroup *cg; /* full tier only; the restricted tier has rlimits alone */
	struct supervisor *sup;  /* owns every jail's nsjail */
	unsigned long long mem_bytes;
	struct args cold, pool;
	atomic_ulong runs;        /* names each run's cgroup */
	struct runusers *users;   /* restricted tier: the runs' uids and directories */
	struct spawn_user limits; /* restricted tier: the limits, filled in per run */
	struct sock_fprog filter; /* restricted tier: what nsjail itself runs under */
	struct args zyg;          /* tier full with PYEXEC_ZYGOTE: the zygote's command */
	struct zygote *zygote;    /* NULL: every run is a jail of its own */
};

const char *jail_tier_name(enum jail_tier tier)
{
	return tier == JAIL_FULL ? "full" : "restricted";
}

static int jail_add(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int jail_add(struct args *a, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	if (a->argc >= ARGS_MAX)
		return -1;
	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	a->argv[a->argc++] = s;
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
	if (snprintf(out, n, "%s/lib/%s", dirname(dirname(a)), basename(b)) >= (int)n)
		return -1;
	return access(out, R_OK);
}

static bool can_renice(void)
{
	char text[4096], *cap;

	if (sysfile_read(AT_FDCWD, "/proc/self/status", text, sizeof(text)) <= 0)
		return false;
	cap = strstr(text, "CapEff:");
	return cap && (strtoull(cap + 7, NULL, 16) >> 23) & 1; /* CAP_SYS_NICE */
}

bool jail_renices(void)
{
	return can_renice();
}

/* The policy file defines the policies; the statement that picks the tier's comes last. Comments
 * and indentation are dropped: the text travels on nsjail's command line. */
static char *seccomp_text(const char *path, const char *policy)
{
	enum { POLICY_MAX = 64 * 1024 };
	char line[1024], *out = NULL;
	size_t len = 0;
	FILE *f = fopen(path, "re");

	if (!f)
		return NULL;
	out = malloc(POLICY_MAX);
	if (!out)
		goto fail;
	out[0] = '\0';
	while (fgets(line, sizeof(line), f)) {
		char *start = line + strspn(line, " \t"), *comment = strstr(start, "//");
		size_t n;
		if (comment)
			*comment = '\0';
		n = strcspn(start, "\r\n");
		while (n && (start[n - 1] == ' ' || start[n - 1] == '\t'))
			n--;
		if (!n)
			continue;
		if (len + n + 2 > POLICY_MAX)
			goto fail;
		memcpy(out + len, start, n);
		len += n;
		out[len++] = '\n';
		out[len] = '\0';
	}
	if (ferror(f))
		goto fail;
	fclose(f);
	char *text = NULL;
	if (asprintf(&text, "%sUSE pyexec_%s DEFAULT ALLOW\n", out, policy) < 0)
		text = NULL;
	free(out);
	return text;
fail:
	fclose(f);
	free(out);
	return NULL;
}

/* cgroup limits for the whole run, where the host lets us have them. */
static int cgroup_args(struct args *a, const struct jail *j, const struct config *c)
{
	const struct cgroup *cg = j->cg;
	int rc = 0;

	if (cg->mode == CGROUP_NONE || j->tier != JAIL_FULL)
		return 0;
	rc |= jail_add(a, "--cgroup_mem_max=%llu", j->mem_bytes);
	rc |= jail_add(a, "--cgroup_pids_max=%lu", c->max_procs);
	if (cg->mode == CGROUP_V2) {
		rc |= jail_add(a, "--use_cgroupv2");
		rc |= jail_add(a, "--cgroup_mem_swap_max=0");
		return rc;
	}
	rc |= jail_add(a, "--cgroup_mem_mount=%s", cg->mem);
	rc |= jail_add(a, "--cgroup_pids_mount=%s", cg->pids);
	if (cg->memsw)
		rc |= jail_add(a, "--cgroup_mem_memsw_max=%llu", j->mem_bytes);
	return rc;
}

/* Full tier: a fresh root with read-only binds of the interpreter, its library and the
 * runner, and private tmpfs for /tmp and for /dev/shm (POSIX shared memory and semaphores, which
 * multiprocessing needs), each capped at PYEXEC_TMP_MB. */
static int full_args(struct args *a, const struct config *c, const char *py, const char *lib)
{
	int rc = 0;

	rc |= jail_add(a, "--config=%s", c->jail_config);
	rc |= jail_add(a, "--rlimit_as=%lu", c->memory_mb);
	rc |= jail_add(a, "--rlimit_fsize=%lu", c->tmp_mb);
	rc |= jail_add(a, "--rlimit_nofile=%lu", c->max_files);
	rc |= jail_add(a, "--rlimit_nproc=%lu", c->max_procs);
	rc |= jail_add(a, "--bindmount_ro=%s", py);
	rc |= jail_add(a, "--bindmount_ro=%s", lib);
	rc |= jail_add(a, "--bindmount_ro=%s:/pyexec/runner.py", c->runner);
	rc |= jail_add(a, "--mount=none:/tmp:tmpfs:size=%lum,nr_inodes=%lu,mode=0700", c->tmp_mb,
	               c->tmp_files);
	rc |= jail_add(a, "--mount=none:/dev/shm:tmpfs:size=%lum,nr_inodes=%lu,mode=01777",
	               c->tmp_mb, c->tmp_files);
	return rc;
}

/* CPU seconds a run may use: the server's deadline is the real limit, this a backstop should
 * the server vanish. */
static unsigned long cpu_backstop(const struct config *c)
{
	return (unsigned long)ceil(c->max_timeout + c->start_timeout) + 5;
}

static int jail_build(struct args *a, const struct jail *j, const struct config *c, const char *py,
                      const char *lib, const char *policy, bool for_pool)
{
	/* A pool jail may also wait up to its maximum age for a script; with a pool, so may one
	 * started for a request, when the request takes another (pool_take_wait). */
	unsigned long cpu = cpu_backstop(c);
	unsigned long wall = cpu + (for_pool || c->pool ? (unsigned long)ceil(c->pool_max_age) : 0);
	bool full = j->tier == JAIL_FULL;
	int rc = 0;

	rc |= jail_add(a, "%s", c->nsjail);
	if (full)
		rc |= full_args(a, c, py, lib);
	else
		rc |= jail_add(a, "--config=%s", c->restricted_config);
	rc |= jail_add(a, "--seccomp_string=%s", policy);
	rc |= jail_add(a, "--time_limit=%lu", wall);
	if (full)
		rc |= jail_add(a, "--rlimit_cpu=%lu", cpu);
	/* Refilling the pool yields to runs; the server restores priority at the hand-over,
	 * which needs CAP_SYS_NICE. */
	if (for_pool && can_renice())
		rc |= jail_add(a, "--nice_level=19");
	rc |= jail_add(a, "--pass_fd=%d", JAIL_RESULT_FD);
	rc |= jail_add(a, "--pass_fd=%d", JAIL_STATUS_FD);
	rc |= cgroup_args(a, j, c);
	a->split = a->argc;
	rc |= jail_add(a, "--");
	/* -I: ignore PYTHON* variables and user site; -u: prints survive a kill at the deadline. */
	rc |= jail_add(a, "%s", py);
	rc |= jail_add(a, "-I");
	rc |= jail_add(a, "-u");
	rc |= jail_add(a, "%s", full ? "/pyexec/runner.py" : c->runner);
	rc |= jail_add(a, "%d", JAIL_RESULT_FD);
	rc |= jail_add(a, "%d", JAIL_STATUS_FD);
	rc |= jail_add(a, "%lu", c->result_max);
	rc |= jail_add(a, "%s", for_pool ? c->preload : "");
	/* The caps of what a run may leave under output/, which the init collects (tier full). */
	rc |= jail_add(a, "%lu,%lu,%lu,%lu", c->output_files, c->output_bytes, c->path_max,
	               c->path_depth);
	/* The restricted tier's script process makes itself not dumpable (no pid namespace). An
	 * argument, not the environment: gVisor lets any uid read /proc/<pid>/environ. */
	rc |= jail_add(a, "%s", full ? "full" : "restricted");
	return rc ? -1 : 0;
}

/* The zygote: the full tier's jail with the zygote's policy (which lets it make the runs'
 * namespaces), no time limit, and room for every run's processes; each run takes the per-run
 * limits itself (runner/zygote.py). */
static int zygote_build(struct args *a, const struct config *c, const char *py, const char *lib)
{
	char runner_dir[PATH_MAX], *policy = seccomp_text(c->seccomp, "zygote");
	const struct files_limits out = {.out_files = c->output_files,
	                                 .out_bytes = c->output_bytes,
	                                 .path_max = c->path_max,
	                                 .path_depth = c->path_depth};
	int rc = 0;

	if (!policy)
		return -1;
	snprintf(runner_dir, sizeof(runner_dir), "%s", c->runner);
	rc |= jail_add(a, "%s", c->nsjail);
	rc |= full_args(a, c, py, lib);
	rc |= jail_add(a, "--bindmount_ro=%s/zygote.py:/pyexec/zygote.py", dirname(runner_dir));
	rc |= jail_add(a, "--bindmount_ro=%s:/pyexec/pyexec-init", c->init);
	rc |= jail_add(a, "--rlimit_nproc=%lu", c->max_procs * (c->concurrency + c->pool + 4));
	rc |= jail_add(a, "--rlimit_cpu=inf");
	/* A run writes its uid maps there before it mounts a read-only /proc of its own. */
	rc |= jail_add(a, "--proc_rw");
	rc |= jail_add(a, "--time_limit=0");
	/* Forks for the pool yield to runs, as one-shot pool jails do: sandbox_run restores the
	 * run's processes to the normal priority at the hand-over, and zygote_fork gives the
	 * zygote the normal priority while a request waits for a fork. */
	if (can_renice())
		rc |= jail_add(a, "--nice_level=19");
	rc |= jail_add(a, "--seccomp_string=%s", policy);
	rc |= jail_add(a, "--pass_fd=%d", ZYGOTE_CTL_FD);
	rc |= jail_add(a, "--pass_fd=%d", ZYGOTE_FILTER_FD);
	/* Every object in glibc's heap, one mapping that the zygote puts in huge pages: a fork
	 * copies and a run's exit frees far fewer page-table entries (bench/README.md). */
	rc |= jail_add(a, "--env=PYTHONMALLOC=malloc");
	a->split = a->argc;
	rc |= jail_add(a, "--");
	rc |= jail_add(a, "%s", py);
	/* -I without its -E, which would ignore PYTHONMALLOC: nsjail passes no environment but
	 * the config's and the line above. */
	rc |= jail_add(a, "-s");
	rc |= jail_add(a, "-P");
	rc |= jail_add(a, "-u");
	rc |= jail_add(a, "/pyexec/zygote.py");
	rc |= jail_add(a, "%d", ZYGOTE_CTL_FD);
	rc |= jail_add(a, "%d", ZYGOTE_FILTER_FD);
	rc |= jail_add(a, "%lu", c->result_max);
	rc |= jail_add(a, "%s", c->preload);
	rc |= jail_add(a, "%lu,%lu,%lu,%lu", c->output_files, c->output_bytes, c->path_max,
	               c->path_depth);
	rc |= jail_add(a, "%lu,%lu", c->max_procs, cpu_backstop(c));
	rc |= jail_add(a, "%lu,%lu", c->tmp_mb, c->tmp_files);
	rc |= jail_add(a, "%zu", files_records_max(&out));
	free(policy);
	return rc ? -1 : 0;
}

static void add_limit(struct spawn_user *u, int resource, unsigned long long value, bool optional)
{
	u->limits[u->nlimits].resource = resource;
	u->limits[u->nlimits].value = value;
	u->limits[u->nlimits].optional = optional;
	u->nlimits++;
}

/* Restricted tier: what nsjail would set inside namespaces, set by the server before exec. */
static void restricted_limits(struct spawn_user *u, const struct config *c)
{
	u->nlimits = 0;
	add_limit(u, RLIMIT_AS, (unsigned long long)c->memory_mb << 20, false);
	add_limit(u, RLIMIT_CPU, cpu_backstop(c), false);
	add_limit(u, RLIMIT_FSIZE, (unsigned long long)c->tmp_mb << 20, false);
	add_limit(u, RLIMIT_NOFILE, c->max_files, false);
	add_limit(u, RLIMIT_NPROC, c->max_procs, false);
	add_limit(u, RLIMIT_CORE, 0, false);
	add_limit(u, RLIMIT_STACK, 8ULL << 20, false);
	add_limit(u, RLIMIT_MEMLOCK, 0, false);
	/* The policy denies POSIX message queues anyway; gVisor refuses to set this one. */
	add_limit(u, RLIMIT_MSGQUEUE, 0, true);
}

static void zygote_start(struct jail *j, const struct config *c, const char *py, const char *lib);

struct jail *jail_new(const struct config *c, const struct cgroup *cg, struct supervisor *sup,
                      enum jail_tier tier, struct err *e)
{
	char py[PATH_MAX], lib[PATH_MAX], *policy = NULL;
	struct jail *j;

	if (need_file(c->nsjail, X_OK, "nsjail", "PYEXEC_NSJAIL", e) < 0 ||
	    need_file(c->runner, R_OK, "runner.py", "PYEXEC_RUNNER", e) < 0 ||
	    (tier == JAIL_FULL &&
	     need_file(c->jail_config, R_OK, "the nsjail config", "PYEXEC_JAIL_CONFIG", e) < 0) ||
	    (tier == JAIL_RESTRICTED &&
	     need_file(c->restricted_config, R_OK, "the restricted tier's nsjail config",
	               "PYEXEC_RESTRICTED_CONFIG", e) < 0) ||
	    need_file(c->seccomp, R_OK, "the seccomp policy", "PYEXEC_SECCOMP", e) < 0 ||
	    need_file(c->python, X_OK, "Python", "PYEXEC_PYTHON", e) < 0)
		return NULL;
	/* Bind the real binary so the interpreter finds its prefix from its own path. */
	if (!realpath(c->python, py) || stdlib_dir(py, lib, sizeof(lib)) < 0) {
		err_set(e, 500, "internal", "no standard library found for '%s' (PYEXEC_PYTHON)",
		        c->python);
		return NULL;
	}
	policy = seccomp_text(c->seccomp, jail_tier_name(tier));
	if (!policy) {
		err_set(e, 500, "internal", "cannot read the seccomp policy '%s' (PYEXEC_SECCOMP)",
		        c->seccomp);
		return NULL;
	}
	j = calloc(1, sizeof(*j));
	if (!j)
		goto oom;
	j->tier = tier;
	j->cg = cg;
	j->sup = sup;
	j->mem_bytes = (unsigned long long)c->memory_mb << 20;
	if (tier == JAIL_RESTRICTED) {
		restricted_limits(&j->limits, c);
		if (filter_build_restricted(&j->filter, e) < 0)
			goto fail;
		j->limits.filter = &j->filter;
		j->limits.landlock_abi = landlock_abi();
		struct runusers_opts o = {
		    .base = (uid_t)c->run_uid,
		    .count = (unsigned)c->run_uids,
		    .root = c->work_dir,
		    .tmp_bytes = c->tmp_mb << 20,
		    .tmp_files = c->tmp_files,
		    .sweep_shared = j->limits.landlock_abi == 0,
		};
		j->users = runusers_new(&o, e);
		if (!j->users)
			goto fail;
	}
	if (jail_build(&j->cold, j, c, py, lib, policy, false) < 0 ||
	    jail_build(&j->pool, j, c, py, lib, policy, true) < 0)
		goto oom;
	free(policy);
	if (tier == JAIL_FULL && c->zygote)
		zygote_start(j, c, py, lib);
	return j;
oom:
	err_set(e, 500, "internal", "out of memory building the jail command");
fail:
	free(policy);
	jail_free(j);
	return NULL;
}

/* The supervisor calls this once a jail's nsjail is gone (or never started): learns whether the
 * run met its memory limit and removes its cgroup; in the restricted tier, where the supervisor
 * has already ended every process of the run's uid, hands the uid to its cleaner. */
static void jail_teardown(void *ctx, const char *tag, uid_t uid, struct proc_end *end)
{
	struct jail *j = ctx;

	if (j->tier == JAIL_RESTRICTED) {
		if (uid)
			runusers_give_back(j->users, uid);
		return;
	}
	if (j->cg->mode == CGROUP_NONE || !tag[0])
		return;
	end->memory_hit = cgroup_run_hit_memory(j->cg, tag, j->mem_bytes);
	cgroup_run_remove(j->cg, tag);
}

/* Tier full with PYEXEC_ZYGOTE: starts the zygote. Where it cannot start, runs are one-shot
 * jails, as with the setting off; the log says why. */
static void zygote_start(struct jail *j, const struct config *c, const char *py, const char *lib)
{
	struct zygote_opts o = {
	    .sup = j->sup,
	    .run = {.teardown = jail_teardown, .ctx = j},
	    .argv = j->zyg.argv,
	    .cg = j->cg,
	    .mem_bytes = j->mem_bytes,
	    .max_procs = c->max_procs,
	    .start_timeout = c->start_timeout,
	    .renice = can_renice(),
	};
	struct err e;

	if (access(c->init, X_OK) < 0) {
		log_error("zygote: no pyexec-init at %s (PYEXEC_INIT; `make` builds it): every run "
		          "starts a jail of its own",
		          c->init);
		return;
	}
	if (zygote_build(&j->zyg, c, py, lib) < 0) {
		log_error("zygote: cannot build its command; every run starts a jail of its own");
		return;
	}
	j->zygote = zygote_new(&o, &e);
	if (!j->zygote)
		log_error("%s; every run starts a jail of its own", e.message);
}

struct sandbox *jail_start(struct jail *j, bool for_pool, struct err *e)
{
	const struct args *a = for_pool ? &j->pool : &j->cold;
	char *argv[ARGS_MAX + 4], name[32], opt[3][PATH_MAX + 64], dir[PATH_MAX];
	struct proc_opts o = {.teardown = jail_teardown, .ctx = j};
	struct spawn_user user;
	int n = 0;

	snprintf(name, sizeof(name), "run-%d-%lu", (int)getpid(), atomic_fetch_add(&j->runs, 1));
	if (j->zygote) {
		/* While the zygote restarts, a request gets a one-shot jail; the pool waits. */
		struct sandbox *sb = zygote_fork(j->zygote, name, for_pool, e);
		if (sb || for_pool)
			return sb;
		a = &j->cold;
	}
	for (int i = 0; i < a->split; i++)
		argv[n++] = a->argv[i];
	if (j->tier == JAIL_RESTRICTED) {
		user = j->limits;
		if (runusers_take(j->users, &user.uid, dir, e) < 0)
			return NULL;
		user.gid = (gid_t)user.uid;
		user.dir = dir;
		o.uid = user.uid;
		snprintf(opt[0], sizeof(opt[0]), "--cwd=%s", dir);
		snprintf(opt[1], sizeof(opt[1]), "--env=HOME=%s", dir);
		snprintf(opt[2], sizeof(opt[2]), "--env=TMPDIR=%s", dir);
		for (int i = 0; i < 3; i++)
			argv[n++] = opt[i];
	} else if (j->cg->mode != CGROUP_NONE) {
		if (cgroup_run_create(j->cg, name) < 0) {
			err_set(e, 500, "internal", "cannot create the run's cgroup %s", name);
			return NULL;
		}
		/* v1: nsjail's group goes under <mount>/<parent>; v2: under its mount. */
		if (j->cg->mode == CGROUP_V2) {
			snprintf(opt[0], sizeof(opt[0]), "--cgroupv2_mount=%s/%s", j->cg->mem,
			         name);
			argv[n++] = opt[0];
		} else {
			snprintf(opt[0], sizeof(opt[0]), "--cgroup_mem_parent=%s", name);
			snprintf(opt[1], sizeof(opt[1]), "--cgroup_pids_parent=%s", name);
			argv[n++] = opt[0];
			argv[n++] = opt[1];
		}
	}
	for (int i = a->split; i < a->argc; i++)
		argv[n++] = a->argv[i];
	argv[n] = NULL;
	o.tag = name;
	return sandbox_start(j->sup, argv, j->tier == JAIL_RESTRICTED ? &user : NULL, &o, e);
}

bool jail_zygote_stats(struct jail *j, bool *up, unsigned long *restarts)
{
	if (!j || !j->zygote)
		return false;
	*up = zygote_up(j->zygote);
	*restarts = zygote_restarts(j->zygote);
	return true;
}

void jail_stop(struct jail *j)
{
	if (!j)
		return;
	zygote_free(j->zygote);
	j->zygote = NULL;
}

bool jail_users_stats(struct jail *j, struct runusers_stats *s)
{
	if (!j || j->tier != JAIL_RESTRICTED)
		return false;
	runusers_stats(j->users, s);
	return true;
}

void jail_free(struct jail *j)
{
	if (!j)
		return;
	for (int i = 0; i < j->cold.argc; i++)
		free(j->cold.argv[i]);
	for (int i = 0; i < j->pool.argc; i++)
		free(j->pool.argv[i]);
	jail_stop(j);
	for (int i = 0; i < j->zyg.argc; i++)
		free(j->zyg.argv[i]);
	runusers_free(j->users);
	filter_free(&j->filter);
	free(j);
}
