/* The ATTRS record given back (native/agent/attrs.c captures it): run in the restored process
 * before its threads are made, so they inherit the timer slack and the CPU affinity. Each thread's
 * own (THREAD_ATTRS) are set by the thread itself in the blob (blob.c), prepared here. The dumpable
 * flag is set here too: the restorer runs as root, and /proc/self becoming root's changes nothing
 * for it. */
#include "restore.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>

/* the CPUs this process may use before its affinity is given back: what THREAD_ATTRS are checked against */
static cpu_set_t host_cpus;
static int host_cpus_read;

static void read_host_cpus(void) {
  if (host_cpus_read) return;
  CPU_ZERO(&host_cpus);
  host_cpus_read = sched_getaffinity(0, sizeof host_cpus, &host_cpus) == 0 ? 1 : -1;
}

int tg_restore_attrs(const struct image *img, char *err, size_t errlen) {
  read_host_cpus();
  if (!img->has_attrs) return 0;
  const struct tg_rec_attrs *a = &img->attrs;
  if ((unsigned)personality(0xffffffff) != a->personality && personality(a->personality) == -1) {
    snprintf(err, errlen, "cannot set the personality 0x%x: %s", a->personality, strerror(errno));
    return -1;
  }
  if (prctl(PR_SET_PDEATHSIG, (unsigned long)a->pdeathsig, 0, 0, 0) != 0) {
    snprintf(err, errlen, "cannot set the parent-death signal %u: %s", a->pdeathsig, strerror(errno));
    return -1;
  }
  if (a->subreaper && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
    snprintf(err, errlen, "cannot make the process a child subreaper: %s", strerror(errno));
    return -1;
  }
  if (a->timerslack_ns && prctl(PR_SET_TIMERSLACK, (unsigned long)a->timerslack_ns, 0, 0, 0) != 0) {
    snprintf(err, errlen, "cannot set the timer slack (%llu ns): %s", (unsigned long long)a->timerslack_ns, strerror(errno));
    return -1;
  }
  if (a->cpus_len && a->cpus_len <= sizeof a->cpus && sched_setaffinity(0, a->cpus_len, (const cpu_set_t *)a->cpus) != 0)
    fprintf(stderr, "tardigrade-restore: warning: pid %u: cannot give back its CPU affinity (%s): it runs on every CPU of this host\n",
            img->proc.pid, strerror(errno)); /* a host without those CPUs: run rather than refuse */
  if (setpriority(PRIO_PROCESS, 0, a->nice) != 0)
    fprintf(stderr, "tardigrade-restore: warning: pid %u: cannot give back its nice value %d (%s)\n", img->proc.pid, a->nice, strerror(errno));
  struct sched_param sp = {.sched_priority = (int)a->sched_priority};
  int pol = (int)a->sched_policy | (a->sched_flags & 1 ? SCHED_RESET_ON_FORK : 0);
  if ((a->sched_policy || a->sched_flags) && sched_setscheduler(0, pol, &sp) != 0) {
    snprintf(err, errlen, "cannot give back its scheduling policy %u (priority %u): %s", a->sched_policy, a->sched_priority, strerror(errno));
    return -1;
  }
  if (a->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    snprintf(err, errlen, "cannot set no_new_privs: %s", strerror(errno));
    return -1;
  }
  if (a->dumpable <= 1 && prctl(PR_SET_DUMPABLE, (unsigned long)a->dumpable, 0, 0, 0) != 0) {
    snprintf(err, errlen, "cannot set the dumpable flag to %u: %s", a->dumpable, strerror(errno));
    return -1;
  }
  return 0;
}

void tg_thread_attrs_for_blob(const struct image *img, uint32_t tid, struct tg_rec_thread_attrs *out) {
  memset(out, 0, sizeof *out);
  for (size_t i = 0; i < img->nthread_attrs; i++)
    if (img->thread_attrs[i].tid == tid) { *out = img->thread_attrs[i]; break; }
  if (!out->tid || !out->cpus_len) return;
  /* the kernel refuses a mask with none of the CPUs this process may use: run on every CPU then */
  read_host_cpus();
  if (host_cpus_read < 0) return;
  size_t n = out->cpus_len < sizeof host_cpus ? out->cpus_len : sizeof host_cpus;
  const unsigned char *want = (const unsigned char *)out->cpus, *have = (const unsigned char *)&host_cpus;
  for (size_t b = 0; b < n; b++)
    if (want[b] & have[b]) return;
  fprintf(stderr, "tardigrade-restore: warning: pid %u thread %u: none of the CPUs of its affinity is here: it runs on every CPU of this host\n",
          img->proc.pid, tid);
  out->cpus_len = 0;
}
