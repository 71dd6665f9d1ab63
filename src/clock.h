/* clock: the server's one clock. Every deadline and duration is on CLOCK_MONOTONIC, so a change
 * of the wall clock moves none of them; condition variables that wait for a deadline are made
 * with clock_cond_init so they count on the same clock. */
#ifndef PYEXEC_CLOCK_H
#define PYEXEC_CLOCK_H

#include <pthread.h>
#include <time.h>

/* Monotonic seconds. */
double clock_now(void);
/* The monotonic time `seconds` from now, for pthread_cond_timedwait on a clock_cond_init cv. */
struct timespec clock_after(double seconds);
/* Milliseconds from now until the monotonic time `at`, rounded up, for poll and epoll_wait: 0
 * once it has passed, -1 (no limit) when at is negative. */
int clock_ms_until(double at);
/* A condition variable whose timed waits use the monotonic clock. */
int clock_cond_init(pthread_cond_t *cv);

#endif
