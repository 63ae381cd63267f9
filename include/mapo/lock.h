/* lock.h -- one live run per output folder.
 * A run holds an advisory lock (flock) on "<dir>/.mapo.lock" for its whole life; the file also
 * records the holder's pid and command line so a refused second run can name it. The kernel
 * drops the lock when the holder exits or is killed, so a stale file never blocks a resume. */
#ifndef MAPO_LOCK_H
#define MAPO_LOCK_H

/* Records the command line that lock files name (call once from main). */
void mapo_lock_set_command(int argc, char **argv);
/* Locks folder dir (created if missing) for this process until it exits. A second lock of the
   same folder by this process is a no-op. -1 with one message naming the other process when a
   live run holds it, or when the folder cannot be created or locked. */
int mapo_lock_dir(const char *dir);
/* Locks the folder that holds file path (its parent; "." when it has none). */
int mapo_lock_parent(const char *path);

#endif
