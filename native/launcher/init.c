/* PID 1 of the application's PID namespace: starts the application (through the start function of
 * run or restore), tells the outer process when it runs, reaps orphans, forwards termination
 * signals, and records how the application ended in the status file. */
#include "launcher.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t app_pid;
static void forward(int sig) {
  if (app_pid > 0) kill(app_pid, sig);
}

static void json_str(const char *in, char *out, size_t cap) {
  size_t o = 0;
  for (; *in && o + 7 < cap; in++) {
    unsigned char ch = (unsigned char)*in;
    if (ch == '"' || ch == '\\') { out[o++] = '\\'; out[o++] = (char)ch; }
    else if (ch < 0x20) o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
    else out[o++] = (char)ch;
  }
  out[o] = 0;
}

/* Makes `nspid` (host pid `host`) the app's main process after the one followed (`was`) exited 0:
 * the pidfile names it (the daemon reads it for every operation), and its agent's control socket
 * (TARDIGRADE_SOCK.PID) is renamed to TARDIGRADE_SOCK, where the daemon talks to the app's main
 * process; the listening socket stays bound, so the agent goes on answering there. */
static void follow(struct tg_launch *l, pid_t was, int host, int nspid, const char *cmd) {
  app_pid = nspid;
  char self[32];
  ssize_t n = readlink("/proc/self", self, sizeof self - 1); /* our host pid: /proc is the host's */
  if (n > 0 && l->pidfile) {
    self[n] = 0;
    tg_write_pidfile(l->pidfile, atoi(self), host);
  } else if (n <= 0) {
    fprintf(stderr, "tardigrade: cannot read /proc/self: %s\n", strerror(errno));
  }
  int moved = 0;
  if (l->sock) {
    char own[4200];
    snprintf(own, sizeof own, "%s.%d", l->sock, nspid);
    /* its agent made the socket when it started (fork or exec); wait a little for a process that
     * is starting (at most 2 s: one without the agent makes the next checkpoint refuse, naming it) */
    for (int i = 0; i < 200 && !moved; i++) {
      if (rename(own, l->sock) == 0) moved = 1;
      else if (errno != ENOENT) break;
      else {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
      }
    }
  }
  fprintf(stderr, "tardigrade: the app's process %d exited (status 0) leaving pid %d (%s) running: tardigrade follows it as the app's main process%s\n",
          (int)was, nspid, cmd, moved || !l->sock ? "" : " (its agent does not answer: checkpoints will refuse)");
}

int tg_init_main(struct tg_launch *l, tg_start_app_fn start, int sync_fd) {
  setsid();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  int report = -1;
  app_pid = start(l, &report);
  if (app_pid <= 0) {
    tg_write_status(l->status_path, "{\"start_error\":\"could not create the application process\",\"exit_code\":2}");
    return 2;
  }
  /* The report pipe: run writes "E<errno>" if exec failed (EOF = exec'd); restore writes "OK" or
   * "ERR <message>" (EOF without OK = the restorer died). */
  char msg[1024] = {0};
  size_t got = 0;
  int oks = 0;
  for (;;) {
    ssize_t r = read(report, msg + got, sizeof msg - 1 - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
    if (l->image && l->expect_ok > 0) {
      /* a restore: every process of the tree says "OK\n" (or one says "ERR ...") */
      msg[got] = 0;
      char *line = msg, *e;
      int bad = 0;
      while ((e = strchr(line, '\n'))) {
        if (strncmp(line, "OK\n", 3) != 0) { bad = 1; break; }
        oks++;
        line = e + 1;
      }
      if (bad) { memmove(msg, line, strlen(line) + 1); got = strlen(msg); break; }
      memmove(msg, line, strlen(line) + 1);
      got = strlen(msg);
      if (oks == l->expect_ok) { strcpy(msg, "OK"); break; }
    }
    if (got >= sizeof msg - 1) break;
  }
  close(report);
  char *nl = strchr(msg, '\n');
  if (nl) *nl = 0;
  int failed = 0;
  char json[1400], esc[1100];
  if (msg[0] == 'E' && msg[1] != 'R') {
    int e = 0;
    sscanf(msg + 1, "%d", &e);
    char m[600];
    snprintf(m, sizeof m, "cannot execute %s: %s", l->argv && l->argv[0] ? l->argv[0] : "?", strerror(e));
    json_str(m, esc, sizeof esc);
    snprintf(json, sizeof json, "{\"exec_error\":\"%s\",\"exit_code\":127}", esc);
    fprintf(stderr, "tardigrade: %s\n", m);
    failed = 127;
  } else if (l->image && strcmp(msg, "OK") != 0) {
    char decoded[600];
    const char *why = strncmp(msg, "ERR ", 4) == 0 ? msg + 4 : "the restorer ended without finishing";
    if (strncmp(msg, "ERR #", 5) == 0) {
      /* from the blob (restore/blob.c): step, errno, value */
      static const char *steps[] = {"?", "unmapping the restorer", "placing the vDSO", "mapping application memory",
                                    "reading pages from the image (the PAGES record at image offset 0x%lx is truncated)", "checking page data (CRC mismatch in the PAGES record at image offset 0x%lx)",
                                    "setting memory protections", "restoring mm fields (PR_SET_MM_MAP)", "restoring signal handlers",
                                    "recreating a thread with its old TID",
                                    "reading the page data (malformed or truncated record at image offset 0x%lx)",
                                    "recreating a POSIX timer with its old id", "re-arming an interval timer (setitimer)",
                                    "restoring a thread's name",
                                    "reading a stored block from its pack file (block %lu of the restore plan)",
                                    "checking a stored block (bad header or CRC mismatch: block %lu of the restore plan)",
                                    "placing a stored block (outside the mappings being filled: block %lu of the restore plan)",
                                    "arming dirty-page tracking on the restored memory (a mapping could not be write-protected nor unregistered)",
                                    "handing the memory to the lazy page server",
                                    "giving a thread back its nice value, scheduling policy or timer slack",

                                    "giving the process back its user and group ids and capabilities (the value is the uid)"};
      int step = 0, e = 0;
      unsigned long v = 0;
      sscanf(msg + 5, "%d %d %lx", &step, &e, &v);
      char what[200];
      if (step == 4 || step == 5 || step == 10 || (step >= 14 && step <= 16)) snprintf(what, sizeof what, steps[step], v);
      else snprintf(what, sizeof what, "%s", step > 0 && step < (int)(sizeof steps / sizeof *steps) ? steps[step] : "?");
      snprintf(decoded, sizeof decoded, "restore failed while %s: %s (at 0x%lx); the image or the host differs from the checkpoint", what,
               e ? strerror(e) : "bad data", v);
      why = decoded;
    }
    json_str(why, esc, sizeof esc);
    snprintf(json, sizeof json, "{\"restore_error\":\"%s\",\"exit_code\":3}", esc);
    fprintf(stderr, "tardigrade-restore: %s\n", why);
    failed = 3;
  }
  if (failed) {
    if (l->go_fd >= 0) close(l->go_fd); /* the processes waiting for the word end (status 107) */
    kill(-1, SIGKILL);                  /* every process of the namespace: a tree's too */
    kill(app_pid, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {}
    tg_write_status(l->status_path, json);
    return failed;
  }
  if (l->image && l->go_fd >= 0) {
    /* every process of the tree is restored: let them all run */
    for (int i = 0; i < l->expect_ok; i++) {
      char go = 'G';
      while (write(l->go_fd, &go, 1) < 0 && errno == EINTR) {}
    }
    close(l->go_fd);
  }
  char ready = 'R';
  if (write(sync_fd, &ready, 1) != 1) fprintf(stderr, "tardigrade: cannot signal readiness: %s\n", strerror(errno));
  close(sync_fd);
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      tg_write_status(l->status_path, "{\"error\":\"lost track of the application\",\"exit_code\":1}");
      return 1;
    }
    if (p != app_pid) continue;
    /* a daemonizing app: the process followed exited 0 and left others running: follow the oldest */
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      int nspid = 0;
      char cmd[200];
      int host = tg_oldest_leftover(&nspid, cmd, sizeof cmd);
      if (host > 0) {
        follow(l, p, host, nspid, cmd);
        continue;
      }
    }
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    char left[700] = "";
    int nleft = WIFEXITED(st) ? tg_describe_leftovers(esc, 600) : 0; /* killed: its children just went with it */
    if (nleft > 0) {
      char lesc[700 - 40];
      json_str(esc, lesc, sizeof lesc);
      snprintf(left, sizeof left, ",\"left\":%d,\"left_desc\":\"%s\"", nleft, lesc);
    }
    if (WIFEXITED(st)) snprintf(json, sizeof json, "{\"exit_code\":%d%s}", code, left);
    else snprintf(json, sizeof json, "{\"signal\":%d,\"exit_code\":%d%s}", WTERMSIG(st), code, left);
    tg_write_status(l->status_path, json);
    return code;
  }
}
