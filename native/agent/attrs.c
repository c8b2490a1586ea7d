/* Process attributes that are neither memory, fds nor timers, captured with every thread parked and
 * given back by the restorer (native/restore/attrs.c): the parent-death signal, child-subreaper,
 * dumpable and no-new-privs flags (prctl), the personality, the timer slack and the main thread's
 * CPU affinity (ATTRS record, docs/format.md); and each thread's own nice value, scheduling policy,
 * timer slack and CPU affinity (THREAD_ATTRS records, given back by the restorer's blob). Read with every thread parked (the snapshot child
 * inherits neither pdeathsig nor subreaper), the per-thread ones by the main thread itself in its
 * park handler; the snapshot child writes the record.
 *
 * Seccomp filters are not restored yet: a process that installed one makes the checkpoint refuse
 * (a restore would run it without its sandbox). Filters it inherited from tardigrade itself (the
 * daemon running in a container with a seccomp profile) are the restorer's too: the launcher passes
 * their number in TARDIGRADE_SECCOMP_BASE. */
#include "agent.h"
#include "../common/sys.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct tg_rec_attrs cap_attrs;
static uint64_t seccomp_base;

TG_HIDDEN void tg_attrs_init(void) {
  const char *b = getenv("TARDIGRADE_SECCOMP_BASE");
  if (b && *b) { seccomp_base = strtoull(b, NULL, 10); return; }
  char status[4096];
  uint64_t n = 0;
  if (tg_read_file("/proc/self/status", status, sizeof status) > 0 && tg_status_field_u64(status, "Seccomp_filters", &n, 0) == 0)
    seccomp_base = n; /* (a program started with the agent but not by tardigrade's launcher) */
}

TG_HIDDEN int tg_precheck_attrs(char *err, size_t errlen) {
  char status[4096];
  if (tg_read_file("/proc/self/status", status, sizeof status) <= 0) return 0;
  uint64_t mode = 0, filters = 0;
  tg_status_field_u64(status, "Seccomp", &mode, 0);
  int counted = tg_status_field_u64(status, "Seccomp_filters", &filters, 0) == 0;
  if (mode == 0 || (counted && filters <= seccomp_base)) return 0;
  if (counted)
    snprintf(err, errlen,
             "this process installed a seccomp filter (%llu filter(s), %llu inherited from tardigrade): seccomp filters are not restored yet, so a restore would run it without its sandbox. Checkpoint it without the filter (or not at all)",
             (unsigned long long)filters, (unsigned long long)seccomp_base);
  else
    snprintf(err, errlen, "this process runs under seccomp (mode %llu): seccomp filters are not restored yet", (unsigned long long)mode);
  return -1;
}

/* One thread's own (nice, scheduling, timer slack and CPU affinity are per thread in Linux): called
 * by every thread in its park handler, so each reads its own; written as its THREAD_ATTRS record. */
TG_HIDDEN void tg_capture_own_thread_attrs(struct tg_rec_thread_attrs *t, int tid) {
  memset(t, 0, sizeof *t);
  t->tid = (uint32_t)tid;
  long prio = tg_sys2(SYS_getpriority, PRIO_PROCESS, 0); /* the calling thread's; the kernel returns 20 - nice */
  t->nice = prio < 0 ? 0 : (int32_t)(20 - prio);
  long pol = tg_sys1(SYS_sched_getscheduler, 0);
  struct sched_param sp = {0};
  t->sched_policy = pol < 0 ? 0 : (uint32_t)(pol & ~SCHED_RESET_ON_FORK);
  t->sched_flags = pol > 0 && (pol & SCHED_RESET_ON_FORK) ? 1 : 0;
  t->sched_priority = tg_sys2(SYS_sched_getparam, 0, &sp) == 0 ? (uint32_t)sp.sched_priority : 0;
  long slack = tg_sys1(SYS_prctl, PR_GET_TIMERSLACK);
  t->timerslack_ns = slack < 0 ? 0 : (uint64_t)slack;
  long n = tg_sys3(SYS_sched_getaffinity, 0, sizeof t->cpus, t->cpus);
  t->cpus_len = n > 0 ? (uint32_t)n : 0;
}

/* The process's attributes read by its main thread (the manager thread was made before the app's
 * main() set any): called by the main thread in its park handler after tg_capture_own_thread_attrs,
 * before the manager captures. */
TG_HIDDEN void tg_capture_thread_attrs(const struct tg_rec_thread_attrs *own) {
  struct tg_rec_attrs *a = &cap_attrs;
  int sig = 0;
  a->pdeathsig = tg_sys2(SYS_prctl, PR_GET_PDEATHSIG, &sig) == 0 ? (uint32_t)sig : 0;
  long nnp = tg_sys1(SYS_prctl, PR_GET_NO_NEW_PRIVS);
  a->no_new_privs = nnp > 0 ? 1 : 0;
  long pers = tg_sys1(SYS_personality, 0xffffffff);
  a->personality = pers < 0 ? 0 : (uint32_t)pers;
  a->timerslack_ns = own->timerslack_ns;
  a->cpus_len = 0; /* (the manager reads the main thread's affinity) */
  a->nice = own->nice;
  a->sched_policy = own->sched_policy;
  a->sched_flags = own->sched_flags;
  a->sched_priority = own->sched_priority;
}

/* Per-process attributes, and the main thread's affinity: by the manager, every thread parked. */
TG_HIDDEN void tg_capture_attrs(void) {
  struct tg_rec_attrs *a = &cap_attrs;
  int sub = 0;
  if (tg_sys2(SYS_prctl, PR_GET_CHILD_SUBREAPER, &sub) == 0) a->subreaper = sub ? 1 : 0;
  long d = tg_sys1(SYS_prctl, PR_GET_DUMPABLE);
  a->dumpable = d < 0 ? 1 : (uint32_t)d;
  /* the main thread's (tid = pid): restored before the threads are made, which inherit it */
  long n = tg_sys3(SYS_sched_getaffinity, tg.pid, sizeof a->cpus, a->cpus);
  a->cpus_len = n > 0 ? (uint32_t)n : 0;
}

TG_HIDDEN const struct tg_rec_attrs *tg_captured_attrs(void) { return &cap_attrs; }
