/* A zombie of a process tree comes back with its own credentials (issue 12): the restorer makes it
 * as root, and a zombie that had become another user (an nginx worker that ended, a child that
 * dropped to nobody and exited) must be that user again before it ends, so that its parent's
 * waitid() reports its uid (si_uid) and /proc shows its ids as before.
 *
 * The daemon passes them after the wait status: --zombie PID:PPID:PGID:SID:STATUS:R,E,S,FS:R,E,S,FS:G,...
 * (uids, gids, supplementary groups, from the zombie's /proc/PID/status at the checkpoint). */
#include "tree-zombie.h"

#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <unistd.h>

#define MAX_ZOMBIES 1024
#define MAX_GROUPS 256

struct zcreds { int pid; unsigned uid[4], gid[4]; size_t ngroups; gid_t groups[MAX_GROUPS]; };
static struct zcreds zc[MAX_ZOMBIES];
static size_t nzc;

/* n comma-separated unsigned numbers from *s (up to the next ':' or the end); -1 if malformed. */
static int numbers(const char **s, unsigned *out, size_t max, size_t *got) {
  size_t n = 0;
  const char *p = *s;
  if (*p == ':' || *p == 0) { *got = 0; return 0; }
  for (;;) {
    if (*p < '0' || *p > '9' || n == max) return -1;
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (errno || v > 0xffffffffUL) return -1;
    out[n++] = (unsigned)v;
    p = end;
    if (*p == ',') { p++; continue; }
    if (*p == ':' || *p == 0) break;
    return -1;
  }
  *s = p;
  *got = n;
  return 0;
}

int tg_zombie_note_creds(int pid, const char *s) {
  if (nzc == MAX_ZOMBIES) return -1;
  struct zcreds *z = &zc[nzc];
  size_t n;
  if (numbers(&s, z->uid, 4, &n) != 0 || n != 4 || *s++ != ':') return -1;
  if (numbers(&s, z->gid, 4, &n) != 0 || n != 4) return -1;
  z->ngroups = 0;
  if (*s == ':') {
    s++;
    unsigned g[MAX_GROUPS];
    if (numbers(&s, g, MAX_GROUPS, &z->ngroups) != 0 || *s) return -1;
    for (size_t i = 0; i < z->ngroups; i++) z->groups[i] = (gid_t)g[i];
  } else if (*s) {
    return -1;
  }
  z->pid = pid;
  nzc++;
  return 0;
}

int tg_zombie_take_creds(int pid, char *err, size_t errlen) {
  struct zcreds *z = NULL;
  for (size_t i = 0; i < nzc; i++) if (zc[i].pid == pid) z = &zc[i];
  if (!z) return 0; /* an older daemon's checkpoint: the restorer's own */
  /* groups and gids first (setresuid to a user drops the right to change them) */
  if (setgroups(z->ngroups, z->groups) != 0) { snprintf(err, errlen, "setgroups (%zu groups): %s", z->ngroups, strerror(errno)); return -1; }
  if (setresgid(z->gid[0], z->gid[1], z->gid[2]) != 0) {
    snprintf(err, errlen, "cannot take back its gids %u/%u/%u: %s", z->gid[0], z->gid[1], z->gid[2], strerror(errno));
    return -1;
  }
  setfsgid(z->gid[3]);
  if ((unsigned)setfsgid((gid_t)-1) != z->gid[3]) { snprintf(err, errlen, "cannot take back its file system gid %u", z->gid[3]); return -1; }
  if (setresuid(z->uid[0], z->uid[1], z->uid[2]) != 0) {
    snprintf(err, errlen, "cannot take back its uids %u/%u/%u: %s", z->uid[0], z->uid[1], z->uid[2], strerror(errno));
    return -1;
  }
  setfsuid(z->uid[3]);
  if ((unsigned)setfsuid((uid_t)-1) != z->uid[3]) { snprintf(err, errlen, "cannot take back its file system uid %u", z->uid[3]); return -1; }
  return 0;
}
