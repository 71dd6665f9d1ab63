#include "runinit.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "outdir.h"

#define EXIT_SETUP 71 /* as runner/zygote.py's runs that fail to start */
#define EXIT_LOST 70  /* the zygote went away without saying how the script's process ended */
#define RELAY_TAIL (1 << 20)

static const char *const NAMESPACES[] = {"user", "mnt", "net", "ipc", "uts", "pid"};
#define NNS (sizeof(NAMESPACES) / sizeof(NAMESPACES[0]))

static void die(const char *fmt, ...)
{
	char msg[512];
	int n = snprintf(msg, sizeof(msg), "pyexec init: a run failed to start: ");
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	dprintf(INIT_ERR, "%s: %s\n", msg, strerror(errno));
	_exit(EXIT_SETUP);
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w, n -= (size_t)w;
	}
	return 0;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write_all(fd, text, strlen(text)) < 0)
		die("%s", path);
	close(fd);
}

/* fds[1..INIT_FDS) become 1..INIT_FDS-1, 0 reads nothing, every other descriptor is closed. */
static void place_fds(const int fds[INIT_FDS])
{
	int high[INIT_FDS];

	for (int i = 1; i < INIT_FDS; i++)
		if ((high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 64 + INIT_FDS)) < 0)
			die("moving descriptors");
	for (int i = 1; i < INIT_FDS; i++)
		if (dup2(high[i], i) < 0)
			die("moving descriptors");
	if (dup2(open("/dev/null", O_RDONLY | O_CLOEXEC), 0) < 0)
		die("/dev/null");
	syscall(SYS_close_range, INIT_FDS, ~0U, 0);
}

static void mount_or_die(const char *src, const char *dst, const char *type, unsigned long flags,
                         const char *data)
{
	if (mount(src, dst, type, flags, data) < 0)
		die("mount %s", dst);
}

static void loopback_up(void)
{
	struct ifreq ifr = {0};
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		die("the loopback");
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		die("the loopback");
	close(s);
}

/* Its uid maps onto the zygote's, private /tmp, /dev/shm, terminals and /proc, a loopback. */
static void set_up(const struct run_config *c)
{
	char text[128];

	write_file("/proc/self/setgroups", "deny");
	snprintf(text, sizeof(text), "%u %u 1\n", (unsigned)c->uid, (unsigned)c->uid);
	write_file("/proc/self/uid_map", text);
	snprintf(text, sizeof(text), "%u %u 1\n", (unsigned)c->gid, (unsigned)c->gid);
	write_file("/proc/self/gid_map", text);
	mount_or_die(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	snprintf(text, sizeof(text), "size=%lum,nr_inodes=%lu,mode=0700", c->tmp_mb, c->tmp_inodes);
	mount_or_die("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, text);
	snprintf(text, sizeof(text), "size=%lum,nr_inodes=%lu,mode=01777", c->tmp_mb,
	         c->tmp_inodes);
	mount_or_die("none", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, text);
	mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
	             "newinstance,ptmxmode=0666,mode=0620");
	/* Read-only, as a one-shot jail's (the zygote's own is writable for the uid maps). */
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL);
	loopback_up();
	if (chdir("/tmp") < 0)
		die("/tmp");
	/* Not dumpable: its /proc files stay closed to the script, which has the same uid. */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		die("dumpable");
}

/* "I" and the namespaces to the zygote, which forks the script's process into them. */
static void hand_over(void)
{
	char cbuf[CMSG_SPACE(sizeof(int) * NNS)] = {0}, path[32];
	struct iovec iov = {.iov_base = "I", .iov_len = 1};
	struct msghdr m = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	int ns[NNS];

	for (size_t i = 0; i < NNS; i++) {
		snprintf(path, sizeof(path), "/proc/self/ns/%s", NAMESPACES[i]);
		if ((ns[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			die("%s", path);
	}
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof(ns));
	memcpy(CMSG_DATA(h), ns, sizeof(ns));
	if (sendmsg(INIT_READY, &m, MSG_NOSIGNAL) != 1)
		die("telling the zygote");
	for (size_t i = 0; i < NNS; i++)
		close(ns[i]);
	close(INIT_READY);
}

/* No capability (not even in the bounding set), no_new_privs, the full tier's filter. */
static void drop_privileges(const struct run_config *c)
{
	struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct data[2] = {{0}};

	for (int cap = 0; prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0; cap++)
		;
	if (syscall(SYS_capset, &head, data) < 0)
		die("capset");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &c->filter, 0, 0) < 0)
		die("seccomp");
}

struct relay {
	int sigfd;
	int code;    /* the script's process's exit code; -1 while unknown */
	bool done;   /* it said so on INIT_DONE */
	bool exited; /* the zygote said it reaped it */
	bool sink;   /* the server still reads INIT_OUT */
	bool out;    /* INIT_SCRIPT still open */
	bool watch_done;
};

static void copy(struct relay *r, const char *data, size_t n)
{
	if (r->sink && write_all(INIT_OUT, data, n) < 0)
		r->sink = false;
}

/* "<code>\n" from the zygote. Its end without one means the zygote is gone (or could not fork
 * the script's process): its PID namespace, which holds this one, is ending, and the server runs
 * the script again elsewhere. The init leaves without a report, which would answer for a run the
 * zygote's death cut short. */
static void read_exited(struct relay *r)
{
	char text[16] = {0}, *end = text;
	ssize_t n;
	long code = -1;

	do
		n = read(INIT_EXITED, text, sizeof(text) - 1);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		code = strtol(text, &end, 10);
	if (n <= 0 || *end != '\n' || code < 0 || code > 255)
		_exit(EXIT_LOST);
	r->exited = true;
	if (r->code < 0)
		r->code = (int)code;
}

static void reap_orphans(struct relay *r)
{
	struct signalfd_siginfo si;

	while (read(r->sigfd, &si, sizeof(si)) > 0)
		;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void relay_once(struct relay *r)
{
	struct pollfd p[4] = {{.fd = r->out ? INIT_SCRIPT : -1, .events = POLLIN},
	                      {.fd = r->watch_done ? INIT_DONE : -1, .events = POLLIN},
	                      {.fd = INIT_EXITED, .events = POLLIN},
	                      {.fd = r->sigfd, .events = POLLIN}};
	char data[65536];

	if (poll(p, 4, -1) < 0)
		return;
	if (p[1].revents) {
		/* Only the runner's finish() writes it, after the frame; a script that writes it
		 * early only ends its own run, without a frame. */
		if (read(INIT_DONE, data, 1) == 1 && data[0] == 'D') {
			r->code = 0, r->done = true;
			return;
		}
		r->watch_done = false;
	}
	if (p[0].revents) {
		ssize_t n = read(INIT_SCRIPT, data, sizeof(data));
		if (n > 0)
			copy(r, data, (size_t)n);
		else if (n == 0 || errno != EINTR)
			r->out = false;
	}
	if (p[3].revents)
		reap_orphans(r);
	if (p[2].revents)
		read_exited(r);
}

/* What the script wrote before it ended is in the pipe; a process it left behind may keep
 * writing, so at most 1 MiB more is taken. */
static void relay_tail(struct relay *r)
{
	char data[65536];
	size_t left = RELAY_TAIL;

	fcntl(INIT_SCRIPT, F_SETFL, O_NONBLOCK);
	while (r->out && left > 0) {
		ssize_t n = read(INIT_SCRIPT, data, sizeof(data));
		if (n <= 0)
			break;
		copy(r, data, (size_t)n);
		left -= (size_t)n < left ? (size_t)n : left;
	}
}

/* Kills every other process of the jail (kill(-1) spares the caller); with wait, returns once
 * all are gone: the script's process is the zygote's child, the rest are the init's once their
 * parents are gone. A killed process never runs its code again. */
static void end_jail(struct relay *r, bool wait)
{
	kill(-1, SIGKILL);
	if (!wait)
		return;
	if (!r->exited)
		read_exited(r);
	for (;;) {
		kill(-1, SIGKILL);
		if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD)
			return;
	}
}

static void report(const struct run_config *c, struct relay *r)
{
	struct stat st;
	struct buf records;
	char head[64];
	/* With no output/ once the script is done, the report comes first and the jail's end
	 * after it: files made later are not collected. */
	bool walk = r->code == 0 && !(r->done && lstat("output", &st) < 0);

	buf_init(&records, c->records_max);
	if (walk) {
		end_jail(r, !r->done);
		outdir_collect(".", getuid(), &c->out, &records);
	}
	snprintf(head, sizeof(head), "%d %zu\n", r->code, records.len);
	if (write_all(INIT_STATUS, head, strlen(head)) == 0)
		write_all(INIT_STATUS, records.data ? records.data : "", records.len);
	buf_free(&records);
}

void runinit_main(const struct run_config *c, const int fds[INIT_FDS])
{
	struct relay r = {.code = -1, .sink = true, .out = true, .watch_done = true};
	sigset_t chld;

	place_fds(fds);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_DFL);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	r.sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (r.sigfd < 0)
		die("signalfd");
	set_up(c);
	hand_over();
	drop_privileges(c);
	while (r.code < 0)
		relay_once(&r);
	relay_tail(&r);
	report(c, &r);
	/* Killed processes count against the process quota all runs share until they are
	 * reaped: the init waits for them at the normal priority. */
	if (r.done)
		end_jail(&r, true);
	_exit(r.code);
}
