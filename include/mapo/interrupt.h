/* interrupt.h -- stopping a long job cleanly on SIGINT / SIGTERM.
 * While armed, the first SIGINT or SIGTERM only records itself (and says so on stderr); the job
 * polls mapo_interrupted() at a safe point (the trainer: a step boundary), writes what it must
 * and returns. A second signal kills the process as usual. */
#ifndef MAPO_INTERRUPT_H
#define MAPO_INTERRUPT_H

/* Install the handlers (arm) / restore the previous ones (disarm). */
void mapo_interrupt_arm(void);
void mapo_interrupt_disarm(void);
/* The signal received while armed (SIGINT or SIGTERM), or 0. Stays set after disarm, so the
   command can exit with 128 + signal as shells expect. */
int mapo_interrupted(void);

#endif
