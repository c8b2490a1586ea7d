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
 * python's subprocess where it can) run no fork handlers: wrapped here to wait the same. vfork
 * passes. */
#include "agent.h"
#include "../common/sys.h"

#include <dlfcn.h>
#include <errno.h>
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
