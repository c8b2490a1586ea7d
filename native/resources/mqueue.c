/* POSIX message queues (mq_open): not supported yet, refused by name. Their fd looks like a regular
 * file named by a path relative to the mqueue filesystem (readlink says "/NAME"), so without this
 * check the file kind would record "/NAME" and the restore would reopen whatever has that path on
 * the root filesystem. Asked before file.c; claims only fds on an mqueue filesystem. */
#include "resource.h"

#include <errno.h>
#include <stdio.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TG_MQUEUE_MAGIC 0x19800202 /* linux/magic.h's MQUEUE_MAGIC */

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  (void)rec, (void)extra, (void)extra_cap;
  if (!S_ISREG(p->st->st_mode)) return 1;
  struct statfs fs;
  if (syscall(SYS_fstatfs, p->fd, &fs) != 0) return 1; /* file.c decides; a bad fd fails there */
  if ((unsigned long)fs.f_type != TG_MQUEUE_MAGIC) return 1;
  snprintf(err, errlen,
           "fd %d (POSIX message queue %s) cannot be checkpointed: message queues are not supported yet; close it in the application (mq_close) or run it without it",
           p->fd, p->target);
  return -1;
}

static int owns(uint32_t k) { (void)k; return 0; }

const struct tg_fd_ops tg_fd_mqueue = {.name = "mqueue", .describe = describe, .owns = owns};
