#include "runuser.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spawn.h"

/* Below this depth a tree is moved up before it is removed, so removal never needs more than
 * this many open directories however deep a script nests them. */
#define RM_DEPTH 16
#define SHARED_MAX 8

struct runusers {
	pthread_mutex_t mu;
	uid_t base;
	int root_fd;              /* the directory that holds the working directories */
	char root[PATH_MAX - 32]; /* room for "/<uid>" */
	/* 0: not handed out since start-up (a crashed server may have left something behind);
	 * 1: free; 2: in use. */
	unsigned char state[RUNUSER_COUNT];
	unsigned next;      /* where the search for a free uid starts */
	atomic_ulong moved; /* names trees moved up for removal */
	int lock_fd;
	int shared_fd[SHARED_MAX];
	int nshared;
	char swept[256];
};

/* Directories any uid may write to: what a run leaves there is found by owner. */
static const char *const shared_candidates[] = {"/tmp",        "/var/tmp",  "/dev/shm",
                                                "/dev/mqueue", "/run/lock", "/var/lock"};

/* Opens dir (made if missing) and checks that only the server can change it: anyone else able
 * to write there could swap a run's directory for a link. */
static int private_dir(int at, const char *dir, const char *shown, struct err *e)
{
	struct stat st;
	int fd;

	if (mkdirat(at, dir, 0711) < 0 && errno != EEXIST)
		return err_set(e, 500, "internal", "cannot create %s: %s", shown, strerror(errno));
	fd = openat(at, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		err_set(e, 500, "internal", "cannot open %s: %s", shown, strerror(errno));
		goto fail;
	}
	if (st.st_uid != geteuid() || (st.st_mode & 022)) {
		err_set(e, 500, "internal",
		        "%s must be owned by the server's user and writable by it alone (see "
		        "PYEXEC_WORK_DIR)",
		        shown);
		goto fail;
	}
	return fd;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}

/* <work>/<base>/ holds the working directories; <work>/<base>.lock keeps a second server from
 * handing out the same uids. */
static int root_open(struct runusers *ru, const char *work, struct err *e)
{
	char name[32];
	int work_fd = private_dir(AT_FDCWD, work, work, e);

	if (work_fd < 0)
		return -1;
	snprintf(name, sizeof(name), "%u.lock", (unsigned)ru->base);
	ru->lock_fd = openat(work_fd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (ru->lock_fd < 0 || flock(ru->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		err_set(e, 500, "internal",
		        "the run uids from %u are in use by another pyexecd (%s/%s); give each "
		        "server its own PYEXEC_RUN_UID",
		        (unsigned)ru->base, work, strerror(errno));
		close(work_fd);
		return -1;
	}
	snprintf(name, sizeof(name), "%u", (unsigned)ru->base);
	snprintf(ru->root, sizeof(ru->root), "%s/%s", work, name);
	ru->root_fd = private_dir(work_fd, name, ru->root, e);
	close(work_fd);
	return ru->root_fd < 0 ? -1 : 0;
}

static void shared_open(struct runusers *ru)
{
	size_t off = 0;

	for (size_t i = 0; i < sizeof(shared_candidates) / sizeof(*shared_candidates); i++) {
		struct stat st;
		int fd = open(shared_candidates[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) < 0 || !(st.st_mode & S_IWOTH) || ru->nshared == SHARED_MAX) {
			close(fd);
			continue;
		}
		ru->shared_fd[ru->nshared++] = fd;
		off += (size_t)snprintf(ru->swept + off, sizeof(ru->swept) - off, "%s%s",
		                        off ? "," : "", shared_candidates[i]);
		if (off >= sizeof(ru->swept))
			off = sizeof(ru->swept) - 1;
	}
}

struct runusers *runusers_new(uid_t base, const char *root, struct err *e)
{
	struct runusers *ru = calloc(1, sizeof(*ru));

	if (!ru) {
		err_set(e, 500, "internal", "out of memory");
		return NULL;
	}
	pthread_mutex_init(&ru->mu, NULL);
	ru->base = base;
	ru->root_fd = -1;
	ru->lock_fd = -1;
	if (base == 0 || base + RUNUSER_COUNT < base) {
		err_set(e, 0, "config", "PYEXEC_RUN_UID must leave room for %d uids above 0",
		        RUNUSER_COUNT);
		goto fail;
	}
	if (root_open(ru, root, e) < 0)
		goto fail;
	shared_open(ru);
	return ru;
fail:
	runusers_free(ru);
	return NULL;
}

bool runusers_owns(const struct runusers *ru, uid_t uid)
{
	return uid >= ru->base && uid < ru->base + RUNUSER_COUNT;
}

const char *runusers_swept(const struct runusers *ru)
{
	return ru->swept;
}

/* Removes name under parent, a directory tree or not, never following a link or leaving the
 * file system. Trees deeper than RM_DEPTH are moved up to top and removed from there. */
static void rm_at(int parent, const char *name, int depth, struct runusers *ru, dev_t dev)
{
	struct stat st;
	struct dirent *de;
	DIR *d;
	int fd;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
		return;
	if (!S_ISDIR(st.st_mode)) {
		unlinkat(parent, name, 0);
		return;
	}
	if (depth >= RM_DEPTH) {
		char moved[32];
		snprintf(moved, sizeof(moved), ".gone-%lu", atomic_fetch_add(&ru->moved, 1));
		renameat(parent, name, ru->root_fd, moved); /* removed by rm_moved */
		return;
	}
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	/* A directory the run made unreadable to us is still ours to open: root ignores modes. */
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			rm_at(dirfd(d), de->d_name, depth + 1, ru, dev);
	closedir(d);
	unlinkat(parent, name, AT_REMOVEDIR);
}

/* Removes the trees rm_at moved up; each pass takes RM_DEPTH levels off them. */
static void rm_moved(struct runusers *ru, dev_t dev)
{
	for (bool again = true; again;) {
		int fd = openat(ru->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		struct dirent *de;
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

		if (!d) {
			if (fd >= 0)
				close(fd);
			return;
		}
		again = false;
		while ((de = readdir(d)))
			if (strncmp(de->d_name, ".gone-", 6) == 0) {
				rm_at(dirfd(d), de->d_name, 0, ru, dev);
				again = true;
			}
		closedir(d);
	}
}

/* Removes every entry of a shared directory that uid owns. An entry it owns can hold only what
 * it or others let in; an entry it does not own but may write to is searched too. */
static void sweep(struct runusers *ru, int dir, uid_t uid, int depth)
{
	struct stat st, top;
	struct dirent *de;
	DIR *d;
	/* An open of its own: other threads sweep the same directory with their own offsets. */
	int fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &top) < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    st.st_dev != top.st_dev)
			continue;
		if (st.st_uid == uid) {
			rm_at(dirfd(d), de->d_name, 0, ru, top.st_dev);
		} else if (S_ISDIR(st.st_mode) && (st.st_mode & S_IWOTH) && depth < RM_DEPTH) {
			int sub = openat(dirfd(d), de->d_name,
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0) {
				sweep(ru, sub, uid, depth + 1);
				close(sub);
			}
		}
	}
	closedir(d);
}

static void remove_files(struct runusers *ru, uid_t uid)
{
	char name[32];
	struct stat st;

	snprintf(name, sizeof(name), "%u", (unsigned)uid);
	if (fstat(ru->root_fd, &st) == 0) {
		rm_at(ru->root_fd, name, 0, ru, st.st_dev);
		rm_moved(ru, st.st_dev);
	}
	for (int i = 0; i < ru->nshared; i++)
		sweep(ru, ru->shared_fd[i], uid, 0);
}

void runusers_sweep(struct runusers *ru, uid_t uid)
{
	if (runusers_owns(ru, uid))
		remove_files(ru, uid);
}

/* Ends every process of uid and removes its files. False when a process survived. */
static bool clean(struct runusers *ru, uid_t uid)
{
	if (spawn_kill_user(uid) < 0)
		return false;
	remove_files(ru, uid);
	return true;
}

static void set_state(struct runusers *ru, uid_t uid, unsigned char state)
{
	pthread_mutex_lock(&ru->mu);
	ru->state[uid - ru->base] = state;
	pthread_mutex_unlock(&ru->mu);
}

int runusers_take(struct runusers *ru, uid_t *uid, char dir[PATH_MAX], struct err *e)
{
	char name[32];
	int slot = -1;
	bool fresh;

	pthread_mutex_lock(&ru->mu);
	/* Round robin: a uid comes back only after the others, long after the zombies of its
	 * last run (which still count against its RLIMIT_NPROC) were reaped by PID 1. */
	for (int i = 0; i < RUNUSER_COUNT && slot < 0; i++)
		if (ru->state[(ru->next + (unsigned)i) % RUNUSER_COUNT] != 2)
			slot = (int)((ru->next + (unsigned)i) % RUNUSER_COUNT);
	fresh = slot >= 0 && ru->state[slot] == 0;
	if (slot >= 0) {
		ru->state[slot] = 2;
		ru->next = (unsigned)slot + 1;
	}
	pthread_mutex_unlock(&ru->mu);
	if (slot < 0)
		return err_set(e, 503, "busy", "every run uid is in use");
	*uid = ru->base + (uid_t)slot;
	if (fresh && !clean(ru, *uid)) {
		log_error(
		    "uid %u: processes of an earlier server survive SIGKILL; the uid is retired",
		    (unsigned)*uid);
		return err_set(e, 500, "internal", "run uid %u is still in use", (unsigned)*uid);
	}
	snprintf(name, sizeof(name), "%u", (unsigned)*uid);
	snprintf(dir, PATH_MAX, "%s/%s", ru->root, name);
	/* Made as the server, then given away: the run cannot have planted anything there. */
	if (mkdirat(ru->root_fd, name, 0700) < 0 ||
	    fchownat(ru->root_fd, name, *uid, *uid, AT_SYMLINK_NOFOLLOW) < 0) {
		err_set(e, 500, "internal", "cannot prepare %s: %s", dir, strerror(errno));
		runusers_give_back(ru, *uid);
		return -1;
	}
	return 0;
}

void runusers_give_back(struct runusers *ru, uid_t uid)
{
	if (!runusers_owns(ru, uid))
		return;
	if (!clean(ru, uid)) {
		/* Something of the run survived: keep the uid out of use rather than share it. */
		log_error("uid %u: processes survive SIGKILL; the uid is retired", (unsigned)uid);
		return;
	}
	set_state(ru, uid, 1);
}

void runusers_free(struct runusers *ru)
{
	if (!ru)
		return;
	if (ru->root_fd >= 0)
		close(ru->root_fd);
	if (ru->lock_fd >= 0)
		close(ru->lock_fd);
	for (int i = 0; i < ru->nshared; i++)
		close(ru->shared_fd[i]);
	pthread_mutex_destroy(&ru->mu);
	free(ru);
}
