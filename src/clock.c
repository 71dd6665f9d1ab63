#include "clock.h"

#include <limits.h>
#include <math.h>

double clock_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct timespec clock_after(double seconds)
{
	struct timespec ts;
	double whole;
	double frac = modf(seconds > 0 ? seconds : 0, &whole);

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)whole;
	ts.tv_nsec += (long)(frac * 1e9);
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	return ts;
}

int clock_ms_until(double at)
{
	double left;

	if (at < 0)
		return -1;
	left = at - clock_now();
	if (left <= 0)
		return 0;
	return left * 1000 >= INT_MAX ? INT_MAX : (int)ceil(left * 1000);
}

int clock_cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	int rc;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	rc = pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
	return rc;
}
