/* config: every setting of the service, from PYEXEC_* environment variables (and PORT) with a
 * matching command-line flag that wins over the environment. */
#ifndef PYEXEC_CONFIG_H
#define PYEXEC_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include "err.h"

struct config {
	char host[256];
	unsigned long port;
	char python[PATH_MAX];            /* interpreter used inside the jail */
	char nsjail[PATH_MAX];            /* resolved on PATH when not given */
	char runner[PATH_MAX];            /* runner.py bound read-only into the jail */
	char init[PATH_MAX];              /* pyexec-init, the zygote's runs' PID 1 */
	char jail_config[PATH_MAX];       /* nsjail protobuf-text config */
	char seccomp[PATH_MAX];           /* kafel policy for the jail */
	char restricted_config[PATH_MAX]; /* nsjail config of the restricted tier */
	char isolation[16];               /* full, restricted or auto */
	unsigned long run_uid;            /* first of the restricted tier's run uids */
	unsigned long run_uids;           /* how many */
	char work_dir[PATH_MAX];          /* holds the restricted tier's working directories */
	double timeout;                   /* default wall-clock seconds per run */
	double max_timeout;               /* largest timeout a request may ask for */
	double start_timeout;             /* seconds a jail may take to become ready */
	unsigned long memory_mb;
	unsigned long max_procs;
	unsigned long max_files;
	unsigned long tmp_mb;
	unsigned long tmp_files; /* inodes of a run's /tmp */
	unsigned long stdout_max;
	unsigned long result_max;
	unsigned long body_max;
	unsigned long input_files;  /* files a request may send */
	unsigned long input_bytes;  /* their decoded bytes and stdin's, together */
	unsigned long output_files; /* files a run may leave under output/ */
	unsigned long output_bytes; /* their bytes together */
	unsigned long path_max;     /* bytes of a file's path, in or out */
	unsigned long path_depth;   /* its components */
	unsigned long max_connections;
	unsigned long concurrency;        /* runs at once; 0 at load means the number of CPUs */
	unsigned long queue;              /* requests waiting for a slot before 429 */
	unsigned long pool;               /* ready jails to keep; 0 turns the pool off */
	char preload[512];                /* modules a ready jail imports before its script */
	bool zygote;                      /* tier full: runs are forks of one warm zygote */
	double pool_max_age;              /* seconds a ready jail may wait before it is replaced */
	double grace;                     /* seconds in-flight runs get after SIGTERM */
	unsigned long connection_timeout; /* seconds an idle or stalled connection is kept */
	bool playground;                  /* serve the playground page at / */
	bool health_details;              /* /healthz shows the host's kernel and protections */
};

/* Returns 0 when the service should run, 1 when --help was printed, -1 on a bad setting. */
int config_load(struct config *c, int argc, char **argv, struct err *e);

#endif
