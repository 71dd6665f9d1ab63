#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spawn.h"

#define READY_LINE "READY\n"
#define DRAIN_SECONDS 2.0 /* after a kill, how long buffered output may take to arrive */
#define DIAG_MAX 4096

/* The parent's ends of the jail's pipes; -1 once closed. */
struct io {
	int in, out, err, chan;
	size_t in_off;
	bool handed_over;
	bool killed;
	double deadline;
	double handover_at;
	struct buf ready; /* result-channel bytes before the ready line */
	struct buf diag;  /* nsjail's own messages */
};

static double now_s(void)
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

static void hand_over(struct io *io, const struct run_spec *s)
{
	io->handed_over = true;
	io->handover_at = now_s();
	io->deadline = io->handover_at + s->timeout;
}

/* Result-channel bytes: the runner's ready line first (written before any user code runs, so
 * it can be trusted), then the frame, which is kept under its cap for api to judge. */
static int on_chan(struct io *io, struct run_result *r, const struct run_spec *s, const char *p,
                   size_t n)
{
	const size_t want = strlen(READY_LINE);

	if (!r->ready) {
		size_t take = want - io->ready.len < n ? want - io->ready.len : n;
		if (buf_append(&io->ready, p, take) < 0)
			return -1;
		p += take;
		n -= take;
		if (io->ready.len < want)
			return 0;
		if (memcmp(io->ready.data, READY_LINE, want) != 0)
			return -1;
		r->ready = true;
		hand_over(io, s);
	}
	return buf_append(&r->chan, p, n);
}

/* Reads what is there; returns 1 at EOF, -1 when the bytes are unacceptable. */
static int read_some(int fd, struct io *io, struct run_result *r, const struct run_spec *s)
{
	char chunk[65536];
	ssize_t n = read(fd, chunk, sizeof(chunk));

	if (n == 0)
		return 1;
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : 1;
	if (fd == io->out)
		return buf_append(&r->out, chunk, (size_t)n);
	if (fd == io->err)
		return buf_append(&io->diag, chunk, (size_t)n);
	return on_chan(io, r, s, chunk, (size_t)n);
}

static void write_script(struct io *io, const struct run_spec *s)
{
	ssize_t n = write(io->in, s->script + io->in_off, s->script_len - io->in_off);

	if (n > 0)
		io->in_off += (size_t)n;
	/* EPIPE: the runner is gone; the exit status will say why. */
	if ((n < 0 && errno != EAGAIN && errno != EINTR) || io->in_off == s->script_len)
		close_fd(&io->in);
}

static void kill_jail(struct io *io, pid_t pid)
{
	/* nsjail's child dies with it (PDEATHSIG), and with the namespace's init every process. */
	kill(pid, SIGKILL);
	io->killed = true;
	io->deadline = now_s() + DRAIN_SECONDS;
}

static void poll_once(struct io *io, struct run_result *r, const struct run_spec *s, pid_t pid)
{
	struct pollfd pfd[4] = {
	    {.fd = io->out, .events = POLLIN},
	    {.fd = io->err, .events = POLLIN},
	    {.fd = io->chan, .events = POLLIN},
	    {.fd = io->handed_over ? io->in : -1, .events = POLLOUT},
	};
	int *fds[3] = {&io->out, &io->err, &io->chan};
	double left = io->deadline - now_s();
	int ms = left > 0 ? (int)ceil(left * 1000) : 0;

	if (poll(pfd, 4, ms) < 0)
		return;
	for (int i = 0; i < 3; i++) {
		if (!pfd[i].revents)
			continue;
		int rc = read_some(*fds[i], io, r, s);
		if (rc == 1)
			close_fd(fds[i]);
		else if (rc < 0 && !io->killed)
			kill_jail(io, pid); /* a forged ready line or no memory: stop now */
	}
	if (pfd[3].revents && io->in >= 0)
		write_script(io, s);
}

static void run_loop(struct io *io, struct run_result *r, const struct run_spec *s, pid_t pid)
{
	io->deadline = now_s() + s->start_timeout;
	r->end = RUN_EXITED;
	while (io->out >= 0 || io->err >= 0 || io->chan >= 0) {
		if (now_s() >= io->deadline) {
			if (io->killed)
				break; /* something outside the jail holds a pipe: give up on it */
			r->end = io->handed_over ? RUN_TIMEOUT : RUN_START_FAILED;
			kill_jail(io, pid);
			continue;
		}
		poll_once(io, r, s, pid);
	}
	if (!r->ready)
		r->end = RUN_START_FAILED;
	if (io->handed_over)
		r->exec_ms = (long)((now_s() - io->handover_at) * 1000);
}

/* All pipes are closed, so nsjail is exiting; make sure, then collect its status. */
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

static void keep_diag(struct run_result *r, const struct buf *diag)
{
	size_t n = diag->len < sizeof(r->diag) - 1 ? diag->len : sizeof(r->diag) - 1;

	if (n)
		memcpy(r->diag, diag->data + diag->len - n, n);
	r->diag[n] = '\0';
}

int run_script(const struct run_spec *s, struct run_result *r, struct err *e)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, chan[2] = {-1, -1};
	struct io io = {.in = -1, .out = -1, .err = -1, .chan = -1};
	pid_t pid;
	int rc = -1;

	memset(r, 0, sizeof(*r));
	buf_init(&r->out, s->stdout_max);
	buf_init(&r->chan, s->chan_max);
	buf_init(&io.ready, strlen(READY_LINE));
	buf_init(&io.diag, DIAG_MAX);
	if (pipe_pair(in, 1) < 0 || pipe_pair(out, 0) < 0 || pipe_pair(errp, 0) < 0 ||
	    pipe_pair(chan, 0) < 0) {
		err_set(e, 500, "internal", "cannot create pipes: %s", strerror(errno));
		goto out;
	}
	pid = spawn_process(s->argv, (int[4]){in[0], out[1], errp[1], chan[1]}, e);
	if (pid < 0)
		goto out;
	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&errp[1]);
	close_fd(&chan[1]);
	io.in = in[1], io.out = out[0], io.err = errp[0], io.chan = chan[0];
	in[1] = out[0] = errp[0] = chan[0] = -1;
	run_loop(&io, r, s, pid);
	r->exit_code = reap(pid);
	keep_diag(r, &io.diag);
	rc = 0;
out:
	close_fd(&io.in), close_fd(&io.out), close_fd(&io.err), close_fd(&io.chan);
	for (int i = 0; i < 2; i++)
		close_fd(&in[i]), close_fd(&out[i]), close_fd(&errp[i]), close_fd(&chan[i]);
	buf_free(&io.ready);
	buf_free(&io.diag);
	return rc;
}

void run_result_free(struct run_result *r)
{
	buf_free(&r->out);
	buf_free(&r->chan);
}
