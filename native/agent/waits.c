/* Waits the agent's park does not end early.
 *
 * The agent parks every thread with a signal (agent.c). A blocking call the kernel never restarts
 * after a handler — poll, select, epoll_wait, nanosleep, pause, sigsuspend, sigtimedwait, SysV IPC
 * waits — returns EINTR when the park signal interrupts it, and a program that treats EINTR as an
 * error (coreutils `tail -f`) ends at the first checkpoint. Each wrapper here calls the C library's
 * function and, when it failed with EINTR while this thread was parked and ran no application
 * handler (wrappers.c counts those), calls it again with what is left of the timeout. An EINTR that
 * an application handler caused goes back to the application, as without the agent.
 *
 * A restored thread resumes inside the interrupted call (its registers are those of the park), gets
 * EINTR, and comes back here like any parked thread. Timeouts are measured on CLOCK_MONOTONIC and
 * never extended past what the application asked; after a restore on a host whose clock is ahead,
 * what is left may be nothing, and the call is made once more with no wait. Calls the C library
 * makes internally (its resolver's poll) do not pass through here; they retry by themselves. */
#include "agent.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/msg.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

TG_HIDDEN TG_TLS uint32_t tg_thread_parks;

#define REAL(name) static __typeof__(name) *real_##name
#define RESOLVE(name) (real_##name ? 0 : ((real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name)) ? 0 : (errno = ENOSYS, -1)))

REAL(poll);
REAL(ppoll);
REAL(select);
REAL(pselect);
REAL(epoll_wait);
REAL(epoll_pwait);
REAL(epoll_pwait2);
REAL(nanosleep);
REAL(clock_nanosleep);
REAL(pause);
REAL(sigsuspend);
REAL(sigtimedwait);
REAL(sigwaitinfo);
REAL(msgrcv);
REAL(msgsnd);
REAL(semop);
REAL(semtimedop);

/* Resolved once at load, before any wrapper can be interrupted; a wrapper called earlier (by
 * another library's constructor) resolves its own. */
TG_HIDDEN void tg_waits_init(void) {
  int e = errno;
  (void)RESOLVE(poll);
  (void)RESOLVE(ppoll);
  (void)RESOLVE(select);
  (void)RESOLVE(pselect);
  (void)RESOLVE(epoll_wait);
  (void)RESOLVE(epoll_pwait);
  (void)RESOLVE(epoll_pwait2);
  (void)RESOLVE(nanosleep);
  (void)RESOLVE(clock_nanosleep);
  (void)RESOLVE(pause);
  (void)RESOLVE(sigsuspend);
  (void)RESOLVE(sigtimedwait);
  (void)RESOLVE(sigwaitinfo);
  (void)RESOLVE(msgrcv);
  (void)RESOLVE(msgsnd);
  (void)RESOLVE(semop);
  (void)RESOLVE(semtimedop);
  errno = e;
}

struct mark { uint32_t parks, handlers; };
static inline struct mark mark(void) { return (struct mark){tg_thread_parks, tg_thread_app_signals}; }

/* The call failed with EINTR, this thread was parked meanwhile, and no application handler ran. */
static inline int park_only_e(struct mark m, int err) {
  return tg.active && err == EINTR && tg_thread_parks != m.parks && tg_thread_app_signals == m.handlers;
}
static inline int park_only(struct mark m) { return park_only_e(m, errno); }

static uint64_t ts_ns(const struct timespec *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec; }
static struct timespec ns_ts(uint64_t ns) { return (struct timespec){(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)}; }

/* What is left of a wait of `total` ns that started at `start`: never more than `total`. */
static uint64_t left_ns(uint64_t start, uint64_t total) {
  uint64_t now = tg_now_ns(CLOCK_MONOTONIC);
  if (now < start) return total; /* the clock went back (a restore on another host): start over, no longer than asked */
  uint64_t spent = now - start;
  return spent >= total ? 0 : total - spent;
}
static int left_ms(uint64_t start, int total_ms) {
  uint64_t l = left_ns(start, (uint64_t)total_ms * 1000000ull);
  return (int)((l + 999999) / 1000000);
}

/* A mask the application waits with must not block the park signal (as pthread_sigmask, wrappers.c). */
static const sigset_t *unblocked(const sigset_t *set, sigset_t *copy) {
  if (!tg.active || !set || !sigismember(set, tg.sig)) return set;
  *copy = *set;
  sigdelset(copy, tg.sig);
  return copy;
}

EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout) {
  if (RESOLVE(poll)) return -1;
  uint64_t start = timeout > 0 ? tg_now_ns(CLOCK_MONOTONIC) : 0;
  for (int t = timeout;;) {
    struct mark m = mark();
    int r = real_poll(fds, n, t);
    if (r >= 0 || !park_only(m)) return r;
    if (timeout > 0) t = left_ms(start, timeout);
  }
}

EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *tmo, const sigset_t *mask) {
  if (RESOLVE(ppoll)) return -1;
  sigset_t copy;
  const sigset_t *sm = unblocked(mask, &copy);
  uint64_t start = tmo ? tg_now_ns(CLOCK_MONOTONIC) : 0, total = tmo ? ts_ns(tmo) : 0;
  struct timespec t = tmo ? *tmo : (struct timespec){0, 0};
  for (;;) {
    struct mark m = mark();
    int r = real_ppoll(fds, n, tmo ? &t : NULL, sm);
    if (r >= 0 || !park_only(m)) return r;
    if (tmo) t = ns_ts(left_ns(start, total));
  }
}

EXPORT int select(int n, fd_set *rd, fd_set *wr, fd_set *ex, struct timeval *tv) {
  if (RESOLVE(select)) return -1;
  /* the kernel leaves the sets alone when it fails, so they are passed again as they are */
  uint64_t start = tv ? tg_now_ns(CLOCK_MONOTONIC) : 0;
  uint64_t total = tv ? (uint64_t)tv->tv_sec * 1000000000ull + (uint64_t)tv->tv_usec * 1000ull : 0;
  for (;;) {
    struct mark m = mark();
    int r = real_select(n, rd, wr, ex, tv);
    if (r >= 0 || !park_only(m)) return r;
    if (tv) {
      uint64_t l = left_ns(start, total);
      tv->tv_sec = (time_t)(l / 1000000000ull);
      tv->tv_usec = (suseconds_t)((l % 1000000000ull + 999) / 1000);
    }
  }
}

EXPORT int pselect(int n, fd_set *rd, fd_set *wr, fd_set *ex, const struct timespec *tmo, const sigset_t *mask) {
  if (RESOLVE(pselect)) return -1;
  sigset_t copy;
  const sigset_t *sm = unblocked(mask, &copy);
  uint64_t start = tmo ? tg_now_ns(CLOCK_MONOTONIC) : 0, total = tmo ? ts_ns(tmo) : 0;
  struct timespec t = tmo ? *tmo : (struct timespec){0, 0};
  for (;;) {
    struct mark m = mark();
    int r = real_pselect(n, rd, wr, ex, tmo ? &t : NULL, sm);
    if (r >= 0 || !park_only(m)) return r;
    if (tmo) t = ns_ts(left_ns(start, total));
  }
}

EXPORT int epoll_wait(int ep, struct epoll_event *ev, int max, int timeout) {
  if (RESOLVE(epoll_wait)) return -1;
  uint64_t start = timeout > 0 ? tg_now_ns(CLOCK_MONOTONIC) : 0;
  for (int t = timeout;;) {
    struct mark m = mark();
    int r = real_epoll_wait(ep, ev, max, t);
    if (r >= 0 || !park_only(m)) return r;
    if (timeout > 0) t = left_ms(start, timeout);
  }
}

EXPORT int epoll_pwait(int ep, struct epoll_event *ev, int max, int timeout, const sigset_t *mask) {
  if (RESOLVE(epoll_pwait)) return -1;
  sigset_t copy;
  const sigset_t *sm = unblocked(mask, &copy);
  uint64_t start = timeout > 0 ? tg_now_ns(CLOCK_MONOTONIC) : 0;
  for (int t = timeout;;) {
    struct mark m = mark();
    int r = real_epoll_pwait(ep, ev, max, t, sm);
    if (r >= 0 || !park_only(m)) return r;
    if (timeout > 0) t = left_ms(start, timeout);
  }
}

EXPORT int epoll_pwait2(int ep, struct epoll_event *ev, int max, const struct timespec *tmo, const sigset_t *mask) {
  if (RESOLVE(epoll_pwait2)) return -1;
  sigset_t copy;
  const sigset_t *sm = unblocked(mask, &copy);
  uint64_t start = tmo ? tg_now_ns(CLOCK_MONOTONIC) : 0, total = tmo ? ts_ns(tmo) : 0;
  struct timespec t = tmo ? *tmo : (struct timespec){0, 0};
  for (;;) {
    struct mark m = mark();
    int r = real_epoll_pwait2(ep, ev, max, tmo ? &t : NULL, sm);
    if (r >= 0 || !park_only(m)) return r;
    if (tmo) t = ns_ts(left_ns(start, total));
  }
}

EXPORT int nanosleep(const struct timespec *req, struct timespec *rem) {
  if (RESOLVE(nanosleep)) return -1;
  struct timespec t = *req, left;
  for (;;) {
    struct mark m = mark();
    int r = real_nanosleep(&t, &left);
    if (r == 0) return 0;
    if (!park_only(m)) {
      if (rem && errno == EINTR) *rem = left;
      return r;
    }
    t = left; /* the kernel says what was left */
  }
}

EXPORT int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req, struct timespec *rem) {
  if (RESOLVE(clock_nanosleep)) return ENOSYS;
  struct timespec t = *req, left;
  for (;;) {
    struct mark m = mark();
    int e = real_clock_nanosleep(clock, flags, &t, &left);
    if (!park_only_e(m, e)) {
      if (e == EINTR && rem && !(flags & TIMER_ABSTIME)) *rem = left;
      return e;
    }
    if (!(flags & TIMER_ABSTIME)) t = left; /* an absolute deadline stays what it was */
  }
}

/* The C library's sleep and usleep call its nanosleep internally, past the wrapper above. */
EXPORT unsigned int sleep(unsigned int s) {
  struct timespec t = {(time_t)s, 0}, left = {0, 0};
  if (nanosleep(&t, &left) == 0) return 0;
  return (unsigned int)left.tv_sec + (left.tv_nsec > 0);
}

EXPORT int usleep(useconds_t us) {
  struct timespec t = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
  return nanosleep(&t, NULL);
}

EXPORT int pause(void) {
  if (RESOLVE(pause)) return -1;
  for (;;) {
    struct mark m = mark();
    int r = real_pause();
    if (!park_only(m)) return r;
  }
}

EXPORT int sigsuspend(const sigset_t *mask) {
  if (RESOLVE(sigsuspend)) return -1;
  sigset_t copy;
  const sigset_t *sm = unblocked(mask, &copy);
  for (;;) {
    struct mark m = mark();
    int r = real_sigsuspend(sm);
    if (!park_only(m)) return r;
  }
}

/* A thread that waits for every signal (sigfillset + sigwait) must not take the park signal as its
 * own: it is left out of the set waited for. */
static const sigset_t *without_ours(const sigset_t *set, sigset_t *copy) {
  if (!tg.active || !sigismember(set, tg.sig)) return set;
  *copy = *set;
  sigdelset(copy, tg.sig);
  return copy;
}

EXPORT int sigtimedwait(const sigset_t *set, siginfo_t *info, const struct timespec *tmo) {
  if (RESOLVE(sigtimedwait)) return -1;
  sigset_t copy;
  const sigset_t *s = without_ours(set, &copy);
  uint64_t start = tmo ? tg_now_ns(CLOCK_MONOTONIC) : 0, total = tmo ? ts_ns(tmo) : 0;
  struct timespec t = tmo ? *tmo : (struct timespec){0, 0};
  for (;;) {
    struct mark m = mark();
    int r = real_sigtimedwait(s, info, tmo ? &t : NULL);
    if (r >= 0 || !park_only(m)) return r;
    if (tmo) t = ns_ts(left_ns(start, total));
  }
}

EXPORT int sigwaitinfo(const sigset_t *set, siginfo_t *info) {
  if (RESOLVE(sigwaitinfo)) return -1;
  sigset_t copy;
  const sigset_t *s = without_ours(set, &copy);
  for (;;) {
    struct mark m = mark();
    int r = real_sigwaitinfo(s, info);
    if (r >= 0 || !park_only(m)) return r;
  }
}

/* The C library's sigwait restarts on EINTR by itself, but waits with the set as given. */
EXPORT int sigwait(const sigset_t *set, int *sig) {
  siginfo_t si;
  int r;
  do r = sigwaitinfo(set, &si);
  while (r < 0 && errno == EINTR);
  if (r < 0) return errno;
  *sig = r;
  return 0;
}

EXPORT ssize_t msgrcv(int id, void *msg, size_t size, long type, int flags) {
  if (RESOLVE(msgrcv)) return -1;
  for (;;) {
    struct mark m = mark();
    ssize_t r = real_msgrcv(id, msg, size, type, flags);
    if (r >= 0 || !park_only(m)) return r;
  }
}

EXPORT int msgsnd(int id, const void *msg, size_t size, int flags) {
  if (RESOLVE(msgsnd)) return -1;
  for (;;) {
    struct mark m = mark();
    int r = real_msgsnd(id, msg, size, flags);
    if (r >= 0 || !park_only(m)) return r;
  }
}

EXPORT int semop(int id, struct sembuf *ops, size_t n) {
  if (RESOLVE(semop)) return -1;
  for (;;) {
    struct mark m = mark();
    int r = real_semop(id, ops, n);
    if (r >= 0 || !park_only(m)) return r;
  }
}

EXPORT int semtimedop(int id, struct sembuf *ops, size_t n, const struct timespec *tmo) {
  if (RESOLVE(semtimedop)) return -1;
  uint64_t start = tmo ? tg_now_ns(CLOCK_MONOTONIC) : 0, total = tmo ? ts_ns(tmo) : 0;
  struct timespec t = tmo ? *tmo : (struct timespec){0, 0};
  for (;;) {
    struct mark m = mark();
    int r = real_semtimedop(id, ops, n, tmo ? &t : NULL);
    if (r >= 0 || !park_only(m)) return r;
    if (tmo) t = ns_ts(left_ns(start, total));
  }
}
