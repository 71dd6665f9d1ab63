/* admit: admission control. `slots` runs at once, `queue` requests waiting behind them, and
 * beyond that a refusal the caller turns into 429. */
#ifndef PYEXEC_ADMIT_H
#define PYEXEC_ADMIT_H

struct admit;

enum admit_rc {
	ADMIT_OK,       /* a slot is yours: call admit_leave when done */
	ADMIT_BUSY,     /* every slot and queue place is taken */
	ADMIT_GONE,     /* the client hung up while queued */
	ADMIT_STOPPING, /* the server is shutting down */
};

struct admit *admit_new(unsigned slots, unsigned queue);
void admit_free(struct admit *a);
/* Waits for a slot while watching client_fd (-1: none) for a hang-up. *waited gets seconds. */
enum admit_rc admit_enter(struct admit *a, int client_fd, double *waited);
void admit_leave(struct admit *a);
/* Refuses every new and queued request from now on. */
void admit_stop(struct admit *a);
/* Blocks until no run holds a slot or `seconds` pass; returns the runs still going. */
unsigned admit_drain(struct admit *a, double seconds);
void admit_counts(struct admit *a, unsigned *running, unsigned *queued);

#endif
