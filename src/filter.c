#include "filter.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Denied with EPERM: what nsjail never needs once it has started without namespaces. */
static const char *const denied[] = {
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "fsopen",
    "fsmount",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "memfd_create",
};

static const unsigned long clone_namespaces[] = {
    CLONE_NEWNS,   CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
    CLONE_NEWUSER, CLONE_NEWPID,    CLONE_NEWNET, 0x00000080 /* CLONE_NEWTIME */,
};

/* EPERM for each named call this architecture has (a name it lacks is skipped). */
static int deny_by_name(scmp_filter_ctx ctx, const char *const names[], size_t n)
{
	int rc = 0;

	for (size_t i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);
		if (nr != __NR_SCMP_ERROR)
			rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
	}
	return rc;
}

static int add_rules(scmp_filter_ctx ctx)
{
	int rc = 0;

	rc |= deny_by_name(ctx, denied, sizeof(denied) / sizeof(*denied));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
	                       SCMP_A0(SCMP_CMP_NE, AF_UNIX));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socketpair), 1,
	                       SCMP_A0(SCMP_CMP_NE, AF_UNIX));
	for (size_t i = 0; i < sizeof(clone_namespaces) / sizeof(*clone_namespaces); i++)
		rc |= seccomp_rule_add(
		    ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
		    SCMP_A0(SCMP_CMP_MASKED_EQ, clone_namespaces[i], clone_namespaces[i]));
	/* clone3 keeps its flags where seccomp cannot look; nsjail falls back to clone. */
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	return rc ? -1 : 0;
}

/* libseccomp writes the program to a descriptor: a pipe holds it (a few KiB). */
static int export(scmp_filter_ctx ctx, struct sock_fprog *out)
{
	unsigned char buf[60000];
	ssize_t n = -1;
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	if (fcntl(p[1], F_SETPIPE_SZ, (int)sizeof(buf)) >= (int)sizeof(buf) &&
	    seccomp_export_bpf(ctx, p[1]) == 0) {
		close(p[1]);
		p[1] = -1;
		n = read(p[0], buf, sizeof(buf));
	}
	close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	if (n <= 0 || n % (ssize_t)sizeof(struct sock_filter) != 0)
		return -1;
	out->filter = malloc((size_t)n);
	if (!out->filter)
		return -1;
	memcpy(out->filter, buf, (size_t)n);
	out->len = (unsigned short)(n / (ssize_t)sizeof(struct sock_filter));
	return 0;
}

/* One filter from a set of rules; what names the filter in the error. */
static int build(struct sock_fprog *out, int (*rules)(scmp_filter_ctx), const char *what,
                 struct err *e)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (ctx && rules(ctx) == 0 && export(ctx, out) == 0)
		rc = 0;
	if (ctx)
		seccomp_release(ctx);
	if (rc < 0)
		err_set(e, 500, "internal", "cannot build the seccomp filter for %s (libseccomp)",
		        what);
	return rc;
}

int filter_build_restricted(struct sock_fprog *out, struct err *e)
{
	return build(out, add_rules, "nsjail", e);
}

/* The full tier's policy (config/seccomp.kafel's pyexec_full) for libseccomp: what a zygote's
 * run installs itself, since nsjail's policy there is the zygote's, which allows namespaces. */
static const char *const denied_full[] = {
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_by_handle_at",
    "name_to_handle_at",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "lookup_dcookie",
    "memfd_secret",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "sethostname",
    "setdomainname",
    "uselib",
    "ustat",
    "sysfs",
    "nfsservctl",
    /* Counted against root's quota on the host (config/seccomp.kafel, pyexec_full). */
    "inotify_init",
    "inotify_init1",
    "fanotify_init",
};

/* No process of a run sets the scheduling, CPU affinity or limits of the run's init, pid 1
 * (config/seccomp.kafel, pyexec_full): all of a run shares one uid, and a script that lowered
 * its init's priority would keep it, behind busy children, from the kill that follows its
 * report; a CPU limit has the kernel kill it. A process still sets its own, by 0 or by its pid,
 * as on a host (CPython's test_os does). */
static int init_scheduling_refused(scmp_filter_ctx ctx)
{
	const int pid_first[] = {SCMP_SYS(sched_setscheduler), SCMP_SYS(sched_setattr),
	                         SCMP_SYS(sched_setparam), SCMP_SYS(sched_setaffinity),
	                         SCMP_SYS(prlimit64)};
	int rc = 0;

	for (size_t i = 0; i < sizeof(pid_first) / sizeof(*pid_first); i++)
		rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), pid_first[i], 1,
		                       SCMP_A0(SCMP_CMP_EQ, 1));
	/* setpriority(which, who): a process group or a user would take the init in too. */
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(setpriority), 1,
	                       SCMP_A0(SCMP_CMP_NE, 0));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(setpriority), 1,
	                       SCMP_A1(SCMP_CMP_EQ, 1));
	return rc;
}

static int add_full_rules(scmp_filter_ctx ctx)
{
	int rc = 0;

	rc |= deny_by_name(ctx, denied_full, sizeof(denied_full) / sizeof(*denied_full));
	for (size_t i = 0; i < sizeof(clone_namespaces) / sizeof(*clone_namespaces); i++)
		rc |= seccomp_rule_add(
		    ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
		    SCMP_A0(SCMP_CMP_MASKED_EQ, clone_namespaces[i], clone_namespaces[i]));
	/* personality: the 0xffffffff query only. Stricter than the kafel policy, which also
	 * allows setting 0, since libseccomp takes one comparison per argument in a rule. */
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(personality), 1,
	                       SCMP_A0(SCMP_CMP_NE, 0xffffffffULL));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	rc |= init_scheduling_refused(ctx);
	return rc ? -1 : 0;
}

int filter_build_full(struct sock_fprog *out, struct err *e)
{
	return build(out, add_full_rules, "the zygote's runs", e);
}

void filter_free(struct sock_fprog *f)
{
	free(f->filter);
	f->filter = NULL;
	f->len = 0;
}
