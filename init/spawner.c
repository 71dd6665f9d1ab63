/* pyexec-init: the zygote's spawner (runner/zygote.py starts it once, in the zygote's jail).
 *
 *     pyexec-init SOCK TMP_MB,TMP_INODES FILES,BYTES,PATH,DEPTH RECORDS_MAX
 *
 * The first message on SOCK (a SOCK_SEQPACKET socket) is the full tier's seccomp program; each
 * later one, "R" with INIT_FDS - 1 descriptors (runinit.h), asks for a run: this small process
 * clones itself into the run's new namespaces, and the clone becomes the run's PID 1. A clone of
 * a few hundred kilobytes costs next to nothing, where a fork of the warm interpreter copies the
 * page tables of sixty megabytes. It exits when the zygote closes SOCK. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runinit.h"

#define FILTER_MAX (4096 * sizeof(struct sock_filter))
#define RUN_NAMESPACES                                                                             \
	(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS)

static int parse_list(const char *s, unsigned long *out, int n)
{
	char *end;

	for (int i = 0; i < n; i++) {
		errno = 0;
		out[i] = strtoul(s, &end, 10);
		if (errno || end == s || *end != (i + 1 < n ? ',' : '\0'))
			return -1;
		s = end + 1;
	}
	return 0;
}

static int parse_args(int argc, char **argv, int *sock, struct run_config *c)
{
	unsigned long tmp[2], caps[4], rec[1], fd[1];

	if (argc != 5 || parse_list(argv[1], fd, 1) < 0 || parse_list(argv[2], tmp, 2) < 0 ||
	    parse_list(argv[3], caps, 4) < 0 || parse_list(argv[4], rec, 1) < 0)
		return -1;
	*sock = (int)fd[0];
	c->uid = getuid(), c->gid = getgid();
	c->tmp_mb = tmp[0], c->tmp_inodes = tmp[1];
	c->out.out_files = caps[0], c->out.out_bytes = caps[1];
	c->out.path_max = caps[2], c->out.path_depth = caps[3];
	c->records_max = rec[0];
	return 0;
}

static int read_filter(int sock, struct run_config *c)
{
	struct sock_filter *prog = malloc(FILTER_MAX);
	ssize_t n = prog ? recv(sock, prog, FILTER_MAX, MSG_TRUNC) : -1;

	if (n <= 0 || (size_t)n > FILTER_MAX || n % (ssize_t)sizeof(*prog)) {
		free(prog);
		return -1;
	}
	c->filter.filter = prog;
	c->filter.len = (unsigned short)((size_t)n / sizeof(*prog));
	return 0;
}

/* One request: "R" and exactly INIT_FDS - 1 descriptors, placed at fds[1..]. Returns how many
 * descriptors came (all closed when the message is not that), 0 at the zygote's end. */
static int recv_run(int sock, int fds[INIT_FDS])
{
	char cbuf[CMSG_SPACE(sizeof(int) * INIT_FDS)] = {0}, word[8];
	struct iovec iov = {.iov_base = word, .iov_len = sizeof(word)};
	struct msghdr m = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *h;
	ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
	int got = 0;

	if (n <= 0)
		return n < 0 && errno == EINTR ? -1 : 0;
	for (h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
		int k;
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
			if (got + 1 < INIT_FDS)
				fds[1 + got] = fd;
			else
				close(fd);
			got++;
		}
	}
	if (n == 1 && word[0] == 'R' && got == INIT_FDS - 1 && !(m.msg_flags & MSG_CTRUNC))
		return got;
	for (int i = 0; i < got && i + 1 < INIT_FDS; i++)
		close(fds[1 + i]);
	return -1;
}

int main(int argc, char **argv)
{
	struct run_config c = {0};
	int sock, fds[INIT_FDS] = {-1};

	if (parse_args(argc, argv, &sock, &c) < 0 || read_filter(sock, &c) < 0) {
		fprintf(stderr,
		        "pyexec-init: usage: pyexec-init SOCK TMP CAPS RECORDS_MAX, then the "
		        "seccomp program on SOCK\n");
		return 2;
	}
	/* Its clones are reaped by the kernel; each restores SIGCHLD for its own children. */
	signal(SIGCHLD, SIG_IGN);
	for (;;) {
		int got = recv_run(sock, fds);
		long pid;
		if (got == 0)
			return 0;
		if (got < 0)
			continue;
		pid = syscall(SYS_clone, (unsigned long)RUN_NAMESPACES | SIGCHLD, NULL, NULL, NULL,
		              NULL);
		if (pid == 0) {
			close(sock);
			runinit_main(&c, fds);
		}
		if (pid < 0)
			fprintf(stderr, "pyexec-init: cannot start a run: %s\n", strerror(errno));
		for (int i = 1; i < INIT_FDS; i++)
			close(fds[i]);
	}
}
