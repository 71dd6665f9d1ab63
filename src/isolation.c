#include "isolation.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "supervisor.h"

#define PROBE_SECONDS 5.0
#define PROBE_ARGS 32

static const char *const names[ISO_PROBES] = {
    "userNamespace", "pidNamespace",    "mountNamespace", "networkNamespace", "ipcNamespace",
    "utsNamespace",  "cgroupNamespace", "procMount",      "setuid",           "seccomp",
};

/* nsjail's switch for each namespace, in enum order. */
static const char *const ns_flags[7] = {
    "--disable_clone_newuser",   "--disable_clone_newpid", "--disable_clone_newns",
    "--disable_clone_newnet",    "--disable_clone_newipc", "--disable_clone_newuts",
    "--disable_clone_newcgroup",
};

/* Runs argv with nothing but /dev/null for input and output; true when it exits 0 in time.
 * Whatever it started as user->uid is ended with it. */
static bool probe_run(struct supervisor *sup, char *const argv[], const struct spawn_user *user)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC), fds[SPAWN_FDS];
	struct proc_opts o = {.tag = "probe", .uid = user ? user->uid : 0};
	struct proc_end end;
	struct proc *p;
	struct err e;
	bool exited;

	if (null < 0)
		return false;
	for (int i = 0; i < SPAWN_FDS; i++)
		fds[i] = null;
	p = sup_spawn(sup, argv, fds, user, &o, &e);
	close(null);
	if (!p)
		return false;
	exited = proc_wait(p, PROBE_SECONDS);
	proc_end(p, true, PROBE_SECONDS, &end);
	return exited && end.status == 0;
}

/* One probe: nsjail with the namespaces in `keep` (a bit per ISO_*_NS) and the extra options,
 * running `code` with the host's interpreter. */
static bool probe(const struct config *c, struct supervisor *sup, unsigned keep,
                  const char *const *extra, const char *code, const struct spawn_user *user)
{
	char *argv[PROBE_ARGS];
	int n = 0;

	argv[n++] = (char *)c->nsjail;
	argv[n++] = "--mode=o";
	argv[n++] = "--quiet";
	argv[n++] = "--time_limit=5";
	/* What is probed is the namespaces, uid and seccomp; gVisor refuses some rlimits. */
	argv[n++] = "--disable_rlimits";
	for (int i = 0; i < 7; i++)
		if (!(keep & (1u << i)))
			argv[n++] = (char *)ns_flags[i];
	while (extra && *extra)
		argv[n++] = (char *)*extra++;
	argv[n++] = "--";
	argv[n++] = (char *)c->python;
	argv[n++] = "-I";
	argv[n++] = "-S";
	argv[n++] = "-c";
	argv[n++] = (char *)code;
	argv[n] = NULL;
	return probe_run(sup, argv, user);
}

/* gVisor says so in the kernel log it makes up; a real kernel's is not ours to read without
 * CAP_SYSLOG, or says nothing of the kind. */
static void kernel_name(char *out, size_t n)
{
	static char log[16384];
	struct utsname u;
	int len = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, (int)sizeof(log) - 1);
	bool gvisor;

	if (uname(&u) < 0)
		snprintf(u.release, sizeof(u.release), "?");
	log[len > 0 ? len : 0] = '\0';
	gvisor = len > 0 && strstr(log, "gVisor") != NULL;
	snprintf(out, n, gvisor ? "gVisor (Linux %s)" : "Linux %s", u.release);
}

void isolation_probe(const struct config *c, struct supervisor *sup, uid_t probe_uid,
                     struct isolation *iso)
{
	static const char *const no_proc[] = {"--disable_proc", NULL};
	/* As tier full has it: no interface at all, so nothing to configure over netlink. */
	static const char *const no_iface[] = {"--disable_proc", "--iface_no_lo", NULL};
	static const char *const ro_root[] = {"--chroot=/", "--disable_proc", NULL};
	static const char *const with_proc[] = {"--chroot=/", NULL};
	/* getppid cannot fail, so -1 from it is the policy's answer. */
	static const char *const deny_getppid[] = {
	    "--seccomp_string=POLICY p { ERRNO(1) { getppid } } USE p DEFAULT ALLOW", NULL};
	char code[160];
	struct spawn_user as = {.uid = probe_uid, .gid = (gid_t)probe_uid, .dir = "/"};
	double t0 = clock_now();

	memset(iso, 0, sizeof(*iso));
	kernel_name(iso->kernel, sizeof(iso->kernel));
	for (int ns = ISO_USER_NS; ns <= ISO_CGROUP_NS; ns++)
		iso->ok[ns] = probe(c, sup, 1u << ns,
		                    ns == ISO_MOUNT_NS ? ro_root
		                    : ns == ISO_NET_NS ? no_iface
		                                       : no_proc,
		                    "pass", NULL);
	iso->ok[ISO_PROC] = probe(c, sup, 1u << ISO_MOUNT_NS | 1u << ISO_PID_NS, with_proc,
	                          "import os; os.stat('/proc/self/status')", NULL);
	/* As the probe uid, as the restricted tier runs: no privilege left, and no way back. */
	snprintf(code, sizeof(code),
	         "import os\nassert os.getuid() == os.geteuid() == %u\ntry: os.setuid(0)\n"
	         "except PermissionError: pass\nelse: raise SystemExit(3)",
	         (unsigned)probe_uid);
	iso->ok[ISO_SETUID] = probe(c, sup, 0, no_proc, code, &as);
	iso->ok[ISO_SECCOMP] =
	    iso->ok[ISO_SETUID] &&
	    probe(c, sup, 0, deny_getppid,
	          "import os; raise SystemExit(0 if os.getppid() == -1 else 3)", &as);
	iso->ms = (clock_now() - t0) * 1e3;
}

void isolation_missing_full(const struct isolation *iso, char *out, size_t n)
{
	size_t off = 0;

	out[0] = '\0';
	for (int p = ISO_USER_NS; p <= ISO_PROC && off < n; p++)
		if (!iso->ok[p])
			off +=
			    (size_t)snprintf(out + off, n - off, "%s%s", off ? ", " : "", names[p]);
}

json_t *isolation_json(const struct isolation *iso)
{
	json_t *o = json_object();

	for (int p = 0; p < ISO_PROBES && o; p++)
		json_object_set_new(o, names[p], json_boolean(iso->ok[p]));
	return o;
}
