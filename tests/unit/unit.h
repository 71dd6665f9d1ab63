/* The unit test groups that live in files of their own; test_main.c runs them all. */
#ifndef PYEXEC_UNIT_H
#define PYEXEC_UNIT_H

int unit_rmtree(void);
int unit_files(void);
int unit_sweep(void);
int unit_admit(void);
int unit_supervisor(void);

#endif
