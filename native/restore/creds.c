/* The CREDS record given back (native/agent/creds.c captures it). Two halves:
 * - tg_check_creds, in the outer restorer before anything is created: a process whose user, groups
 *   or capabilities this restorer cannot give back (it is not root, or lacks a capability the
 *   process had) refuses the restore, naming the pid and uid; never restored as the restorer.
 * - tg_creds_to_blob, in stage 1: what the blob (creds-blob.h) sets in every thread last, after
 *   everything that needs privilege (set_tid, TCP_REPAIR, PR_SET_MM, uffd, timers with ids).
 *   Nothing is set when the process had the restorer's own credentials. */
#include "restore.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "../common/agentdir.h"
#include "../common/readfile.h"
#include "blob.h"

static int field_u64(const char *status, const char *key, uint64_t *out) {
  const char *p = strstr(status, key);
  if (!p) return -1;
  *out = strtoull(p + strlen(key), NULL, 16);
  return 0;
}

static int ids(const char *status, const char *key, uint32_t out[4]) {
  const char *p = strstr(status, key);
  if (!p) return -1;
  p += strlen(key);
  for (int i = 0; i < 4; i++) {
    char *e;
    out[i] = (uint32_t)strtoul(p, &e, 10);
    if (e == p) return -1;
    p = e;
  }
  return 0;
}

/* This process's own credentials, as the agent records them. */
static int own_creds(struct tg_rec_creds *c) {
  char status[4096];
  memset(c, 0, sizeof *c);
  if (tg_read_file("/proc/self/status", status, sizeof status) <= 0) return -1;
  if (ids(status, "\nUid:", c->uid) || ids(status, "\nGid:", c->gid)) return -1;
  const char *g = strstr(status, "\nGroups:");
  if (g) {
    g += 8;
    const char *e = strchr(g, '\n');
    while (g && e && g < e && c->ngroups < TG_MAX_GROUPS) {
      char *end;
      unsigned long v = strtoul(g, &end, 10);
      if (end == g || end > e) break;
      c->groups[c->ngroups++] = (uint32_t)v;
      g = end;
    }
  }
  if (field_u64(status, "\nCapInh:", &c->cap_inh) || field_u64(status, "\nCapPrm:", &c->cap_prm) ||
      field_u64(status, "\nCapEff:", &c->cap_eff) || field_u64(status, "\nCapBnd:", &c->cap_bnd) ||
      field_u64(status, "\nCapAmb:", &c->cap_amb))
    return -1;
  int sb = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
  if (sb < 0) return -1;
  c->securebits = (uint32_t)sb;
  return 0;
}

static int same_creds(const struct tg_rec_creds *a, const struct tg_rec_creds *b) {
  return !memcmp(a->uid, b->uid, sizeof a->uid) && !memcmp(a->gid, b->gid, sizeof a->gid) && a->ngroups == b->ngroups &&
         !memcmp(a->groups, b->groups, a->ngroups * sizeof *a->groups) && a->cap_inh == b->cap_inh && a->cap_prm == b->cap_prm &&
         a->cap_eff == b->cap_eff && a->cap_bnd == b->cap_bnd && a->cap_amb == b->cap_amb && a->securebits == b->securebits;
}

#define CAP_SETGID_ 6
#define CAP_SETUID_ 7
#define CAP_SETPCAP_ 8

int tg_check_creds(const struct image *img, int ids_only, char *err, size_t errlen) {
  if (!img->has_creds) return 0;
  const struct tg_rec_creds *c = &img->creds;
  struct tg_rec_creds me;
  if (own_creds(&me) != 0) {
    snprintf(err, errlen, "cannot read the restorer's own credentials from /proc/self/status");
    return -1;
  }
  if (same_creds(c, &me)) return 0;
  int ids_differ = memcmp(c->uid, me.uid, sizeof c->uid) || memcmp(c->gid, me.gid, sizeof c->gid) || c->ngroups != me.ngroups ||
                   memcmp(c->groups, me.groups, c->ngroups * sizeof *c->groups);
  uint64_t need = (1ull << CAP_SETGID_) | (1ull << CAP_SETUID_) | (1ull << CAP_SETPCAP_);
  if (ids_only && !ids_differ) return 0;
  if ((me.cap_eff & need) != need) {
    snprintf(err, errlen,
             "process %u ran as uid %u (gid %u), %s: only a restorer with CAP_SETUID, CAP_SETGID and CAP_SETPCAP (root) can "
             "give them back, and it is never restored as another user; restore it as root",
             img->proc.pid, c->uid[1], c->gid[1], ids_differ ? "not this restorer's user, groups or gid" : "with other capabilities or securebits than this restorer's");
    return -1;
  }
  if (ids_only) return 0;
  uint64_t want = c->cap_inh | c->cap_prm | c->cap_eff | c->cap_amb;
  if ((want & ~me.cap_prm) || (c->cap_bnd & ~me.cap_bnd)) {
    snprintf(err, errlen,
             "process %u (uid %u) had capabilities this restorer does not have (missing: 0x%llx): restore it with a full "
             "capability set (as root, outside a restricted container)",
             img->proc.pid, c->uid[1], (unsigned long long)((want & ~me.cap_prm) | (c->cap_bnd & ~me.cap_bnd)));
    return -1;
  }
  if (c->ngroups > TG_MAX_GROUPS) {
    snprintf(err, errlen, "process %u: %u supplementary groups in its image (at most %d)", img->proc.pid, c->ngroups, TG_MAX_GROUPS);
    return -1;
  }
  return 0;
}

int tg_creds_grant(const struct image *img, const char *sock_base, char *err, size_t errlen) {
  if (!img->has_creds || !sock_base || !sock_base[0]) return 0;
  if (tg_grant_agent_dir(sock_base, img->creds.uid[1], err, errlen) != 0) return -1;
  if (img->creds.uid[3] != img->creds.uid[1] && tg_grant_agent_dir(sock_base, img->creds.uid[3], err, errlen) != 0) return -1;
  return 0;
}

void tg_creds_to_blob(const struct image *img, struct blob_creds *out) {
  memset(out, 0, sizeof *out);
  if (!img->has_creds) return;
  struct tg_rec_creds me;
  if (own_creds(&me) == 0 && same_creds(&img->creds, &me)) return;
  out->set = 1;
  out->c = img->creds;
  out->dumpable = img->has_attrs && img->attrs.dumpable <= 1 ? (int32_t)img->attrs.dumpable : -1;
}
