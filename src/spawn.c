#include "spawn.h"

#include <signal.h>
#include <spawn.h>
#include <string.h>

static char *const empty_env[] = {NULL};

pid_t spawn_process(char *const argv[], const int fds[SPAWN_FDS], struct err *e)
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
