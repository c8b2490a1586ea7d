/* Processes still running in the namespace when the application process has ended: a
 * daemonizing app (fork, parent exits, e.g. `redis-server --daemonize yes`) leaves its daemon
 * re-parented to our init. tardigrade follows the process it started, so the namespace ends
 * with it; the status file names what was left, for `tardigrade status` to say so. */
#include "launcher.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static long read_file(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = 0;
  return (long)n;
}

int tg_describe_leftovers(char *out, size_t cap) {
  out[0] = 0;
  DIR *d = opendir("/proc/self/task");
  if (!d) return 0;
  int count = 0;
  size_t o = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300], list[4096];
    snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
    if (read_file(path, list, sizeof list) <= 0) continue;
    char *save = NULL;
    for (char *w = strtok_r(list, " \n", &save); w; w = strtok_r(NULL, " \n", &save)) {
      char stat[512], cmd[200];
      snprintf(path, sizeof path, "/proc/%s/stat", w);
      if (read_file(path, stat, sizeof stat) <= 0) continue;
      char *rp = strrchr(stat, ')');
      if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X')) continue; /* exited: reaped below */
      if (strstr(stat, "(tg-snapshot) ")) continue; /* the agent's snapshot writer (native/agent/agent.h) */
      snprintf(path, sizeof path, "/proc/%s/cmdline", w);
      long n = read_file(path, cmd, sizeof cmd);
      for (long i = 0; i < n; i++) if (cmd[i] == 0) cmd[i] = ' ';
      while (n > 0 && cmd[n - 1] == ' ') cmd[--n] = 0;
      /* the pid as the app saw it: the last NSpid number */
      int nspid = 0;
      char status[2048];
      snprintf(path, sizeof path, "/proc/%s/status", w);
      if (read_file(path, status, sizeof status) > 0) {
        char *ns = strstr(status, "NSpid:");
        char *nl = ns ? strchr(ns, '\n') : NULL;
        if (nl) *nl = 0;
        for (char *q = ns ? ns + 6 : NULL; q && *q;) {
          while (*q == ' ' || *q == '\t') q++;
          int v = 0, any = 0;
          while (*q >= '0' && *q <= '9') { v = v * 10 + (*q++ - '0'); any = 1; }
          if (!any) break;
          nspid = v;
        }
      }
      count++;
      if (count <= 8 && o < cap) o += (size_t)snprintf(out + o, cap - o, "%spid %d (%s)", count > 1 ? ", " : "", nspid, n > 0 ? cmd : "?");
    }
  }
  closedir(d);
  if (count > 8 && o < cap) snprintf(out + o, cap - o, ", ...");
  return count;
}
