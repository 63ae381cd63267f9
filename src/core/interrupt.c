/* interrupt.c -- see interrupt.h. */
#include "mapo/interrupt.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_sig;
static struct sigaction g_old_int, g_old_term;
static int g_armed;

static void on_signal(int sig) {
    g_sig = sig;
    static const char msg[] = "\nmapo: stopping at the end of this step (a checkpoint is "
                              "written); signal again to kill\n";
    ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)r;
}

void mapo_interrupt_arm(void) {
    if (g_armed) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART; /* the second signal gets the default action */
    sigaction(SIGINT, &sa, &g_old_int);
    sigaction(SIGTERM, &sa, &g_old_term);
    g_armed = 1;
}

void mapo_interrupt_disarm(void) {
    if (!g_armed) return;
    sigaction(SIGINT, &g_old_int, NULL);
    sigaction(SIGTERM, &g_old_term, NULL);
    g_armed = 0;
}

int mapo_interrupted(void) { return (int)g_sig; }
