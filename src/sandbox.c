#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "outdir.h"
#include "spawn.h"
#include "supervisor.h"
#include "sysfile.h"

#define READY_LINE "READY\n"
#define DRAIN_SECONDS 2.0 /* after a kill, how long buffered output may take to arrive */
#define DIAG_MAX 4096
#define REAP_SECONDS 2.0 /* a jail's own teardown takes milliseconds; then it is killed */

struct sandbox {
	struct proc *proc; /* nsjail, owned through the supervisor */
	uid_t
	    uid; /* restricted tier: the run's own uid, whose every process dies with it; else 0 */
	int in, out, err, chan, status; /* the parent's ends; -1 once closed */
	struct buf ready;               /* result-channel bytes before the hand-over */
	struct buf diag;                /* nsjail's own messages */
	bool is_ready;
	double started_at, ready_at;
	pid_t procs[4]; /* nsjail, the jail's init, the runner (a zygote run's: at adoption) */
	unsigned nprocs;
	char dir[PATH_MAX]; /* restricted tier: the run's working directory */
	/* A zygote's run: readable once the zygote is gone, whose end ends the run too (then
	 * lost, not failed). -1 for nsjail's own jails. */
	int holder;
};

/* State of one run after the hand-over. */
struct io {
	struct sandbox *sb;
	const struct run_spec *spec;
	struct run_result *r;
	size_t in_off;
	bool killed;
	double deadline;
	/* The init's report: "<exit code> <n>\n", then n bytes of output records (files.h). */
	struct buf status;
	size_t records_at; /* where the records start, once the line is complete */
	int init_status;   /* -1 until the whole report is in */
};

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
	close_fd(&sb->status), close_fd(&sb->holder);
	buf_free(&sb->ready);
	buf_free(&sb->diag);
	free(sb);
}

static bool fd_readable(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return fd >= 0 && poll(&p, 1, ms) > 0;
}

struct sandbox *sandbox_prepare(int child[SPAWN_FDS], struct err *e)
{
	/* The child's descriptors 0-4: stdin, stdout, stderr, result channel, init status. */
	const int parent_end[SPAWN_FDS] = {1, 0, 0, 0, 0};
	int p[SPAWN_FDS][2], *mine[SPAWN_FDS];
	struct sandbox *sb = calloc(1, sizeof(*sb));
	int i;

	if (!sb) {
		err_set(e, 500, "internal", "out of memory");
		return NULL;
	}
	mine[0] = &sb->in, mine[1] = &sb->out, mine[2] = &sb->err, mine[3] = &sb->chan;
	mine[4] = &sb->status;
	buf_init(&sb->ready, strlen(READY_LINE));
	buf_init(&sb->diag, DIAG_MAX);
	sb->started_at = clock_now();
	sb->holder = -1;
	for (i = 0; i < SPAWN_FDS; i++)
		p[i][0] = p[i][1] = *mine[i] = child[i] = -1;
	for (i = 0; i < SPAWN_FDS && pipe_pair(p[i], parent_end[i]) == 0; i++)
		;
	for (int k = 0; k < SPAWN_FDS; k++) {
		*mine[k] = p[k][parent_end[k]];
		child[k] = p[k][!parent_end[k]];
	}
	if (i < SPAWN_FDS) {
		err_set(e, 500, "internal", "cannot create pipes: %s", strerror(errno));
		for (int k = 0; k < SPAWN_FDS; k++)
			close_fd(&child[k]);
		sandbox_free(sb);
		return NULL;
	}
	return sb;
}

void sandbox_adopt(struct sandbox *sb, struct proc *proc, pid_t script, int holder)
{
	sb->proc = proc;
	sb->holder = holder;
	sb->procs[sb->nprocs++] = script;
}

void sandbox_discard(struct sandbox *sb)
{
	sandbox_free(sb);
}

struct sandbox *sandbox_start(struct supervisor *sup, char *const *argv,
                              const struct spawn_user *user, const struct proc_opts *o,
                              struct err *e)
{
	int child[SPAWN_FDS];
	struct sandbox *sb = sandbox_prepare(child, e);

	if (!sb) {
		sup_abandon(o);
		return NULL;
	}
	sb->uid = user ? user->uid : 0;
	if (user)
		snprintf(sb->dir, sizeof(sb->dir), "%s", user->dir);
	sb->proc = sup_spawn(sup, argv, child, user, o, e);
	/* The child's ends are the child's alone now. */
	for (int i = 0; i < SPAWN_FDS; i++)
		close_fd(&child[i]);
	if (!sb->proc) {
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
static void oom_mark(struct sandbox *sb, pid_t pid, int depth)
{
	char path[64], list[512];

	if (sb->nprocs < sizeof(sb->procs) / sizeof(sb->procs[0]))
		sb->procs[sb->nprocs++] = pid;

	snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", (int)pid);
	sysfile_write(path, "1000");
	if (depth == 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
	if (sysfile_read(AT_FDCWD, path, list, sizeof(list)) < 0)
		return;
	for (char *p = list, *end; *p; p = end) {
		long child = strtol(p, &end, 10);
		if (end == p)
			break;
		oom_mark(sb, (pid_t)child, depth - 1);
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
	sb->ready_at = clock_now();
	oom_mark(sb, proc_pid(sb->proc), 2);
	return 1;
}

bool sandbox_alive(struct sandbox *sb)
{
	struct pollfd p = {.fd = sb->chan, .events = POLLIN};

	if (proc_exited(sb->proc) || fd_readable(sb->holder, 0))
		return false;
	if (poll(&p, 1, 0) > 0 && sandbox_check(sb) < 0)
		return false;
	return true;
}

void sandbox_renice(struct sandbox *sb, int nice)
{
	for (unsigned i = 0; i < sb->nprocs; i++)
		setpriority(PRIO_PROCESS, (id_t)sb->procs[i], nice);
}

int sandbox_wait_ready(struct sandbox *sb, double seconds)
{
	double deadline = clock_now() + seconds;

	for (;;) {
		struct pollfd p = {.fd = sb->chan, .events = POLLIN};
		double left = deadline - clock_now();
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

/* The init writes "<exit code> <n>\n" and n bytes of records once the script's process is
 * gone (and, in tier full, every other process of the jail). Returns 1 when the report is
 * complete or cannot be one. */
static int read_status(struct io *io)
{
	char chunk[65536], *nl, *end;
	ssize_t n = read(io->sb->status, chunk, sizeof(chunk));
	long code;
	unsigned long long len;

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : 1;
	if (n == 0 || io->status.truncated)
		return 1;
	buf_append(&io->status, chunk, (size_t)n);
	nl = memchr(io->status.data, '\n', io->status.len);
	if (!nl)
		return io->status.len > 32; /* no line: give up on it */
	code = strtol(io->status.data, &end, 10);
	if (end == io->status.data || *end != ' ' || code < 0 || code > 255)
		return 1;
	len = strtoull(end + 1, &end, 10);
	if (end != nl || end[-1] < '0' || end[-1] > '9')
		return 1;
	io->records_at = (size_t)(nl + 1 - io->status.data);
	if (len > io->status.limit - io->records_at || io->status.truncated)
		return 1;
	if (io->status.len - io->records_at < len)
		return 0;
	if (io->status.len - io->records_at > len)
		return 1; /* more than it announced */
	io->init_status = (int)code;
	return 1;
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
	proc_kill(io->sb->proc);
	io->killed = true;
	io->r->end = why;
	io->deadline = clock_now() + DRAIN_SECONDS;
}

static void poll_once(struct io *io)
{
	struct sandbox *sb = io->sb;
	struct pollfd pfd[7] = {
	    {.fd = sb->out, .events = POLLIN},
	    {.fd = sb->err, .events = POLLIN},
	    {.fd = sb->chan, .events = POLLIN},
	    {.fd = sb->status, .events = POLLIN},
	    {.fd = sb->in, .events = POLLOUT},
	    /* Once killed, only the drain matters. */
	    {.fd = io->killed ? -1 : io->spec->cancel_fds[0], .events = POLLIN | POLLRDHUP},
	    {.fd = io->killed ? -1 : io->spec->cancel_fds[1], .events = POLLIN | POLLRDHUP},
	};
	int *fds[3] = {&sb->out, &sb->err, &sb->chan};
	double left = io->deadline - clock_now();

	if (poll(pfd, 7, left > 0 ? (int)ceil(left * 1000) : 0) < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (pfd[i].revents && read_some(io, *fds[i]))
			close_fd(fds[i]);
	if (pfd[3].revents && read_status(io))
		close_fd(&sb->status);
	if (pfd[4].revents && sb->in >= 0)
		write_script(io);
	/* A client socket cancels on hang-up only (readable may be a pipelined request); the
	 * stop descriptor cancels once readable. */
	if ((pfd[5].revents & (POLLRDHUP | POLLHUP | POLLERR)) || pfd[6].revents)
		kill_jail(io, RUN_CANCELLED);
}

/* After the init's status line every write of the script's process is done: take what is
 * in the pipes without waiting for the rest of the jail to go. */
static void drain(struct io *io)
{
	int *fds[3] = {&io->sb->out, &io->sb->err, &io->sb->chan};

	for (int i = 0; i < 3; i++) {
		int rc = 0;
		while (*fds[i] >= 0 && (rc = read_some(io, *fds[i])) == 0) {
			struct pollfd p = {.fd = *fds[i], .events = POLLIN};
			if (poll(&p, 1, 0) <= 0)
				break;
		}
		if (*fds[i] >= 0 && rc == 1)
			close_fd(fds[i]);
	}
}

/* The end of what nsjail (or a zygote's run) said, for the log. */
static void diag_tail(const struct sandbox *sb, struct run_result *r)
{
	size_t n = sb->diag.len < sizeof(r->diag) - 1 ? sb->diag.len : sizeof(r->diag) - 1;

	if (n)
		memcpy(r->diag, sb->diag.data + sb->diag.len - n, n);
	r->diag[n] = '\0';
}

/* Ends nsjail (after `grace` seconds, or now with kill) through the supervisor, which releases
 * the run's resources, and frees the sandbox. */
static void sandbox_end(struct sandbox *sb, struct run_result *r, bool kill)
{
	struct proc_end end;

	proc_end(sb->proc, kill, REAP_SECONDS, &end);
	/* A zygote's run is no child of ours: without the init's report it was killed. */
	r->exit_code = end.status < 0 ? 128 + SIGKILL : end.status;
	r->memory_hit = end.memory_hit;
	diag_tail(sb, r);
	sandbox_free(sb);
}

/* What the script left under output/, once no process of it is left: in tier full the init's
 * records (it killed the jail's other processes before its walk); in the restricted tier, where
 * the init cannot end the rest of the run without ending nsjail, the server kills every task
 * of the run's uid and walks the run's directory itself. */
static void collect_files(struct io *io)
{
	struct sandbox *sb = io->sb;

	if (!sb->uid) {
		buf_append(&io->r->files, io->status.data + io->records_at,
		           io->status.len - io->records_at);
		return;
	}
	/* The restricted tier has no namespace whose end ends every process: every task of the
	 * run's uid is gone before the answer (the kernel's kill, then a scan of every task). */
	spawn_kill_user(sb->uid);
	if (io->spec->files)
		outdir_collect(sb->dir, sb->uid, io->spec->files, &io->r->files);
}

void sandbox_run(struct sandbox *sb, const struct run_spec *s, struct run_result *r)
{
	struct io io = {.sb = sb, .spec = s, .r = r, .init_status = -1};
	double handover = clock_now();

	memset(r, 0, sizeof(*r));
	buf_init(&r->out, s->stdout_max);
	buf_init(&r->chan, s->chan_max);
	buf_init(&r->files, s->files ? files_records_max(s->files) : 0);
	buf_init(&io.status, 64 + r->files.limit);
	r->ready = true;
	r->end = RUN_EXITED;
	io.deadline = handover + s->timeout;
	/* A pool jail waited at low priority; the script runs at the normal one. */
	sandbox_renice(sb, 0);
	while (sb->out >= 0 || sb->err >= 0 || sb->chan >= 0 || sb->status >= 0) {
		if (io.init_status >= 0 && !io.killed)
			break; /* the script's process is gone */
		if (clock_now() < io.deadline)
			poll_once(&io);
		else if (!io.killed)
			kill_jail(&io, RUN_TIMEOUT);
		else
			break; /* something outside the jail holds a pipe: give up on it */
	}
	drain(&io);
	r->exec_ms = (long)((clock_now() - handover) * 1000);
	/* The restricted tier has no namespace whose end ends every process: every task of the
	 * run's uid is gone before the answer (the kernel's kill, then a scan of every task). */
	if (io.init_status == 0 && !io.killed)
		collect_files(&io);
	buf_free(&io.status);
	/* A clean end in tier full: the namespace's teardown takes milliseconds no answer needs to
	 * wait for. In the restricted tier collect_files has already ended every process of the
	 * run, nsjail too: reaping it here costs nothing and sends the uid to its cleaner before
	 * the answer. */
	bool clean = io.init_status == 0 && !io.killed;
	if (clean && !sb->uid) {
		r->exit_code = 0;
		proc_release(sb->proc, REAP_SECONDS);
		sandbox_free(sb);
		return;
	}
	/* No report and not killed by us: a zygote's end shows in its pidfd a moment after its
	 * runs' ends (its nsjail goes last). */
	bool lost = io.init_status < 0 && !io.killed && fd_readable(sb->holder, 500);
	/* Else the init may linger after closing its pipes. */
	sandbox_end(sb, r, !clean);
	if (lost)
		r->end = RUN_LOST;
	/* The init saw how the script's process ended; nsjail only how the init did. */
	if (io.init_status >= 0 && !io.killed)
		r->exit_code = io.init_status;
}

void sandbox_destroy(struct sandbox *sb, struct run_result *r)
{
	struct run_result ignored;

	if (!sb)
		return;
	proc_kill(sb->proc);
	/* What it said before the kill is in the pipe already: nsjail's last words, when it failed
	 * on its own, are kept for the log. */
	while (fd_readable(sb->err, 0)) {
		char chunk[4096];
		ssize_t got = read(sb->err, chunk, sizeof(chunk));
		if (got <= 0)
			break;
		buf_append(&sb->diag, chunk, (size_t)got);
	}
	if (!r)
		r = &ignored;
	memset(r, 0, sizeof(*r));
	r->end = RUN_START_FAILED;
	/* nsjail, our child, dies at once of the kill, and one that failed on its own a moment ago
	 * (its pipes closed, its exit not yet seen) is logged with its own exit code. */
	if (sb->holder < 0 || proc_exited(sb->proc)) {
		sandbox_end(sb, r, true);
		return;
	}
	/* A zygote's run may take long to die: its init dies only once the zygote, at nice 19
	 * behind busy runs, has reaped its script's process. The pool's thread that ends it is not
	 * to wait for that (requests wait for it to see sandboxes become ready): the supervisor
	 * reaps it and runs its teardown. */
	r->exit_code = 128 + SIGKILL;
	diag_tail(sb, r);
	proc_release(sb->proc, REAP_SECONDS);
	sandbox_free(sb);
}

void run_result_free(struct run_result *r)
{
	buf_free(&r->out);
	buf_free(&r->files);
	buf_free(&r->chan);
}
