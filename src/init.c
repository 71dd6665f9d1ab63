#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

void init_forget_environment(void)
{
	for (char **e = environ; e && *e; e++)
		explicit_bzero(*e, strlen(*e));
	clearenv();
}

/* Reaps every exited child; returns the server's wait status once it is among them. */
static int reap_all(pid_t server, int *server_status)
{
	int status, found = 0;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		if (pid == server) {
			*server_status = status;
			found = 1;
		}
	return found;
}

static _Noreturn void init_loop(pid_t server, const sigset_t *handled)
{
	int status = 0, sig;

	for (;;) {
		if (sigwait(handled, &sig) != 0)
			continue;
		if (sig == SIGCHLD) {
			if (reap_all(server, &status))
				break;
			continue;
		}
		kill(server, sig);
	}
	if (WIFEXITED(status))
		exit(WEXITSTATUS(status));
	exit(128 + WTERMSIG(status));
}

/* The container is ours: no run uid may write its world-writable directories (where one run
 * could fill memory or leave files for another), Landlock or not. The sticky bit stays. */
static void close_shared_dirs(void)
{
	static const char *const dirs[] = {"/tmp",        "/var/tmp",  "/dev/shm",
	                                   "/dev/mqueue", "/run/lock", "/var/lock"};
	struct stat st;

	for (size_t i = 0; i < sizeof(dirs) / sizeof(*dirs); i++) {
		int fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) == 0 && (st.st_mode & S_IWOTH))
			fchmod(fd, st.st_mode & 07775);
		close(fd);
	}
}

void init_split_if_pid1(void)
{
	sigset_t handled, old;
	pid_t server;

	if (getpid() != 1)
		return;
	close_shared_dirs();
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigaddset(&handled, SIGHUP);
	sigprocmask(SIG_BLOCK, &handled, &old);
	server = fork();
	if (server == 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		return;
	}
	if (server < 0)
		exit(1);
	init_forget_environment();
	init_loop(server, &handled);
}
