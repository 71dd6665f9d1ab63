#include "runuser.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spawn.h"

/* Below this depth a tree is moved up before it is removed, so removal never needs more than
 * this many open directories however deep a script nests them. */
#define RM_DEPTH 16
#define RM_MOVED_MAX 64  /* trees moved up and not yet removed, per removal */
#define RM_PASSES 100000 /* a tree 1.6 million levels deep; deeper is a failure */
#define SHARED_MAX 8

enum slot_state {
	SLOT_UNKNOWN, /* not handed out since start-up: a crashed server may have left something */
	SLOT_FREE,
	SLOT_USED,
	SLOT_DIRTY, /* its clean-up failed: cleaned again before any reuse */
};

/* How many dirty uids one take may try to clean before it gives up. */
#define DIRTY_TRIES 4

struct runusers {
	pthread_mutex_t mu;       /* state, next */
	pthread_mutex_t clean_mu; /* file removal */
	uid_t base;
	int root_fd;                        /* the directory that holds the working directories */
	char root[PATH_MAX - 32];           /* room for "/<uid>" */
	unsigned char state[RUNUSER_COUNT]; /* enum slot_state */
	unsigned next;                      /* where the search for a free uid starts */
	int lock_fd;
	int shared_fd[SHARED_MAX];
	int nshared;
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
	if (st.st_uid != geteuid() || (st.st_mode & 022) || !(st.st_mode & 001)) {
		err_set(
		    e, 500, "internal",
		    "%s must be owned by the server's user, writable by it alone and searchable "
		    "by all (0711; see PYEXEC_WORK_DIR)",
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
	pthread_mutex_init(&ru->clean_mu, NULL);
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

/* One removal: the directory it started in (top), on one file system, and the trees it moved
 * up to top because they were too deep to walk at once. */
struct removal {
	int top;
	dev_t dev;
	char moved[RM_MOVED_MAX][32];
	int nmoved;
	bool failed; /* something could not be removed or moved */
};

/* Removes name under parent, a directory tree or not, never following a link or leaving the
 * file system. A tree deeper than RM_DEPTH is renamed into rm->top, under a name no run can
 * guess, and removed from there after (rm_all): removal never holds more than RM_DEPTH open
 * directories. */
static void rm_at(struct removal *rm, int parent, const char *name, int depth)
{
	struct stat st;
	struct dirent *de;
	DIR *d;
	int fd;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return; /* gone already */
	if (st.st_dev != rm->dev) {
		rm->failed = true; /* something mounted there: not ours to walk */
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(parent, name, 0) < 0 && errno != ENOENT)
			rm->failed = true;
		return;
	}
	if (depth >= RM_DEPTH) {
		unsigned long long r;
		char *slot;
		if (rm->nmoved == RM_MOVED_MAX || getrandom(&r, sizeof(r), 0) != sizeof(r)) {
			rm->failed = true;
			return;
		}
		slot = rm->moved[rm->nmoved];
		snprintf(slot, sizeof(rm->moved[0]), ".pyexec-gone-%016llx", r);
		if (renameat2(parent, name, rm->top, slot, RENAME_NOREPLACE) == 0)
			rm->nmoved++;
		else if (errno != ENOENT)
			rm->failed = true;
		return;
	}
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	/* A directory the run made unreadable to us is still ours to open: root ignores modes. */
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		rm->failed = true;
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			rm_at(rm, dirfd(d), de->d_name, depth + 1);
	closedir(d);
	if (unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rm->failed = true;
}

/* rm_at, then the trees it moved up, each pass RM_DEPTH levels further down; bounded, so a
 * tree that keeps growing (a run still alive writing into it) ends as a failure. */
static bool rm_all(int top, const char *name)
{
	struct removal rm = {.top = top};
	struct stat st;

	if (fstat(top, &st) < 0)
		return false;
	rm.dev = st.st_dev;
	rm_at(&rm, top, name, 0);
	for (int pass = 0; rm.nmoved && pass < RM_PASSES; pass++) {
		char moved[32];
		memcpy(moved, rm.moved[--rm.nmoved], sizeof(moved));
		rm_at(&rm, top, moved, 0);
	}
	return !rm.failed && rm.nmoved == 0;
}

/* Removes every entry of a shared directory that uid owns. An entry it owns can hold only what
 * it or others let in; a world-writable directory of someone else's is searched too, but not
 * another run's (that run's own clean-up removes it). False when something of uid is left. */
static bool sweep(struct runusers *ru, int dir, uid_t uid, int depth)
{
	struct stat st, top;
	struct dirent *de;
	bool ok = true;
	DIR *d;
	/* An open of its own: other threads sweep the same directory with their own offsets. */
	int fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &top) < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    st.st_dev != top.st_dev)
			continue;
		if (st.st_uid == uid) {
			ok &= rm_all(dirfd(d), de->d_name);
		} else if (S_ISDIR(st.st_mode) && (st.st_mode & S_IWOTH) && depth < RM_DEPTH &&
		           !runusers_owns(ru, st.st_uid)) {
			int sub = openat(dirfd(d), de->d_name,
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0) {
				ok &= sweep(ru, sub, uid, depth + 1);
				close(sub);
			}
		}
	}
	closedir(d);
	return ok;
}

/* One removal at a time: two walking the same tree (the sweep before the answer and the
 * reaper's) would each find the other's moves half done. */
static bool remove_files(struct runusers *ru, uid_t uid)
{
	char name[32];
	bool ok;

	snprintf(name, sizeof(name), "%u", (unsigned)uid);
	pthread_mutex_lock(&ru->clean_mu);
	ok = rm_all(ru->root_fd, name);
	for (int i = 0; i < ru->nshared; i++)
		ok &= sweep(ru, ru->shared_fd[i], uid, 0);
	pthread_mutex_unlock(&ru->clean_mu);
	return ok;
}

void runusers_sweep(struct runusers *ru, uid_t uid)
{
	if (runusers_owns(ru, uid))
		remove_files(ru, uid);
}

/* Ends every process of uid and removes its files. False when something of it is left. */
static bool clean(struct runusers *ru, uid_t uid)
{
	return spawn_kill_user(uid) == 0 && remove_files(ru, uid);
}

static void set_state(struct runusers *ru, uid_t uid, unsigned char state)
{
	pthread_mutex_lock(&ru->mu);
	ru->state[uid - ru->base] = state;
	pthread_mutex_unlock(&ru->mu);
}

/* Reserves the next uid in round robin that no jail holds. Round robin: a uid comes back only
 * after the others, long after the zombies of its last run (which still count against its
 * RLIMIT_NPROC) were reaped by PID 1. Returns the slot's state before, or -1. */
static int reserve(struct runusers *ru, uid_t *uid)
{
	int found = -1;

	pthread_mutex_lock(&ru->mu);
	for (unsigned i = 0; i < RUNUSER_COUNT; i++) {
		unsigned slot = (ru->next + i) % RUNUSER_COUNT;
		if (ru->state[slot] == SLOT_USED)
			continue;
		found = ru->state[slot];
		ru->state[slot] = SLOT_USED;
		ru->next = slot + 1;
		*uid = ru->base + slot;
		break;
	}
	pthread_mutex_unlock(&ru->mu);
	return found;
}

int runusers_take(struct runusers *ru, uid_t *uid, char dir[PATH_MAX], struct err *e)
{
	char name[32];
	int state = -1;

	for (int tries = 0; tries <= DIRTY_TRIES; tries++) {
		state = reserve(ru, uid);
		if (state < 0)
			return err_set(e, 503, "busy", "every run uid is in use");
		if (state == SLOT_FREE || clean(ru, *uid))
			break;
		log_error("uid %u: what an earlier run left could not all be removed; tried again "
		          "before its next use",
		          (unsigned)*uid);
		set_state(ru, *uid, SLOT_DIRTY);
		state = -1;
	}
	if (state < 0)
		return err_set(e, 500, "internal", "no clean run uid: clean-ups keep failing");
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
	bool ok;

	if (!runusers_owns(ru, uid))
		return;
	ok = clean(ru, uid);
	if (!ok)
		log_error("uid %u: a process or file of the run could not be removed; the uid is "
		          "cleaned again before its next use",
		          (unsigned)uid);
	set_state(ru, uid, ok ? SLOT_FREE : SLOT_DIRTY);
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
	pthread_mutex_destroy(&ru->clean_mu);
	free(ru);
}
