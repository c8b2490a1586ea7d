/* The fork gate of a process tree's cut (docs/native-interface.md, "Fork gate").
 *
 * The daemon lists the app's processes, then asks each one's agent to park; a process forked in
 * between is not in the cut, and one that exits in between leaves a hole: the daemon then tries the
 * whole cut again, and a tree that forks short-lived children faster than that (a shell loop, a
 * pre-forking server under load) was refused after 25 tries. So while a cut is being taken the
 * daemon keeps a file `cut.gate` beside the app's socket, and fork() in any process of the app
 * waits (in the pthread_atfork prepare handler, before glibc takes any lock) until the file is gone:
 * the processes already forked finish, the tree stops changing, and the cut holds. The file's mtime
 * bounds the wait: a gate older than TG_GATE_MAX_S seconds (a daemon killed during a cut) is ignored.
 * One stat per fork while no cut runs. posix_spawn and posix_spawnp (GNU make's way, and
 * python's subprocess where it can) run no fork handlers: wrapped here to wait the same, and so are
 * glibc's vfork() (an assembly entry that waits, then jumps to glibc's: vfork must return on its
 * caller's frame) and clone() for a new process (not a thread). A clone or vfork made with the raw
 * syscall (syscall(2), inline assembly) cannot be seen without changing what the app runs (a seccomp
 * filter would): its children are caught by the cut's look once all are parked, and the cut is
 * tried again (docs/engine.md, "Process trees"). */
#include "agent.h"
#include "../common/sys.h"

#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <spawn.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define TG_GATE_MAX_S 20

static char gate_path[sizeof tg.sock_base + 16];

TG_HIDDEN void tg_forkgate_init(void) {
  const char *slash = strrchr(tg.sock_base, '/');
  gate_path[0] = 0;
  if (!slash || (size_t)(slash - tg.sock_base) + sizeof "/cut.gate" > sizeof gate_path) return;
  memcpy(gate_path, tg.sock_base, (size_t)(slash - tg.sock_base));
  strcpy(gate_path + (slash - tg.sock_base), "/cut.gate");
}

TG_HIDDEN void tg_forkgate_wait(void) {
  if (!tg.active || !gate_path[0]) return;
  for (;;) {
    struct stat st;
    if (tg_sys2(SYS_stat, gate_path, &st) != 0) return; /* no cut (or not ours to see: another uid) */
    struct timespec now;
    if (tg_sys2(SYS_clock_gettime, CLOCK_REALTIME, &now) != 0) return;
    if (now.tv_sec - st.st_mtim.tv_sec > TG_GATE_MAX_S || st.st_mtim.tv_sec - now.tv_sec > TG_GATE_MAX_S) return; /* stale */
    struct timespec ms2 = {0, 2000000};
    tg_sys2(SYS_nanosleep, &ms2, NULL); /* the park signal may come here: this thread parks, then looks again */
  }
}

typedef int (*spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *, char *const[], char *const[]);

static int spawn_via(const char *name, pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *at,
                     char *const argv[], char *const envp[]) {
  spawn_fn real = (spawn_fn)dlsym(RTLD_NEXT, name);
  if (!real) return ENOSYS;
  tg_forkgate_wait();
  return real(pid, path, fa, at, argv, envp);
}

__attribute__((visibility("default"))) int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                                                       const posix_spawnattr_t *at, char *const argv[], char *const envp[]) {
  return spawn_via("posix_spawn", pid, path, fa, at, argv, envp);
}

__attribute__((visibility("default"))) int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                                                        const posix_spawnattr_t *at, char *const argv[], char *const envp[]) {
  return spawn_via("posix_spawnp", pid, file, fa, at, argv, envp);
}

/* vfork(): the assembly entry below calls this (the gate), then jumps to glibc's vfork with the
 * caller's return address still on the stack, as if called directly. */
static void *real_vfork;
__attribute__((used)) TG_HIDDEN void *tg_forkgate_vfork(void) {
  tg_forkgate_wait();
  if (!real_vfork) real_vfork = dlsym(RTLD_NEXT, "vfork");
  return real_vfork;
}
__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork,@function\n"
        "vfork:\n"
        "  sub $8, %rsp\n" /* (16-byte aligned for the call) */
        "  call tg_forkgate_vfork\n"
        "  add $8, %rsp\n"
        "  test %rax, %rax\n"
        "  jz 1f\n"
        "  jmp *%rax\n"
        "1:\n"
        "  jmp fork@PLT\n" /* (no glibc vfork found: a fork is a valid vfork) */
        ".size vfork, .-vfork\n");

typedef int (*clone_fn)(int (*)(void *), void *, int, void *, ...);

/* clone(): a new process waits at the gate (a thread does not: the cut parks threads of its own). */
__attribute__((visibility("default"))) int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...) {
  va_list ap;
  va_start(ap, arg);
  /* (the optional ones: read whatever the caller passed; glibc's clone reads them only when the flags say) */
  pid_t *ptid = va_arg(ap, pid_t *);
  void *tls = va_arg(ap, void *);
  pid_t *ctid = va_arg(ap, pid_t *);
  va_end(ap);
  static clone_fn real;
  if (!real) real = (clone_fn)dlsym(RTLD_NEXT, "clone");
  if (!real) { errno = ENOSYS; return -1; }
  if (!(flags & CLONE_THREAD)) tg_forkgate_wait();
  return real(fn, stack, flags, arg, ptid, tls, ctid);
}
