/* lock.c -- see lock.h. */
#include "mapo/lock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"

static char g_cmd[512];
/* folders this process holds (by device and inode, so two spellings of one folder match) */
enum { MAX_HELD = 8 };
static struct { dev_t dev; ino_t ino; } g_held[MAX_HELD];
static int g_n_held;

void mapo_lock_set_command(int argc, char **argv) {
    size_t k = 0;
    g_cmd[0] = 0;
    for (int i = 0; i < argc && k + 2 < sizeof g_cmd; i++) {
        int n = snprintf(g_cmd + k, sizeof g_cmd - k, "%s%s", i ? " " : "", argv[i]);
        if (n < 0) break;
        k += (size_t)n;
    }
    if (k >= sizeof g_cmd) strcpy(g_cmd + sizeof g_cmd - 4, "...");
}

/* The holder's record, first line only, without its newline ("" when unreadable). */
static void read_holder(int fd, char *buf, size_t n) {
    ssize_t r = pread(fd, buf, n - 1, 0);
    buf[r > 0 ? r : 0] = 0;
    buf[strcspn(buf, "\n")] = 0;
}

int mapo_lock_dir(const char *dir) {
    if (mapo_mkdir_p(dir)) return -1;
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return mapo_error("%s: not a folder", dir);
    for (int i = 0; i < g_n_held; i++)
        if (g_held[i].dev == st.st_dev && g_held[i].ino == st.st_ino) return 0;
    if (g_n_held == MAX_HELD) return mapo_error("%s: too many folders locked", dir);
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s/.mapo.lock", dir) >= (int)sizeof p)
        return mapo_error("%s: path too long", dir);
    /* never truncated before the lock is ours: the holder's record stays readable */
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return mapo_error("%s: cannot create the lock file: %s", p, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        char who[600];
        read_holder(fd, who, sizeof who);
        close(fd);
        if (e == EWOULDBLOCK)
            return mapo_error("%s is in use by another mapo run (%s); wait for it to finish or "
                              "stop it, or choose another folder",
                              dir, who[0] ? who : "holder unknown");
        return mapo_error("%s: cannot lock: %s", p, strerror(e));
    }
    char rec[700];
    int n = snprintf(rec, sizeof rec, "pid %ld: %s\n", (long)getpid(), g_cmd[0] ? g_cmd : "mapo");
    if (n > (int)sizeof rec - 1) n = (int)sizeof rec - 1;
    /* the record is informative only: a full disk must not stop the run here */
    if (ftruncate(fd, 0) == 0 && pwrite(fd, rec, (size_t)n, 0) != n) { /* ignored */ }
    g_held[g_n_held].dev = st.st_dev;
    g_held[g_n_held].ino = st.st_ino;
    g_n_held++;
    return 0; /* fd stays open (O_CLOEXEC): the lock lasts until this process ends */
}

int mapo_lock_parent(const char *path) {
    char d[PATH_MAX];
    if (snprintf(d, sizeof d, "%s", path) >= (int)sizeof d)
        return mapo_error("%s: path too long", path);
    char *s = strrchr(d, '/');
    if (!s) return mapo_lock_dir(".");
    if (s == d) s[1] = 0;
    else *s = 0;
    return mapo_lock_dir(d);
}
