/* Kernel timers of the process: POSIX timers (timer_create) from /proc/self/timers and the three
 * interval timers (setitimer/alarm). Neither is inherited by the snapshot child (a fork does not
 * copy them), so the manager reads them while every thread is parked and the child writes the
 * TIMERS record from that copy. Syscalls and non-allocating libc calls only. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "../common/sys.h"

/* the TIMERS record as captured at the last checkpoint (read by the snapshot child) */
static struct tg_rec_timers cap_head;
static struct tg_timer cap_timers[TG_MAX_TIMERS];
static char cap_err[400];
static char procbuf[TG_MAX_TIMERS * 96 + 4096];

static const char *const clock_names[] = {"CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID", "CLOCK_THREAD_CPUTIME_ID",
                                          "CLOCK_MONOTONIC_RAW", "CLOCK_REALTIME_COARSE", "CLOCK_MONOTONIC_COARSE", "CLOCK_BOOTTIME",
                                          "CLOCK_REALTIME_ALARM", "CLOCK_BOOTTIME_ALARM", "clock 10", "CLOCK_TAI"};

/* A thread of ours is one of the parked slots; before the threads are parked (the precheck) this
 * is left to the capture. */
static int is_our_thread(int tid) {
  if (!tg.capturing) return 1;
  for (int i = 0; i < tg.nslots && i < TG_MAX_THREADS; i++)
    if (tg.slots[i].tid == tid) return 1;
  return 0;
}

/* Can a timer on this clock be recreated in the restored process? 0, or -1 with the reason in why.
 * Negative clock ids are CPU-time clocks: (~pid << 3) | (per thread ? 4 : 0) | kind; kind 3 is a
 * clock of a file descriptor (a PTP device). */
static int clock_ok(int32_t clock, char *why, size_t whylen) {
  if (clock >= 0) {
    if (clock == CLOCK_REALTIME || clock == CLOCK_MONOTONIC || clock == CLOCK_BOOTTIME || clock == CLOCK_REALTIME_ALARM ||
        clock == CLOCK_BOOTTIME_ALARM || clock == CLOCK_TAI)
      return 0;
    snprintf(why, whylen, "timers on %s are not supported", clock < 12 ? clock_names[clock] : "this clock");
    return -1;
  }
  int pid = ~(clock >> 3), per_thread = (clock & 4) != 0, kind = clock & 3;
  if (kind == 3) { snprintf(why, whylen, "timers on the clock of a file descriptor (fd %d, a PTP device) are not supported", pid); return -1; }
  if (!per_thread && (pid == 0 || pid == tg.pid)) return 0; /* this process's CPU time */
  if (per_thread && pid != 0 && is_our_thread(pid)) return 0; /* a thread of ours, recreated with its TID */
  if (per_thread && pid == 0) {
    snprintf(why, whylen, "a timer on CLOCK_THREAD_CPUTIME_ID follows the CPU time of the thread that created it, which the kernel does not tell");
    return -1;
  }
  snprintf(why, whylen, "it measures the CPU time of %s %d, outside this process", per_thread ? "thread" : "process", pid);
  return -1;
}

static const char *field(const char *p, const char *end, const char *key) {
  size_t kl = strlen(key);
  if ((size_t)(end - p) < kl || memcmp(p, key, kl) != 0) return NULL;
  p += kl;
  while (p < end && *p == ' ') p++;
  return p;
}

/* The namespace TID of a thread named as /proc shows it, and whether it blocks the park signal. */
static int ns_tid(int tid_in_proc, int *blocks_park) {
  char path[64], status[2048];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", tid_in_proc);
  if (tg_read_file(path, status, sizeof status) <= 0) return -1;
  uint64_t blk = 0;
  tg_status_field_u64(status, "SigBlk", &blk, 1);
  *blocks_park = (blk >> (tg.sig - 1)) & 1;
  const char *p = strstr(status, "NSpid:");
  if (!p) return -1;
  const char *e = strchr(p, '\n');
  if (!e) e = p + strlen(p);
  int last = -1;
  for (const char *q = p + 6; q < e;) {
    while (q < e && (*q == ' ' || *q == '\t')) q++;
    if (q >= e) break;
    int v = 0;
    while (q < e && *q >= '0' && *q <= '9') v = v * 10 + (*q++ - '0');
    last = v;
  }
  return last;
}

static uint64_t ts_ns(const struct timespec *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec; }
static uint64_t tv_ns(const struct timeval *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_usec * 1000ull; }

/* Reads every timer into head/out (out may be NULL: check only). */
static int read_timers(struct tg_rec_timers *head, struct tg_timer *out, char *err, size_t errlen) {
  memset(head, 0, sizeof *head);
  head->timer_size = sizeof(struct tg_timer);
  long n = tg_read_file("/proc/self/timers", procbuf, sizeof procbuf);
  if (n < 0) { snprintf(err, errlen, "cannot read /proc/self/timers: %s", strerror((int)-n)); return -1; }
  if (n >= (long)sizeof procbuf - 1) { snprintf(err, errlen, "the process has more than %d POSIX timers; not supported", TG_MAX_TIMERS); return -1; }
  struct tg_timer t;
  memset(&t, 0, sizeof t);
  int have = 0, helper = 0;
  for (const char *l = procbuf; l < procbuf + n;) {
    const char *e = memchr(l, '\n', (size_t)(procbuf + n - l));
    if (!e) e = procbuf + n;
    const char *v;
    if ((v = field(l, e, "ID:"))) {
      memset(&t, 0, sizeof t);
      t.id = (int32_t)strtol(v, NULL, 10);
      have = 1;
      helper = 0;
    } else if ((v = field(l, e, "signal:")) && have) {
      char *s;
      t.signo = (uint32_t)strtoul(v, &s, 10);
      if (*s == '/') t.sigval = strtoull(s + 1, NULL, 16);
    } else if ((v = field(l, e, "notify:")) && have) {
      const char *slash = memchr(v, '/', (size_t)(e - v));
      if (!slash) { snprintf(err, errlen, "timer %d: cannot parse /proc/self/timers", t.id); return -1; }
      size_t kl = (size_t)(slash - v);
      t.notify = kl == 4 && memcmp(v, "none", 4) == 0 ? SIGEV_NONE : kl == 6 && memcmp(v, "thread", 6) == 0 ? SIGEV_THREAD : SIGEV_SIGNAL;
      if (strncmp(slash + 1, "tid.", 4) == 0) {
        t.notify |= SIGEV_THREAD_ID;
        int ptid = atoi(slash + 5), blocks = 0, tid = ns_tid(ptid, &blocks);
        if (tid <= 0) {
          snprintf(err, errlen, "timer %d sends its signal to thread %d, which has exited; delete the timer (timer_delete) before the thread exits", t.id, ptid);
          return -1;
        }
        if (blocks && !tg.capturing) { /* parked threads block everything */
          /* glibc's SIGEV_THREAD helper blocks every signal with a raw syscall: it can be neither
           * parked nor captured */
          helper = ptid;
        }
        t.tid = (uint32_t)tid;
      }
    } else if ((v = field(l, e, "ClockID:")) && have) {
      /* the last line of a timer's entry */
      t.clock = (int32_t)strtol(v, NULL, 10);
      have = 0;
      char why[200];
      if (helper) {
        snprintf(err, errlen,
                 "timer %d (clock %d) cannot be checkpointed: it is a SIGEV_THREAD timer (its signal goes to libc's timer "
                 "helper thread %d, which blocks every signal); SIGEV_THREAD timers are not supported yet; use "
                 "SIGEV_SIGNAL or SIGEV_THREAD_ID, or delete the timer (timer_delete) before the checkpoint",
                 t.id, t.clock, helper);
        return -1;
      }
      if (clock_ok(t.clock, why, sizeof why) != 0) {
        snprintf(err, errlen,
                 "timer %d (clock %d) cannot be checkpointed: %s; delete it (timer_delete) before the checkpoint, or use a "
                 "CLOCK_MONOTONIC or CLOCK_REALTIME timer",
                 t.id, t.clock, why);
        return -1;
      }
      if (head->ntimers >= TG_MAX_TIMERS) { snprintf(err, errlen, "the process has more than %d POSIX timers; not supported", TG_MAX_TIMERS); return -1; }
      if (out) {
        struct itimerspec its;
        long r = tg_sys2(SYS_timer_gettime, t.id, &its);
        if (r < 0) { snprintf(err, errlen, "timer %d: timer_gettime: %s", t.id, strerror((int)-r)); return -1; }
        t.value_ns = ts_ns(&its.it_value);
        t.interval_ns = ts_ns(&its.it_interval);
        r = tg_sys1(SYS_timer_getoverrun, t.id);
        t.overrun = r < 0 ? 0 : (int32_t)r;
        out[head->ntimers] = t;
      }
      head->ntimers++;
    }
    l = e + 1;
  }
  for (int w = 0; w < TG_NITIMERS; w++) {
    struct itimerval it;
    long r = tg_sys2(SYS_getitimer, w, &it);
    if (r < 0) { snprintf(err, errlen, "getitimer(%d): %s", w, strerror((int)-r)); return -1; }
    head->itimers[w].value_ns = tv_ns(&it.it_value);
    head->itimers[w].interval_ns = tv_ns(&it.it_interval);
  }
  /* An expired periodic ITIMER_REAL is re-armed by the kernel only when its SIGALRM is taken, and
   * parked threads take no signal: it reads as disarmed. Its SIGALRM is pending (and restored as
   * pending): record it as due in one interval, as the kernel would re-arm it. */
  struct tg_itimer *real = &head->itimers[ITIMER_REAL];
  if (tg.capturing && real->value_ns == 0 && real->interval_ns) {
    uint64_t pend = 0;
    char status[4096];
    if (tg_read_file("/proc/self/status", status, sizeof status) > 0) tg_status_field_u64(status, "ShdPnd", &pend, 1);
    if (pend & (1ull << (SIGALRM - 1))) real->value_ns = real->interval_ns;
  }
  return 0;
}

TG_HIDDEN int tg_precheck_timers(char *err, size_t errlen) {
  struct tg_rec_timers head;
  return read_timers(&head, NULL, err, errlen);
}

TG_HIDDEN void tg_capture_timers(void) {
  cap_err[0] = 0;
  if (read_timers(&cap_head, cap_timers, cap_err, sizeof cap_err) != 0 && !cap_err[0]) snprintf(cap_err, sizeof cap_err, "cannot read the timers");
}

TG_HIDDEN const char *tg_captured_timers(const struct tg_rec_timers **head, const struct tg_timer **timers) {
  *head = &cap_head;
  *timers = cap_timers;
  return cap_err[0] ? cap_err : NULL;
}
