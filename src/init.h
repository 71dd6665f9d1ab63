/* init: what the server does about its environment and about being PID 1.
 *
 * The environment a container starts with may hold the operator's secrets, and some platforms
 * (gVisor, so Cloud Run's first generation) let any uid read any process's
 * /proc/<pid>/environ: in the restricted tier a script could. So every process of ours that
 * received it overwrites it as soon as it has read its settings. */
#ifndef PYEXEC_INIT_H
#define PYEXEC_INIT_H

/* As PID 1 (a container's entrypoint), first takes the write bit for others off the
 * container's world-writable directories (/tmp, /var/tmp, /dev/shm, ...: the restricted tier's
 * runs write only their own directories), then splits in two: the parent stays PID 1, forgets the
 * environment, reaps every orphan, passes SIGTERM, SIGINT and SIGHUP on, and exits with the
 * server's status; it never returns. The child, and a server that is not PID 1, returns at
 * once. Call before any thread exists. */
void init_split_if_pid1(void);

/* Overwrites the strings of the initial environment (what /proc/<pid>/environ shows) and
 * empties environ. Call once the settings are read. */
void init_forget_environment(void);

#endif
