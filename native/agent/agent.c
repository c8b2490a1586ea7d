/* libtardigrade-agent.so: the in-process half of checkpointing.
 *
 * Loaded with LD_PRELOAD by tardigrade-init. When TARDIGRADE_SOCK is set it starts a hidden manager
 * thread listening on that Unix socket (docs/native-interface.md). A CHECKPOINT request parks every
 * application thread in the park signal handler (the kernel saves each thread's full context, FPU
 * and xstate included, in the signal frame on its stack), takes a copy-on-write snapshot of the
 * process with a raw clone(), resumes the threads, and lets the snapshot child write the raw image
 * (capture.c) while the application runs on. Restore (native/restore) rebuilds memory from the
 * image and resumes each thread by rt_sigreturn on its saved frame; the manager thread notices it
 * was restored through tg_restart and listens again.
 */
#include "../common/jsonesc.h"
#include "agent.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <asm/prctl.h>

#include "../common/sys.h"
#include "track.h"

TG_HIDDEN struct tg_agent tg;
TG_HIDDEN struct tg_restart_info tg_restart;

extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

#define RSEQ_SIG 0x53053053

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef int (*sigmask_fn)(int, const sigset_t *, sigset_t *);
TG_HIDDEN sigaction_fn tg_real_sigaction;
TG_HIDDEN sigmask_fn tg_real_pthread_sigmask;

TG_HIDDEN uint64_t tg_now_ns(int clock) {
  struct timespec ts;
  tg_sys2(SYS_clock_gettime, clock, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

TG_HIDDEN int tg_is_hidden_fd(int fd) {
  return fd >= 0 && (fd == tg.listen_fd || fd == tg.conn_fd || fd == tg.img_fd || fd == tg.err_rd ||
                     fd == tg.err_wr || fd == tg.passed_fd || tg_track_is_hidden_fd(fd));
}

/* "Key:\tvalue" from a /proc status file; hex for signal masks. */
TG_HIDDEN int tg_status_field_u64(const char *status, const char *key, uint64_t *out, int hex) {
  size_t kl = strlen(key);
  for (const char *p = status; p && *p;) {
    if (strncmp(p, key, kl) == 0 && p[kl] == ':') {
      const char *v = p + kl + 1;
      while (*v == ' ' || *v == '\t') v++;
      uint64_t x = 0;
      for (;; v++) {
        int d;
        if (*v >= '0' && *v <= '9') d = *v - '0';
        else if (hex && *v >= 'a' && *v <= 'f') d = *v - 'a' + 10;
        else break;
        x = x * (hex ? 16 : 10) + (uint64_t)d;
      }
      *out = x;
      return 0;
    }
    p = strchr(p, '\n');
    if (p) p++;
  }
  return -1;
}

/* Last number of the "NSpid:" line: the id in the innermost PID namespace. */
static int last_nspid(const char *status) {
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

static void futex_wait(volatile void *addr, uint32_t val, long timeout_ns) {
  struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  tg_sys4(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, timeout_ns ? &ts : NULL);
}
static void futex_wake(volatile void *addr, int n) { tg_sys3(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n); }

/* ---- the manager's fds and fork ----
 * An application thread may fork while the manager makes one of its fds (the image, the error
 * pipe, an accepted connection): the child then holds a copy the agent does not know of (the
 * kernel copies the fd table before the memory, so tg.img_fd can still say -1 in the child), and
 * the child's next checkpoint refused over "pidN.img (deleted)". The manager makes each fd and
 * records it under fd_guard; fork takes it first (pthread_atfork), so a child has either none of
 * them or the ones tg names, which tg_after_fork closes. Held for a few syscalls, never across a
 * wait. */
static pthread_mutex_t fd_guard = PTHREAD_MUTEX_INITIALIZER;
static void fd_guard_lock(void) { pthread_mutex_lock(&fd_guard); }
/* fork's prepare handler: a tree's cut in progress first (forkgate.c), then the manager's fds */
static void before_fork(void) {
  tg_forkgate_wait();
  fd_guard_lock();
  tg_ranges_before_fork();
}
static void fd_guard_unlock(void) { pthread_mutex_unlock(&fd_guard); }
/* closes one of tg's fds and forgets it at once (a fork between the two would have the child close
 * the number again, maybe an application's fd by then) */
static void guarded_close(int *fd) {
  int e = errno;
  fd_guard_lock();
  if (*fd >= 0) close(*fd);
  *fd = -1;
  fd_guard_unlock();
  errno = e;
}

/* ---- the park signal handler: runs in every application thread, and last in the manager ---- */

static void record_self(struct tg_slot *s, int tid) {
  char status[4096];
  s->tid = tid;
  tg_sys2(SYS_arch_prctl, ARCH_GET_FS, &s->fs_base);
  tg_sys2(SYS_arch_prctl, ARCH_GET_GS, &s->gs_base);
  void *ctid = NULL;
  tg_sys2(SYS_prctl, PR_GET_TID_ADDRESS, &ctid);
  s->clear_child_tid = (uint64_t)ctid;
  void *head = NULL;
  size_t len = 0;
  tg_sys3(SYS_get_robust_list, 0, &head, &len);
  s->robust_head = (uint64_t)head;
  s->robust_len = len;
  s->rseq_addr = 0;
  if (&__rseq_size && &__rseq_offset && __rseq_size > 0) {
    s->rseq_addr = (uint64_t)__builtin_thread_pointer() + (uint64_t)__rseq_offset;
    s->rseq_len = 32;
    s->rseq_sig = RSEQ_SIG;
  }
  tg_sys2(SYS_prctl, PR_GET_NAME, s->comm);
  s->sigpending = s->shared_sigpending = 0;
  if (tg_read_file("/proc/thread-self/status", status, sizeof status) > 0) {
    tg_status_field_u64(status, "SigPnd", &s->sigpending, 1);
    tg_status_field_u64(status, "ShdPnd", &s->shared_sigpending, 1);
  }
}

static void snapshot_and_release(uint32_t gen);

static void park_handler(int sig, siginfo_t *si, void *ucv) {
  int saved_errno = errno;
  if (!tg.capturing || si->si_code != SI_TKILL || si->si_pid != tg.pid) {
    /* Not ours: hand it to what the application installed for this signal. */
    if (tg.app_action_set) {
      struct sigaction *a = &tg.app_action;
      tg_thread_app_signals++;
      if ((a->sa_flags & SA_SIGINFO) && a->sa_sigaction) a->sa_sigaction(sig, si, ucv);
      else if (!(a->sa_flags & SA_SIGINFO) && a->sa_handler != SIG_IGN && a->sa_handler != SIG_DFL)
        a->sa_handler(sig);
    }
    errno = saved_errno;
    return;
  }
  tg_thread_parks++; /* before anything is captured: a restored thread has counted its park */
  int tid = (int)tg_sys0(SYS_gettid);
  uint32_t gen = tg.stop_gen;
  int idx = __atomic_fetch_add(&tg.nslots, 1, __ATOMIC_SEQ_CST);
  if (idx < TG_MAX_THREADS) {
    struct tg_slot *s = &tg.slots[idx];
    record_self(s, tid);
    s->uc = (ucontext_t *)ucv;
    s->is_manager = tid == tg.manager_tid;
    tg_capture_own_thread_attrs(&s->attrs, tid); /* each thread's own (attrs.c) */
    if (tid == tg.pid) { /* the process's, by its main thread, before it counts as parked */
      tg_capture_thread_attrs(&s->attrs); /* attrs.c */
      tg_capture_creds();                 /* creds.c */
    }
  }
  if (tid == tg.manager_tid) {
    snapshot_and_release(gen);
  } else {
    __atomic_fetch_add(&tg.parked, 1, __ATOMIC_SEQ_CST);
    futex_wake(&tg.parked, 1);
    uint32_t v;
    while ((v = __atomic_load_n(&tg.release_gen, __ATOMIC_SEQ_CST)) != gen) futex_wait(&tg.release_gen, v, 0);
  }
  errno = saved_errno;
}

/* In the manager's own park handler, with every other thread parked: fork a copy-on-write snapshot
 * (raw clone, exit signal 0 so the application's wait() never sees it), then let everyone go. */
TG_HIDDEN long tg_clone_on_stack(void *stack_top, void (*fn)(void));
#define CHILD_STACK TG_CHILD_STACK
#define MAPS_BUF TG_MAPS_BUF

/* The snapshot writer is background work: it runs 10 nice levels below the application, so that
 * on a busy machine it yields the CPU to the application's threads (it costs no downtime, only a
 * longer write). Raising one's own nice value needs no privilege. */
#ifndef TG_WRITER_NICE
#define TG_WRITER_NICE 10
#endif
static void lower_priority(void) {
  long prio = tg_sys2(SYS_getpriority, PRIO_PROCESS, 0); /* the kernel returns 20 - nice */
  if (prio <= 0) return; /* cannot tell: leave it */
  long nice = 20 - prio + TG_WRITER_NICE;
  if (nice > 19) nice = 19;
  if (tg_sys3(SYS_setpriority, PRIO_PROCESS, 0, nice) < 0) return; /* not fatal: write at the current priority */
}

__attribute__((noreturn)) static void snapshot_child(void) {
  {
    /* a name of its own: an init that outlives the app must not take it for a daemonized process */
    if (tg_sys2(SYS_prctl, PR_SET_NAME, TG_SNAPSHOT_COMM) != 0) { /* not fatal: the name only tells an init it apart */ }
    lower_priority();
    char err[512] = {0};
    uint64_t bytes = 0, pages = 0;
    int rc = tg_capture_image(err, sizeof err, &bytes, &pages);
    char msg[640];
    int n = rc == 0 ? snprintf(msg, sizeof msg, "OK %llu %llu %llu\n", (unsigned long long)bytes, (unsigned long long)pages,
                               (unsigned long long)tg_trk.pages_written)
                    : snprintf(msg, sizeof msg, "ERR %s\n", err);
    tg_sys3(SYS_write, tg.err_wr, msg, n);
    tg_sys1(SYS_exit_group, rc == 0 ? 0 : 1);
  }
  for (;;) {}
}

/* Mappings whose VmFlags in /proc/self/smaps have "dc" (MADV_DONTFORK); the mark is lifted
 * (MADV_DOFORK) for the snapshot. Returns how many (in smaps_df). buf is scratch space. */
static struct tg_range smaps_df[TG_MAX_DONTFORK];
static int smaps_dontfork(char *buf, size_t cap) {
  long n = tg_read_file("/proc/self/smaps", buf, cap);
  if (n <= 0) return 0;
  int count = 0;
  uint64_t cur_s = 0, cur_e = 0;
  for (char *l = buf; l < buf + n && count < TG_MAX_DONTFORK;) {
    char *e = memchr(l, '\n', (size_t)(buf + n - l));
    if (!e) e = buf + n;
    struct tg_vma v;
    if (strncmp(l, "VmFlags:", 8) == 0) {
      for (char *f = l + 8; f + 2 <= e; f++)
        if (f[-1] == ' ' && f[0] == 'd' && f[1] == 'c' && (f + 2 == e || f[2] == ' ')) {
          tg_sys3(SYS_madvise, cur_s, cur_e - cur_s, MADV_DOFORK);
          smaps_df[count++] = (struct tg_range){cur_s, cur_e};
          break;
        }
    } else if (((*l >= '0' && *l <= '9') || (*l >= 'a' && *l <= 'f')) && tg_parse_maps_line(l, e, &v) == 0) {
      cur_s = v.start;
      cur_e = v.end;
    }
    l = e + 1;
  }
  return count;
}

static char children_err[1024]; /* set when the park found child processes, or the tree's cut was called off: the checkpoint refuses */

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A process tree's cut (docs/native-interface.md, "hold"): with every thread of this process parked,
 * tell the caller and wait for its word. 0 when the word is `want`; -1 (why in children_err) on
 * ABORT, a closed connection or no word within 60 s. Runs in the manager's park handler. */
static int hold_for(const char *event, const char *want, const char *more) {
  reply("{\"event\":\"%s\",\"ok\":true%s}", event, more);
  char line[64];
  size_t n = 0;
  for (;;) {
    struct pollfd pfd = {tg.conn_fd, POLLIN, 0};
    int r = poll(&pfd, 1, 60000);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) { snprintf(children_err, sizeof children_err, "the process tree's cut was abandoned: no word from the daemon within 60 s after '%s'", event); return -1; }
    ssize_t got = r > 0 ? recv(tg.conn_fd, line + n, 1, 0) : -1;
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) { snprintf(children_err, sizeof children_err, "the process tree's cut was abandoned: the daemon went away after '%s'", event); return -1; }
    if (line[n] == '\n' || n + 2 >= sizeof line) break;
    n++;
  }
  line[n] = 0;
  if (strcmp(line, want) == 0) return 0;
  if (strncmp(line, "ABORT", 5) == 0)
    snprintf(children_err, sizeof children_err, "%s", line[5] == ' ' ? line + 6 : "the process tree's cut was called off by the daemon");
  else
    snprintf(children_err, sizeof children_err, "the process tree's cut was abandoned: expected %s, got '%.40s'", want, line);
  return -1;
}

/* the tracker took this round's written pages (and protected them again): a snapshot that then
 * fails loses them, and the next checkpoint must be full; one called off before it keeps its base */
static int tracker_touched;

static void snapshot_and_release(uint32_t gen) {
  /* The child runs on a stack of its own: the manager's stack is part of the image, and must
   * not change under the writer. The parent drops the mapping right away. */
  children_err[0] = 0;
  tracker_touched = 0;
  /* One process alone: no child may exist (a fork since the daemon looked). Part of a tree's cut:
   * the daemon knows the tree; every process of it is parked before any is captured. */
  int refused = tg.hold ? hold_for("parked", "CAPTURE", "") : tg_check_no_children(children_err, sizeof children_err);
  long stk = refused != 0
                 ? -ECHILD
                 : tg_sys6l(SYS_mmap, 0, TG_CHILD_REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  long child;
  if ((unsigned long)stk > -4096UL) {
    child = stk;
  } else {
    tg.child_stack = (uint64_t)stk;
    tg.parent_maps = (char *)stk + CHILD_STACK;
    for (int i = 0; i < tg_ndontfork; i++)
      tg_sys3(SYS_madvise, tg_dontfork[i].start, tg_dontfork[i].end - tg_dontfork[i].start, MADV_DOFORK);
    /* Marked memory can move where the wrapper does not see it (mremap, also glibc's realloc):
     * once the application has used the mark, ask the kernel which mappings carry it. Not for
     * other applications: smaps walks the page tables (~20 ms of downtime for 1 GiB resident). */
    int nsm = 0;
    if (tg.dontfork_seen) nsm = smaps_dontfork(tg.parent_maps, MAPS_BUF);
    tg.parent_maps_len = tg_read_file("/proc/self/maps", tg.parent_maps, MAPS_BUF);
    /* read again after the tracker: besides its own arrays, registering mappings for write
     * protection can split or merge them (0.1 ms) */
    if (tg.parent_maps_len > 0) {
      tracker_touched = 1;
      tg_track_before_snapshot(tg.want_incremental, tg.parent_seq, tg.parent_maps, tg.parent_maps_len);
      tg.parent_maps_len = tg_read_file("/proc/self/maps", tg.parent_maps, MAPS_BUF);
    }
    tg.fds_buf = (char *)stk + CHILD_STACK + MAPS_BUF;
    tg_capture_fds(tg.fds_buf, TG_FDS_BUF);
    tg_capture_timers();
    tg_capture_attrs();
    tg_capture_creds_fallback();
    if (tg.parent_maps_len > 0) tg_copy_shared_contents(tg.parent_maps, tg.parent_maps_len);
    if (tg.parent_maps_len > 0) tg_track_before_clone(tg.parent_maps, tg.parent_maps_len);
    child = tg_clone_on_stack((char *)stk + CHILD_STACK, snapshot_child);
    tg_track_after_clone();
    for (int i = 0; i < tg_ndontfork; i++)
      tg_sys3(SYS_madvise, tg_dontfork[i].start, tg_dontfork[i].end - tg_dontfork[i].start, MADV_DONTFORK);
    for (int i = 0; i < nsm; i++) tg_sys3(SYS_madvise, smaps_df[i].start, smaps_df[i].end - smaps_df[i].start, MADV_DONTFORK);
    tg_sys2(SYS_munmap, stk, TG_CHILD_REGION);
    tg_free_shared_copies();
    /* a tree: every process is captured before any resumes */
    /* (with the Unix sockets whose peer is in another process: the daemon checks that it is in the app) */
    static char unmatched[8192];
    size_t un = tg_res_tree ? tg_unix_unmatched(unmatched + 8, sizeof unmatched - 8) : 0;
    if (un) memcpy(unmatched, ",\"unix\":", 8);
    else if (tg_res_tree) snprintf(unmatched, sizeof unmatched, ",\"unix\":\"too many to list\"");
    if (child > 0 && tg.hold && hold_for("captured", "RESUME", unmatched) != 0) {
      tg_sys2(SYS_kill, child, SIGKILL);
      siginfo_t si;
      while (tg_sys5(SYS_waitid, P_PID, child, &si, WEXITED | __WALL, 0) == -EINTR) {}
      child = -ECHILD;
    }
  }
  tg.child = child;
  tg.capturing = 0;
  __atomic_store_n(&tg.release_gen, gen, __ATOMIC_SEQ_CST);
  futex_wake(&tg.release_gen, 1 << 30);
  tg.t_resumed_ns = tg_now_ns(CLOCK_MONOTONIC);
}

/* ---- stopping every thread ---- */

struct tid_map { int htid, tid; };
static struct tid_map signaled[TG_MAX_THREADS];
static int nsignaled;

static int ns_tid_of(int htid) {
  char path[64], status[2048];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", htid);
  if (tg_read_file(path, status, sizeof status) <= 0) return -1;
  return last_nspid(status);
}

/* Signal every thread not yet signaled; returns how many were newly signaled, or -1. */
static int signal_new_threads(char *err, size_t errlen) {
  int dfd = (int)tg_sys3(SYS_open, "/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) { snprintf(err, errlen, "cannot list threads: open /proc/self/task: %s", strerror(-dfd)); return -1; }
  char buf[8192];
  int added = 0;
  for (;;) {
    long n = tg_sys3(SYS_getdents64, dfd, buf, sizeof buf);
    if (n < 0) { snprintf(err, errlen, "cannot list threads: %s", strerror((int)-n)); tg_sys1(SYS_close, dfd); return -1; }
    if (n == 0) break;
    for (long off = 0; off < n;) {
      struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(buf + off);
      off += d->reclen;
      if (d->name[0] < '0' || d->name[0] > '9') continue;
      int htid = atoi(d->name), known = 0;
      for (int i = 0; i < nsignaled; i++) if (signaled[i].htid == htid) { known = 1; break; }
      if (known) continue;
      int tid = ns_tid_of(htid);
      if (tid < 0 || tid == tg.manager_tid) continue;
      if (nsignaled >= TG_MAX_THREADS) { snprintf(err, errlen, "more than %d threads", TG_MAX_THREADS); tg_sys1(SYS_close, dfd); return -1; }
      long r = tg_sys3(SYS_tgkill, tg.pid, tid, tg.sig);
      if (r == -ESRCH) continue;
      if (r < 0) { snprintf(err, errlen, "cannot signal thread %d: %s", tid, strerror((int)-r)); tg_sys1(SYS_close, dfd); return -1; }
      signaled[nsignaled].htid = htid;
      signaled[nsignaled].tid = tid;
      nsignaled++;
      added++;
    }
  }
  tg_sys1(SYS_close, dfd);
  return added;
}

static int thread_gone(int htid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d", htid);
  struct stat st;
  return stat(path, &st) != 0;
}

/* Parks every application thread. On failure releases those already parked. */
static int stop_all(char *err, size_t errlen) {
  nsignaled = 0;
  tg.nslots = 0;
  tg.parked = 0;
  tg.stop_gen++;
  tg.capturing = 1;
  uint64_t deadline = tg_now_ns(CLOCK_MONOTONIC) + 5000000000ull;
  for (;;) {
    int added = signal_new_threads(err, errlen);
    if (added < 0) goto fail;
    for (;;) {
      int parked = __atomic_load_n(&tg.parked, __ATOMIC_SEQ_CST);
      int expected = nsignaled;
      if (parked >= expected) break;
      /* a thread that exited after being signaled never parks */
      int gone = 0;
      for (int i = 0; i < nsignaled; i++) if (thread_gone(signaled[i].htid)) gone++;
      if (parked >= expected - gone && gone > 0) {
        /* drop exited threads from the list */
        int j = 0;
        for (int i = 0; i < nsignaled; i++) if (!thread_gone(signaled[i].htid)) signaled[j++] = signaled[i];
        nsignaled = j;
        continue;
      }
      if (tg_now_ns(CLOCK_MONOTONIC) > deadline) {
        snprintf(err, errlen,
                 "only %d of %d threads stopped within 5 s (a thread may block signal %d with a raw "
                 "syscall, or be stuck in uninterruptible sleep); checkpoint abandoned, the app keeps running",
                 parked, expected, tg.sig);
        goto fail;
      }
      futex_wait(&tg.parked, (uint32_t)parked, 2000000);
    }
    if (added == 0) break;
  }
  return 0;
fail:
  tg.capturing = 0;
  __atomic_store_n(&tg.release_gen, tg.stop_gen, __ATOMIC_SEQ_CST);
  futex_wake(&tg.release_gen, 1 << 30);
  return -1;
}

/* ---- the control socket ---- */

static void reply(const char *fmt, ...) {
  if (tg.conn_fd < 0) return;
  static char buf[10240]; /* the manager's thread only; room for a tree's list of Unix peers */
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  for (int off = 0; off < n;) {
    ssize_t w = send(tg.conn_fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* the caller went away: the app goes on regardless */
    off += (int)w;
  }
}

static void reply_error(const char *event, const char *msg) {
  char esc[1024];
  tg_json_escape(msg, esc, sizeof esc);
  reply("{\"event\":\"%s\",\"ok\":false,\"error\":\"%s\"}", event, esc);
}

static int host_pid(void) {
  char status[4096];
  if (tg_read_file("/proc/self/status", status, sizeof status) <= 0) return -1;
  const char *p = strstr(status, "NSpid:");
  return p ? atoi(p + 6) : -1;
}

static int count_threads(void) {
  char status[4096];
  uint64_t n = 0;
  if (tg_read_file("/proc/self/status", status, sizeof status) <= 0) return -1;
  tg_status_field_u64(status, "Threads", &n, 0);
  return (int)n;
}

static int after_restore(void);

/* CHECKPOINT <path> [full|incremental] [parent=<seq>] [tracking=uffd|hash|none] [fifo] */
static int img_is_fifo;
static void drop_image(const char *path) {
  if (!img_is_fifo) unlink(path);
}

static void do_checkpoint(char *args) {
  char err[600] = {0};
  char *save = NULL;
  char *path = strtok_r(args, " ", &save);
  if (!path) path = args;
  tg.want_incremental = 0;
  tg.parent_seq = 0;
  tg.hold = tg.tree = 0;
  tg_res_ext_unix_closed = 0;
  int to_fifo = 0, use_fd = 0;
  img_is_fifo = 0;
  for (char *w = strtok_r(NULL, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
    if (strcmp(w, "incremental") == 0) tg.want_incremental = 1;
    else if (strcmp(w, "full") == 0) tg.want_incremental = 0;
    else if (strncmp(w, "parent=", 7) == 0) tg.parent_seq = strtoull(w + 7, NULL, 10);
    else if (strcmp(w, "fifo") == 0) to_fifo = img_is_fifo = 1; /* the path is a FIFO the caller reads: stream the image */
    else if (strcmp(w, "fd") == 0) use_fd = 1; /* the caller opened the path and passed it with the request (SCM_RIGHTS) */
    else if (strcmp(w, "hold") == 0) tg.hold = 1; /* wait at each barrier */
    else if (strcmp(w, "tree") == 0) tg.tree = 1; /* part of a process tree's cut */
    else if (strcmp(w, "external-unix=closed") == 0) tg_res_ext_unix_closed = 1; /* run --external-unix closed */
    else if (strcmp(w, "tracking=hash") == 0) { if (tg_trk.mode == TG_TRACK_NONE) tg_trk.requested = TG_TRACK_HASH; }
    else if (strcmp(w, "tracking=uffd") == 0) { if (tg_trk.mode == TG_TRACK_NONE) tg_trk.requested = TG_TRACK_UFFD; }
    else if (strcmp(w, "tracking=none") == 0) { if (tg_trk.mode == TG_TRACK_NONE) tg_trk.requested = TG_TRACK_OFF; }
    else { snprintf(err, sizeof err, "unknown CHECKPOINT option '%s'", w); reply_error("error", err); return; }
  }
  if (path[0] != '/') { reply_error("error", "CHECKPOINT needs an absolute path"); return; }
  tg_res_tree = tg.hold && tg.tree;
  if (tg_precheck_fds(err, sizeof err) != 0) { reply_error("error", err); return; }
  if (tg_precheck_timers(err, sizeof err) != 0) { reply_error("error", err); return; }
  if (tg_precheck_attrs(err, sizeof err) != 0) { reply_error("error", err); return; }
  if (tg_precheck_creds(err, sizeof err) != 0) { reply_error("error", err); return; }
  int pfd[2];
  fd_guard_lock();
  int pe = pipe2(pfd, O_CLOEXEC) != 0 ? errno : 0;
  if (!pe) { tg.err_rd = pfd[0]; tg.err_wr = pfd[1]; }
  fd_guard_unlock();
  if (pe) { snprintf(err, sizeof err, "pipe: %s", strerror(pe)); reply_error("error", err); return; }
  if (use_fd) {
    /* the daemon opened the image (its store stays private to it: a process of another user could
     * not create a file there) and passed it */
    fd_guard_lock();
    tg.img_fd = tg.passed_fd;
    tg.passed_fd = -1;
    fd_guard_unlock();
    if (tg.img_fd < 0) errno = EBADF;
    else if (!to_fifo && fcntl(tg.img_fd, F_SETFL, 0) != 0) guarded_close(&tg.img_fd);
  } else if (to_fifo) {
    /* the caller opens the read end concurrently: wait up to 5 s for it */
    for (int i = 0; i < 500; i++) {
      fd_guard_lock();
      tg.img_fd = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK);
      int oe = errno;
      fd_guard_unlock();
      if (tg.img_fd >= 0 || oe != ENXIO) { errno = oe; break; }
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL);
    }
  } else {
    fd_guard_lock();
    tg.img_fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int oe = errno;
    fd_guard_unlock();
    errno = oe;
  }
  if (use_fd && tg.img_fd < 0) {
    snprintf(err, sizeof err, "CHECKPOINT ... fd: no image fd came with the request (SCM_RIGHTS)");
    reply_error("error", err);
    goto out;
  }
  if (to_fifo && tg.img_fd >= 0) {
    struct stat st;
    if (fstat(tg.img_fd, &st) != 0 || !S_ISFIFO(st.st_mode)) { guarded_close(&tg.img_fd); errno = EINVAL; }
    else {
      if (fcntl(tg.img_fd, F_SETFL, 0) != 0) guarded_close(&tg.img_fd); /* blocking writes from here on */
      /* 1 MiB in flight (one PAGES record): 16x fewer wake-ups of the reader than the default 64 KiB.
       * Refused (pipe-max-size lowered, pipe quota): the default size works, only slower. */
      else if (fcntl(tg.img_fd, F_SETPIPE_SZ, 1 << 20) < 0 && errno != EPERM && errno != EBUSY) guarded_close(&tg.img_fd);
    }
  }
  if (tg.img_fd < 0) {
    int e = errno;
    /* a process that switched users (nginx workers' `user` directive): the daemon's store is private */
    if (e == EACCES && geteuid() != 0)
      snprintf(err, sizeof err, "cannot create image %s: %s: this process runs as uid %d, which may not write into the daemon's private store (a daemon of this version passes the image's fd)",
               path, strerror(e), (int)geteuid());
    else snprintf(err, sizeof err, "cannot create image %s: %s", path, strerror(e));
    reply_error("error", err);
    goto out;
  }
  int attempt = 0;
again:
  tg.seq++;
  tg.pid = getpid();
  tg.ppid = getppid();
  tg.child = 0;
  tg.t_stop_ns = tg_now_ns(CLOCK_MONOTONIC);
  if (stop_all(err, sizeof err) != 0) {
    tg.seq--;
    drop_image(path); /* before the reply: the caller may look for the file at once */
    reply_error("error", err);
    goto out;
  }
  /* Park ourselves too: our handler snapshots the process and releases everyone. */
  tg_sys3(SYS_tgkill, tg.pid, tg.manager_tid, tg.sig);
  /* A restored process resumes right here, in the manager thread. */
  if (tg_restart.restored != tg.seen_restored) { after_restore(); return; }
  uint64_t downtime = tg.t_resumed_ns - tg.t_stop_ns;
  if (tg.child <= 0) {
    if (tracker_touched) tg_track_after_snapshot(0, 0); /* (a tree's cut called off while parked: the base holds) */
    if (children_err[0]) tg.seq--;
    else snprintf(err, sizeof err, "cannot create the snapshot process: %s", strerror((int)-tg.child));
    drop_image(path);
    reply_error("error", children_err[0] ? children_err : err);
    goto out;
  }
  /* stop_ns/resumed_ns: CLOCK_MONOTONIC, the host's clock: a tree's downtime is the first stop to the last resume */
  reply("{\"event\":\"resumed\",\"ok\":true,\"downtime_ns\":%llu,\"threads\":%d,\"seq\":%llu,\"stop_ns\":%llu,\"resumed_ns\":%llu}",
        (unsigned long long)downtime, tg.nslots, (unsigned long long)tg.seq, (unsigned long long)tg.t_stop_ns,
        (unsigned long long)tg.t_resumed_ns);
  guarded_close(&tg.err_wr);
  char msg[8192] = {0};
  size_t got = 0;
  for (;;) {
    ssize_t r = read(tg.err_rd, msg + got, sizeof msg - 1 - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
    if (got >= sizeof msg - 1) break;
  }
  siginfo_t si;
  memset(&si, 0, sizeof si);
  while (waitid(P_PID, (id_t)tg.child, &si, WEXITED | __WALL) != 0 && errno == EINTR) {}
  uint64_t total = tg_now_ns(CLOCK_MONOTONIC) - tg.t_stop_ns;
  /* "DONTFORK start end" lines: mappings the snapshot lacked; remember them for the retry */
  int learned = 0;
  char *line = msg;
  while (strncmp(line, "DONTFORK ", 9) == 0) {
    unsigned long long a = 0, b = 0;
    if (sscanf(line + 9, "%llx %llx", &a, &b) == 2 && tg_ndontfork < TG_MAX_DONTFORK) {
      tg_dontfork[tg_ndontfork++] = (struct tg_range){a, b};
      tg.dontfork_seen = 1; /* from now on every snapshot asks smaps too */
      learned++;
    }
    char *e = strchr(line, '\n');
    if (!e) break;
    line = e + 1;
  }
  if (line != msg) memmove(msg, line, strlen(line) + 1);
  char *nl = strchr(msg, '\n');
  if (nl) *nl = 0;
  int ok = si.si_code == CLD_EXITED && si.si_status == 0 && strncmp(msg, "OK ", 3) == 0;
  if (!ok && learned && attempt++ == 0) {
    /* Once more, now that the agent knows those mappings. The child wrote nothing (it checks
     * before the first byte), so the same image fd goes on; the tracker starts over (full). */
    tg_track_after_snapshot(0, 0);
    tg.seq--;
    guarded_close(&tg.err_rd);
    fd_guard_lock();
    int pe2 = pipe2(pfd, O_CLOEXEC) != 0 ? errno : 0;
    if (!pe2) { tg.err_rd = pfd[0]; tg.err_wr = pfd[1]; }
    fd_guard_unlock();
    if (pe2) { snprintf(err, sizeof err, "pipe: %s", strerror(pe2)); drop_image(path); reply_error("done", err); goto out; }
    goto again;
  }
  tg_track_after_snapshot(ok, tg.seq);
  if (ok && attempt > 0 && !tg_trk.incremental)
    snprintf(tg_trk.reason, sizeof tg_trk.reason,
             "the first snapshot lacked mappings marked MADV_DONTFORK outside the agent's view; captured again as a full image");
  if (ok) {
    unsigned long long bytes = 0, pages = 0, written = 0;
    sscanf(msg + 3, "%llu %llu %llu", &bytes, &pages, &written);
    tg_trk.pages_written = written; /* counted by the child in hash mode */
    char reason[400];
    tg_json_escape(tg_trk.reason, reason, sizeof reason);
    reply("{\"event\":\"done\",\"ok\":true,\"bytes\":%llu,\"pages\":%llu,\"total_ns\":%llu,\"downtime_ns\":%llu,\"threads\":%d,\"seq\":%llu,"
          "\"kind\":\"%s\",\"parent\":%llu,\"tracking\":\"%s\",\"pages_scanned\":%llu,\"pages_written\":%llu,\"hot_pages\":%llu,\"full_reason\":\"%s\"}",
          bytes, pages, (unsigned long long)total, (unsigned long long)downtime, tg.nslots, (unsigned long long)tg.seq,
          tg_trk.incremental ? "incremental" : "full", tg_trk.incremental ? (unsigned long long)tg.parent_seq : 0ull,
          tg_trk.mode == TG_TRACK_UFFD ? "uffd" : tg_trk.mode == TG_TRACK_HASH ? "hash" : "none", (unsigned long long)tg_trk.pages_scanned,
          (unsigned long long)tg_trk.pages_written, (unsigned long long)tg_trk.hot_pages, tg_trk.incremental ? "" : reason);
  } else {
    if (strncmp(msg, "ERR ", 4) == 0) memmove(msg, msg + 4, strlen(msg + 4) + 1);
    else if (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED)
      snprintf(msg, sizeof msg, "the snapshot writer was killed by signal %d", si.si_status);
    else if (!msg[0]) snprintf(msg, sizeof msg, "the snapshot writer exited with status %d", si.si_status);
    drop_image(path);
    reply_error("done", msg);
  }
out:
  guarded_close(&tg.img_fd);
  guarded_close(&tg.err_rd);
  guarded_close(&tg.err_wr);
  tg_track_idle(); /* after the reply: the daemon commits meanwhile */
}

static int listen_on(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); /* accepted in the manager after poll */
  if (fd < 0) return -1;
  /* high, out of the way of a program that takes low numbers for itself (`exec 3<file` in a
   * shell would otherwise replace the agent's socket) */
  struct rlimit nl;
  if (getrlimit(RLIMIT_NOFILE, &nl) == 0 && nl.rlim_cur >= 256) {
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, (int)(nl.rlim_cur > 1124 ? 1024 : nl.rlim_cur - 100));
    if (hi >= 0) { close(fd); fd = hi; } /* else: a low fd still works */
  }
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  unlink(path); /* a stale socket of an earlier run */
  /* 0600 before listen(): only the daemon's user may ask for a checkpoint, whatever the app's umask */
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || chmod(path, 0600) != 0 || listen(fd, 8) != 0) {
    fprintf(stderr, "tardigrade agent: cannot listen on %s: %s\n", path, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* The restorer armed dirty-page tracking on the restored memory before any thread ran (blob.c):
 * the tracker takes its uffd, with the restored image as its base (track.c). */
static void adopt_tracking(void) {
  int uffd = tg_restart.track_uffd;
  if (uffd < 0) return;
  long stk = tg_sys6l(SYS_mmap, 0, TG_CHILD_REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if ((unsigned long)stk > -4096UL) {
    tg_restart.track_uffd = -1;
    close(uffd); /* the next checkpoint is full */
    return;
  }
  tg.child_stack = (uint64_t)stk; /* (the tracker leaves this region out) */
  long n = tg_read_file("/proc/self/maps", (char *)stk, MAPS_BUF);
  if (n <= 0 || tg_track_adopt(uffd, tg.seq, (char *)stk, n) != 0) {
    if (n <= 0) close(uffd);
  }
  tg_restart.track_uffd = -1;
  tg_sys2(SYS_munmap, stk, TG_CHILD_REGION);
  tg.child_stack = 0;
}

/* The manager resumes here (inside do_checkpoint) in a restored process. */
static int after_restore(void) {
  tg.seen_restored = tg_restart.restored;
  /* Our old fds do not exist in the restored process, and their numbers may be the application's by
   * now: forget them without closing. */
  tg.listen_fd = tg.conn_fd = tg.img_fd = tg.err_rd = tg.err_wr = tg.passed_fd = -1;
  tg.child = 0;
  tg.pid = getpid();
  tg.child_stack = 0; /* the snapshot's region of the checkpoint is gone */
  tg_track_reset();
  adopt_tracking();
  tg_ranges_after_restore(); /* files-ranges.c: no copy-before-write left on */
  for (int i = 0; i < 5000 && __atomic_load_n(&tg_restart.pending, __ATOMIC_SEQ_CST) > 0; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  if (__atomic_load_n(&tg_restart.pending, __ATOMIC_SEQ_CST) == 0 && tg_restart.blob_addr)
    munmap((void *)tg_restart.blob_addr, tg_restart.blob_len);
  if (tg_restart.sock_path[0]) {
    memcpy(tg.sock_path, tg_restart.sock_path, sizeof tg.sock_path);
    tg.sock_path[sizeof tg.sock_path - 1] = 0;
  }
  if (tg_restart.sock_base[0]) {
    memcpy(tg.sock_base, tg_restart.sock_base, sizeof tg.sock_base);
    tg.sock_base[sizeof tg.sock_base - 1] = 0;
  }
  tg.listen_fd = listen_on(tg.sock_path);
  return 0;
}

/* One byte of the request; an fd passed with it (SCM_RIGHTS: the image the daemon opened) goes to
 * tg.passed_fd (a second one is closed). Received under fd_guard once the socket is readable, so a
 * fork meanwhile never copies an fd tg does not name. */
static ssize_t recv_byte(char *c) {
  struct pollfd pfd = {tg.conn_fd, POLLIN, 0};
  if (poll(&pfd, 1, -1) < 0) return -1;
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int) * 4)]; } u;
  struct iovec iov = {c, 1};
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = u.buf;
  m.msg_controllen = sizeof u.buf;
  fd_guard_lock();
  ssize_t r = recvmsg(tg.conn_fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  int e = errno;
  if (r > 0)
  for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    size_t nfd = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfd; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
      if (tg.passed_fd < 0) {
        /* high, out of the way of the app's numbers, as the agent's other fds */
        int hi = fcntl(fd, F_DUPFD_CLOEXEC, tg.listen_fd > 100 ? tg.listen_fd - 60 : 3);
        if (hi >= 0) { close(fd); fd = hi; }
        tg.passed_fd = fd;
      } else {
        close(fd);
      }
    }
  }
  fd_guard_unlock();
  if (r < 0 && (e == EAGAIN || e == EWOULDBLOCK)) e = EINTR; /* (readable, then not: look again) */
  errno = e;
  return r;
}

/* Only the daemon (root, or the user the app was started by) and the app's own user may talk to
 * the agent; the socket file's mode (0600) says the same, this checks it on every connection. */
static int peer_allowed(int fd) {
  struct ucred cr;
  socklen_t l = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) != 0) return 0;
  return cr.uid == 0 || cr.uid == geteuid() || cr.uid == getuid();
}

static void serve_one(void) {
  char line[512];
  size_t n = 0;
  guarded_close(&tg.passed_fd);
  while (n < sizeof line - 1) {
    ssize_t r = recv_byte(line + n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { guarded_close(&tg.passed_fd); return; }
    if (line[n] == '\n') break;
    n++;
  }
  line[n] = 0;
  if (strcmp(line, "PING") == 0) {
    reply("{\"ok\":true,\"pid\":%d,\"hostpid\":%d,\"threads\":%d,\"restored\":%d,\"seq\":%llu,\"base\":%llu}", getpid(), host_pid(),
          count_threads(), tg_restart.restored, (unsigned long long)tg.seq, (unsigned long long)tg_trk.base_seq);
  } else if (strncmp(line, "CHECKPOINT ", 11) == 0) {
    do_checkpoint(line + 11);
  } else {
    reply("{\"ok\":false,\"error\":\"unknown request\"}");
  }
  guarded_close(&tg.passed_fd); /* not taken by the checkpoint */
}

static void *manager_main(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  sigdelset(&all, tg.sig);
  tg_real_pthread_sigmask(SIG_SETMASK, &all, NULL);
  prctl(PR_SET_NAME, "tg-agent");
  tg.manager_tid = (int)tg_sys0(SYS_gettid);
  for (;;) {
    if (tg.listen_fd < 0) return NULL;
    /* wait in poll, not in accept: a blocked accept holds the lowest free fd number reserved until
     * a connection comes, and the app's dup2() onto that number fails with EBUSY meanwhile (bash's
     * `exec 3<file`, node's spawn with extra stdio); the listening socket is non-blocking */
    struct pollfd pfd = {tg.listen_fd, POLLIN, 0};
    int pr = poll(&pfd, 1, -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      return NULL;
    }
    fd_guard_lock(); /* the listening socket is non-blocking: never held across a wait */
    int c = accept4(tg.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    int ae = errno;
    if (c >= 0) {
      /* off the low numbers at once, as the listening socket (an app's dup2() onto the number the
       * accept took, in these few microseconds, still gets EBUSY: a known limit) */
      int hi = fcntl(c, F_DUPFD_CLOEXEC, tg.listen_fd > 100 ? tg.listen_fd - 50 : 3);
      if (hi >= 0) { close(c); c = hi; }
      tg.conn_fd = c;
    }
    fd_guard_unlock();
    if (c < 0) {
      if (ae == EINTR || ae == ECONNABORTED || ae == EAGAIN || ae == EWOULDBLOCK) continue;
      return NULL;
    }
    if (!peer_allowed(c)) { guarded_close(&tg.conn_fd); continue; }
    int listen_before = tg.listen_fd;
    serve_one();
    /* after a restore, conn_fd was reset (it does not exist any more) */
    if (tg.conn_fd == c && tg.listen_fd == listen_before) guarded_close(&tg.conn_fd);
    tg.conn_fd = -1;
  }
}

static int start_manager(void);
static void tg_after_fork(void);
/* the child's atfork handler: fd_guard was taken by the prepare handler in this thread */
static void tg_after_fork_locked(void) {
  pthread_mutex_init(&fd_guard, NULL);
  tg_after_fork();
}

/* A process of a tree that ends takes its socket file with it (exit() does; a process killed or
 * ending with _exit leaves it, and the daemon sweeps it). Not in a forked child that has not got
 * its own manager yet: the path is then the parent's. */
static void unlink_own_socket(void) {
  if (tg.active && tg.listen_fd >= 0 && tg.pid == getpid() && strcmp(tg.sock_path, tg.sock_base) != 0) unlink(tg.sock_path);
}

__attribute__((constructor)) static void tg_agent_init(void) {
  tg.listen_fd = tg.conn_fd = tg.img_fd = tg.err_rd = tg.err_wr = tg.passed_fd = -1;
  tg_real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  tg_real_pthread_sigmask = (sigmask_fn)dlsym(RTLD_NEXT, "pthread_sigmask");
  tg_waits_init();
  tg_attrs_init();
  tg.sig = SIGRTMAX;
  const char *sock = getenv("TARDIGRADE_SOCK");
  if (!sock || !*sock || !tg_real_sigaction || !tg_real_pthread_sigmask) return;
  /* Every process of the app has an agent: the launched one (also after it execs: a wrapper that
   * execs the real program keeps the PID) listens at TARDIGRADE_SOCK, every other one (a child that
   * exec'd, or was forked: tg_after_fork) at TARDIGRADE_SOCK.PID. */
  const char *root_pid = getenv("TARDIGRADE_AGENT_PID");
  if (strlen(sock) + 12 >= sizeof tg.sock_path) {
    fprintf(stderr, "tardigrade agent: TARDIGRADE_SOCK is too long (max %zu bytes)\n", sizeof tg.sock_path - 13);
    return;
  }
  strcpy(tg.sock_base, sock);
  if (root_pid && atoi(root_pid) == getpid()) strcpy(tg.sock_path, sock);
  else snprintf(tg.sock_path, sizeof tg.sock_path, "%s.%d", sock, getpid());
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = park_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  if (tg_real_sigaction(tg.sig, &sa, NULL) != 0) {
    fprintf(stderr, "tardigrade agent: cannot install signal %d handler: %s\n", tg.sig, strerror(errno));
    return;
  }
  tg.active = 1;
  tg.pid = getpid();
  if (start_manager() != 0) return;
  tg_ranges_init();
  /* registered once per program: exec runs this constructor again in the new program */
  atexit(unlink_own_socket);
  tg_forkgate_init();
  int fe = pthread_atfork(before_fork, fd_guard_unlock, tg_after_fork_locked);
  if (fe != 0) fprintf(stderr, "tardigrade agent: pthread_atfork: %s (children forked by this process run without an agent)\n", strerror(fe));
}

/* The manager thread (its signals blocked but the park signal). 0, or -1 (said on stderr). The
 * socket is made here, before the thread: a fork meanwhile must find it in tg.listen_fd. */
static int start_manager(void) {
  tg.listen_fd = listen_on(tg.sock_path);
  if (tg.listen_fd < 0) return -1;
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  /* the manager must never take the application's signals: it starts with them blocked */
  sigset_t all, old;
  sigfillset(&all);
  sigdelset(&all, tg.sig);
  tg_real_pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = pthread_create(&t, &attr, manager_main, NULL);
  tg_real_pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (e != 0) {
    fprintf(stderr, "tardigrade agent: cannot start manager thread: %s\n", strerror(e));
    tg.active = 0;
    return -1;
  }
  return 0;
}

/* In the child of a fork (glibc runs this in the thread that forked): everything of the parent's
 * agent that the child got a copy of (fds, the manager's state, the tracker) is dropped, and the
 * child gets a manager of its own, listening at TARDIGRADE_SOCK.PID. A fork cannot happen while the
 * threads are parked, so no checkpoint is in flight in the child. */
static void tg_after_fork(void) {
  if (!tg.active) return;
  int fds[] = {tg.listen_fd, tg.conn_fd, tg.img_fd, tg.err_rd, tg.err_wr, tg.passed_fd};
  for (size_t i = 0; i < sizeof fds / sizeof *fds; i++) if (fds[i] >= 0) tg_sys1(SYS_close, fds[i]);
  /* a connection the parent's manager was accepting as the fork happened is not in tg yet: every
   * socket named by the parent's path (its listening socket and the connections it accepted) goes */
  /* (the open fds from /proc/self/fd, not every number up to a limit: a fork costs a few syscalls
   * per open fd) */
  static int open_fds[4096];
  int nopen = 0, dfd = (int)tg_sys3(SYS_open, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd >= 0) {
    char buf[4096];
    long n;
    while ((n = tg_sys3(SYS_getdents64, dfd, buf, sizeof buf)) > 0)
      for (long off = 0; off < n;) {
        struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(buf + off);
        off += d->reclen;
        if (d->name[0] >= '0' && d->name[0] <= '9' && nopen < (int)(sizeof open_fds / sizeof *open_fds)) open_fds[nopen++] = atoi(d->name);
      }
    tg_sys1(SYS_close, dfd);
  } else {
    for (int fd = 0; fd < 1024; fd++) open_fds[nopen++] = fd; /* no /proc: every low number */
  }
  for (int i = 0; i < nopen; i++) {
    int fd = open_fds[i];
    struct sockaddr_un a;
    socklen_t al = sizeof a;
    if (fd == dfd || tg_sys3(SYS_getsockname, fd, &a, &al) != 0 || a.sun_family != AF_UNIX) continue;
    if (al > offsetof(struct sockaddr_un, sun_path) && strncmp(a.sun_path, tg.sock_path, sizeof a.sun_path) == 0) tg_sys1(SYS_close, fd);
  }
  tg.listen_fd = tg.conn_fd = tg.img_fd = tg.err_rd = tg.err_wr = tg.passed_fd = -1;
  tg_track_after_fork();
  tg_ranges_after_fork();
  tg.capturing = 0;
  tg.hold = tg.tree = 0;
  tg_res_ext_unix_closed = 0;
  tg.nslots = tg.parked = 0;
  tg.child = 0;
  tg.seq = 0;
  tg.pid = getpid();
  snprintf(tg.sock_path, sizeof tg.sock_path, "%s.%d", tg.sock_base, tg.pid);
  start_manager();
}
