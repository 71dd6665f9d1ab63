#include "spawn.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "landlock.h"
#include "sysfile.h"

/* How long a uid's processes may take to die after SIGKILL before the kill counts as failed. */
#define KILL_SECONDS 2.0

static char *const empty_env[] = {NULL};

static pid_t spawn_plain(char *const argv[], const int fds[SPAWN_FDS], struct err *e)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	pid_t pid = -1;
	int rc = 0, base = SPAWN_FDS;

	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	/* Sources are first copied above every source, so no dup2 clobbers a later source. */
	for (int i = 0; i < SPAWN_FDS; i++)
		base = fds[i] >= base ? fds[i] + 1 : base;
	for (int i = 0; i < SPAWN_FDS; i++)
		rc = rc ? rc : posix_spawn_file_actions_adddup2(&fa, fds[i], base + i);
	for (int i = 0; i < SPAWN_FDS; i++)
		rc = rc ? rc : posix_spawn_file_actions_adddup2(&fa, base + i, i);
	rc = rc ? rc : posix_spawn_file_actions_addclosefrom_np(&fa, SPAWN_FDS);
	rc = rc ? rc : posix_spawnattr_setsigmask(&attr, &none);
	rc = rc ? rc : posix_spawnattr_setsigdefault(&attr, &all);
	rc = rc ? rc
	        : posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
	                                              POSIX_SPAWN_SETSIGDEF);
	rc = rc ? rc : posix_spawn(&pid, argv[0], &fa, &attr, argv, empty_env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc) {
		err_set(e, 500, "internal", "cannot start %s: %s", argv[0], strerror(rc));
		return -1;
	}
	return pid;
}

/* Between fork and exec only async-signal-safe calls: the server has other threads. */
static int close_from(int first, int max_fd)
{
	if (syscall(SYS_close_range, (unsigned)first, ~0U, 0) == 0)
		return 0;
	for (int fd = first; fd < max_fd; fd++)
		close(fd);
	return 0;
}

static int child_fds(const int fds[SPAWN_FDS], int report, int max_fd)
{
	int base = SPAWN_FDS;

	for (int i = 0; i < SPAWN_FDS; i++)
		base = fds[i] >= base ? fds[i] + 1 : base;
	base = report >= base ? report + 1 : base;
	for (int i = 0; i < SPAWN_FDS; i++)
		if (dup2(fds[i], base + i) < 0)
			return -1;
	if (dup2(report, base + SPAWN_FDS) < 0)
		return -1;
	for (int i = 0; i < SPAWN_FDS; i++)
		if (dup2(base + i, i) < 0)
			return -1;
	/* The report pipe ends up just above the child's descriptors, closed on exec. */
	if (dup2(base + SPAWN_FDS, SPAWN_FDS) < 0 || fcntl(SPAWN_FDS, F_SETFD, FD_CLOEXEC) < 0)
		return -1;
	return close_from(SPAWN_FDS + 1, max_fd);
}

static int child_become(const struct spawn_user *u)
{
	for (int i = 0; i < u->nlimits; i++) {
		struct rlimit rl = {u->limits[i].value, u->limits[i].value};
		if (setrlimit(u->limits[i].resource, &rl) < 0 && !u->limits[i].optional)
			return -1;
	}
	umask(077);
	/* Raw calls: the libc wrappers would try to change every thread of the server's, of
	 * which the forked child has only the one. */
	if (chdir(u->dir) < 0 || syscall(SYS_setgroups, 0, NULL) < 0 ||
	    syscall(SYS_setresgid, u->gid, u->gid, u->gid) < 0 ||
	    syscall(SYS_setresuid, u->uid, u->uid, u->uid) < 0)
		return -1;
	/* Never exec with a way back to the server's identity. */
	if (getuid() != u->uid || geteuid() != u->uid || syscall(SYS_setresuid, 0, 0, 0) == 0)
		return -1;
	return 0;
}

/* Last before exec: nothing started from here on can gain privileges or shed the filter. */
static int child_filter(const struct spawn_user *u)
{
	if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) < 0)
		return -1;
	if (u->landlock_abi > 0 && landlock_confine(u->dir, u->landlock_abi) < 0)
		return -1;
	if (u->filter &&
	    syscall(SYS_prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, u->filter, 0UL, 0UL) < 0)
		return -1;
	return 0;
}

static void child_main(char *const argv[], const int fds[SPAWN_FDS], const struct spawn_user *u,
                       int report, int max_fd)
{
	sigset_t none;
	int err;

	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	if (setsid() < 0 || child_fds(fds, report, max_fd) < 0 || child_become(u) < 0 ||
	    sigprocmask(SIG_SETMASK, &none, NULL) < 0 || child_filter(u) < 0)
		goto fail;
	execve(argv[0], argv, empty_env);
fail:
	err = errno ? errno : EPERM;
	(void)!write(SPAWN_FDS, &err, sizeof(err));
	_exit(127);
}

static pid_t spawn_as(char *const argv[], const int fds[SPAWN_FDS], const struct spawn_user *u,
                      struct err *e)
{
	int report[2], err = 0, max_fd = (int)sysconf(_SC_OPEN_MAX), status;
	pid_t pid;
	ssize_t n;

	if (pipe2(report, O_CLOEXEC) < 0) {
		err_set(e, 500, "internal", "cannot create a pipe: %s", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid == 0)
		child_main(argv, fds, u, report[1], max_fd);
	close(report[1]);
	if (pid < 0) {
		close(report[0]);
		err_set(e, 500, "internal", "cannot fork: %s", strerror(errno));
		return -1;
	}
	/* The exec closes the report pipe; an error number arrives only on failure. */
	while ((n = read(report[0], &err, sizeof(err))) < 0 && errno == EINTR)
		;
	close(report[0]);
	if (n <= 0)
		return pid;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	err_set(e, 500, "internal", "cannot start %s as uid %u: %s", argv[0], (unsigned)u->uid,
	        strerror(err));
	return -1;
}

pid_t spawn_process(char *const argv[], const int fds[SPAWN_FDS], const struct spawn_user *user,
                    struct err *e)
{
	return user ? spawn_as(argv, fds, user, e) : spawn_plain(argv, fds, e);
}

/* Reads /proc/<name>/<file> (a status file) into text; false when it is gone. */
static bool read_status_file(int proc, const char *name, const char *file, char *text, size_t n)
{
	char path[300];

	if (snprintf(path, sizeof(path), "%s/%s", name, file) >= (int)sizeof(path))
		return false;
	return sysfile_read(proc, path, text, n) > 0;
}

/* From a status file: whether the task runs as uid (real, effective, saved or file system
 * uid) and whether it is a zombie. False when the text cannot be read. */
static bool status_of(const char *text, uid_t uid, bool *mine, bool *zombie)
{
	const char *state = strstr(text, "\nState:"), *ids = strstr(text, "\nUid:");
	unsigned long u[4];

	if (!state || !ids || sscanf(ids + 5, "%lu %lu %lu %lu", &u[0], &u[1], &u[2], &u[3]) != 4)
		return false;
	state += 7 + strspn(state + 7, " \t");
	*zombie = *state == 'Z' || *state == 'X';
	*mine = u[0] == uid || u[1] == uid || u[2] == uid || u[3] == uid;
	return true;
}

/* True when the thread group /proc/<name> runs as uid and still has a live task. Its leader
 * may be a zombie while other threads of it run (the leader called exit, not exit_group): the
 * tasks decide, not the leader's state. */
static bool live_process_of(int proc, const char *name, uid_t uid)
{
	char text[2048], task[300];
	struct dirent *de;
	bool mine, zombie, live = false;
	struct stat st;
	DIR *d;
	int fd;

	/* /proc/<pid> belongs to the effective uid of a dumpable process, else to root: a
	 * process of any other owner is not uid's (a thread of uid inside a process of another
	 * uid would need privilege to get there). */
	if (fstatat(proc, name, &st, 0) < 0 || (st.st_uid != uid && st.st_uid != 0))
		return false;
	if (!read_status_file(proc, name, "status", text, sizeof(text)) ||
	    !status_of(text, uid, &mine, &zombie) || !mine)
		return false;
	if (!zombie)
		return true;
	snprintf(task, sizeof(task), "%s/task", name);
	fd = openat(proc, task, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	while (!live && (de = readdir(d))) {
		char file[300];
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(file, sizeof(file), "task/%s/status", de->d_name);
		live = read_status_file(proc, name, file, text, sizeof(text)) &&
		       status_of(text, uid, &mine, &zombie) && !zombie;
	}
	closedir(d);
	return live;
}

/* Sends SIGKILL to one thread group of uid found in /proc, from the server itself. A pidfd
 * pins the process while its owner is checked again, so a recycled pid is never signalled;
 * a group-wide SIGKILL ends every thread, also those under a zombie leader. Returns the pidfd
 * (the caller waits on it and closes it), or -1. */
static int kill_one(int proc, const char *name, uid_t uid)
{
	pid_t pid = (pid_t)strtol(name, NULL, 10);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);

	if (pidfd < 0) {
		/* No pidfd (older kernels, some gVisor releases): a recycled pid within this
		 * instant is the remaining risk. */
		if (errno == ENOSYS && live_process_of(proc, name, uid))
			kill(pid, SIGKILL);
		return -1;
	}
	if (live_process_of(proc, name, uid)) {
		syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
		return pidfd;
	}
	close(pidfd);
	return -1;
}

/* The pidfds of processes being killed, to wait on. */
struct dying {
	int fds[64];
	unsigned n;
	bool more; /* some had no room: look again */
};

/* One pass over /proc; with d, every live process of uid gets SIGKILL and its pidfd goes to d.
 * Returns how many live ones it saw, or -1 when /proc cannot be read. */
static int user_pass(uid_t uid, struct dying *d)
{
	DIR *dir = opendir("/proc");
	struct dirent *de;
	int seen = 0;

	if (!dir)
		return -1;
	while ((de = readdir(dir)))
		if (de->d_name[0] >= '1' && de->d_name[0] <= '9' &&
		    live_process_of(dirfd(dir), de->d_name, uid)) {
			int fd;
			seen++;
			if (!d)
				continue;
			fd = kill_one(dirfd(dir), de->d_name, uid);
			if (fd >= 0 && d->n < sizeof(d->fds) / sizeof(d->fds[0]))
				d->fds[d->n++] = fd;
			else if (fd >= 0)
				close(fd), d->more = true;
			else
				d->more = true;
		}
	closedir(dir);
	return seen;
}

/* Waits until every process in d has exited or `end` passes; closes the pidfds. False when
 * some are still there. */
static bool wait_dying(struct dying *d, double end)
{
	struct pollfd p[64];
	unsigned left = d->n;

	for (unsigned i = 0; i < d->n; i++)
		p[i] = (struct pollfd){.fd = d->fds[i], .events = POLLIN};
	while (left) {
		int n = poll(p, d->n, clock_ms_until(end));
		if (n == 0 || (n < 0 && errno != EINTR))
			break;
		for (unsigned i = 0; i < d->n; i++)
			if (p[i].fd >= 0 && p[i].revents) {
				close(p[i].fd);
				p[i].fd = -1;
				left--;
			}
	}
	for (unsigned i = 0; i < d->n; i++)
		if (p[i].fd >= 0)
			close(p[i].fd);
	d->n = 0;
	return left == 0;
}

/* The kernel's own kill of a whole uid: a child of the server takes uid and sends SIGKILL to
 * every process it may signal, kill(-1). The kernel walks every process at once under its
 * task list lock, whatever their state, and a fork racing the walk fails: nothing of uid is
 * missed, unlike a scan of /proc. The uid's processes could kill or stop the helper before it
 * acts; then it is killed by the server and the caller tries again. Returns 1 when it signalled
 * some process (a zombie counts), 0 when the kernel found none, -1 when it did not run. */
static int kill_as(uid_t uid)
{
	int status = 0, pidfd;
	struct pollfd p;
	pid_t pid = fork();

	if (pid == 0) {
		/* Raw calls only: the server has other threads. */
		if (syscall(SYS_setgroups, 0, NULL) < 0 ||
		    syscall(SYS_setresgid, uid, uid, uid) < 0 ||
		    syscall(SYS_setresuid, uid, uid, uid) < 0)
			_exit(2);
		_exit(syscall(SYS_kill, -1, SIGKILL) == 0 ? 0 : errno == ESRCH ? 3 : 4);
	}
	if (pid < 0)
		return -1;
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	p = (struct pollfd){.fd = pidfd, .events = POLLIN};
	/* Without pidfds (some gVisor releases) the wait below is the only one. */
	if (pidfd >= 0 && poll(&p, 1, 200) == 0)
		kill(pid, SIGKILL);
	if (pidfd >= 0)
		close(pidfd);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status) == 0 ? 1 : WEXITSTATUS(status) == 3 ? 0 : -1;
}

int spawn_signal_user(uid_t uid)
{
	if (uid == 0)
		return -1;
	struct dying d = {.n = 0};
	int rc;

	if (kill_as(uid) >= 0)
		return 0;
	rc = user_pass(uid, &d);
	for (unsigned i = 0; i < d.n; i++)
		close(d.fds[i]);
	return rc < 0 ? -1 : 0;
}

int spawn_kill_user(uid_t uid)
{
	double end = clock_now() + KILL_SECONDS;

	if (uid == 0)
		return -1;
	/* Each round: the kernel's kill of the whole uid, then a scan of every task that kills
	 * what is still alive and waits on the pidfds of those until they are gone. */
	do {
		struct dying d = {.n = 0};
		int signalled = kill_as(uid), seen;
		/* The kernel saw no process of uid at all, not even a zombie. */
		if (signalled == 0)
			return 0;
		seen = user_pass(uid, &d);
		if (seen < 0) {
			wait_dying(&d, clock_now());
			return -1;
		}
		if (seen == 0)
			return 0;
		/* After the kernel's kill no process of uid can be born (a racing fork fails):
		 * once those the scan found are gone, none is left. */
		if (wait_dying(&d, end) && signalled > 0 && !d.more)
			return 0;
	} while (clock_now() < end);
	return user_pass(uid, NULL) == 0 ? 0 : -1;
}

/* The first uid in [lo, hi] with a live task, found in /proc; 0 when there is none. */
static uid_t user_in_range(uid_t lo, uid_t hi)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	uid_t found = 0;

	if (!d)
		return 0;
	while (!found && (de = readdir(d))) {
		char text[2048];
		unsigned long u;
		const char *ids;
		if (de->d_name[0] < '1' || de->d_name[0] > '9' ||
		    !read_status_file(dirfd(d), de->d_name, "status", text, sizeof(text)) ||
		    !(ids = strstr(text, "\nUid:")) || sscanf(ids + 5, "%lu", &u) != 1)
			continue;
		if (u >= lo && u <= hi && live_process_of(dirfd(d), de->d_name, (uid_t)u))
			found = (uid_t)u;
	}
	closedir(d);
	return found;
}

int spawn_kill_range(uid_t lo, uid_t hi)
{
	if (lo == 0)
		return -1;
	for (unsigned i = 0; i <= hi - lo; i++) {
		uid_t uid = user_in_range(lo, hi);
		if (uid == 0)
			return 0;
		if (spawn_kill_user(uid) < 0)
			return -1;
	}
	return user_in_range(lo, hi) ? -1 : 0;
}
