/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Workload identity and L4 authorization: maps and helpers shared by the
 * connect hooks (client side), the sockops program (tags, destination
 * side), the cgroup_skb filters and the terminating iterator.
 *
 * Consistency: a decision reads sl_policy_active once and makes every
 * lookup in that generation; the agent writes the other generation and
 * flips it, so a decision sees one complete policy, old or new.
 */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H

#include "sluice_abi.h"

#define SL_EPERM 1

/* Deepest cgroup level searched for a workload's cgroup. */
#define SL_MAX_CGROUP_LEVEL 16

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, __u64);
    __type(value, struct sl_cgroup_value);
} sl_cgroups SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_addr_key);
    __type(value, __u32);
} sl_addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct sl_policy_config);
} sl_policy_active SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_dest_key);
    __type(value, struct sl_dest_value);
} sl_dests SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 2);
    __type(key, struct sl_class_key);
    __type(value, __u32);
} sl_classes SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_verdict_key);
    __type(value, struct sl_verdict);
} sl_verdicts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, struct sl_rule_stat);
} sl_rule_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct sl_conn);
} sl_conns SEC(".maps");

/* Handshakes in progress to a destination with a policy, by 4-tuple: the
 * tag their SYN carried. A segment with payload that completes the
 * handshake is judged with it (see sl_ingress). Least recently used
 * entries give way; a missing entry counts as "no tag", which can only
 * deny more, never allow more. */
#define SL_MAX_HANDSHAKES 16384

struct sl_handshake_key {
    __u32 src[4];
    __u32 dst[4];
    __u16 src_port; /* network byte order, as dst_port */
    __u16 dst_port;
    __u8 family;
    __u8 pad[3];
};

struct sl_handshake {
    __u32 tag;    /* the identity the SYN's tag claims; 0: none, or SYNs disagreed */
    __u32 denied; /* the SYN was denied by the policy in force when it came */
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, SL_MAX_HANDSHAKES);
    __type(key, struct sl_handshake_key);
    __type(value, struct sl_handshake);
} sl_handshakes SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 18);
} sl_events SEC(".maps");

/* Never used: they make the object's BTF carry the event types, from which
 * the Go types are generated. */
const struct sl_event *sl_unused_event __attribute__((unused));
const enum sl_event_kind *sl_unused_event_kind __attribute__((unused));

/* A decision on one connection. */
struct sl_decision {
    struct sl_verdict v;
    __u32 set;
};

enum decide_result {
    DECIDE_NO_POLICY, /* the destination has no policy: allowed */
    DECIDE_DEFERRED,  /* the policy tests the source address, which is not known yet */
    DECIDE_DONE,      /* d holds the verdict */
};

/* local_workload returns the local workload the current task belongs to:
 * its cgroup or the nearest ancestor that is a workload's cgroup. */
static __always_inline struct sl_cgroup_value *local_workload(void)
{
    __u64 id = bpf_get_current_cgroup_id();
    struct sl_cgroup_value *w = bpf_map_lookup_elem(&sl_cgroups, &id);
    if (w)
        return w;
    for (int level = SL_MAX_CGROUP_LEVEL; level > 0; level--) {
        id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            continue;
        w = bpf_map_lookup_elem(&sl_cgroups, &id);
        if (w)
            return w;
    }
    return NULL;
}

static __always_inline __u32 policy_gen(void)
{
    __u32 zero = 0;
    struct sl_policy_config *cfg = bpf_map_lookup_elem(&sl_policy_active, &zero);
    return cfg ? cfg->gen : 0;
}

/* decide looks up the verdict for a connection from identity (and, when the
 * destination's policy needs it, src) to dst:port. */
static __always_inline enum decide_result decide(const __u32 *dst, __u16 port, __u8 family,
                                                 const __u32 *src, int src_known,
                                                 __u32 identity, struct sl_decision *d)
{
    struct sl_dest_key dk = {.gen = policy_gen(), .port = port, .family = family};
    __builtin_memcpy(dk.addr, dst, sizeof(dk.addr));
    struct sl_dest_value *dv = bpf_map_lookup_elem(&sl_dests, &dk);
    if (!dv)
        return DECIDE_NO_POLICY;

    struct sl_verdict_key vk = {.gen = dk.gen, .set = dv->set, .identity = identity};
    if (dv->flags & SL_DEST_HAS_CIDR) {
        if (!src_known)
            return DECIDE_DEFERRED;
        struct sl_class_key ck = {
            .prefixlen = 96 + (family == SL_FAMILY_V4 ? 32 : 128),
            .gen = dk.gen,
            .set = dv->set,
            .family = family,
        };
        __builtin_memcpy(ck.addr, src, sizeof(ck.addr));
        __u32 *class = bpf_map_lookup_elem(&sl_classes, &ck);
        if (class)
            vk.class = *class;
    }
    d->set = dv->set;
    struct sl_verdict *v = bpf_map_lookup_elem(&sl_verdicts, &vk);
    if (!v && identity != 0) {
        vk.identity = 0;
        v = bpf_map_lookup_elem(&sl_verdicts, &vk);
    }
    if (!v) {
        /* A policy set without its verdicts: never fail open. */
        count(SL_STAT_VERDICT_MISS);
        d->v.flags = SL_VERDICT_DENY;
        d->v.shadow = SL_SHADOW_NONE;
        d->v.rule = 0;
        d->v.shadow_rule = 0;
        return DECIDE_DONE;
    }
    d->v = *v;
    return DECIDE_DONE;
}

/* trusted_identity returns claimed if the source address belongs to it or
 * to an L7 proxy (which speaks for its clients), and 0 (unknown)
 * otherwise. */
static __always_inline __u32 trusted_identity(const __u32 *src, __u8 family, __u32 claimed)
{
    if (!claimed)
        return 0;
    struct sl_addr_key ak = {.family = family};
    __builtin_memcpy(ak.addr, src, sizeof(ak.addr));
    __u32 *owner = bpf_map_lookup_elem(&sl_addrs, &ak);
    return owner && (*owner == claimed || *owner == SL_OWNER_PROXY) ? claimed : 0;
}

static __always_inline void count_rule(__u32 rule, int deny, int at)
{
    if (!rule)
        return;
    struct sl_rule_stat *st = bpf_map_lookup_elem(&sl_rule_stats, &rule);
    if (!st)
        return;
    if (at != SL_AT_CONNECT)
        at = SL_AT_INGRESS;
    if (deny)
        st->deny[at] += 1;
    else
        st->allow[at] += 1;
}

/* count_decision counts d under its rule and its dry-run rule. */
static __always_inline void count_decision(const struct sl_decision *d, int at)
{
    count_rule(d->v.rule, d->v.flags & SL_VERDICT_DENY, at);
    if (d->v.shadow != SL_SHADOW_NONE)
        count_rule(d->v.shadow_rule, d->v.shadow == SL_SHADOW_DENY, at);
}

/* emit sends one event; a full ring buffer is counted, never silent. */
static __always_inline void emit(__u8 kind, const struct sl_decision *d, __u64 cookie, __u64 netns,
                                 const __u32 *src, __u16 src_port, const __u32 *dst,
                                 __u16 dst_port, __u8 family, __u32 identity)
{
    struct sl_event *e = bpf_ringbuf_reserve(&sl_events, sizeof(*e), 0);
    if (!e) {
        count(SL_STAT_EVENT_LOST);
        return;
    }
    e->time_ns = bpf_ktime_get_ns();
    e->cookie = cookie;
    e->netns = netns;
    __builtin_memcpy(e->src, src, sizeof(e->src));
    __builtin_memcpy(e->dst, dst, sizeof(e->dst));
    e->identity = identity;
    e->rule = d->v.rule;
    e->shadow_rule = d->v.shadow_rule;
    e->set = d->set;
    e->src_port = src_port;
    e->dst_port = dst_port;
    e->family = family;
    e->kind = kind;
    e->flags = d->v.flags;
    e->shadow = d->v.shadow;
    bpf_ringbuf_submit(e, 0);
}

#endif /* SLUICE_POLICY_H */
