/* Processes still running in the namespace when the application process has ended. A daemonizing
 * app (fork, the parent exits 0, e.g. `redis-server --daemonize yes`) leaves its daemon re-parented
 * to our init: the init then follows the oldest of them as the app's main process
 * (tg_oldest_leftover). After any other end the namespace ends with the app, and the status file
 * names what was left (tg_describe_leftovers), for `tardigrade status` to say so. */
#include "launcher.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long read_file(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = 0;
  return (long)n;
}

struct leftover {
  int host_pid;
  int nspid;                  /* the pid as the app sees it: the last NSpid number */
  unsigned long long start;   /* start time (clock ticks after boot) */
  char cmd[200];
};

/* Calls fn for each live child of this process (the init) other than zombies and the agent's
 * snapshot writer; stops early when fn returns nonzero. Returns how many were seen. */
static int each_leftover(int (*fn)(const struct leftover *, void *), void *ctx) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return 0;
  int count = 0, stop = 0;
  struct dirent *e;
  while (!stop && (e = readdir(d)) != NULL) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300], list[4096];
    snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
    if (read_file(path, list, sizeof list) <= 0) continue;
    char *save = NULL;
    for (char *w = strtok_r(list, " \n", &save); w && !stop; w = strtok_r(NULL, " \n", &save)) {
      char stat[512];
      struct leftover l;
      memset(&l, 0, sizeof l);
      l.host_pid = atoi(w);
      snprintf(path, sizeof path, "/proc/%s/stat", w);
      if (read_file(path, stat, sizeof stat) <= 0) continue;
      char *rp = strrchr(stat, ')');
      if (!rp || rp[1] != ' ') continue;
      if (rp[2] == 'Z' || rp[2] == 'X') continue; /* exited: reaped by the init */
      if (strstr(stat, "(tg-snapshot) ")) continue; /* the agent's snapshot writer (native/agent/agent.h) */
      /* field 22 (starttime): the 20th after the state field */
      char *q = rp + 2;
      for (int f = 0; f < 19 && q; f++) { q = strchr(q, ' '); if (q) q++; }
      if (q) l.start = strtoull(q, NULL, 10);
      snprintf(path, sizeof path, "/proc/%s/cmdline", w);
      long n = read_file(path, l.cmd, sizeof l.cmd);
      for (long i = 0; i < n; i++) if (l.cmd[i] == 0) l.cmd[i] = ' ';
      while (n > 0 && l.cmd[n - 1] == ' ') l.cmd[--n] = 0;
      if (n <= 0) snprintf(l.cmd, sizeof l.cmd, "?");
      char status[2048];
      snprintf(path, sizeof path, "/proc/%s/status", w);
      if (read_file(path, status, sizeof status) > 0) {
        char *ns = strstr(status, "NSpid:");
        char *nl = ns ? strchr(ns, '\n') : NULL;
        if (nl) *nl = 0;
        for (char *p = ns ? ns + 6 : NULL; p && *p;) {
          while (*p == ' ' || *p == '\t') p++;
          int v = 0, any = 0;
          while (*p >= '0' && *p <= '9') { v = v * 10 + (*p++ - '0'); any = 1; }
          if (!any) break;
          l.nspid = v;
        }
      }
      count++;
      stop = fn(&l, ctx);
    }
  }
  closedir(d);
  return count;
}

struct describe_ctx {
  char *out;
  size_t cap, o;
  int n;
};

static int describe_one(const struct leftover *l, void *ctx) {
  struct describe_ctx *c = ctx;
  c->n++;
  if (c->n <= 8 && c->o < c->cap) c->o += (size_t)snprintf(c->out + c->o, c->cap - c->o, "%spid %d (%s)", c->n > 1 ? ", " : "", l->nspid, l->cmd);
  return 0;
}

int tg_describe_leftovers(char *out, size_t cap) {
  out[0] = 0;
  struct describe_ctx c = {out, cap, 0, 0};
  int count = each_leftover(describe_one, &c);
  if (count > 8 && c.o < cap) snprintf(out + c.o, cap - c.o, ", ...");
  return count;
}

static int pick_oldest(const struct leftover *l, void *ctx) {
  struct leftover *best = ctx;
  if (l->nspid > 0 && (best->host_pid == 0 || l->start < best->start || (l->start == best->start && l->nspid < best->nspid))) *best = *l;
  return 0;
}

int tg_oldest_leftover(int *nspid, char *cmd, size_t cap) {
  struct leftover best;
  memset(&best, 0, sizeof best);
  each_leftover(pick_oldest, &best);
  if (best.host_pid <= 0) return 0;
  *nspid = best.nspid;
  snprintf(cmd, cap, "%s", best.cmd);
  return best.host_pid;
}
