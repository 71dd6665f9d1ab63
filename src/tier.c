#include "tier.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "clock.h"
#include "log.h"

/* Checks, from inside, what each tier promises: a uid that is not the server's, seccomp on the
 * script, and in the restricted tier no AF_INET socket and seccomp on nsjail itself (the
 * script's grandparent there; in tier full its parent is the namespace's init). */
#define PROBE_SCRIPT                                                                               \
	"import os, socket\n"                                                                      \
	"def status(pid):\n"                                                                       \
	"    try:\n"                                                                               \
	"        with open('/proc/%s/status' % pid) as f:\n"                                       \
	"            return dict(l.split(':', 1) for l in f if ':' in l)\n"                        \
	"    except OSError:\n"                                                                    \
	"        return {}\n"                                                                      \
	"def main():\n"                                                                            \
	"    me = status('self')\n"                                                                \
	"    init = int(me.get('PPid', '0'))\n"                                                    \
	"    jail = int(status(init).get('PPid', '0')) if init > 1 else 0\n"                       \
	"    try:\n"                                                                               \
	"        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"                      \
	"        inet = 0\n"                                                                       \
	"    except OSError as e:\n"                                                               \
	"        inet = e.errno\n"                                                                 \
	"    return {'uid': os.getuid(), 'seccomp': me.get('Seccomp', '').strip(),\n"              \
	"            'inet': inet, 'jailSeccomp': status(jail).get('Seccomp', '').strip()\n"       \
	"            if jail > 1 else ''}\n"

static bool run_dirs_capped(const struct tier *t)
{
	struct runusers_stats s;

	return jail_users_stats(t->jail, &s) && s.tmpfs;
}

const char *tier_limits_name(const struct tier *t, const struct cgroup *cg)
{
	if (t->jail && t->kind == JAIL_RESTRICTED)
		return run_dirs_capped(t) ? "rlimits and a capped tmpfs per run (restricted tier)"
		                          : "rlimits only (restricted tier)";
	return cg->mode == CGROUP_NONE ? "rlimits only (no writable cgroup)"
	       : cg->mode == CGROUP_V2 ? "cgroup v2 and rlimits"
	                               : "cgroup v1 and rlimits";
}

/* True when the answer to PROBE_SCRIPT shows what the tier promises. */
static bool probe_answer_ok(const struct response *r, enum jail_tier tier)
{
	json_t *o = r->status == 200 ? json_loadb(r->body, r->len, 0, NULL) : NULL;
	json_t *res = json_object_get(o, "result");
	json_int_t uid = json_integer_value(json_object_get(res, "uid"));
	const char *seccomp = json_string_value(json_object_get(res, "seccomp"));
	const char *jail = json_string_value(json_object_get(res, "jailSeccomp"));
	bool ok = json_is_integer(json_object_get(res, "uid")) && uid != 0 &&
	          uid != (json_int_t)geteuid() && seccomp && strcmp(seccomp, "2") == 0;

	if (ok && tier == JAIL_RESTRICTED)
		ok = json_integer_value(json_object_get(res, "inet")) == EAFNOSUPPORT && jail &&
		     strcmp(jail, "2") == 0;
	json_decref(o);
	return ok;
}

/* Runs the probe script end to end in t->jail, so a broken sandbox shows at start-up, not on a
 * request. A second try absorbs a start that was only slow. */
static bool self_check(struct tier *t, const struct execute *x)
{
	struct job job;
	struct err e;
	double t0 = clock_now();
	bool ok = false;

	if (api_job_script(PROBE_SCRIPT, 5, &job, &e) < 0)
		return false;
	for (int i = 0; i < 2 && !ok; i++) {
		struct response r = {0};
		execute_job(x, &job, -1, &r, "self-check");
		ok = probe_answer_ok(&r, t->kind);
		api_response_free(&r);
	}
	api_job_free(&job);
	log_json(ok ? "INFO" : "WARNING",
	         json_pack("{s:b,s:s,s:f}", "ok", ok, "tier", jail_tier_name(t->kind), "durationMs",
	                   (clock_now() - t0) * 1e3),
	         "sandbox self-check of tier %s %s", jail_tier_name(t->kind),
	         ok ? "passed" : "failed");
	return ok;
}

/* Builds the tier's jail and runs the self-check in it; on failure why says what failed. */
static bool tier_try(struct tier *t, const struct tier_env *env, enum jail_tier tier, char *why,
                     size_t n)
{
	struct err je;

	struct execute x = *env->exec;

	t->kind = tier;
	t->jail = jail_new(env->cfg, env->cg, env->sup, tier, &je);
	if (!t->jail) {
		/* The details (paths) go to the log; clients get what to look for. */
		log_error("tier %s: %s", jail_tier_name(tier), je.message);
		snprintf(why, n,
		         "nsjail or its files are missing, or the run uids or work "
		         "directory are unusable (the server log says which)");
		return false;
	}
	x.jail = t->jail;
	x.pool = NULL; /* the self-check starts its own jail */
	if (self_check(t, &x))
		return true;
	jail_free(t->jail);
	t->jail = NULL;
	snprintf(why, n, "its jail could not start or failed its self-check (see the log)");
	return false;
}

/* Why the required tier is out of reach, and what to do about it. */
static void tier_problem(struct tier *t, const struct config *c, const char *full_why,
                         const char *restricted_why)
{
	const char *want = c->isolation;
	char missing[256];

	isolation_missing_full(&t->iso, missing, sizeof(missing));
	if (strcmp(want, "restricted") == 0)
		snprintf(t->problem, sizeof(t->problem),
		         "The sandbox could not start in isolation tier restricted: %s. It needs "
		         "nsjail, root in the container (to run each script as its own uid) and "
		         "seccomp; setuid %s, seccomp %s here.",
		         restricted_why, t->iso.ok[ISO_SETUID] ? "works" : "is refused",
		         t->iso.ok[ISO_SECCOMP] ? "works" : "is refused");
	else
		snprintf(
		    t->problem, sizeof(t->problem),
		    "The sandbox could not start in isolation tier full: %s%s. Fix: give the "
		    "container what nsjail needs for namespaces (docker run --cap-add SYS_ADMIN "
		    "--security-opt seccomp=unconfined --security-opt systempaths=unconfined), "
		    "or set PYEXEC_ISOLATION=auto to accept the restricted tier (no namespaces: "
		    "each script runs as its own uid with rlimits, a private directory and "
		    "seccomp, and can see other processes and world-readable files)%s%s.",
		    missing[0] ? "this host refuses " : "", missing[0] ? missing : full_why,
		    strcmp(want, "auto") == 0 ? "; the restricted tier failed too: " : "",
		    strcmp(want, "auto") == 0 ? restricted_why : "");
}

void tier_choose(struct tier *t, const struct tier_env *env)
{
	const struct config *c = env->cfg;
	const char *want = c->isolation;
	char full_why[512] = "not tried", restricted_why[512] = "not tried";
	bool ok = false;
	json_t *report;

	isolation_probe(c, env->sup, (uid_t)(c->run_uid + c->run_uids - 1), &t->iso);
	if (strcmp(want, "restricted") != 0)
		ok = tier_try(t, env, JAIL_FULL, full_why, sizeof(full_why));
	if (!ok && strcmp(want, "full") != 0)
		ok = tier_try(t, env, JAIL_RESTRICTED, restricted_why, sizeof(restricted_why));
	t->ok = ok;
	if (!ok)
		tier_problem(t, c, full_why, restricted_why);
	report = json_pack("{s:s,s:s?,s:s,s:o,s:s,s:s?,s:f}", "requested", want, "tier",
	                   ok ? jail_tier_name(t->kind) : NULL, "kernel", t->iso.kernel, "host",
	                   isolation_json(&t->iso), "limits", tier_limits_name(t, env->cg),
	                   "problem", ok ? NULL : t->problem, "probeMs", t->iso.ms);
	t->report = report;
	log_json(ok ? "INFO" : "ERROR", json_pack("{s:O}", "isolation", report),
	         "sandbox isolation: %s%s (requested %s)",
	         ok ? "tier " : "no tier: ", ok ? jail_tier_name(t->kind) : t->problem, want);
}

void tier_free(struct tier *t)
{
	jail_free(t->jail);
	t->jail = NULL;
	json_decref(t->report);
	t->report = NULL;
}
