/* Deleted-but-open regular files (FD kind 20): files-deleted.c. Asked before the kinds of
 * native/resources/ by the agent's and the restorer's fd walks. */
#ifndef TG_FILES_DELETED_H
#define TG_FILES_DELETED_H
#include "../resources/resource.h"

TG_RES_HIDDEN extern const struct tg_fd_ops tg_fd_file_deleted;
/* 1: not a deleted file; 0: recorded; -1: refused (files_on 0: the app runs with --files none). */
TG_RES_HIDDEN int tg_files_deleted_describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                                            size_t errlen, int files_on);
/* The restorer's (restore.c): the tree's shared memory object that is this deleted file (the same
 * inode mapped shared by some process), an fd open on it in this process, or -1. NULL in the agent. */
TG_RES_HIDDEN extern int (*tg_deleted_shared_fd)(const struct tg_file_id *id);
#endif
