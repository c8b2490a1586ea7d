/* The process layout shared by tardigrade-init (run) and tardigrade-restore: an outer process that
 * waits, a fresh PID namespace whose PID 1 is a tiny init, and the application below it. */
#ifndef TG_LAUNCHER_H
#define TG_LAUNCHER_H
#include <stdint.h>

#include <stddef.h>

struct tg_launch {
  const char *status_path;  /* JSON status written when the app ends or fails to start */
  const char *pidfile;      /* "<init host pid> <app host pid>\n" once started */
  const char *sock;         /* agent control socket */
  const char *agent;        /* run: path of libtardigrade-agent.so */
  const char *image;        /* restore: raw image */
  char **argv;              /* run: command */
  int verbose;
  int expect_ok;            /* restore: processes that each report "OK" (a process tree: several) */
  int go_fd;                /* restore: the init writes expect_ok bytes here once all said OK (-1: none) */
  uint64_t app_clock_ns;    /* restore: CLOCK_MONOTONIC as the app saw it at the checkpoint (0: the host's clocks) */
};

/* Creates the application inside PID 1 of the new namespace. Returns its PID (in the namespace) or
 * -1, and *report_fd: a pipe the new process uses to say whether it started (see init.c). */
typedef int (*tg_start_app_fn)(struct tg_launch *l, int *report_fd);

/* Runs the whole layout; returns the exit code for the outer process. */
int tg_launch_main(struct tg_launch *l, tg_start_app_fn start);

/* leftovers.c: processes other than zombies still in the namespace (children of its init), described
 * as "pid N (command), ..." in out; returns how many. */
int tg_describe_leftovers(char *out, size_t cap);

/* leftovers.c: the oldest live child of the init (not a zombie, not the snapshot writer): its host
 * pid (0 if none), its pid in the namespace in *nspid and its command line in cmd. */
int tg_oldest_leftover(int *nspid, char *cmd, size_t cap);

void tg_write_status(const char *path, const char *json);
/* "<init> <app>\n" (host pids) into path, atomically (path.tmp + rename). */
void tg_write_pidfile(const char *path, int init, int app);
void tg_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#endif
