/* landlock: confines a restricted-tier run's writes to its own directory with the kernel's
 * Landlock LSM, where the host has it. Without namespaces a run shares the host's file system:
 * Landlock keeps it from writing /tmp, /dev/shm or any other world-writable place, and from its
 * own /proc files (oom_score_adj), and, from ABI 6 on, from the abstract sockets and the
 * signals of processes outside its own run. */
#ifndef PYEXEC_LANDLOCK_H
#define PYEXEC_LANDLOCK_H

/* The kernel's Landlock ABI version, 0 when it has none (gVisor, older kernels, disabled). */
int landlock_abi(void);

/* Confines the calling process and all it starts: writes only beneath dir (and to /dev/null,
 * /dev/zero, /dev/full, terminals), no TCP, and with abi >= 6 no abstract socket or signal
 * outside. Needs no_new_privs. Only raw system calls: safe between fork and exec. Returns 0,
 * or -1 with errno set. */
int landlock_confine(const char *dir, int abi);

#endif
