/* The process's credentials (CREDS record, docs/format.md): user and group ids (real, effective,
 * saved, filesystem), supplementary groups, capability sets and securebits. The kernel keeps them
 * per thread; glibc's set*id calls change every thread together, so a process whose threads
 * differ (a raw syscall in one thread) is refused by name: one record could not give it back.
 * The restorer sets them last (native/restore/creds.c). */
#include "agent.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "../common/agentdir.h"
#include "../common/readfile.h"
#include "../common/sys.h"

static struct tg_rec_creds cap_creds;
static int cap_ok;

/* The credential lines of a status file ("Uid:", "Gid:", "Groups:", "Cap*:"), concatenated, for
 * comparing threads. */
static size_t cred_lines(const char *status, char *out, size_t cap) {
  size_t n = 0;
  for (const char *l = status; l && *l;) {
    const char *e = strchr(l, '\n');
    size_t len = e ? (size_t)(e - l) : strlen(l);
    if (!strncmp(l, "Uid:", 4) || !strncmp(l, "Gid:", 4) || !strncmp(l, "Groups:", 7) || !strncmp(l, "Cap", 3)) {
      if (n + len + 1 < cap) { memcpy(out + n, l, len); n += len; out[n++] = '\n'; }
    }
    l = e ? e + 1 : NULL;
  }
  out[n < cap ? n : cap - 1] = 0;
  return n;
}

static int parse_ids(const char *status, const char *key, uint32_t out[4]) {
  const char *p = strstr(status, key);
  if (!p) return -1;
  p += strlen(key);
  for (int i = 0; i < 4; i++) {
    char *e;
    unsigned long v = strtoul(p, &e, 10);
    if (e == p) return -1;
    out[i] = (uint32_t)v;
    p = e;
  }
  return 0;
}

static int parse_creds(const char *status, struct tg_rec_creds *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  if (parse_ids(status, "\nUid:", c->uid) != 0 || parse_ids(status, "\nGid:", c->gid) != 0) {
    snprintf(err, errlen, "cannot read this process's user and group ids from /proc/self/status");
    return -1;
  }
  const char *g = strstr(status, "\nGroups:");
  if (g) {
    g += 8;
    const char *e = strchr(g, '\n');
    if (!e) e = g + strlen(g);
    while (g < e) {
      char *end;
      unsigned long v = strtoul(g, &end, 10);
      if (end == g || end > e) break;
      if (c->ngroups >= TG_MAX_GROUPS) {
        snprintf(err, errlen, "this process has more than %d supplementary groups, which a checkpoint cannot record", TG_MAX_GROUPS);
        return -1;
      }
      c->groups[c->ngroups++] = (uint32_t)v;
      g = end;
    }
  }
  struct { const char *key; uint64_t *v; } caps[] = {{"CapInh", &c->cap_inh}, {"CapPrm", &c->cap_prm}, {"CapEff", &c->cap_eff},
                                                     {"CapBnd", &c->cap_bnd}, {"CapAmb", &c->cap_amb}};
  for (size_t i = 0; i < sizeof caps / sizeof *caps; i++)
    if (tg_status_field_u64(status, caps[i].key, caps[i].v, 1) != 0) {
      snprintf(err, errlen, "cannot read %s from /proc/self/status", caps[i].key);
      return -1;
    }
  long sb = tg_sys1(SYS_prctl, PR_GET_SECUREBITS);
  if (sb < 0) { snprintf(err, errlen, "prctl(PR_GET_SECUREBITS): %s", strerror((int)-sb)); return -1; }
  c->securebits = (uint32_t)sb;
  return 0;
}

/* Before the threads are stopped (in the manager): every application thread has the same
 * credentials. The manager's own are left out: capset, the bounding set, ambient capabilities and
 * PR_SET_KEEPCAPS are per thread, and glibc does not carry them to the other threads. */
TG_HIDDEN int tg_precheck_creds(char *err, size_t errlen) {
  char self[64];
  ssize_t sl = readlink("/proc/thread-self", self, sizeof self - 1);
  const char *mine = "";
  if (sl > 0) {
    self[sl] = 0;
    const char *t = strrchr(self, '/');
    mine = t ? t + 1 : "";
  }
  cap_ok = 0; /* this checkpoint's, from the park */
  DIR *d = opendir("/proc/self/task");
  if (!d) { snprintf(err, errlen, "cannot list threads: /proc/self/task: %s", strerror(errno)); return -1; }
  char status[4096], first[1024], lines[1024];
  int firsttid = -1, rc = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] < '0' || de->d_name[0] > '9' || !strcmp(de->d_name, mine)) continue;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%s/status", de->d_name);
    if (tg_read_file(path, status, sizeof status) <= 0) continue; /* a thread that just ended */
    if (firsttid < 0) {
      cred_lines(status, first, sizeof first);
      firsttid = atoi(de->d_name);
      continue;
    }
    cred_lines(status, lines, sizeof lines);
    if (strcmp(lines, first) != 0) {
      snprintf(err, errlen,
               "threads %d and %s of this process run with different credentials (user/group ids, groups or capabilities: "
               "one of them changed its own with a raw system call); a checkpoint records one set per process",
               firsttid, de->d_name);
      rc = -1;
      break;
    }
  }
  closedir(d);
  return rc;
}

/* In the main thread's park handler (its own credentials; securebits are per thread). */
TG_HIDDEN void tg_capture_creds(void) {
  char status[4096], err[200];
  cap_ok = tg_read_file("/proc/thread-self/status", status, sizeof status) > 0 && parse_creds(status, &cap_creds, err, sizeof err) == 0;
}

/* In the manager's park handler, every thread parked: a process whose main thread has ended
 * (pthread_exit) has none of its own; the thread group's status (its leader's) then. */
TG_HIDDEN void tg_capture_creds_fallback(void) {
  char status[4096], err[200];
  if (!cap_ok) cap_ok = tg_read_file("/proc/self/status", status, sizeof status) > 0 && parse_creds(status, &cap_creds, err, sizeof err) == 0;
}

/* The record for the snapshot child, or NULL (then the image has none: restored as the restorer). */
TG_HIDDEN const struct tg_rec_creds *tg_captured_creds(void) { return cap_ok ? &cap_creds : NULL; }

/* ---- a process that gives up root for another user ----
 * Before glibc's set*uid runs, while still root, the new user is let into the directory of the
 * app's agent sockets (native/common/agentdir.c): the process's manager, and the agent of a
 * program it execs next, must listen there (and append to the files journal) as that user. */
static void let_in(uid_t u) {
  if (u == (uid_t)-1 || u == 0 || !tg.active || !tg.sock_base[0] || geteuid() != 0) return;
  char err[512];
  if (tg_grant_agent_dir(tg.sock_base, (uint32_t)u, err, sizeof err) != 0)
    fprintf(stderr, "tardigrade agent: pid %d: %s (its checkpoints will fail to reach it)\n", getpid(), err);
  Dl_info self;
  if (dladdr((void *)let_in, &self) && self.dli_fname && self.dli_fname[0] == '/' && tg_grant_read(self.dli_fname, (uint32_t)u, err, sizeof err) != 0)
    fprintf(stderr, "tardigrade agent: pid %d: %s (a program it execs as uid %u would run without the agent)\n", getpid(), err, (unsigned)u);
}

typedef int (*set1_fn)(uid_t);
typedef int (*set2_fn)(uid_t, uid_t);
typedef int (*set3_fn)(uid_t, uid_t, uid_t);

__attribute__((visibility("default"))) int setuid(uid_t u) {
  static set1_fn real;
  if (!real) real = (set1_fn)dlsym(RTLD_NEXT, "setuid");
  let_in(u);
  return real(u);
}

__attribute__((visibility("default"))) int seteuid(uid_t u) {
  static set1_fn real;
  if (!real) real = (set1_fn)dlsym(RTLD_NEXT, "seteuid");
  let_in(u);
  return real(u);
}

__attribute__((visibility("default"))) int setreuid(uid_t r, uid_t e) {
  static set2_fn real;
  if (!real) real = (set2_fn)dlsym(RTLD_NEXT, "setreuid");
  let_in(r);
  let_in(e);
  return real(r, e);
}

__attribute__((visibility("default"))) int setresuid(uid_t r, uid_t e, uid_t s) {
  static set3_fn real;
  if (!real) real = (set3_fn)dlsym(RTLD_NEXT, "setresuid");
  let_in(r);
  let_in(e);
  let_in(s);
  return real(r, e, s);
}
