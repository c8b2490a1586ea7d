/* The directory of an app's agent sockets (and its files journal), made reachable for one more
 * user with POSIX ACL entries: a process of the app that switches to that user (nginx workers to
 * `nobody`, postgres to `postgres`) must still listen there and append to the journal, while the
 * directory stays closed to everyone else (docs/engine.md, "Processes of another user"). */
#ifndef TG_AGENTDIR_H
#define TG_AGENTDIR_H
#include <stddef.h>
#include <stdint.h>

/* sock_base: the app's agent socket path (its directory is the one opened). Grants uid write and
 * search on that directory, write on its files journal, search on every ancestor that others may
 * not search. 0, or -1 with err. Only root (or the owner of each) can do it: call it before the
 * process gives up root. */
__attribute__((visibility("hidden"))) int tg_grant_agent_dir(const char *sock_base, uint32_t uid, char *err, size_t errlen);
/* Read on path (the agent library the daemon keeps in its home: a program the process execs as
 * that user loads it again) and search on its ancestors, for uid. 0, or -1 with err. */
__attribute__((visibility("hidden"))) int tg_grant_read(const char *path, uint32_t uid, char *err, size_t errlen);
#endif
