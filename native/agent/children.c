/* Child processes: process trees are not captured yet, so a checkpoint refuses while the
 * application process has any child (a zombie waiting to be reaped included). Runs in the
 * manager's park handler while every application thread is parked, so no thread can fork
 * between this check and the snapshot. Syscalls and snprintf only (no malloc). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/sys.h"

#define MAX_LISTED 16

/* Host pids of the children of every thread of host process hpid (/proc/H/task/T/children). */
static int children_of(int hpid, int *out, int cap) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", hpid);
  int dfd = (int)tg_sys3(SYS_open, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) return 0; /* gone meanwhile */
  int n = 0;
  char dents[4096], list[1024];
  for (;;) {
    long got = tg_sys3(SYS_getdents64, dfd, dents, sizeof dents);
    if (got <= 0) break;
    for (long off = 0; off < got;) {
      struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(dents + off);
      off += d->reclen;
      if (d->name[0] < '0' || d->name[0] > '9') continue;
      char cpath[96];
      snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", hpid, d->name);
      long len = tg_read_file(cpath, list, sizeof list);
      for (char *p = list; len > 0 && p < list + len;) {
        if (*p < '0' || *p > '9') { p++; continue; }
        int c = 0;
        while (p < list + len && *p >= '0' && *p <= '9') c = c * 10 + (*p++ - '0');
        if (n < cap) out[n++] = c;
      }
    }
  }
  tg_sys1(SYS_close, dfd);
  return n;
}

/* "pid 12 (sh -c sleep 6; exit 3)" or "pid 13 (sleep, a zombie not yet reaped)": the pid as the app
 * sees it (last NSpid), its command line (its name for a zombie, whose command line is gone). */
static void describe(int hpid, char *out, size_t cap) {
  char path[64], buf[2048];
  int nspid = hpid;
  snprintf(path, sizeof path, "/proc/%d/status", hpid);
  long n = tg_read_file(path, buf, sizeof buf - 1);
  const char *ns = n > 0 ? strstr(buf, "NSpid:") : NULL;
  if (ns) {
    for (const char *q = ns + 6; *q && *q != '\n';) {
      while (*q == ' ' || *q == '\t') q++;
      if (*q < '0' || *q > '9') break;
      int v = 0;
      while (*q >= '0' && *q <= '9') v = v * 10 + (*q++ - '0');
      nspid = v;
    }
  }
  int zombie = 0;
  snprintf(path, sizeof path, "/proc/%d/stat", hpid);
  n = tg_read_file(path, buf, sizeof buf - 1);
  if (n > 0) {
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    zombie = rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
  }
  char cmd[120] = {0};
  snprintf(path, sizeof path, "/proc/%d/cmdline", hpid);
  n = zombie ? 0 : tg_read_file(path, cmd, sizeof cmd - 1);
  if (n > 0) {
    cmd[n] = 0;
    for (long i = 0; i < n; i++) if (cmd[i] == 0) cmd[i] = ' ';
    while (n > 0 && cmd[n - 1] == ' ') cmd[--n] = 0;
  } else {
    snprintf(path, sizeof path, "/proc/%d/comm", hpid);
    n = tg_read_file(path, cmd, sizeof cmd - 1);
    cmd[n > 0 ? n : 0] = 0;
    char *nl = strchr(cmd, '\n');
    if (nl) *nl = 0;
  }
  snprintf(out, cap, "pid %d (%s%s)", nspid, cmd[0] ? cmd : "?", zombie ? ", a zombie not yet reaped" : "");
}

TG_HIDDEN int tg_check_no_children(char *err, size_t errlen) {
  int self = (int)tg_sys0(SYS_getpid);
  char path[64], status[2048];
  /* our host pid: /proc/self/status's first NSpid number */
  snprintf(path, sizeof path, "/proc/self/status");
  long n = tg_read_file(path, status, sizeof status - 1);
  if (n > 0) {
    status[n] = 0;
    const char *ns = strstr(status, "NSpid:");
    if (ns) self = atoi(ns + 6);
  }
  int pids[MAX_LISTED * 4];
  int total = children_of(self, pids, MAX_LISTED * 4);
  /* grandchildren too (breadth first, as far as the list holds) */
  for (int i = 0; i < total && total < MAX_LISTED * 4; i++) total += children_of(pids[i], pids + total, MAX_LISTED * 4 - total);
  if (total == 0) return 0;
  size_t o = (size_t)snprintf(err, errlen, "the app has %d other process%s: ", total, total == 1 ? "" : "es");
  for (int i = 0; i < total && i < MAX_LISTED && o < errlen; i++) {
    char one[200];
    describe(pids[i], one, sizeof one);
    o += (size_t)snprintf(err + o, errlen - o, "%s%s", i ? ", " : "", one);
  }
  if (o < errlen && total > MAX_LISTED) o += (size_t)snprintf(err + o, errlen - o, ", ...");
  if (o < errlen) snprintf(err + o, errlen - o, "; process trees are not supported yet");
  return -1;
}
