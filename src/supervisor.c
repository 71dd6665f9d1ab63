#include "supervisor.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define EVENTS 32
/* A process without a watched pidfd (some gVisor releases have no pidfds) is only seen to exit
 * by asking: this often. */
#define NO_PIDFD_TICK 0.02

struct proc {
	struct supervisor *s;
	pid_t pid;
	int pidfd; /* -1 only for a child on a kernel without pidfds */
	bool child;
	uid_t uid;
	char tag[32];
	void (*teardown)(void *ctx, const char *tag, uid_t uid, struct proc_end *end);
	void *ctx;
	/* Once released: owned by the supervisor's thread alone. */
	double deadline; /* when it is killed if still there */
	bool watched;    /* its pidfd is in the epoll set */
	bool killed, gone;
	struct proc *next;
};

struct supervisor {
	pthread_mutex_t mu;
	pthread_t thread;
	int epfd, wake;
	struct proc *incoming; /* released, not yet seen by the thread (under mu) */
	bool stopping;         /* under mu */
	unsigned live;         /* procs not yet ended (under mu) */
	struct proc *released; /* the thread's own */
};

static int pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void count(struct supervisor *s, int delta)
{
	pthread_mutex_lock(&s->mu);
	s->live = (unsigned)((int)s->live + delta);
	pthread_mutex_unlock(&s->mu);
}

void sup_abandon(const struct proc_opts *o)
{
	struct proc_end end = {.status = -1};

	if (o && o->teardown)
		o->teardown(o->ctx, o->tag ? o->tag : "", o->uid, &end);
}

static struct proc *proc_new(struct supervisor *s, pid_t pid, int pidfd, bool child,
                             const struct proc_opts *o)
{
	struct proc *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->s = s;
	p->pid = pid;
	p->pidfd = pidfd;
	p->child = child;
	if (o) {
		p->uid = o->uid;
		snprintf(p->tag, sizeof(p->tag), "%s", o->tag ? o->tag : "");
		p->teardown = o->teardown;
		p->ctx = o->ctx;
	}
	count(s, 1);
	return p;
}

struct proc *sup_spawn(struct supervisor *s, char *const argv[], const int fds[SPAWN_FDS],
                       const struct spawn_user *user, const struct proc_opts *o, struct err *e)
{
	pid_t pid = spawn_process(argv, fds, user, e);
	struct proc *p;
	int status;

	if (pid < 0) {
		sup_abandon(o);
		return NULL;
	}
	/* A child cannot be recycled before we reap it: its pidfd is always its own. */
	p = proc_new(s, pid, pidfd_open(pid), true, o);
	if (!p) {
		kill(pid, SIGKILL);
		if (user)
			spawn_kill_user(user->uid);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		sup_abandon(o);
		err_set(e, 500, "internal", "out of memory");
	}
	return p;
}

struct proc *sup_adopt(struct supervisor *s, pid_t pid, int pidfd, const struct proc_opts *o,
                       struct err *e)
{
	struct proc *p;

	if (pidfd < 0)
		pidfd = pidfd_open(pid);
	if (pidfd < 0) {
		err_set(e, 500, "internal", "cannot watch process %d: %s", (int)pid,
		        strerror(errno));
		if (o && o->uid)
			spawn_kill_user(o->uid);
		sup_abandon(o);
		return NULL;
	}
	p = proc_new(s, pid, pidfd, false, o);
	if (!p) {
		syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
		close(pidfd);
		if (o && o->uid)
			spawn_kill_user(o->uid);
		sup_abandon(o);
		err_set(e, 500, "internal", "out of memory");
	}
	return p;
}

pid_t proc_pid(const struct proc *p)
{
	return p->pid;
}

int proc_fd(const struct proc *p)
{
	return p->pidfd;
}

bool proc_exited(struct proc *p)
{
	struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
	siginfo_t si = {0};

	if (p->pidfd >= 0)
		return poll(&pfd, 1, 0) > 0;
	/* WNOWAIT: look without reaping; proc_end reaps. */
	return waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid;
}

void proc_kill(struct proc *p)
{
	/* The pidfd names this process even if its pid was reused (a non-child may be reaped by
	 * its parent at any time); a child's pid is ours until we reap it. */
	if (p->pidfd >= 0)
		syscall(SYS_pidfd_send_signal, p->pidfd, SIGKILL, NULL, 0);
	else if (p->child)
		kill(p->pid, SIGKILL);
	if (p->uid)
		spawn_kill_user(p->uid);
}

bool proc_wait(struct proc *p, double seconds)
{
	double end = seconds < 0 ? -1 : clock_now() + seconds;

	for (;;) {
		struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
		int ms = clock_ms_until(end);

		if (proc_exited(p))
			return true;
		if (ms == 0)
			return false;
		if (p->pidfd >= 0) {
			if (poll(&pfd, 1, ms) < 0 && errno != EINTR)
				return false;
			continue;
		}
		/* No pidfd: the kernel cannot tell us, so ask again shortly. */
		poll(NULL, 0, ms < 0 || ms > 2 ? 2 : ms);
	}
}

/* The one end of every process: reap it if it is ours, release what it held, free it. */
static void proc_finish(struct proc *p, struct proc_end *end)
{
	struct proc_end local = {.status = -1};
	struct supervisor *s = p->s;
	int status;

	if (!end)
		end = &local;
	*end = (struct proc_end){.status = -1};
	if (p->child) {
		while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
			;
		end->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	}
	if (p->teardown)
		p->teardown(p->ctx, p->tag, p->uid, end);
	if (p->pidfd >= 0)
		close(p->pidfd);
	free(p);
	count(s, -1);
}

void proc_end(struct proc *p, bool kill, double grace, struct proc_end *end)
{
	if (kill)
		proc_kill(p);
	if (!proc_wait(p, grace)) {
		proc_kill(p);
		proc_wait(p, -1);
	}
	proc_finish(p, end);
}

void proc_release(struct proc *p, double grace)
{
	struct supervisor *s = p->s;
	uint64_t one = 1;

	p->deadline = clock_now() + grace;
	pthread_mutex_lock(&s->mu);
	p->next = s->incoming;
	s->incoming = p;
	pthread_mutex_unlock(&s->mu);
	(void)!write(s->wake, &one, sizeof(one));
}

/* Takes what was released since the last turn; returns false once stopping with nothing left.
 */
static bool take_incoming(struct supervisor *s)
{
	bool more;

	pthread_mutex_lock(&s->mu);
	while (s->incoming) {
		struct proc *p = s->incoming;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
		s->incoming = p->next;
		/* Not watched (no pidfd, or epoll refused it): asked about on every turn. */
		p->watched = p->pidfd >= 0 && epoll_ctl(s->epfd, EPOLL_CTL_ADD, p->pidfd, &ev) == 0;
		p->next = s->released;
		s->released = p;
	}
	/* Stopping: nothing handed over gets more time. */
	if (s->stopping)
		for (struct proc *p = s->released; p; p = p->next)
			p->deadline = 0;
	more = !s->stopping || s->released;
	pthread_mutex_unlock(&s->mu);
	return more;
}

/* Milliseconds until the next kill is due (-1: none). */
static int next_timeout(const struct supervisor *s)
{
	double next = -1;

	for (const struct proc *p = s->released; p; p = p->next) {
		double at = p->killed ? -1 : p->deadline;
		if (!p->watched)
			at = clock_now() + NO_PIDFD_TICK;
		if (at >= 0 && (next < 0 || at < next))
			next = at;
	}
	return clock_ms_until(next);
}

/* Ends what is gone and kills what is due. */
static void turn(struct supervisor *s)
{
	struct proc **link = &s->released;

	while (*link) {
		struct proc *p = *link;
		if (p->gone || (!p->watched && proc_exited(p))) {
			*link = p->next;
			if (p->watched)
				epoll_ctl(s->epfd, EPOLL_CTL_DEL, p->pidfd, NULL);
			proc_finish(p, NULL);
			continue;
		}
		if (!p->killed && clock_now() >= p->deadline) {
			proc_kill(p);
			p->killed = true;
		}
		link = &p->next;
	}
}

static void *supervisor_main(void *arg)
{
	struct supervisor *s = arg;

	while (take_incoming(s)) {
		struct epoll_event ev[EVENTS];
		int n = epoll_wait(s->epfd, ev, EVENTS, next_timeout(s));

		for (int i = 0; i < n; i++) {
			struct proc *p = ev[i].data.ptr;
			uint64_t v;
			if (p)
				p->gone = true;
			else
				(void)!read(s->wake, &v, sizeof(v));
		}
		turn(s);
	}
	return NULL;
}

struct supervisor *supervisor_new(struct err *e)
{
	struct supervisor *s = calloc(1, sizeof(*s));
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};

	if (!s) {
		err_set(e, 0, "config", "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->mu, NULL);
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->epfd < 0 || s->wake < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wake, &ev) < 0 ||
	    pthread_create(&s->thread, NULL, supervisor_main, s) != 0) {
		err_set(e, 0, "config", "cannot start the supervisor: %s", strerror(errno));
		if (s->epfd >= 0)
			close(s->epfd);
		if (s->wake >= 0)
			close(s->wake);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return NULL;
	}
	return s;
}

void supervisor_stop(struct supervisor *s)
{
	uint64_t one = 1;

	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->stopping = true;
	pthread_mutex_unlock(&s->mu);
	(void)!write(s->wake, &one, sizeof(one));
	pthread_join(s->thread, NULL);
	if (s->live)
		log_error("supervisor: %u processes were still held by their owners at stop",
		          s->live);
	close(s->epfd);
	close(s->wake);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
