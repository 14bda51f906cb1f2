// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connect-time service routing. cgroup/connect and cgroup/sendmsg turn a
 * service VIP:port into a backend chosen by weight from the service's active
 * set; cgroup/getpeername and cgroup/recvmsg make the application see the VIP
 * it dialed. Only sockets in the cgroup subtree the programs are attached to
 * are affected.
 *
 * Consistency: every lookup a program makes uses the generation it read from
 * sl_active once, at entry. The agent programs the other generation and then
 * flips sl_active, so a program sees one complete state, old or new.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice_abi.h"

#define SL_ALLOW        1
#define SL_REJECT       0
#define SL_ECONNREFUSED 111

/* Map sizes here are placeholders: the agent sets max_entries from its
 * configured capacities before loading. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct sl_config);
} sl_active SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_svc_key);
    __type(value, struct sl_svc_value);
} sl_services SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_be_key);
    __type(value, struct sl_be_value);
} sl_backends SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct sl_sock_origin);
} sl_origins SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_revnat_key);
    __type(value, struct sl_revnat_value);
} sl_revnat SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SL_STAT_MAX);
    __type(key, enum sl_stat);
    __type(value, __u64);
} sl_stats SEC(".maps");

static __always_inline void count(enum sl_stat stat)
{
    __u32 idx = stat;
    __u64 *v = bpf_map_lookup_elem(&sl_stats, &idx);
    if (v)
        *v += 1;
}

static __always_inline __u32 active_gen(void)
{
    __u32 zero = 0;
    struct sl_config *cfg = bpf_map_lookup_elem(&sl_active, &zero);
    return cfg ? cfg->active_gen : 0;
}

/* pick_backend returns the backend whose cumulative-weight interval holds r,
 * found by binary search over the service's active set. */
static __always_inline struct sl_be_value *pick_backend(__u32 gen, const struct sl_svc_value *svc,
                                                        __u32 r)
{
    struct sl_be_key bk = {.gen = gen, .svc_id = svc->id};
    struct sl_be_value *be;
    __u32 lo = 0, hi = svc->count - 1;

    for (int i = 0; i < SL_MAX_SEARCH_STEPS; i++) {
        if (lo >= hi)
            break;
        __u32 mid = lo + (hi - lo) / 2;
        bk.index = mid;
        be = bpf_map_lookup_elem(&sl_backends, &bk);
        if (!be)
            return NULL;
        if (r < be->cum_weight)
            hi = mid;
        else
            lo = mid + 1;
    }
    bk.index = lo;
    return bpf_map_lookup_elem(&sl_backends, &bk);
}

enum route_result {
    ROUTE_NOT_SERVICE,
    ROUTE_NO_BACKEND,
    ROUTE_OK,
};

/* route looks the destination up as a service and picks a backend. r selects
 * within the total weight; when use_random is set a fresh random number is
 * drawn instead. */
static __always_inline enum route_result route(struct sl_svc_key *key, __u32 r, int use_random,
                                               struct sl_svc_value **svc_out,
                                               struct sl_be_value **be_out)
{
    key->gen = active_gen();
    struct sl_svc_value *svc = bpf_map_lookup_elem(&sl_services, key);
    if (!svc)
        return ROUTE_NOT_SERVICE;
    if (svc->count == 0 || svc->total_weight == 0) {
        count(SL_STAT_NO_BACKEND);
        return ROUTE_NO_BACKEND;
    }
    if (use_random)
        r = bpf_get_prandom_u32();
    struct sl_be_value *be = pick_backend(key->gen, svc, r % svc->total_weight);
    if (!be) {
        count(SL_STAT_BACKEND_MISS);
        return ROUTE_NOT_SERVICE;
    }
    count(SL_STAT_TRANSLATED);
    *svc_out = svc;
    *be_out = be;
    return ROUTE_OK;
}

static __always_inline int refuse(void *ctx)
{
    bpf_set_retval(-SL_ECONNREFUSED);
    return SL_REJECT;
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
    return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* remember_origin records the dialed VIP and chosen backend on the socket. */
static __always_inline void remember_origin(struct bpf_sock_addr *ctx, const struct sl_svc_key *key,
                                            const struct sl_svc_value *svc,
                                            const struct sl_be_value *be)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return;
    struct sl_sock_origin *o = bpf_sk_storage_get(&sl_origins, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!o)
        return;
    __builtin_memcpy(o->vip, key->addr, sizeof(o->vip));
    __builtin_memcpy(o->be_addr, be->addr, sizeof(o->be_addr));
    o->svc_id = svc->id;
    o->vport = key->port;
    o->be_port = be->port;
    o->family = key->family;
    o->proto = key->proto;
}

/* forget_origin drops a stale record when a socket (re)connects elsewhere. */
static __always_inline void forget_origin(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk)
        bpf_sk_storage_delete(&sl_origins, sk);
}

static __always_inline int routable_proto(struct bpf_sock_addr *ctx)
{
    return ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP;
}

/* key_from_ctx6 fills a service key from an IPv6 destination; a v4-mapped
 * destination is looked up as the IPv4 service it names. */
static __always_inline void key_from_ctx6(struct bpf_sock_addr *ctx, struct sl_svc_key *key)
{
    __u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};

    key->port = (__u16)ctx->user_port;
    key->proto = ctx->protocol;
    if (is_v4_mapped(a)) {
        key->family = SL_FAMILY_V4;
        key->addr[0] = a[3];
        return;
    }
    key->family = SL_FAMILY_V6;
    __builtin_memcpy(key->addr, a, sizeof(a));
}

/* write_dst6 points an IPv6 socket at a backend (v4-mapped for IPv4). */
static __always_inline void write_dst6(struct bpf_sock_addr *ctx, const __u32 *addr, __u8 family,
                                       __u16 port)
{
    if (family == SL_FAMILY_V4) {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
        ctx->user_ip6[3] = addr[0];
    } else {
        ctx->user_ip6[0] = addr[0];
        ctx->user_ip6[1] = addr[1];
        ctx->user_ip6[2] = addr[2];
        ctx->user_ip6[3] = addr[3];
    }
    ctx->user_port = port;
}

static __always_inline int connect_common(struct bpf_sock_addr *ctx, struct sl_svc_key *key, int v6)
{
    struct sl_svc_value *svc = NULL;
    struct sl_be_value *be = NULL;

    switch (route(key, 0, 1, &svc, &be)) {
    case ROUTE_NOT_SERVICE:
        forget_origin(ctx);
        return SL_ALLOW;
    case ROUTE_NO_BACKEND:
        return refuse(ctx);
    case ROUTE_OK:
        break;
    }
    if (be->family != key->family)
        return refuse(ctx);
    if (v6)
        write_dst6(ctx, be->addr, be->family, be->port);
    else {
        ctx->user_ip4 = be->addr[0];
        ctx->user_port = be->port;
    }
    remember_origin(ctx, key, svc, be);
    return SL_ALLOW;
}

/* sendmsg_common routes one unconnected UDP datagram. The backend is chosen
 * from the socket cookie, so one socket keeps talking to one backend while
 * the active set is unchanged, and sockets spread by weight. */
static __always_inline int sendmsg_common(struct bpf_sock_addr *ctx, struct sl_svc_key *key, int v6)
{
    struct sl_svc_value *svc = NULL;
    struct sl_be_value *be = NULL;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    __u32 r = (__u32)((cookie * 0x9E3779B97F4A7C15ULL) >> 32);

    switch (route(key, r, 0, &svc, &be)) {
    case ROUTE_NOT_SERVICE:
        return SL_ALLOW;
    case ROUTE_NO_BACKEND:
        return refuse(ctx);
    case ROUTE_OK:
        break;
    }
    if (be->family != key->family)
        return refuse(ctx);

    struct sl_revnat_key rk = {.cookie = cookie, .port = be->port, .family = be->family};
    struct sl_revnat_value rv = {.svc_id = svc->id, .vport = key->port};
    __builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
    __builtin_memcpy(rv.vip, key->addr, sizeof(rv.vip));
    bpf_map_update_elem(&sl_revnat, &rk, &rv, BPF_ANY);

    if (v6)
        write_dst6(ctx, be->addr, be->family, be->port);
    else {
        ctx->user_ip4 = be->addr[0];
        ctx->user_port = be->port;
    }
    return SL_ALLOW;
}

/* restore_peer rewrites a backend source/peer address back to the VIP,
 * using the socket's origin record (connected sockets) or, for unconnected
 * UDP, the reverse entry written by sendmsg. */
static __always_inline void restore_peer(struct bpf_sock_addr *ctx, const __u32 *addr, __u8 family,
                                         __u16 port, int v6, int try_revnat)
{
    struct bpf_sock *sk = ctx->sk;

    if (sk) {
        struct sl_sock_origin *o = bpf_sk_storage_get(&sl_origins, sk, 0, 0);
        if (o && o->family == family && o->be_port == port && o->be_addr[0] == addr[0] &&
            o->be_addr[1] == addr[1] && o->be_addr[2] == addr[2] && o->be_addr[3] == addr[3]) {
            if (v6)
                write_dst6(ctx, o->vip, o->family, o->vport);
            else {
                ctx->user_ip4 = o->vip[0];
                ctx->user_port = o->vport;
            }
            return;
        }
    }
    if (!try_revnat)
        return;

    struct sl_revnat_key rk = {
        .cookie = bpf_get_socket_cookie(ctx), .port = port, .family = family};
    __builtin_memcpy(rk.addr, addr, sizeof(rk.addr));
    struct sl_revnat_value *rv = bpf_map_lookup_elem(&sl_revnat, &rk);
    if (!rv)
        return;
    if (v6)
        write_dst6(ctx, rv->vip, family, rv->vport);
    else {
        ctx->user_ip4 = rv->vip[0];
        ctx->user_port = rv->vport;
    }
}

static __always_inline void restore_peer4(struct bpf_sock_addr *ctx, int try_revnat)
{
    __u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
    restore_peer(ctx, addr, SL_FAMILY_V4, (__u16)ctx->user_port, 0, try_revnat);
}

/* restore_peer6 handles IPv6 peers, including v4-mapped ones of dual-stack
 * sockets routed to IPv4 backends. */
static __always_inline void restore_peer6(struct bpf_sock_addr *ctx, int try_revnat)
{
    __u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
    __u8 family = SL_FAMILY_V6;

    if (is_v4_mapped(addr)) {
        family = SL_FAMILY_V4;
        addr[0] = addr[3];
        addr[1] = addr[2] = addr[3] = 0;
    }
    restore_peer(ctx, addr, family, (__u16)ctx->user_port, 1, try_revnat);
}

SEC("cgroup/connect4")
int sl_connect4(struct bpf_sock_addr *ctx)
{
    if (!routable_proto(ctx))
        return SL_ALLOW;
    struct sl_svc_key key = {
        .port = (__u16)ctx->user_port, .proto = ctx->protocol, .family = SL_FAMILY_V4};
    key.addr[0] = ctx->user_ip4;
    return connect_common(ctx, &key, 0);
}

SEC("cgroup/connect6")
int sl_connect6(struct bpf_sock_addr *ctx)
{
    if (!routable_proto(ctx))
        return SL_ALLOW;
    struct sl_svc_key key = {};
    key_from_ctx6(ctx, &key);
    return connect_common(ctx, &key, 1);
}

SEC("cgroup/sendmsg4")
int sl_sendmsg4(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != IPPROTO_UDP)
        return SL_ALLOW;
    struct sl_svc_key key = {
        .port = (__u16)ctx->user_port, .proto = IPPROTO_UDP, .family = SL_FAMILY_V4};
    key.addr[0] = ctx->user_ip4;
    return sendmsg_common(ctx, &key, 0);
}

SEC("cgroup/sendmsg6")
int sl_sendmsg6(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != IPPROTO_UDP)
        return SL_ALLOW;
    struct sl_svc_key key = {};
    key_from_ctx6(ctx, &key);
    return sendmsg_common(ctx, &key, 1);
}

SEC("cgroup/recvmsg4")
int sl_recvmsg4(struct bpf_sock_addr *ctx)
{
    restore_peer4(ctx, 1);
    return SL_ALLOW;
}

SEC("cgroup/recvmsg6")
int sl_recvmsg6(struct bpf_sock_addr *ctx)
{
    restore_peer6(ctx, 1);
    return SL_ALLOW;
}

SEC("cgroup/getpeername4")
int sl_getpeername4(struct bpf_sock_addr *ctx)
{
    restore_peer4(ctx, 0);
    return SL_ALLOW;
}

SEC("cgroup/getpeername6")
int sl_getpeername6(struct bpf_sock_addr *ctx)
{
    restore_peer6(ctx, 0);
    return SL_ALLOW;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
