#include "runuser.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "rmtree.h"
#include "spawn.h"

#define SHARED_MAX 8
/* A removal that meets more entries than this is something still growing: it fails. A
 * run's tmpfs holds PYEXEC_TMP_FILES at most; a plain directory is bounded only by the disk. */
#define ENTRIES_MAX (64UL * 1000 * 1000)
/* What the fast lane removes of one run before it hands the rest to the slow lane: a run
 * that left millions of files must not hold back the uids of every run behind it. */
#define FAST_ENTRIES 2000

enum slot_state {
	SLOT_FREE,
	SLOT_USED,
	SLOT_CLEANING,
	SLOT_QUARANTINED, /* its clean-up failed: never handed out again */
};

/* A cleaner thread and its queue of uids (a ring: a uid is in one queue at most). */
struct lane {
	struct runusers *ru;
	uid_t *queue;
	unsigned head, len;
	size_t budget;     /* entries it removes per uid before giving up on it */
	struct lane *next; /* where a uid it gives up on goes, or NULL: quarantine */
	pthread_t thread;
	bool started;
};

struct runusers {
	pthread_mutex_t mu; /* everything below but the descriptors */
	pthread_cond_t cv;
	struct runusers_opts o;
	int root_fd;              /* the directory that holds the working directories */
	char root[PATH_MAX - 32]; /* room for "/<uid>" */
	dev_t root_dev;
	int lock_fd;
	int shared_fd[SHARED_MAX];
	int nshared;
	bool tmpfs;
	unsigned char *state; /* enum slot_state, per uid */
	struct lane fast, slow;
	unsigned next; /* where the search for a free uid starts */
	unsigned used, cleaning, quarantined;
	bool stop;
};

/* Directories any uid may write to, where a host without Landlock lets a run leave files. */
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
	struct stat st;
	int work_fd = private_dir(AT_FDCWD, work, work, e);

	if (work_fd < 0)
		return -1;
	snprintf(name, sizeof(name), "%u.lock", (unsigned)ru->o.base);
	ru->lock_fd = openat(work_fd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (ru->lock_fd < 0 || flock(ru->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		err_set(e, 500, "internal",
		        "the run uids from %u are in use by another pyexecd (%s/%s); give each "
		        "server its own PYEXEC_RUN_UID",
		        (unsigned)ru->o.base, work, strerror(errno));
		close(work_fd);
		return -1;
	}
	snprintf(name, sizeof(name), "%u", (unsigned)ru->o.base);
	snprintf(ru->root, sizeof(ru->root), "%s/%s", work, name);
	ru->root_fd = private_dir(work_fd, name, ru->root, e);
	close(work_fd);
	if (ru->root_fd < 0 || fstat(ru->root_fd, &st) < 0)
		return -1;
	ru->root_dev = st.st_dev;
	return 0;
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

bool runusers_owns(const struct runusers *ru, uid_t uid)
{
	return uid >= ru->o.base && uid - ru->o.base < ru->o.count;
}

/* Removes root/<name>: unmounts it first when it is a run's tmpfs, which frees its files at
 * once however many there are. */
static bool remove_dir(struct runusers *ru, const char *name, size_t budget)
{
	struct stat st;

	if (fstatat(ru->root_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT;
	if (st.st_dev != ru->root_dev) {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", ru->root, name);
		if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
			return false;
	}
	return rmtree_at(ru->root_fd, name, budget);
}

/* Removes every entry of a shared directory owned by a uid in [lo, hi]. An entry such a uid
 * owns can hold only what it or others let in; a world-writable directory of someone else's,
 * another run's too, is searched as well. */
static bool sweep(int dir, uid_t lo, uid_t hi, int depth, size_t budget)
{
	struct stat st, top;
	struct dirent *de;
	bool ok = true;
	DIR *d;
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
		if (st.st_uid >= lo && st.st_uid <= hi) {
			ok &= rmtree_at(dirfd(d), de->d_name, budget);
		} else if (S_ISDIR(st.st_mode) && (st.st_mode & S_IWOTH) && depth < SWEEP_DEPTH) {
			int sub = openat(dirfd(d), de->d_name,
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0) {
				ok &= sweep(sub, lo, hi, depth + 1, budget);
				close(sub);
			}
		}
	}
	closedir(d);
	return ok;
}

bool runusers_sweep(int dir, uid_t lo, uid_t hi, size_t budget)
{
	return sweep(dir, lo, hi, 0, budget);
}

static bool sweep_shared(struct runusers *ru, uid_t lo, uid_t hi, size_t budget)
{
	bool ok = true;

	for (int i = 0; ru->o.sweep_shared && i < ru->nshared; i++)
		ok &= runusers_sweep(ru->shared_fd[i], lo, hi, budget);
	return ok;
}

/* A lane's work for one uid: no task left, no file left. -1: a process survived its kill. */
static int clean(struct runusers *ru, uid_t uid, size_t budget)
{
	char name[32];

	snprintf(name, sizeof(name), "%u", (unsigned)uid);
	if (spawn_kill_user(uid) < 0)
		return -1;
	return remove_dir(ru, name, budget) && sweep_shared(ru, uid, uid, budget) ? 0 : 1;
}

static void lane_push(struct lane *l, uid_t uid)
{
	l->queue[(l->head + l->len) % l->ru->o.count] = uid;
	l->len++;
	pthread_cond_broadcast(&l->ru->cv);
}

/* Called with ru->mu held: where uid goes after a clean-up that gave rc. */
static void lane_done(struct lane *l, uid_t uid, int rc)
{
	struct runusers *ru = l->ru;

	if (rc > 0 && l->next) {
		lane_push(l->next, uid);
		return;
	}
	if (rc != 0)
		log_error("uid %u: %s; the uid is quarantined", (unsigned)uid,
		          rc < 0 ? "a process of the run survived its kill"
		                 : "a file of the run could not be removed");
	ru->state[uid - ru->o.base] = rc == 0 ? SLOT_FREE : SLOT_QUARANTINED;
	ru->cleaning--;
	ru->quarantined += rc != 0;
	pthread_cond_broadcast(&ru->cv);
}

static void *lane_main(void *arg)
{
	struct lane *l = arg;
	struct runusers *ru = l->ru;

	pthread_mutex_lock(&ru->mu);
	for (;;) {
		while (!l->len && !ru->stop)
			pthread_cond_wait(&ru->cv, &ru->mu);
		if (ru->stop)
			break;
		uid_t uid = l->queue[l->head];
		l->head = (l->head + 1) % ru->o.count;
		l->len--;
		pthread_mutex_unlock(&ru->mu);
		int rc = clean(ru, uid, l->budget);
		pthread_mutex_lock(&ru->mu);
		lane_done(l, uid, rc);
	}
	pthread_mutex_unlock(&ru->mu);
	return NULL;
}

static int lane_start(struct runusers *ru, struct lane *l, size_t budget, struct lane *next)
{
	l->ru = ru;
	l->budget = budget;
	l->next = next;
	l->queue = calloc(ru->o.count, sizeof(*l->queue));
	if (!l->queue || pthread_create(&l->thread, NULL, lane_main, l) != 0)
		return -1;
	l->started = true;
	return 0;
}

/* Whether the server may mount a tmpfs for each run (root with CAP_SYS_ADMIN, a seccomp
 * profile that allows mount). */
static bool tmpfs_allowed(struct runusers *ru)
{
	char path[PATH_MAX];
	bool ok;

	snprintf(path, sizeof(path), "%s/.probe", ru->root);
	if (mkdirat(ru->root_fd, ".probe", 0700) < 0 && errno != EEXIST)
		return false;
	ok = mount("none", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=16") == 0;
	if (ok && umount2(path, MNT_DETACH) < 0)
		ok = false;
	unlinkat(ru->root_fd, ".probe", AT_REMOVEDIR);
	return ok;
}

/* A crashed server may have left processes and files of the uids: gone before any is used. */
static int clean_all(struct runusers *ru, struct err *e)
{
	uid_t hi = ru->o.base + ru->o.count - 1;
	struct dirent *de;
	bool ok = spawn_kill_range(ru->o.base, hi) == 0;
	int fd = openat(ru->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return err_set(e, 500, "internal", "cannot read %s: %s", ru->root, strerror(errno));
	}
	while (ok && (de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			ok = remove_dir(ru, de->d_name, ENTRIES_MAX);
	closedir(d);
	if (!ok || !sweep_shared(ru, ru->o.base, hi, ENTRIES_MAX))
		return err_set(e, 500, "internal",
		               "cannot remove what an earlier server left for the run uids %u-%u "
		               "(processes, or files in %s)",
		               (unsigned)ru->o.base, (unsigned)hi, ru->root);
	return 0;
}

struct runusers *runusers_new(const struct runusers_opts *o, struct err *e)
{
	struct runusers *ru = calloc(1, sizeof(*ru));

	if (!ru) {
		err_set(e, 500, "internal", "out of memory");
		return NULL;
	}
	pthread_mutex_init(&ru->mu, NULL);
	pthread_cond_init(&ru->cv, NULL);
	ru->o = *o;
	ru->root_fd = -1;
	ru->lock_fd = -1;
	if (o->base == 0 || o->count < 2 || o->base + o->count < o->base) {
		err_set(e, 0, "config", "PYEXEC_RUN_UID must leave room for %u uids above 0",
		        o->count);
		goto fail;
	}
	ru->state = calloc(o->count, sizeof(*ru->state));
	if (!ru->state) {
		err_set(e, 500, "internal", "out of memory");
		goto fail;
	}
	if (root_open(ru, o->root, e) < 0)
		goto fail;
	shared_open(ru);
	if (clean_all(ru, e) < 0)
		goto fail;
	ru->tmpfs = tmpfs_allowed(ru);
	/* Two lanes: every run's clean-up starts in the fast one; what is too big to finish
	 * there goes on in the slow one, so it holds back no other uid. */
	if (lane_start(ru, &ru->slow, ENTRIES_MAX, NULL) < 0 ||
	    lane_start(ru, &ru->fast, FAST_ENTRIES, &ru->slow) < 0) {
		err_set(e, 500, "internal", "cannot start the run uids' cleaner threads");
		goto fail;
	}
	return ru;
fail:
	runusers_free(ru);
	return NULL;
}

/* Reserves the next free uid in round robin, so a uid comes back as late as possible. */
static int reserve(struct runusers *ru, uid_t *uid, struct err *e)
{
	int rc = -1;

	pthread_mutex_lock(&ru->mu);
	for (unsigned i = 0; i < ru->o.count; i++) {
		unsigned slot = (ru->next + i) % ru->o.count;
		if (ru->state[slot] != SLOT_FREE)
			continue;
		ru->state[slot] = SLOT_USED;
		ru->used++;
		ru->next = slot + 1;
		*uid = ru->o.base + slot;
		rc = 0;
		break;
	}
	if (rc < 0)
		err_set(e, 503, "busy",
		        "every run uid is in use or being cleaned (%u quarantined); retry shortly",
		        ru->quarantined);
	pthread_mutex_unlock(&ru->mu);
	return rc;
}

/* Makes root/<name> for uid: a tmpfs of its own where allowed. Made as the server, then given
 * away: the run cannot have planted anything there. */
static int make_dir(struct runusers *ru, uid_t uid, const char *name, const char *path)
{
	if (mkdirat(ru->root_fd, name, 0700) < 0)
		return -1;
	if (ru->tmpfs) {
		char opts[128];
		snprintf(opts, sizeof(opts), "size=%lu,nr_inodes=%lu,mode=0700,uid=%u,gid=%u",
		         ru->o.tmp_bytes, ru->o.tmp_files, (unsigned)uid, (unsigned)uid);
		return mount("none", path, "tmpfs", MS_NOSUID | MS_NODEV, opts);
	}
	return fchownat(ru->root_fd, name, uid, uid, AT_SYMLINK_NOFOLLOW);
}

int runusers_take(struct runusers *ru, uid_t *uid, char dir[PATH_MAX], struct err *e)
{
	char name[32];

	if (reserve(ru, uid, e) < 0)
		return -1;
	snprintf(name, sizeof(name), "%u", (unsigned)*uid);
	snprintf(dir, PATH_MAX, "%s/%s", ru->root, name);
	if (make_dir(ru, *uid, name, dir) < 0) {
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
	pthread_mutex_lock(&ru->mu);
	if (ru->state[uid - ru->o.base] == SLOT_USED) {
		ru->state[uid - ru->o.base] = SLOT_CLEANING;
		ru->used--;
		ru->cleaning++;
		lane_push(&ru->fast, uid);
	}
	pthread_mutex_unlock(&ru->mu);
}

void runusers_stats(struct runusers *ru, struct runusers_stats *s)
{
	pthread_mutex_lock(&ru->mu);
	s->used = ru->used;
	s->cleaning = ru->cleaning;
	s->quarantined = ru->quarantined;
	s->count = ru->o.count;
	s->tmpfs = ru->tmpfs;
	pthread_mutex_unlock(&ru->mu);
}

void runusers_free(struct runusers *ru)
{
	if (!ru)
		return;
	pthread_mutex_lock(&ru->mu);
	ru->stop = true;
	pthread_cond_broadcast(&ru->cv);
	pthread_mutex_unlock(&ru->mu);
	struct lane *lanes[] = {&ru->fast, &ru->slow};
	for (int i = 0; i < 2; i++)
		if (lanes[i]->started)
			pthread_join(lanes[i]->thread, NULL);
	if (ru->fast.started || ru->slow.started) {
		/* What is still queued or in use: its tmpfs mounts must not outlive the server. */
		struct err ignored;
		clean_all(ru, &ignored);
	}
	if (ru->root_fd >= 0)
		close(ru->root_fd);
	if (ru->lock_fd >= 0)
		close(ru->lock_fd);
	for (int i = 0; i < ru->nshared; i++)
		close(ru->shared_fd[i]);
	free(ru->state);
	free(ru->fast.queue);
	free(ru->slow.queue);
	pthread_cond_destroy(&ru->cv);
	pthread_mutex_destroy(&ru->mu);
	free(ru);
}
