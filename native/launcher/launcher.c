/* The outer process: makes the PID namespace, forks its init, writes the pidfile once the
 * application runs, forwards termination signals, and exits with the init's exit code. */
#include "launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int tg_init_main(struct tg_launch *l, tg_start_app_fn start, int sync_fd);

void tg_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "tardigrade: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

void tg_write_status(const char *path, const char *json) {
  if (!path) return;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) { fprintf(stderr, "tardigrade: cannot write %s: %s\n", tmp, strerror(errno)); return; }
  size_t n = strlen(json);
  if (write(fd, json, n) != (ssize_t)n || write(fd, "\n", 1) != 1 || fsync(fd) != 0)
    fprintf(stderr, "tardigrade: cannot write %s: %s\n", tmp, strerror(errno));
  close(fd);
  if (rename(tmp, path) != 0) fprintf(stderr, "tardigrade: cannot rename %s: %s\n", tmp, strerror(errno));
}

void tg_write_pidfile(const char *path, int init, int app) {
  char line[64], tmp[4200];
  snprintf(line, sizeof line, "%d %d\n", init, app);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line) || close(fd) != 0 || rename(tmp, path) != 0)
    fprintf(stderr, "tardigrade: cannot write pidfile %s: %s\n", path, strerror(errno));
}

static pid_t init_pid;

/* A restored app's CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from where they were at the checkpoint
 * (as CRIU does): its processes live in a time namespace whose offsets make up for the difference
 * with this host's clocks (another host's, after a failover, may be hours behind: an app whose
 * deadlines are on that clock — node's timers, an absolute clock_nanosleep — would stall until
 * this host caught up). Made before the init is forked: every process of the app is created in it.
 * BOOTTIME gets the same offset (it stays MONOTONIC plus this host's suspended time). Without time
 * namespaces (a kernel without CONFIG_TIME_NS) the restore goes on with the host's clocks, and says so. */
static void set_app_clock(uint64_t app_ns) {
  struct timespec now;
  if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) tg_die("clock_gettime: %s", strerror(errno));
  int64_t off = (int64_t)app_ns - ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
  if (unshare(CLONE_NEWTIME) != 0) {
    fprintf(stderr, "tardigrade: warning: no time namespace for the app (%s): its CLOCK_MONOTONIC jumps by %+.3f s at the restore\n",
            strerror(errno), (double)-off / 1e9);
    return;
  }
  int64_t sec = off / 1000000000, nsec = off % 1000000000;
  if (nsec < 0) { nsec += 1000000000; sec--; }
  char buf[128];
  int n = snprintf(buf, sizeof buf, "monotonic %lld %lld\nboottime %lld %lld\n", (long long)sec, (long long)nsec, (long long)sec, (long long)nsec);
  int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, buf, (size_t)n) != n)
    tg_die("cannot set the app's clocks (/proc/self/timens_offsets, offset %+.3f s): %s", (double)off / 1e9, strerror(errno));
  close(fd);
}
/* The app's own terminals: a private mount namespace (mounts of the host still reach it: slave
 * propagation) with a devpts instance of its own on /dev/pts, where /dev/ptmx opens. Its ptys are
 * numbered from 0 whatever the host has, and a restore, made in a fresh instance the same way,
 * gets back the numbers the app knew (/dev/pts/N in /proc, utmp, tmux's state): resources/pty.c. */
static void private_devpts(void) {
  if (unshare(CLONE_NEWNS) != 0) tg_die("cannot create a mount namespace for the app's terminals: %s", strerror(errno));
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) tg_die("cannot make the app's mounts private (mount --make-rslave /): %s", strerror(errno));
  if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") != 0)
    tg_die("cannot mount the app's own devpts on /dev/pts: %s", strerror(errno));
}

static void forward(int sig) {
  if (init_pid > 0) kill(init_pid, sig);
}

static pid_t only_child_of(pid_t p) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", p, p);
  for (int tries = 0; tries < 200; tries++) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) { buf[n] = 0; return (pid_t)atoi(buf); }
    usleep(1000);
  }
  return -1;
}

int tg_launch_main(struct tg_launch *l, tg_start_app_fn start) {
  int sync[2];
  if (pipe2(sync, O_CLOEXEC) != 0) tg_die("pipe: %s", strerror(errno));
  if (unshare(CLONE_NEWPID) != 0)
    tg_die("cannot create a PID namespace: %s (tardigrade needs root or CAP_SYS_ADMIN)", strerror(errno));
  private_devpts();
  if (l->app_clock_ns) set_app_clock(l->app_clock_ns);
  init_pid = fork();
  if (init_pid < 0) tg_die("fork: %s", strerror(errno));
  if (init_pid == 0) {
    close(sync[0]);
    _exit(tg_init_main(l, start, sync[1]));
  }
  close(sync[1]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  char c = 0;
  ssize_t r;
  do r = read(sync[0], &c, 1); while (r < 0 && errno == EINTR);
  close(sync[0]);
  if (r == 1 && c == 'R' && l->pidfile) {
    tg_write_pidfile(l->pidfile, init_pid, only_child_of(init_pid));
  }
  int st = 0;
  while (waitpid(init_pid, &st, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  return 128 + WTERMSIG(st);
}
