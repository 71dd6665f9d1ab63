/* pyexecd: runs untrusted Python scripts in nsjail behind an HTTP API. */
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "hostfs.h"
#include "http.h"
#include "init.h"
#include "log.h"

/* Spawned jails rely on descriptors 0-2 being taken, so pipes never land on them. */
static void ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			exit(1);
}

/* Every connection and every run's pipes are descriptors: use all the host allows. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	struct config cfg;
	struct err e;
	struct http *h;
	sigset_t stop;
	int sig = 0, rc;
	char why[256];

	/* As a container's entrypoint, one process stays PID 1 and reaps what jails leave. */
	init_split_if_pid1();
	ensure_std_fds();
	raise_fd_limit();
	/* One thread per connection would otherwise give glibc an arena per thread, each keeping
	 * freed memory: two arenas keep the server's footprint flat under load. */
	mallopt(M_ARENA_MAX, 2);
	rc = config_load(&cfg, argc, argv, &e);
	init_forget_environment();
	if (rc == 1)
		return 0;
	if (rc < 0) {
		fprintf(stderr, "pyexecd: %s\n", e.message);
		return 2;
	}
	/* Before any thread: a mount namespace of the server's own. */
	if (hostfs_hide(why, sizeof(why)) < 0)
		log_info("the jails' mount tables may show the host's storage paths: %s", why);
	/* A client that hangs up must never kill the server. */
	signal(SIGPIPE, SIG_IGN);
	/* Blocked before any thread exists, so only sigwait below sees them. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);
	/* Not every failure of http_start fills e (an allocation that fails does not). */
	err_set(&e, 0, "internal", "out of memory");
	h = http_start(&cfg, &e);
	if (!h) {
		log_error("cannot start: %s", e.message);
		return 1;
	}
	sigwait(&stop, &sig);
	log_info("received %s: refusing new runs, giving in-flight runs %g s",
	         sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg.grace);
	rc = (int)http_shutdown(h);
	log_info("stopping (%d runs had to be stopped)", rc);
	http_stop(h);
	return 0;
}
