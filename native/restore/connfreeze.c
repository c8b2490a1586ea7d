/* tardigrade-restore --freeze-connections PID INO:SND_SEQ:RCV_SEQ...: the first step of a planned
 * restore that keeps the app's TCP connections (the daemon has already dropped their traffic with
 * nftables, src/daemon/hold-connections.ts). Each connection of the running process PID is taken
 * with pidfd_getfd and put in TCP_REPAIR: from then on the kernel sends nothing for it, and when the
 * process is killed it closes without a FIN or a reset (the peer notices nothing). Its sequence
 * numbers are compared with the checkpoint's: equal, nothing was sent or received since, so the
 * checkpoint's memory and the restored connection agree ("same INO"); else the connection leaves
 * repair mode again and is restored closed ("moved INO WHY"): the daemon then lets its traffic
 * through, and the kill ends it as any dying process's connection. */
#include "restore.h"

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* the fd of process pid holding socket inode ino, or -1 */
static int fd_of(int pid, unsigned long long ino) {
  char path[64], link[64], want[64];
  snprintf(path, sizeof path, "/proc/%d/fd", pid);
  snprintf(want, sizeof want, "socket:[%llu]", ino);
  DIR *d = opendir(path);
  if (!d) return -1;
  int found = -1;
  for (struct dirent *e; found < 0 && (e = readdir(d));) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char lp[128];
    snprintf(lp, sizeof lp, "%s/%s", path, e->d_name);
    ssize_t n = readlink(lp, link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = 0;
    if (strcmp(link, want) == 0) found = atoi(e->d_name);
  }
  closedir(d);
  return found;
}

static int queue_seq(int s, int q, uint32_t *seq) {
  socklen_t l = sizeof *seq;
  return setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) == 0 && getsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, seq, &l) == 0 ? 0 : -1;
}

int tg_freeze_connections(int argc, char **argv) {
  if (argc < 1) { fprintf(stderr, "tardigrade-restore: --freeze-connections wants PID INO:SND_SEQ:RCV_SEQ...\n"); return 2; }
  int pid = atoi(argv[0]);
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd < 0) { fprintf(stderr, "tardigrade-restore: pidfd_open(%d): %s\n", pid, strerror(errno)); return 2; }
  for (int i = 1; i < argc; i++) {
    unsigned long long ino;
    unsigned snd, rcv;
    if (sscanf(argv[i], "%llu:%u:%u", &ino, &snd, &rcv) != 3) { fprintf(stderr, "tardigrade-restore: bad connection '%s' (INO:SND_SEQ:RCV_SEQ)\n", argv[i]); return 2; }
    int fd = fd_of(pid, ino);
    if (fd < 0) { printf("moved %llu the app no longer has it open\n", ino); continue; }
    int s = (int)syscall(SYS_pidfd_getfd, pfd, fd, 0);
    if (s < 0) { printf("moved %llu pidfd_getfd(fd %d): %s\n", ino, fd, strerror(errno)); continue; }
    int on = TCP_REPAIR_ON, no = TCP_NO_QUEUE, reuse = -1;
    socklen_t rl = sizeof reuse;
    if (getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &reuse, &rl) != 0) reuse = -1;
    uint32_t ls, lr;
    if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0) printf("moved %llu TCP_REPAIR: %s\n", ino, strerror(errno));
    else if (queue_seq(s, TCP_SEND_QUEUE, &ls) != 0 || queue_seq(s, TCP_RECV_QUEUE, &lr) != 0) printf("moved %llu TCP_QUEUE_SEQ: %s\n", ino, strerror(errno));
    else if (ls != snd || lr != rcv)
      printf("moved %llu it carried data since the checkpoint (%u bytes sent, %u received)\n", ino, ls - snd, lr - rcv);
    else {
      printf("same %llu\n", ino);
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &no, sizeof no);
      close(s); /* the process still holds it, in repair mode */
      continue;
    }
    /* not kept: out of repair again, so that the kill closes it as usual (its peer sees the end) */
    int off = TCP_REPAIR_OFF_NO_WP;
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &no, sizeof no);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
    /* leaving repair cleared SO_REUSEADDR: an accepted socket has its listener's, which a server's
     * restart relies on while this one lingers in TIME-WAIT */
    if (reuse >= 0) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse);
    close(s); /* the process still holds it, in repair mode */
  }
  close(pfd);
  return fflush(stdout) == 0 ? 0 : 2;
}
