/* tardigrade-init: starts a command under the agent in a new PID namespace
 * (docs/native-interface.md). */
#include "launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The app's umask (--umask OCT): the daemon itself runs under 077; -1 = inherit. */
static long app_umask = -1;

static int start_command(struct tg_launch *l, int *report_fd) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(p[0]);
    /* the application starts with stdio only (and the exec-error pipe, close-on-exec) */
    if (p[1] > 3) close_range(3, (unsigned)p[1] - 1, 0);
    close_range((unsigned)p[1] + 1, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    if (app_umask >= 0) umask((mode_t)app_umask);
    if (l->agent) {
      const char *old = getenv("LD_PRELOAD");
      char *v = malloc(strlen(l->agent) + (old ? strlen(old) : 0) + 2);
      if (!v) _exit(127);
      sprintf(v, old && *old ? "%s:%s" : "%s", l->agent, old);
      setenv("LD_PRELOAD", v, 1);
      setenv("TARDIGRADE_SOCK", l->sock, 1);
      char pidbuf[16];
      snprintf(pidbuf, sizeof pidbuf, "%d", (int)getpid());
      setenv("TARDIGRADE_AGENT_PID", pidbuf, 1);
      /* the seccomp filters the app inherits from tardigrade (a container's profile): the agent
       * refuses only filters the app installs itself (agent/attrs.c) */
      char st[4096];
      int sfd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
      ssize_t sn = sfd < 0 ? -1 : read(sfd, st, sizeof st - 1);
      if (sfd >= 0) close(sfd);
      const char *f = sn > 0 ? (st[sn] = 0, strstr(st, "\nSeccomp_filters:")) : NULL;
      if (f) {
        char base[24];
        snprintf(base, sizeof base, "%ld", strtol(f + 17, NULL, 10));
        setenv("TARDIGRADE_SECCOMP_BASE", base, 1);
      }
    }
    execvp(l->argv[0], l->argv);
    char m[32];
    int n = snprintf(m, sizeof m, "E%d\n", errno);
    if (write(p[1], m, (size_t)n) != n) _exit(126);
    _exit(127);
  }
  close(p[1]);
  *report_fd = p[0];
  return pid;
}

static void usage(void) {
  fprintf(stderr, "usage: tardigrade-init --status FILE --sock PATH --pidfile FILE [--agent LIB] [--umask OCT] -- CMD ARGS...\n");
  exit(2);
}

int main(int argc, char **argv) {
  struct tg_launch l;
  memset(&l, 0, sizeof l);
  l.go_fd = -1;
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) { i++; break; }
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--status") == 0) l.status_path = argv[++i];
    else if (strcmp(argv[i], "--sock") == 0) l.sock = argv[++i];
    else if (strcmp(argv[i], "--pidfile") == 0) l.pidfile = argv[++i];
    else if (strcmp(argv[i], "--agent") == 0) l.agent = argv[++i];
    else if (strcmp(argv[i], "--umask") == 0) {
      char *end = NULL;
      app_umask = strtol(argv[++i], &end, 8);
      if (!end || *end || end == argv[i] || app_umask < 0 || app_umask > 0777) usage();
    } else usage();
  }
  if (i >= argc || !l.status_path || !l.sock || !l.pidfile) usage();
  l.argv = argv + i;
  return tg_launch_main(&l, start_command);
}
