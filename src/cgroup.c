#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "sysfile.h"

#define V1_MEM "/sys/fs/cgroup/memory"
#define V1_PIDS "/sys/fs/cgroup/pids"
#define V2_ROOT "/sys/fs/cgroup"

static int make_dir(const char *path)
{
	return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -1;
}

/* Docker mounts the cgroup file systems read-only even for a container given CAP_SYS_ADMIN.
 * Such a container may make its own mount writable again: its cgroup namespace still confines
 * it to its own subtree. Keeps the mount's other flags, as a bind remount must. */
static int remount_writable(const char *mount_point)
{
	struct statvfs vfs;
	unsigned long flags = MS_REMOUNT | MS_BIND;

	if (statvfs(mount_point, &vfs) != 0 || !(vfs.f_flag & ST_RDONLY))
		return -1;
	flags |= (vfs.f_flag & ST_NOSUID) ? MS_NOSUID : 0;
	flags |= (vfs.f_flag & ST_NODEV) ? MS_NODEV : 0;
	flags |= (vfs.f_flag & ST_NOEXEC) ? MS_NOEXEC : 0;
	flags |= (vfs.f_flag & ST_RELATIME) ? MS_RELATIME : 0;
	return mount(NULL, mount_point, NULL, flags, NULL);
}

static int make_dir_in(const char *mount_point, const char *path)
{
	struct statvfs vfs;

	/* Made writable whether or not the group exists: the server's mount namespace of its own
	 * (hostfs.c) starts with Docker's read-only mount even where an earlier server made the
	 * group, and the runs' groups are made in it later. */
	if (statvfs(mount_point, &vfs) == 0 && (vfs.f_flag & ST_RDONLY) &&
	    remount_writable(mount_point) != 0)
		return -1;
	return make_dir(path);
}

/* The server's own group in a hierarchy: "N:controller:/path" in /proc/self/cgroup. */
static void own_path(const char *controller, char *out, size_t n)
{
	char text[4096], *line, *save = NULL;

	out[0] = '\0';
	if (sysfile_read(AT_FDCWD, "/proc/self/cgroup", text, sizeof(text)) < 0)
		return;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *c = strchr(line, ':'), *p = c ? strchr(c + 1, ':') : NULL;
		if (!p)
			continue;
		*p = '\0';
		if (strcmp(c + 1, controller) == 0 && strcmp(p + 1, "/") != 0) {
			snprintf(out, n, "%s", p + 1);
			return;
		}
	}
}

/* <mount><own path>/pyexec when the own path is visible there, else <mount>/pyexec. */
static int v1_group(const char *mount, const char *controller, char *out, size_t n)
{
	char own[PATH_MAX], dir[PATH_MAX];
	struct stat st;

	own_path(controller, own, sizeof(own));
	if (snprintf(dir, sizeof(dir), "%s%s", mount, own) >= (int)sizeof(dir) ||
	    stat(dir, &st) != 0)
		snprintf(dir, sizeof(dir), "%s", mount);
	if (snprintf(out, n, "%s/pyexec", dir) >= (int)n)
		return -1;
	return make_dir_in(mount, out);
}

static bool v1_init(struct cgroup *cg)
{
	char path[PATH_MAX + 32];
	struct stat st;

	if (stat(V1_MEM "/memory.limit_in_bytes", &st) != 0 ||
	    stat(V1_PIDS "/cgroup.procs", &st) != 0)
		return false;
	if (v1_group(V1_MEM, "memory", cg->mem, sizeof(cg->mem)) < 0 ||
	    v1_group(V1_PIDS, "pids", cg->pids, sizeof(cg->pids)) < 0) {
		snprintf(cg->why, sizeof(cg->why),
		         "cgroup v1 is mounted read-only or not delegated");
		return false;
	}
	snprintf(path, sizeof(path), "%s/memory.memsw.limit_in_bytes", cg->mem);
	cg->memsw = stat(path, &st) == 0;
	cg->mode = CGROUP_V1;
	return true;
}

static int v2_move_all(const char *base)
{
	char from[PATH_MAX + 32], to[PATH_MAX + 32], pids[4096], *line, *save = NULL;

	snprintf(from, sizeof(from), "%s/cgroup.procs", base);
	snprintf(to, sizeof(to), "%s/server/cgroup.procs", base);
	if (sysfile_read(AT_FDCWD, from, pids, sizeof(pids)) < 0)
		return -1;
	for (line = strtok_r(pids, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (sysfile_write(to, line) < 0 && errno != ESRCH)
			return -1;
	return 0;
}

/* v2: the server moves into <own>/server, and runs live under <own>/runs with the memory and
 * pids controllers delegated. */
static bool v2_init(struct cgroup *cg)
{
	char own[PATH_MAX], base[PATH_MAX], path[PATH_MAX + 64], pid[32];
	struct stat st;

	if (stat(V2_ROOT "/cgroup.controllers", &st) != 0)
		return false;
	own_path("", own, sizeof(own));
	if (snprintf(base, sizeof(base), "%s%s", V2_ROOT, own) >= (int)sizeof(base))
		return false;
	snprintf(path, sizeof(path), "%s/server", base);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if (make_dir_in(V2_ROOT, path) < 0)
		goto denied;
	snprintf(path, sizeof(path), "%s/server/cgroup.procs", base);
	if (sysfile_write(path, pid) < 0)
		goto denied;
	snprintf(path, sizeof(path), "%s/cgroup.subtree_control", base);
	/* No process may stay in a group that delegates controllers: move the others (an init
	 * such as tini) beside the server. */
	if (sysfile_write(path, "+memory +pids") < 0 &&
	    (errno != EBUSY || v2_move_all(base) < 0 || sysfile_write(path, "+memory +pids") < 0))
		goto denied;
	if (snprintf(cg->mem, sizeof(cg->mem), "%s/runs", base) >= (int)sizeof(cg->mem))
		goto denied;
	snprintf(path, sizeof(path), "%s/runs/cgroup.subtree_control", base);
	if (make_dir(cg->mem) < 0 || sysfile_write(path, "+memory +pids") < 0)
		goto denied;
	cg->mode = CGROUP_V2;
	return true;
denied:
	snprintf(cg->why, sizeof(cg->why),
	         "cgroup v2 is not writable or does not delegate memory and pids (%s)",
	         strerror(errno));
	return false;
}

void cgroup_init(struct cgroup *cg)
{
	memset(cg, 0, sizeof(*cg));
	snprintf(cg->why, sizeof(cg->why), "no cgroup hierarchy with memory and pids is mounted");
	if (!v2_init(cg) && !v1_init(cg))
		cg->mode = CGROUP_NONE;
}

const char *cgroup_mode_name(const struct cgroup *cg)
{
	return cg->mode == CGROUP_V2 ? "v2" : cg->mode == CGROUP_V1 ? "v1" : "none";
}

static int run_path(const char *group, const char *name, const char *file, char *out, size_t n)
{
	return snprintf(out, n, "%s/%s%s%s", group, name, file ? "/" : "", file ? file : "") <
	               (int)n
	           ? 0
	           : -1;
}

int cgroup_run_create(const struct cgroup *cg, const char *name)
{
	char path[PATH_MAX + 128];

	if (cg->mode == CGROUP_NONE)
		return 0;
	if (run_path(cg->mem, name, NULL, path, sizeof(path)) < 0 || make_dir(path) < 0)
		return -1;
	if (cg->mode == CGROUP_V2) {
		/* nsjail makes its own group inside this one and needs the controllers there. */
		run_path(cg->mem, name, "cgroup.subtree_control", path, sizeof(path));
		return sysfile_write(path, "+memory +pids");
	}
	if (run_path(cg->pids, name, NULL, path, sizeof(path)) < 0 || make_dir(path) < 0)
		return -1;
	return 0;
}

static int set_in(const char *group, const char *name, const char *file, unsigned long long v)
{
	char path[PATH_MAX + 128], text[32];

	snprintf(text, sizeof(text), "%llu", v);
	if (run_path(group, name, file, path, sizeof(path)) < 0)
		return -1;
	return sysfile_write(path, text);
}

int cgroup_run_adopt(const struct cgroup *cg, const char *name, pid_t pid, unsigned long long mem,
                     unsigned long procs)
{
	char path[PATH_MAX + 128];
	int rc = 0;

	if (cg->mode == CGROUP_NONE)
		return 0;
	if (run_path(cg->mem, name, NULL, path, sizeof(path)) < 0 || make_dir(path) < 0)
		return -1;
	if (cg->mode == CGROUP_V2) {
		rc |= set_in(cg->mem, name, "memory.max", mem);
		/* Absent where the kernel keeps no swap accounting: nothing to cap then. */
		if (set_in(cg->mem, name, "memory.swap.max", 0) < 0 && errno != ENOENT)
			rc = -1;
		rc |= set_in(cg->mem, name, "pids.max", procs);
		return rc | cgroup_run_join(cg, name, pid);
	}
	if (run_path(cg->pids, name, NULL, path, sizeof(path)) < 0 || make_dir(path) < 0)
		return -1;
	rc |= set_in(cg->mem, name, "memory.limit_in_bytes", mem);
	if (cg->memsw)
		rc |= set_in(cg->mem, name, "memory.memsw.limit_in_bytes", mem);
	rc |= set_in(cg->pids, name, "pids.max", procs);
	return rc | cgroup_run_join(cg, name, pid);
}

int cgroup_run_join(const struct cgroup *cg, const char *name, pid_t pid)
{
	if (cg->mode == CGROUP_NONE)
		return 0;
	if (cg->mode == CGROUP_V2)
		return set_in(cg->mem, name, "cgroup.procs", (unsigned long long)pid);
	return set_in(cg->mem, name, "cgroup.procs", (unsigned long long)pid) |
	       set_in(cg->pids, name, "cgroup.procs", (unsigned long long)pid);
}

bool cgroup_run_hit_memory(const struct cgroup *cg, const char *name, unsigned long long limit)
{
	char path[PATH_MAX + 128], text[1024];
	const char *key = cg->mode == CGROUP_V2 ? "memory.events"
	                  : cg->memsw           ? "memory.memsw.max_usage_in_bytes"
	                                        : "memory.max_usage_in_bytes";
	const char *oom;

	if (cg->mode == CGROUP_NONE || run_path(cg->mem, name, key, path, sizeof(path)) < 0 ||
	    sysfile_read(AT_FDCWD, path, text, sizeof(text)) < 0)
		return false;
	if (cg->mode == CGROUP_V1) /* within a page or so of the limit */
		return strtoull(text, NULL, 10) + (1ULL << 20) >= limit;
	oom = strstr(text, "oom_kill ");
	return oom && strtoull(oom + 9, NULL, 10) > 0;
}

void cgroup_run_remove(const struct cgroup *cg, const char *name)
{
	char path[PATH_MAX + 128];

	if (cg->mode == CGROUP_NONE)
		return;
	if (run_path(cg->mem, name, NULL, path, sizeof(path)) == 0)
		rmdir(path);
	if (cg->mode == CGROUP_V1 && run_path(cg->pids, name, NULL, path, sizeof(path)) == 0)
		rmdir(path);
}
