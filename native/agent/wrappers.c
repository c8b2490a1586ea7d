/* Keeps the agent's park signal invisible to the application: the application can neither replace
 * its handler nor block it, and its waits do not end early because of it (waits.c). What the application asks for is remembered and shown back to it, and
 * a park signal that is not the agent's own is passed on to the application's handler. */
#include "agent.h"

#include <errno.h>
#include <string.h>

typedef int (*sigmask_fn)(int, const sigset_t *, sigset_t *);
typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
TG_HIDDEN extern sigaction_fn tg_real_sigaction;
TG_HIDDEN extern sigmask_fn tg_real_pthread_sigmask;

static const sigset_t *unblock_ours(const sigset_t *set, sigset_t *copy) {
  if (!tg.active || !set || !sigismember(set, tg.sig)) return set;
  *copy = *set;
  sigdelset(copy, tg.sig);
  return copy;
}

/* The application's handlers run through app_handler_entry, which counts, per thread, how many
 * of them ran: a wait interrupted while no application handler ran was interrupted by the agent's
 * park alone, and is restarted (waits.c). The application sees its own handler in every answer. */
TG_HIDDEN TG_TLS uint32_t tg_thread_app_signals;
static struct sigaction app_handlers[65];

static void app_handler_entry(int sig, siginfo_t *si, void *uc) {
  tg_thread_app_signals++;
  const struct sigaction *a = &app_handlers[sig];
  if (a->sa_flags & SA_SIGINFO) a->sa_sigaction(sig, si, uc);
  else if (a->sa_handler != SIG_IGN && a->sa_handler != SIG_DFL) a->sa_handler(sig);
}

static int is_handler(const struct sigaction *a) {
  return (a->sa_flags & SA_SIGINFO) ? a->sa_sigaction != NULL : (a->sa_handler != SIG_IGN && a->sa_handler != SIG_DFL);
}

__attribute__((visibility("default"))) int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!tg_real_sigaction) { errno = ENOSYS; return -1; }
  if (!tg.active) return tg_real_sigaction(sig, act, old);
  if (sig == tg.sig) {
    if (old) {
      if (tg.app_action_set) *old = tg.app_action;
      else { memset(old, 0, sizeof *old); old->sa_handler = SIG_DFL; }
    }
    if (act) { tg.app_action = *act; tg.app_action_set = 1; }
    return 0;
  }
  if (sig <= 0 || sig >= 65) return tg_real_sigaction(sig, act, old);
  struct sigaction k, prev = app_handlers[sig];
  if (tg_real_sigaction(sig, NULL, &k) != 0) return -1;
  if (act) {
    struct sigaction a = *act;
    sigdelset(&a.sa_mask, tg.sig); /* never let a handler's mask block the park signal */
    if (is_handler(act)) {
      /* SIGKILL/SIGSTOP: the kernel refuses before the table is touched */
      if (sig == SIGKILL || sig == SIGSTOP) return tg_real_sigaction(sig, &a, NULL);
      app_handlers[sig] = *act;
      a.sa_sigaction = app_handler_entry;
      a.sa_flags |= SA_SIGINFO;
    }
    if (tg_real_sigaction(sig, &a, NULL) != 0) return -1;
  }
  if (old) {
    *old = k;
    /* the table still holds a one-shot (SA_RESETHAND) handler the kernel has reset: the kernel's answer is right */
    if ((k.sa_flags & SA_SIGINFO) && k.sa_sigaction == app_handler_entry) *old = prev;
  }
  return 0;
}

__attribute__((visibility("default"))) sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction a, old;
  memset(&a, 0, sizeof a);
  a.sa_handler = handler;
  a.sa_flags = SA_RESTART;
  if (sigaction(sig, &a, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

__attribute__((visibility("default"))) int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
  if (!tg_real_pthread_sigmask) return ENOSYS;
  sigset_t copy;
  if (how == SIG_UNBLOCK) return tg_real_pthread_sigmask(how, set, old);
  return tg_real_pthread_sigmask(how, unblock_ours(set, &copy), old);
}

__attribute__((visibility("default"))) int sigprocmask(int how, const sigset_t *set, sigset_t *old) {
  int e = pthread_sigmask(how, set, old);
  if (e != 0) { errno = e; return -1; }
  return 0;
}

/* Memory marked MADV_DONTFORK would be missing from the copy-on-write snapshot (V8 marks its heap
 * so). The agent remembers such ranges, lifts the mark for the instant of the snapshot and puts it
 * back (agent.c); the snapshot child checks that it sees every mapping the process has. */
#include <sys/mman.h>
#include "../common/sys.h"

TG_HIDDEN struct tg_range tg_dontfork[TG_MAX_DONTFORK];
TG_HIDDEN int tg_ndontfork;
static int dontfork_lock;

static void df_lock(void) { while (__atomic_exchange_n(&dontfork_lock, 1, __ATOMIC_ACQUIRE)) tg_sys0(SYS_sched_yield); }
static void df_unlock(void) { __atomic_store_n(&dontfork_lock, 0, __ATOMIC_RELEASE); }

/* Removes [s, e) from the list (splitting ranges as needed). Caller holds the lock. */
static void df_remove(uint64_t s, uint64_t e) {
  for (int i = 0; i < tg_ndontfork; i++) {
    struct tg_range *r = &tg_dontfork[i];
    if (e <= r->start || s >= r->end) continue;
    if (s > r->start && e < r->end) {
      if (tg_ndontfork < TG_MAX_DONTFORK) tg_dontfork[tg_ndontfork++] = (struct tg_range){e, r->end};
      r->end = s;
    } else if (s > r->start) {
      r->end = s;
    } else if (e < r->end) {
      r->start = e;
    } else {
      tg_dontfork[i--] = tg_dontfork[--tg_ndontfork];
    }
  }
}

__attribute__((visibility("default"))) int madvise(void *addr, size_t len, int advice) {
  long r = tg_sys3(SYS_madvise, addr, len, advice);
  if (r < 0) { errno = (int)-r; return -1; }
  if (advice == MADV_DONTFORK || advice == MADV_DOFORK) {
    uint64_t s = (uint64_t)addr, e = s + ((len + 4095) & ~4095ul);
    df_lock();
    df_remove(s, e);
    if (advice == MADV_DONTFORK) {
      tg.dontfork_seen = 1;
      if (tg_ndontfork < TG_MAX_DONTFORK) tg_dontfork[tg_ndontfork++] = (struct tg_range){s, e};
      else tg.dontfork_overflow = 1;
    }
    df_unlock();
  }
  return 0;
}

__attribute__((visibility("default"))) int munmap(void *addr, size_t len) {
  long r = tg_sys2(SYS_munmap, addr, len);
  if (r < 0) { errno = (int)-r; return -1; }
  if (tg_ndontfork) {
    df_lock();
    df_remove((uint64_t)addr, (uint64_t)addr + ((len + 4095) & ~4095ul));
    df_unlock();
  }
  return 0;
}
