#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spawn.h"

#define READY_LINE "READY\n"
#define DRAIN_SECONDS 2.0 /* after a kill, how long buffered output may take to arrive */
#define DIAG_MAX 4096

struct sandbox {
	pid_t pid;
	int in, out, err, chan; /* the parent's ends; -1 once closed */
	struct buf ready;       /* result-channel bytes before the hand-over */
	struct buf diag;        /* nsjail's own messages */
	bool is_ready;
	double started_at, ready_at;
	char tag[32];
};

/* State of one run after the hand-over. */
struct io {
	struct sandbox *sb;
	const struct run_spec *spec;
	struct run_result *r;
	size_t in_off;
	bool killed;
	double deadline;
};

double run_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static int pipe_pair(int p[2], int parent_end)
{
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	return fcntl(p[parent_end], F_SETFL, O_NONBLOCK);
}

static void sandbox_free(struct sandbox *sb)
{
	close_fd(&sb->in), close_fd(&sb->out), close_fd(&sb->err), close_fd(&sb->chan);
	buf_free(&sb->ready);
	buf_free(&sb->diag);
	free(sb);
}

struct sandbox *sandbox_start(char *const *argv, const char *tag, struct err *e)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, chan[2] = {-1, -1};
	struct sandbox *sb = calloc(1, sizeof(*sb));

	if (!sb) {
		err_set(e, 500, "internal", "out of memory");
		return NULL;
	}
	sb->in = sb->out = sb->err = sb->chan = -1;
	snprintf(sb->tag, sizeof(sb->tag), "%s", tag);
	buf_init(&sb->ready, strlen(READY_LINE));
	buf_init(&sb->diag, DIAG_MAX);
	sb->started_at = run_now();
	if (pipe_pair(in, 1) < 0 || pipe_pair(out, 0) < 0 || pipe_pair(errp, 0) < 0 ||
	    pipe_pair(chan, 0) < 0) {
		err_set(e, 500, "internal", "cannot create pipes: %s", strerror(errno));
		sb->pid = -1;
	} else {
		sb->pid = spawn_process(argv, (int[4]){in[0], out[1], errp[1], chan[1]}, e);
	}
	/* The child's ends are the child's alone now. */
	close_fd(&in[0]), close_fd(&out[1]), close_fd(&errp[1]), close_fd(&chan[1]);
	sb->in = in[1], sb->out = out[0], sb->err = errp[0], sb->chan = chan[0];
	if (sb->pid < 0) {
		sandbox_free(sb);
		return NULL;
	}
	return sb;
}

int sandbox_fd(const struct sandbox *sb)
{
	return sb->chan;
}

double sandbox_started_at(const struct sandbox *sb)
{
	return sb->started_at;
}

double sandbox_start_seconds(const struct sandbox *sb)
{
	return sb->is_ready ? sb->ready_at - sb->started_at : -1;
}

/* Makes a jail's processes the kernel's first choice when memory runs out. Done on the ready
 * line, when nsjail, the jail's init and the runner all exist and no user code has run; what
 * the script starts later inherits the value. */
static void oom_mark(pid_t pid, int depth)
{
	char path[64], list[512];
	int fd, n;

	snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", (int)pid);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		(void)!write(fd, "1000", 4);
		close(fd);
	}
	if (depth == 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = (int)read(fd, list, sizeof(list) - 1);
	close(fd);
	list[n > 0 ? n : 0] = '\0';
	for (char *p = list, *end; *p; p = end) {
		long child = strtol(p, &end, 10);
		if (end == p)
			break;
		oom_mark((pid_t)child, depth - 1);
	}
}

int sandbox_check(struct sandbox *sb)
{
	const size_t want = strlen(READY_LINE);
	char chunk[16];
	ssize_t n = read(sb->chan, chunk, sizeof(chunk));

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return sb->is_ready;
	/* EOF, an error, or anything after the ready line before a script was handed over. */
	if (n <= 0 || sb->is_ready || sb->ready.len + (size_t)n > want)
		return -1;
	buf_append(&sb->ready, chunk, (size_t)n);
	if (sb->ready.len < want)
		return 0;
	if (memcmp(sb->ready.data, READY_LINE, want) != 0)
		return -1;
	sb->is_ready = true;
	sb->ready_at = run_now();
	oom_mark(sb->pid, 2);
	return 1;
}

int sandbox_wait_ready(struct sandbox *sb, double seconds)
{
	double deadline = run_now() + seconds;

	for (;;) {
		struct pollfd p = {.fd = sb->chan, .events = POLLIN};
		double left = deadline - run_now();
		int rc;

		if (left <= 0)
			return -1;
		if (poll(&p, 1, (int)ceil(left * 1000)) < 0 && errno != EINTR)
			return -1;
		rc = sandbox_check(sb);
		if (rc != 0)
			return rc > 0 ? 0 : -1;
	}
}

/* Reads what is there; returns 1 at EOF. */
static int read_some(struct io *io, int fd)
{
	char chunk[65536];
	ssize_t n = read(fd, chunk, sizeof(chunk));
	struct buf *dst = fd == io->sb->out   ? &io->r->out
	                  : fd == io->sb->err ? &io->sb->diag
	                                      : &io->r->chan;

	if (n == 0)
		return 1;
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : 1;
	buf_append(dst, chunk, (size_t)n);
	return 0;
}

static void write_script(struct io *io)
{
	const struct run_spec *s = io->spec;
	ssize_t n = write(io->sb->in, s->script + io->in_off, s->script_len - io->in_off);

	if (n > 0)
		io->in_off += (size_t)n;
	/* EPIPE: the runner is gone; the exit status will say why. */
	if ((n < 0 && errno != EAGAIN && errno != EINTR) || io->in_off == s->script_len)
		close_fd(&io->sb->in);
}

static void kill_jail(struct io *io, enum run_end why)
{
	/* nsjail's child dies with it (PDEATHSIG), and with the namespace's init every process. */
	kill(io->sb->pid, SIGKILL);
	io->killed = true;
	io->r->end = why;
	io->deadline = run_now() + DRAIN_SECONDS;
}

static void poll_once(struct io *io)
{
	struct sandbox *sb = io->sb;
	struct pollfd pfd[6] = {
	    {.fd = sb->out, .events = POLLIN},
	    {.fd = sb->err, .events = POLLIN},
	    {.fd = sb->chan, .events = POLLIN},
	    {.fd = sb->in, .events = POLLOUT},
	    /* Once killed, only the drain matters. */
	    {.fd = io->killed ? -1 : io->spec->cancel_fds[0], .events = POLLIN | POLLRDHUP},
	    {.fd = io->killed ? -1 : io->spec->cancel_fds[1], .events = POLLIN | POLLRDHUP},
	};
	int *fds[3] = {&sb->out, &sb->err, &sb->chan};
	double left = io->deadline - run_now();

	if (poll(pfd, 6, left > 0 ? (int)ceil(left * 1000) : 0) < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (pfd[i].revents && read_some(io, *fds[i]))
			close_fd(fds[i]);
	if (pfd[3].revents && sb->in >= 0)
		write_script(io);
	/* A client socket cancels on hang-up only (readable may be a pipelined request); the
	 * stop descriptor cancels once readable. */
	if (pfd[4].revents & (POLLRDHUP | POLLHUP | POLLERR))
		kill_jail(io, RUN_CANCELLED);
	else if (pfd[5].revents)
		kill_jail(io, RUN_CANCELLED);
}

/* All pipes are closed or given up on; make sure nsjail is gone and collect its status. */
static int reap(pid_t pid)
{
	int status = 0;

	for (int i = 0; i < 200; i++) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			goto done;
		if (w < 0 && errno != EINTR)
			return 255;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
done:
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}

static void sandbox_end(struct sandbox *sb, struct run_result *r)
{
	size_t n;

	r->exit_code = reap(sb->pid);
	memcpy(r->tag, sb->tag, sizeof(r->tag));
	n = sb->diag.len < sizeof(r->diag) - 1 ? sb->diag.len : sizeof(r->diag) - 1;
	if (n)
		memcpy(r->diag, sb->diag.data + sb->diag.len - n, n);
	r->diag[n] = '\0';
	sandbox_free(sb);
}

void sandbox_run(struct sandbox *sb, const struct run_spec *s, struct run_result *r)
{
	struct io io = {.sb = sb, .spec = s, .r = r};
	double handover = run_now();

	memset(r, 0, sizeof(*r));
	buf_init(&r->out, s->stdout_max);
	buf_init(&r->chan, s->chan_max);
	r->ready = true;
	r->end = RUN_EXITED;
	io.deadline = handover + s->timeout;
	while (sb->out >= 0 || sb->err >= 0 || sb->chan >= 0) {
		if (run_now() < io.deadline)
			poll_once(&io);
		else if (!io.killed)
			kill_jail(&io, RUN_TIMEOUT);
		else
			break; /* something outside the jail holds a pipe: give up on it */
	}
	r->exec_ms = (long)((run_now() - handover) * 1000);
	kill(sb->pid, SIGKILL); /* the init may linger after closing its pipes */
	sandbox_end(sb, r);
}

void sandbox_destroy(struct sandbox *sb, struct run_result *r)
{
	struct run_result ignored;

	if (!sb)
		return;
	kill(sb->pid, SIGKILL);
	/* Keep nsjail's last words for the log when it failed on its own. */
	while (sb->err >= 0) {
		struct pollfd p = {.fd = sb->err, .events = POLLIN};
		char chunk[4096];
		ssize_t n;
		if (poll(&p, 1, 1000) <= 0 || (n = read(sb->err, chunk, sizeof(chunk))) <= 0)
			break;
		buf_append(&sb->diag, chunk, (size_t)n);
	}
	if (!r)
		r = &ignored;
	memset(r, 0, sizeof(*r));
	r->end = RUN_START_FAILED;
	sandbox_end(sb, r);
}

void run_result_free(struct run_result *r)
{
	buf_free(&r->out);
	buf_free(&r->chan);
}
