/* Internal interfaces of libtardigrade-agent.so. */
#ifndef TG_AGENT_H
#define TG_AGENT_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <ucontext.h>
#include "../common/image.h"

#define TG_HIDDEN __attribute__((visibility("hidden")))
/* per-thread agent state: initial-exec, so reading it in a signal handler never allocates */
#define TG_TLS __thread __attribute__((tls_model("initial-exec")))
#include "../common/readfile.h"
#include "../resources/resource.h"
#define TG_MAX_THREADS 4096
#define TG_MAX_HIDDEN_FDS 16
#define TG_MAX_DONTFORK 8192
#define TG_MAX_TIMERS 1024
/* the snapshot region: child stack, parent's maps, fd records */
#define TG_CHILD_STACK (1u << 20)
#define TG_MAPS_BUF (8u << 20)
#define TG_FDS_BUF (4u << 20)
#define TG_CHILD_REGION (TG_CHILD_STACK + TG_MAPS_BUF + TG_FDS_BUF)

struct tg_range { uint64_t start, end; };
TG_HIDDEN extern struct tg_range tg_dontfork[TG_MAX_DONTFORK];
TG_HIDDEN extern int tg_ndontfork;

/* What one parked thread recorded about itself in the park signal handler. */
struct tg_slot {
  int tid;
  int is_manager;
  ucontext_t *uc;
  uint64_t fs_base, gs_base, clear_child_tid, robust_head, robust_len, rseq_addr;
  uint32_t rseq_len, rseq_sig;
  uint64_t sigpending, shared_sigpending;
  char comm[16];
  struct tg_rec_thread_attrs attrs; /* its nice, scheduling, timer slack and affinity (attrs.c) */
};

struct tg_agent {
  int active;
  int sig;                      /* the agent's park signal (SIGRTMAX) */
  int pid, ppid, manager_tid;   /* namespace ids, recorded at each capture */
  char sock_path[108];          /* where this process's agent listens */
  char sock_base[108];          /* the app's socket: the launched process listens there, every other one at sock_base.PID */
  int hold;                     /* wait for the caller at each barrier (a process tree's cut, or a single process whose files are read at the cut) */
  int tree;                     /* part of a process tree's cut: an fd whose other end is in another process is the daemon's to check */
  int listen_fd, conn_fd, img_fd, err_rd, err_wr;
  int passed_fd; /* an fd that came with the request being served (SCM_RIGHTS), or -1 */
  volatile int capturing;
  volatile uint32_t stop_gen, release_gen;
  volatile int nslots, parked;
  struct tg_slot slots[TG_MAX_THREADS];
  uint64_t seq;
  int seen_restored;
  long child;                   /* snapshot writer */
  int pid_self, pagemap_fd;     /* in the snapshot child */
  uint64_t child_stack;         /* the snapshot child's stack (CHILD_STACK bytes), not part of images */
  char *parent_maps;            /* /proc/self/maps as the parent saw it at the snapshot */
  long parent_maps_len;
  int dontfork_overflow;
  int dontfork_seen; /* the application has used MADV_DONTFORK (set wherever a range is learned; sticky: such memory may move where the wrapper cannot see) */
  char *fds_buf;                /* FD and PIPE_DATA records, taken while parked */
  uint64_t fds_len, fds_nrec;
  char fds_err[600];
  int want_incremental;         /* this request */
  uint64_t parent_seq;
  uint64_t t_stop_ns, t_resumed_ns;
  struct sigaction app_action;  /* what the application set for our signal */
  int app_action_set;
};

TG_HIDDEN extern struct tg_agent tg;
/* waits.c, wrappers.c: how many times this thread was parked, and ran an application handler */
TG_HIDDEN extern TG_TLS uint32_t tg_thread_parks;
TG_HIDDEN extern TG_TLS uint32_t tg_thread_app_signals;
TG_HIDDEN void tg_waits_init(void);
TG_HIDDEN extern struct tg_restart_info tg_restart;
TG_HIDDEN extern void tg_resume_trampoline(void);

TG_HIDDEN uint64_t tg_now_ns(int clock);
TG_HIDDEN int tg_is_hidden_fd(int fd);

/* fds.c (the fd walk; the kinds are in native/resources/): classify one fd of this process. Returns 0 and fills rec/extra, or -1 with a message in err
 * naming the fd and why it cannot be captured. Uses only syscalls (safe in the snapshot child). */
TG_HIDDEN int tg_describe_fd(int fd, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                             size_t errlen);
/* The snapshot writer's process name (native/launcher/leftovers.c skips it). */
#define TG_SNAPSHOT_COMM "tg-snapshot"
/* children.c: 0 if this process has no child process (zombies count), else -1 naming them in err. */
TG_HIDDEN int tg_check_no_children(char *err, size_t errlen);
/* Checks every application fd; 0 if all are supported, else -1 with the first problem in err. */
TG_HIDDEN int tg_precheck_fds(char *err, size_t errlen);
/* The fd walk behind both: with emit set, writes every FD record and each kind's data records
 * (pipe contents, socket queues) through it. 0, or -1 with err. */
TG_HIDDEN int tg_walk_fds(tg_emit_fn emit, void *ctx, char *err, size_t errlen);

/* filestate.c: FILE_STATE records of the regular files held for writing (from the FD records in
 * fdrecs) or mapped shared and writable (from maps), each passed to put. -1 with err: a shared
 * writable mapping of a file too large to capture, or no room. */
TG_HIDDEN int tg_put_file_states(const char *fdrecs, uint64_t fdlen, const char *maps, long ml, tg_emit_fn put, void *ctx,
                                 char *err, size_t errlen);

/* filestate.c: copies the contents of shared writable file mappings (the snapshot does not freeze
 * them) while parked; the child finds a page's copy with tg_shared_copy (NULL: none); the parent
 * frees them after the clone. */
TG_HIDDEN void tg_copy_shared_contents(const char *maps, long ml);
TG_HIDDEN void tg_free_shared_copies(void);
TG_HIDDEN const void *tg_shared_copy(uint64_t addr);
TG_HIDDEN const char *tg_shared_copy_missed(void); /* a mapping that wanted a copy and got none: the capture refuses */

/* capture.c: the parent's part, while parked: fd records (and FILE_STATE records) into buf. */
TG_HIDDEN void tg_capture_fds(char *buf, uint64_t cap);
/* capture.c: runs in the snapshot child; writes the image to tg.img_fd; returns 0 or -1 with err. */
TG_HIDDEN int tg_capture_image(char *err, size_t errlen, uint64_t *bytes, uint64_t *pages);

/* timers.c: POSIX timers and interval timers. The precheck refuses (naming the timer id and clock)
 * a timer that cannot be recreated; the capture runs in the manager while every thread is parked
 * (timers are not inherited by the snapshot child); the child gets the result, or the error. */
/* attrs.c: prctl flags, personality, timer slack, affinity; seccomp refused */
TG_HIDDEN void tg_attrs_init(void);
TG_HIDDEN int tg_precheck_attrs(char *err, size_t errlen);
TG_HIDDEN void tg_capture_attrs(void);
/* forkgate.c: fork() waits while the daemon takes a tree's cut */
TG_HIDDEN void tg_forkgate_init(void);
TG_HIDDEN void tg_forkgate_wait(void);
TG_HIDDEN void tg_capture_own_thread_attrs(struct tg_rec_thread_attrs *t, int tid);
TG_HIDDEN void tg_capture_thread_attrs(const struct tg_rec_thread_attrs *own);
TG_HIDDEN const struct tg_rec_attrs *tg_captured_attrs(void);
/* creds.c: the CREDS record (every thread's credentials must be the same: refused otherwise) */
TG_HIDDEN int tg_precheck_creds(char *err, size_t errlen);
TG_HIDDEN void tg_capture_creds(void);
TG_HIDDEN void tg_capture_creds_fallback(void);
TG_HIDDEN const struct tg_rec_creds *tg_captured_creds(void);
TG_HIDDEN int tg_precheck_timers(char *err, size_t errlen);
TG_HIDDEN void tg_capture_timers(void);
TG_HIDDEN const char *tg_captured_timers(const struct tg_rec_timers **head, const struct tg_timer **timers);

/* maps.c */
struct tg_vma {
  uint64_t start, end, pgoff, ino;
  uint32_t prot, shared, devmaj, devmin;
  const char *path;
  size_t pathlen;
};
TG_HIDDEN int tg_parse_maps_line(const char *l, const char *end, struct tg_vma *v);
TG_HIDDEN int tg_vma_path_is(const struct tg_vma *v, const char *s);
TG_HIDDEN int tg_vma_special(const struct tg_vma *v); /* vdso, vvar, vsyscall */
TG_HIDDEN const char *tg_next_line(const char *l, const char *end);
/* A shared mapping whose path reads "NAME (deleted)" while its file still has a link in NAME's
 * directory (glibc's sem_open makes a semaphore under a temporary name, maps it, links it to its
 * real name and removes the temporary one): that name (NUL-terminated) in out. 1 if found, else 0
 * (the mapping is a deleted file's). */
TG_HIDDEN int tg_vma_relinked(const struct tg_vma *v, char *out, size_t cap);

/* files-ranges.c: the changed ranges of the app's files (docs/files.md) */
struct stat;
TG_HIDDEN void tg_ranges_init(void);
TG_HIDDEN int tg_files_on(void); /* the app's files are part of its checkpoints (not `run --files none`) */
TG_HIDDEN void tg_ranges_after_fork(void);
TG_HIDDEN void tg_ranges_before_fork(void);
TG_HIDDEN void tg_ranges_after_restore(void);
TG_HIDDEN void tg_ranges_opened(int fd, int flags, const struct stat *st);
TG_HIDDEN void tg_ranges_whole(int fd);
TG_HIDDEN void tg_ranges_before_truncate(int dirfd, const char *path, uint64_t from);

/* util */
TG_HIDDEN int tg_status_field_u64(const char *status, const char *key, uint64_t *out, int hex);
#endif
