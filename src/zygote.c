#include "zygote.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "spawn.h"
#include "sysfile.h"

#define READY_WORD "READY"
#define BACKOFF_MAX 30.0
#define WORDS_MAX 2048

struct zygote {
	struct zygote_opts o;
	struct sock_fprog filter; /* what each run installs: the full tier's policy */
	pthread_mutex_t mu;
	int ctl; /* its control socket; -1 while it is down */
	/* A pidfd of the zygote's interpreter itself (sent with its ready word): readable the
	 * moment it dies, however late its nsjail exits; runs hold a copy, so that one that ends
	 * without its init's report counts as lost. -1 while it is down. */
	int self;
	int spawner; /* a pidfd of its spawner (init/spawner.c), which clones each run's init */
	struct proc *proc; /* its nsjail, through the supervisor; NULL while it is down */
	unsigned long restarts;
	unsigned urgent; /* forks requests wait for, under way (urgent_fork) */
	int wake;        /* eventfd: stop */
	/* What nsjail and the zygote say (its stderr): kept, and logged when it fails or dies,
	 * as a one-shot jail's are; the server's log stays JSON. Only the keeper reads it. */
	int err;
	char words[WORDS_MAX];
	size_t nwords;
	pthread_t keeper;
	bool keeper_started;
};

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static bool readable(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return poll(&p, 1, ms) > 0;
}

/* Waits for fd to turn readable while the process behind pidfd lives; false on its death or
 * when seconds pass. */
static bool wait_readable(int fd, int pidfd, double seconds)
{
	struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
	int rc = poll(p, 2, (int)ceil(seconds * 1000));

	return rc > 0 && p[0].revents && !p[1].revents;
}

/* Keeps the last WORDS_MAX bytes of what the zygote's stderr holds now. */
static void drain_words(struct zygote *z)
{
	char chunk[4096];
	ssize_t n;

	while (z->err >= 0 && (n = read(z->err, chunk, sizeof(chunk))) > 0) {
		size_t k = (size_t)n > WORDS_MAX ? WORDS_MAX : (size_t)n;
		size_t keep = z->nwords + k > WORDS_MAX ? WORDS_MAX - k : z->nwords;
		memmove(z->words, z->words + z->nwords - keep, keep);
		memcpy(z->words + keep, chunk + (size_t)n - k, k);
		z->nwords = keep + k;
	}
}

static const char *last_words(struct zygote *z)
{
	drain_words(z);
	if (z->nwords == WORDS_MAX)
		z->nwords--;
	z->words[z->nwords] = '\0';
	z->nwords = 0;
	return z->words;
}

static int write_filter(int fd, const struct sock_fprog *f)
{
	const char *data = (const char *)f->filter;
	size_t len = (size_t)f->len * sizeof(*f->filter), off = 0;

	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

/* The pid a pidfd stands for, in the server's pid namespace; -1 when fd is no pidfd. */
static pid_t pidfd_pid(int fd)
{
	char path[64], text[1024], *p;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (fd < 0 || sysfile_read(AT_FDCWD, path, text, sizeof(text)) <= 0)
		return -1;
	p = strstr(text, "\nPid:");
	return p ? (pid_t)strtol(p + 5, NULL, 10) : -1;
}

/* One message that is word and carries two descriptors, pidfds (the zygote's ready word: the
 * zygote and its spawner; a run's "P": its init and its script's process); anything else is
 * refused. Returns 0 with both in fds and the pids they stand for in pids, else -1. */
static int recv_pidfds(int sock, const char *word, int fds[2], pid_t pids[2])
{
	char cbuf[CMSG_SPACE(sizeof(int) * 2)] = {0}, got[16] = {0};
	struct iovec iov = {.iov_base = got, .iov_len = sizeof(got)};
	struct msghdr m = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c;
	ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);

	fds[0] = fds[1] = -1;
	pids[0] = pids[1] = -1;
	if (n < 0)
		return -1;
	c = CMSG_FIRSTHDR(&m);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
	    c->cmsg_len == CMSG_LEN(sizeof(int) * 2))
		memcpy(fds, CMSG_DATA(c), sizeof(int) * 2);
	if (n == (ssize_t)strlen(word) && memcmp(got, word, (size_t)n) == 0 &&
	    !(m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) && (pids[0] = pidfd_pid(fds[0])) > 0 &&
	    (pids[1] = pidfd_pid(fds[1])) > 0)
		return 0;
	close_fd(&fds[0]);
	close_fd(&fds[1]);
	pids[0] = pids[1] = -1;
	return -1;
}

/* Starts one zygote and waits for its ready word, which carries pidfds of the zygote itself and
 * of its spawner; fills ctl, self[2] and proc (not under the lock: the caller publishes them). */
static int start_one(struct zygote *z, int *ctl, int self[2], struct proc **proc, struct err *e)
{
	struct proc_opts o = {.tag = "zygote"};
	pid_t pids[2]; /* not kept: the pidfds are what the server holds */
	int sv[2], filt[2] = {-1, -1}, errp[2] = {-1, -1}, fds[SPAWN_FDS];
	int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null_fd < 0 || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		if (null_fd >= 0)
			close(null_fd);
		return err_set(e, 500, "internal", "zygote: cannot make its socket: %s",
		               strerror(errno));
	}
	if (pipe2(filt, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
		close(null_fd), close(sv[0]), close(sv[1]);
		close_fd(&filt[0]), close_fd(&filt[1]);
		return err_set(e, 500, "internal", "zygote: cannot make a pipe: %s",
		               strerror(errno));
	}
	fcntl(errp[0], F_SETFL, O_NONBLOCK);
	close_fd(&z->err);
	z->err = errp[0];
	fds[0] = null_fd, fds[1] = errp[1], fds[2] = errp[1];
	fds[ZYGOTE_CTL_FD] = sv[1], fds[ZYGOTE_FILTER_FD] = filt[0];
	*proc = sup_spawn(z->o.sup, z->o.argv, fds, NULL, &o, e);
	close(null_fd), close(sv[1]), close(filt[0]), close(errp[1]);
	if (!*proc) {
		close(sv[0]), close(filt[1]);
		return -1;
	}
	*ctl = sv[0];
	/* Its runs are watched through pidfds: without them there is no zygote. */
	if (write_filter(filt[1], &z->filter) < 0 || proc_fd(*proc) < 0)
		goto fail;
	close(filt[1]);
	filt[1] = -1;
	if (!wait_readable(*ctl, proc_fd(*proc), z->o.start_timeout))
		goto fail;
	if (recv_pidfds(*ctl, READY_WORD, self, pids) < 0)
		goto fail;
	return 0;
fail:
	close_fd(&filt[1]);
	proc_end(*proc, true, 0, NULL);
	*proc = NULL;
	close_fd(ctl);
	return err_set(e, 500, "internal",
	               "zygote: it exited or did not become ready within %g s: %s",
	               z->o.start_timeout, last_words(z));
}

/* The zygote died: the server starts another, with a back-off while starts fail. */
static void restart(struct zygote *z)
{
	double backoff = 0.5;
	struct proc *dead, *proc = NULL;
	struct proc_end end;
	int ctl = -1, self[2] = {-1, -1};
	struct err e;

	pthread_mutex_lock(&z->mu);
	close_fd(&z->ctl);
	close_fd(&z->self);
	close_fd(&z->spawner);
	dead = z->proc;
	z->proc = NULL;
	z->restarts++;
	pthread_mutex_unlock(&z->mu);
	proc_end(dead, false, 0, &end);
	log_json("WARNING", json_pack("{s:i,s:s}", "exitCode", end.status, "nsjail", last_words(z)),
	         "zygote: it died; starting another (runs start in one-shot jails meanwhile)");
	while (start_one(z, &ctl, self, &proc, &e) < 0) {
		log_error("%s; retrying in %g s", e.message, backoff);
		if (readable(z->wake, (int)(backoff * 1000)))
			return;
		backoff = fmin(backoff * 2, BACKOFF_MAX);
	}
	pthread_mutex_lock(&z->mu);
	z->ctl = ctl, z->self = self[0], z->spawner = self[1], z->proc = proc;
	pthread_mutex_unlock(&z->mu);
	log_info("zygote: ready again");
}

static void *keeper_main(void *arg)
{
	struct zygote *z = arg;

	bool ending = false; /* its interpreter died and its nsjail was killed */

	for (;;) {
		struct pollfd p[4] = {{.fd = z->wake, .events = POLLIN},
		                      {.fd = z->proc ? proc_fd(z->proc) : -1, .events = POLLIN},
		                      {.fd = z->err, .events = POLLIN},
		                      {.fd = ending ? -1 : z->self, .events = POLLIN}};
		if (poll(p, 4, -1) < 0 && errno != EINTR)
			return NULL;
		if (p[0].revents)
			return NULL;
		if (p[2].revents & POLLIN)
			drain_words(z);
		else if (p[2].revents)
			close_fd(&z->err); /* nsjail is going: what it said is kept */
		/* Its nsjail would exit too, in its own time: the restart need not wait for it. */
		if (p[3].revents && z->proc) {
			proc_kill(z->proc);
			ending = true;
		}
		if (p[1].revents) {
			restart(z);
			ending = false;
		}
	}
}

static int first_fork(struct zygote *z, struct err *e);

struct zygote *zygote_new(const struct zygote_opts *o, struct err *e)
{
	struct zygote *z = calloc(1, sizeof(*z));
	int self[2] = {-1, -1};

	if (!z) {
		err_set(e, 500, "internal", "out of memory");
		return NULL;
	}
	z->o = *o;
	z->ctl = z->self = z->spawner = z->err = -1;
	pthread_mutex_init(&z->mu, NULL);
	z->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (z->wake < 0 || filter_build_full(&z->filter, e) < 0 ||
	    start_one(z, &z->ctl, self, &z->proc, e) < 0)
		goto fail;
	z->self = self[0], z->spawner = self[1];
	if (first_fork(z, e) < 0)
		goto fail;
	if (pthread_create(&z->keeper, NULL, keeper_main, z) != 0) {
		err_set(e, 500, "internal", "zygote: cannot start its keeper thread");
		goto fail;
	}
	z->keeper_started = true;
	return z;
fail:
	zygote_free(z);
	return NULL;
}

/* Sends the run's descriptors to the zygote; returns a pidfd of the zygote (for the sandbox
 * to watch), or -1 when it is down. */
static int send_fork(struct zygote *z, const int child[SPAWN_FDS], int handshake)
{
	char cbuf[CMSG_SPACE(sizeof(int) * (SPAWN_FDS + 1))] = {0};
	struct iovec iov = {.iov_base = "F", .iov_len = 1};
	struct msghdr m = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	int fds[SPAWN_FDS + 1], holder = -1;

	memcpy(fds, child, sizeof(int) * SPAWN_FDS);
	fds[SPAWN_FDS] = handshake;
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	pthread_mutex_lock(&z->mu);
	if (z->ctl >= 0 && sendmsg(z->ctl, &m, MSG_NOSIGNAL) == 1)
		holder = fcntl(z->self, F_DUPFD_CLOEXEC, 0);
	pthread_mutex_unlock(&z->mu);
	return holder;
}

static void oom_first(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", (int)pid);
	sysfile_write(path, "1000");
}

/* Before the go-ahead: nothing of the run runs outside its cgroup, and all of it is the kernel's
 * first choice when memory runs out (the jail's /proc is read-only inside). A fork for the pool
 * yields to runs (sandbox_run restores the priority at the hand-over), even one forked while the
 * zygote had the normal priority for a request's (urgent_fork). */
static int go_ahead(struct zygote *z, const char *tag, const pid_t pid[2], int hs, bool for_pool,
                    struct err *e)
{
	for (int i = 0; i < 2; i++) {
		oom_first(pid[i]);
		if (for_pool && z->o.renice)
			setpriority(PRIO_PROCESS, (id_t)pid[i], 19);
	}
	if (cgroup_run_adopt(z->o.cg, tag, pid[0], z->o.mem_bytes, z->o.max_procs) < 0 ||
	    cgroup_run_join(z->o.cg, tag, pid[1]) < 0)
		return err_set(e, 500, "internal", "zygote: cannot move the run into its cgroup %s",
		               tag);
	if (send(hs, "G", 1, MSG_NOSIGNAL) != 1)
		return err_set(e, 500, "internal", "zygote: the run went away");
	return 0;
}

/* Alive but no fork within the start timeout: stopped or wedged, it is ended, so that the keeper
 * starts another instead of every later run waiting as long for it. Running or waiting for its
 * next message, it is not stuck: the fork itself waits for the CPU (busy runs at the normal
 * priority outweigh a fork for the pool at nice 19). holder is a pidfd of the zygote itself,
 * whose death ends its nsjail (and the keeper kills that too). */
static void end_if_stuck(int holder)
{
	char path[64], stat[512], *state;
	pid_t pid = pidfd_pid(holder);

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (pid > 0 && sysfile_read(AT_FDCWD, path, stat, sizeof(stat)) > 0 &&
	    (state = strrchr(stat, ')')) != NULL && (state[1] == ' ') &&
	    (state[2] == 'R' || state[2] == 'S')) {
		log_warn("zygote: a fork did not start within the start timeout (busy runs?)");
		return;
	}
	log_error("zygote: it made no run within the start timeout; replacing it");
	syscall(SYS_pidfd_send_signal, holder, SIGKILL, NULL, 0);
}

/* The zygote and its spawner wait at nice 19 (their forks for the pool yield to runs) but for
 * a fork a request waits for: from the first such fork under way to the last, they have the
 * normal priority, and what they fork meanwhile inherits it. */
static void urgent_fork(struct zygote *z, int delta)
{
	pthread_mutex_lock(&z->mu);
	z->urgent = (unsigned)((int)z->urgent + delta);
	/* Every time, not only at the first and the last: a zygote started again meanwhile starts
	 * at nice 19. */
	for (int i = 0; i < 2; i++) {
		pid_t pid = pidfd_pid(i ? z->spawner : z->self);
		if (pid > 0)
			setpriority(PRIO_PROCESS, (id_t)pid, z->urgent ? 0 : 19);
	}
	pthread_mutex_unlock(&z->mu);
}

struct sandbox *zygote_fork(struct zygote *z, const char *tag, bool for_pool, struct err *e)
{
	int child[SPAWN_FDS], hs[2] = {-1, -1}, holder = -1, pidfd[2] = {-1, -1};
	struct proc_opts o = z->o.run;
	struct sandbox *sb = sandbox_prepare(child, e);
	struct run_result r;
	struct proc *proc;
	pid_t pid[2] = {-1, -1};
	bool urgent = !for_pool && z->o.renice;

	o.tag = tag;
	if (!sb) {
		sup_abandon(&o);
		return NULL;
	}
	if (urgent)
		urgent_fork(z, 1);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, hs) == 0)
		holder = send_fork(z, child, hs[1]);
	for (int i = 0; i < SPAWN_FDS; i++)
		close_fd(&child[i]);
	close_fd(&hs[1]);
	if (holder < 0)
		err_set(e, 500, "internal", "zygote: it is down");
	else if (wait_readable(hs[0], holder, z->o.start_timeout))
		recv_pidfds(hs[0], "P", pidfd, pid);
	else if (!readable(holder, 0))
		end_if_stuck(holder);
	if (urgent)
		urgent_fork(z, -1);
	/* From here the script's process is known by its pid, as the init: it waits for the
	 * go-ahead, and the init's end ends it. */
	close_fd(&pidfd[1]);
	if (pid[0] <= 0 || pid[1] <= 0) {
		if (holder >= 0)
			err_set(e, 500, "internal", "zygote: the run did not start");
		close_fd(&pidfd[0]), close_fd(&hs[0]), close_fd(&holder);
		sandbox_discard(sb);
		sup_abandon(&o);
		return NULL;
	}
	/* From here the supervisor owns the run's PID 1: every end below kills it by its pidfd
	 * and tears down its cgroup. */
	proc = sup_adopt(z->o.sup, pid[0], pidfd[0], &o, e);
	if (!proc) {
		close_fd(&hs[0]), close_fd(&holder);
		sandbox_discard(sb);
		return NULL;
	}
	sandbox_adopt(sb, proc, pid[1], holder);
	if (go_ahead(z, tag, pid, hs[0], for_pool, e) < 0) {
		close_fd(&hs[0]);
		sandbox_destroy(sb, &r);
		if (r.diag[0])
			log_error("zygote: a run's last words: %s", r.diag);
		return NULL;
	}
	close(hs[0]);
	return sb;
}

/* A zygote that starts may still be unable to fork a run (a host that refuses nested user
 * namespaces): one run is started and ended before the zygote is used. */
static int first_fork(struct zygote *z, struct err *e)
{
	char tag[32];
	struct sandbox *sb;
	struct run_result r;
	int rc;

	snprintf(tag, sizeof(tag), "run-%d-zygote", (int)getpid());
	sb = zygote_fork(z, tag, false, e);
	if (!sb)
		return -1;
	rc = sandbox_wait_ready(sb, z->o.start_timeout);
	sandbox_destroy(sb, &r);
	if (rc < 0)
		return err_set(e, 500, "internal",
		               "zygote: its first run did not become ready (%s)", r.diag);
	return 0;
}

bool zygote_up(struct zygote *z)
{
	bool up;

	pthread_mutex_lock(&z->mu);
	up = z->ctl >= 0 && !readable(z->self, 0);
	pthread_mutex_unlock(&z->mu);
	return up;
}

unsigned long zygote_restarts(struct zygote *z)
{
	unsigned long n;

	pthread_mutex_lock(&z->mu);
	n = z->restarts;
	pthread_mutex_unlock(&z->mu);
	return n;
}

void zygote_free(struct zygote *z)
{
	uint64_t one = 1;

	if (!z)
		return;
	if (z->keeper_started) {
		(void)!write(z->wake, &one, sizeof(one));
		pthread_join(z->keeper, NULL);
	}
	/* Its end ends every run forked from it (they live in its pid namespace). */
	if (z->proc)
		proc_end(z->proc, true, 0, NULL);
	close_fd(&z->ctl);
	close_fd(&z->self);
	close_fd(&z->spawner);
	close_fd(&z->err);
	if (z->wake >= 0)
		close(z->wake);
	filter_free(&z->filter);
	pthread_mutex_destroy(&z->mu);
	free(z);
}
