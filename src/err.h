/* err: the one error type. A function returns 0 on success or -1 after filling a caller-owned
 * struct err with the HTTP status, the contract's error code and one sentence for the user. */
#ifndef PYEXEC_ERR_H
#define PYEXEC_ERR_H

struct err {
	int status;       /* HTTP status the caller should answer with */
	const char *code; /* contract error code, a static string */
	char message[512];
};

/* Fills e and returns -1, so callers can write `return err_set(...)`. */
int err_set(struct err *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
