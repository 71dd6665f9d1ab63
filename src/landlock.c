#include "landlock.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Newer than some build hosts' headers: the values are the kernel's ABI. */
#define FS_TRUNCATE (1ULL << 14)
#define NET_BIND_TCP (1ULL << 0)
#define NET_CONNECT_TCP (1ULL << 1)
#define SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define SCOPE_SIGNAL (1ULL << 1)

/* The kernel's struct landlock_ruleset_attr as of ABI 6; older kernels take a prefix of it. */
struct ruleset_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net;
	uint64_t scoped;
};

struct beneath_attr {
	uint64_t allowed_access;
	int32_t parent_fd;
} __attribute__((packed));

#define FS_WRITES                                                                                  \
	(LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |                           \
	 LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |                           \
	 LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |                               \
	 LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |                             \
	 LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM)

int landlock_abi(void)
{
	long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
	return abi > 0 ? (int)abi : 0;
}

/* Lets the ruleset grant access on path (a directory and what is beneath it, or one file). */
static int allow(int ruleset, const char *path, uint64_t access)
{
	struct beneath_attr rule = {.allowed_access = access};
	int rc, saved;

	rule.parent_fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_PATH | O_CLOEXEC);
	if (rule.parent_fd < 0)
		return errno == ENOENT ? 0 : -1; /* a device the host lacks needs no rule */
	rc = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
	saved = errno;
	close(rule.parent_fd);
	errno = saved;
	return rc;
}

int landlock_confine(const char *dir, int abi)
{
	uint64_t writes =
	    FS_WRITES | (abi >= 2 ? LANDLOCK_ACCESS_FS_REFER : 0) | (abi >= 3 ? FS_TRUNCATE : 0);
	uint64_t file_writes = LANDLOCK_ACCESS_FS_WRITE_FILE | (abi >= 3 ? FS_TRUNCATE : 0);
	struct ruleset_attr attr = {.handled_access_fs = writes};
	size_t size = sizeof(attr.handled_access_fs);
	static const char *const devices[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/ptmx"};
	int ruleset, rc = 0, saved;

	if (abi >= 4) {
		/* No rule grants them: no TCP at all, on top of the seccomp policy. */
		attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP;
		size = offsetof(struct ruleset_attr, scoped);
	}
	if (abi >= 6) {
		attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
		size = sizeof(attr);
	}
	ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
	if (ruleset < 0)
		return -1;
	rc |= allow(ruleset, dir, writes);
	for (size_t i = 0; i < sizeof(devices) / sizeof(*devices); i++)
		rc |= allow(ruleset, devices[i], file_writes);
	/* A terminal the run opens (pty.openpty) is its own: devpts gives it the run's uid. */
	rc |= allow(ruleset, "/dev/pts", file_writes);
	if (rc == 0)
		rc = (int)syscall(SYS_landlock_restrict_self, ruleset, 0);
	saved = errno;
	close(ruleset);
	errno = saved;
	return rc;
}
