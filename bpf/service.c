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
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_l7_key);
    __type(value, struct sl_l7_origin);
} sl_l7_conns SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct sl_proxied_value);
} sl_proxied SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SL_STAT_SLOTS);
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

static __always_inline void count_n(enum sl_stat stat, __u64 n)
{
    __u32 idx = stat;
    __u64 *v = bpf_map_lookup_elem(&sl_stats, &idx);
    if (v)
        *v += n;
}

#include "policy.h"

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

/* unmap_pair turns a pair of IPv6 addresses that are both v4-mapped (a
 * dual-stack socket's IPv4 connection) into the IPv4 pair. */
static __always_inline void unmap_pair(__u32 *a, __u32 *b, __u8 *family)
{
    if (!is_v4_mapped(a) || !is_v4_mapped(b))
        return;
    a[0] = a[3];
    b[0] = b[3];
    a[1] = a[2] = a[3] = 0;
    b[1] = b[2] = b[3] = 0;
    *family = SL_FAMILY_V4;
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
    o->fast = svc->flags & SL_SVC_FAST_MASK;
    o->l7 = (svc->flags & SL_SVC_L7) != 0;
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

/* authorize_connect decides a TCP connect from a local client to dst:port
 * (the backend chosen, or the address dialed when it is not a service) and
 * records the client's identity on the socket for its SYN's tag. A denied
 * connect fails with EPERM before any packet is sent. A policy that tests
 * the source address is left to the destination when the client's address
 * is not known yet. */
static __always_inline int authorize_connect(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 port,
                                             __u8 family, int routed)
{
    struct sl_cgroup_value *w = local_workload();
    struct bpf_sock *sk = ctx->sk;
    __u32 identity = w ? w->identity : 0;
    /* An upstream socket of the L7 proxy speaks for the proxy's client. */
    struct sl_proxied_value *p = sk ? bpf_sk_storage_get(&sl_proxied, sk, 0, 0) : NULL;
    if (p)
        identity = p->identity;
    __u32 src[4] = {};
    int src_known = 0;

    if (family == SL_FAMILY_V4) {
        if (sk && sk->family == 2 /* AF_INET */ && sk->src_ip4) {
            src[0] = sk->src_ip4;
            src_known = 1;
        } else if (w && w->addr4) {
            src[0] = w->addr4;
            src_known = 1;
        }
    } else if (w && (w->addr6[0] | w->addr6[1] | w->addr6[2] | w->addr6[3])) {
        __builtin_memcpy(src, w->addr6, sizeof(src));
        src_known = 1;
    }

    struct sl_decision d = {};
    enum decide_result r = decide(dst, port, family, src, src_known, identity, &d);
    /* A connection is a flow if a local workload opens it or it goes to
     * a service; otherwise it needs a record only for policy. */
    if (identity == 0 && !routed && r == DECIDE_NO_POLICY)
        return SL_ALLOW;

    struct sl_conn *c = NULL;
    if (sk)
        c = bpf_sk_storage_get(&sl_conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (c) {
        c->identity = identity;
        c->flags = SL_CONN_CLIENT | (src_known ? SL_CONN_SRC_KNOWN : 0) |
                   (identity || routed ? SL_CONN_TRACKED : 0);
        __builtin_memcpy(c->dst, dst, sizeof(c->dst));
        __builtin_memcpy(c->src, src, sizeof(c->src));
        c->dst_port = port;
        c->family = family;
        c->rule = d.v.rule;
    }
    if (r != DECIDE_DONE)
        return SL_ALLOW;

    count_decision(&d, SL_AT_CONNECT);
    if (d.v.shadow == SL_SHADOW_DENY)
        emit(SL_EV_SHADOW_DENY_CONNECT, &d, bpf_get_socket_cookie(ctx), bpf_get_netns_cookie(ctx),
             src, 0, dst, port, family, identity);
    if (!(d.v.flags & SL_VERDICT_DENY))
        return SL_ALLOW;
    count(SL_STAT_DENY_CONNECT);
    emit(SL_EV_DENY_CONNECT, &d, bpf_get_socket_cookie(ctx), bpf_get_netns_cookie(ctx), src, 0, dst,
         port, family, identity);
    if (c)
        bpf_sk_storage_delete(&sl_conns, sk);
    bpf_set_retval(-SL_EPERM);
    return SL_REJECT;
}

static __always_inline int connect_common(struct bpf_sock_addr *ctx, struct sl_svc_key *key, int v6)
{
    struct sl_svc_value *svc = NULL;
    struct sl_be_value *be = NULL;

    switch (route(key, 0, 1, &svc, &be)) {
    case ROUTE_NOT_SERVICE:
        forget_origin(ctx);
        if (key->proto == IPPROTO_TCP)
            return authorize_connect(ctx, key->addr, key->port, key->family, 0);
        return SL_ALLOW;
    case ROUTE_NO_BACKEND:
        return refuse(ctx);
    case ROUTE_OK:
        break;
    }
    if (be->family != key->family)
        return refuse(ctx);
    if (key->proto == IPPROTO_TCP && !authorize_connect(ctx, be->addr, be->port, be->family, 1))
        return SL_REJECT;
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

/* --- TCP identity tags and destination-side policy ----------------------- */

#define SL_AF_INET 2
#define SL_AF_INET6 10
#define SL_SOL_TCP 6
#define SL_TCP_SAVE_SYN 27
#define SL_TCPHDR_RST 0x04
#define SL_TCPHDR_SYN 0x02
#define SL_TCPHDR_ACK 0x10

struct sl_tag {
    __u8 kind;
    __u8 len;
    __be16 exid;
    __be32 identity;
} __attribute__((packed));

static __always_inline int is_syn(struct bpf_sock_ops *skops)
{
    return (skops->skb_tcp_flags & (SL_TCPHDR_SYN | SL_TCPHDR_ACK)) == SL_TCPHDR_SYN;
}

static __always_inline struct sl_conn *conn_of(struct bpf_sock_ops *skops)
{
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return NULL;
    return bpf_sk_storage_get(&sl_conns, sk, 0, 0);
}

/* tag_enable asks for the header-option callbacks on the SYN of a client
 * whose identity is known. */
static __always_inline void tag_enable(struct bpf_sock_ops *skops)
{
    struct sl_conn *c = conn_of(skops);
    if (!c || !c->identity)
        return;
    bpf_sock_ops_cb_flags_set(skops,
                              skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

static __always_inline void tag_reserve(struct bpf_sock_ops *skops)
{
    if (is_syn(skops))
        bpf_reserve_hdr_opt(skops, SL_TAG_LEN, 0);
}

static __always_inline void tag_write(struct bpf_sock_ops *skops)
{
    if (!is_syn(skops))
        return;
    struct sl_conn *c = conn_of(skops);
    if (!c || !c->identity)
        return;
    struct sl_tag tag = {
        .kind = SL_TAG_KIND,
        .len = SL_TAG_LEN,
        .exid = bpf_htons(SL_TAG_EXID),
        .identity = bpf_htonl(c->identity),
    };
    if (bpf_store_hdr_opt(skops, &tag, sizeof(tag), 0) == 0)
        count(SL_STAT_TAG_SENT);
}

/* sock_addrs reads a connection's local and remote addresses; a
 * v4-mapped pair of a dual-stack socket is returned as IPv4. */
static __always_inline int sock_addrs(struct bpf_sock_ops *skops, __u32 *local, __u32 *remote,
                                      __u8 *family)
{
    if (skops->family == SL_AF_INET) {
        local[0] = skops->local_ip4;
        remote[0] = skops->remote_ip4;
        *family = SL_FAMILY_V4;
        return 1;
    }
    if (skops->family != SL_AF_INET6)
        return 0;
    local[0] = skops->local_ip6[0];
    local[1] = skops->local_ip6[1];
    local[2] = skops->local_ip6[2];
    local[3] = skops->local_ip6[3];
    remote[0] = skops->remote_ip6[0];
    remote[1] = skops->remote_ip6[1];
    remote[2] = skops->remote_ip6[2];
    remote[3] = skops->remote_ip6[3];
    *family = SL_FAMILY_V6;
    unmap_pair(local, remote, family);
    return 1;
}

/* handshake_key returns the key of skops's connection in sl_handshakes:
 * from the remote end (the client) to the local one. */
static __always_inline int handshake_key(struct bpf_sock_ops *skops, struct sl_handshake_key *hk)
{
    if (!sock_addrs(skops, hk->dst, hk->src, &hk->family))
        return 0;
    hk->src_port = bpf_htons((__u16)bpf_ntohl(skops->remote_port));
    hk->dst_port = bpf_htons((__u16)skops->local_port);
    return 1;
}

/* l7_record tells the L7 proxy, as the client sends its SYN, which
 * service the client dialed and who the client is. */
static __always_inline void l7_record(struct bpf_sock_ops *skops)
{
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return;
    struct sl_sock_origin *o = bpf_sk_storage_get(&sl_origins, sk, 0, 0);
    if (!o || !o->l7)
        return;
    __u32 local[4] = {}, remote[4] = {};
    struct sl_l7_key k = {};
    if (!sock_addrs(skops, local, remote, &k.family))
        return;
    __builtin_memcpy(k.addr, local, sizeof(k.addr));
    k.port = bpf_htons((__u16)skops->local_port);
    struct sl_l7_origin v = {.svc_id = o->svc_id, .vport = o->vport, .family = o->family};
    __builtin_memcpy(v.vip, o->vip, sizeof(v.vip));
    struct sl_conn *c = bpf_sk_storage_get(&sl_conns, sk, 0, 0);
    if (c)
        v.identity = c->identity;
    bpf_map_update_elem(&sl_l7_conns, &k, &v, BPF_ANY);
}

/* client_established stops the tag callbacks and records the client's
 * bound address, which the connect hook may not have known. */
static __always_inline void client_established(struct bpf_sock_ops *skops)
{
    bpf_sock_ops_cb_flags_set(skops,
                              skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
    struct sl_conn *c = conn_of(skops);
    if (!c)
        return;
    __u32 local[4] = {}, remote[4] = {};
    __u8 family = 0;
    if (!sock_addrs(skops, local, remote, &family) || family != c->family)
        return;
    __builtin_memcpy(c->src, local, sizeof(c->src));
    c->flags |= SL_CONN_SRC_KNOWN;
}

/* authorize_ingress decides an accepted connection at its destination.
 * The source is the identity of its tag if the source address belongs to
 * that identity, and unknown otherwise. A denied connection is marked:
 * its packets are dropped from now on and the agent destroys it. */
static __always_inline void authorize_ingress(struct bpf_sock_ops *skops)
{
    __u32 local[4] = {}, remote[4] = {};
    __u8 family = 0;
    if (!sock_addrs(skops, local, remote, &family))
        return;
    __u16 lport = bpf_htons((__u16)skops->local_port);
    __u16 rport = bpf_htons((__u16)bpf_ntohl(skops->remote_port));

    struct sl_handshake_key hk = {};
    if (handshake_key(skops, &hk))
        bpf_map_delete_elem(&sl_handshakes, &hk);

    __u32 identity = 0, flags = SL_CONN_SERVER | SL_CONN_SRC_KNOWN | SL_CONN_TRACKED;
    struct sl_tag tag = {.kind = SL_TAG_KIND, .len = 4, .exid = bpf_htons(SL_TAG_EXID)};
    long n = bpf_load_hdr_opt(skops, &tag, sizeof(tag), BPF_LOAD_HDR_OPT_TCP_SYN);
    if (n == SL_TAG_LEN && tag.len == SL_TAG_LEN) {
        identity = trusted_identity(remote, family, bpf_ntohl(tag.identity));
        if (identity) {
            flags |= SL_CONN_TAGGED;
            count(SL_STAT_TAG_TRUSTED);
        } else {
            count(SL_STAT_TAG_REJECTED);
        }
    } else {
        count(SL_STAT_UNTAGGED);
    }

    struct sl_decision d = {};
    enum decide_result r = decide(local, lport, family, remote, 1, identity, &d);
    struct bpf_sock *sk = skops->sk;
    struct sl_conn *c = NULL;
    if (sk)
        c = bpf_sk_storage_get(&sl_conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (c) {
        c->identity = identity;
        c->flags = flags;
        __builtin_memcpy(c->dst, local, sizeof(c->dst));
        __builtin_memcpy(c->src, remote, sizeof(c->src));
        c->dst_port = lport;
        c->family = family;
        c->rule = d.v.rule;
    }
    if (r != DECIDE_DONE)
        return;

    count_decision(&d, SL_AT_INGRESS);
    __u64 cookie = bpf_get_socket_cookie(skops), netns = bpf_get_netns_cookie(skops);
    if (d.v.shadow == SL_SHADOW_DENY)
        emit(SL_EV_SHADOW_DENY_INGRESS, &d, cookie, netns, remote, rport, local, lport, family,
             identity);
    if (!(d.v.flags & SL_VERDICT_DENY))
        return;
    if (c)
        c->flags |= SL_CONN_DENIED;
    count(SL_STAT_DENY_INGRESS);
    emit(SL_EV_DENY_INGRESS, &d, cookie, netns, remote, rport, local, lport, family, identity);
}

/* --- Segments to a listener ---------------------------------------------- */

#define SL_IPPROTO_TCP 6
#define SL_TCP_LISTEN 10
#define SL_TCP_MAX_OPTIONS 40

/* A TCP segment as the listener filter needs it. */
struct sl_segment {
    struct sl_handshake_key key;
    __u32 tcp_off;   /* offset of the TCP header in skb */
    __u32 payload;   /* payload bytes */
    __u8 flags;      /* TCP flags */
    __u8 doff;       /* TCP header length, in bytes */
};

/* ipv6_skip skips the IPv6 extension headers a TCP segment may follow;
 * it returns the TCP header's offset, or 0 if it cannot tell. */
static __always_inline __u32 ipv6_skip(struct __sk_buff *skb, __u8 next, __u32 off)
{
    for (int i = 0; i < 4; i++) {
        if (next == SL_IPPROTO_TCP)
            return off;
        __u8 h[2];
        if (bpf_skb_load_bytes(skb, off, h, 2))
            return 0;
        switch (next) {
        case 0:  /* hop-by-hop options */
        case 43: /* routing */
        case 60: /* destination options */
            off += ((__u32)h[1] + 1) * 8;
            break;
        case 51: /* authentication header */
            off += ((__u32)h[1] + 2) * 4;
            break;
        default:
            return 0;
        }
        next = h[0];
    }
    return next == SL_IPPROTO_TCP ? off : 0;
}

/* parse_segment reads the addresses, ports, flags and payload length of a
 * TCP segment (skb starts at its IP header). It returns 1 if it did, 0 if
 * skb is no TCP segment it can read, and -1 for an IPv6 packet whose
 * extension headers hide the TCP header. */
static __always_inline int parse_segment(struct __sk_buff *skb, struct sl_segment *seg)
{
    __u8 b = 0;
    __u32 ip_len = 0;
    if (bpf_skb_load_bytes(skb, 0, &b, 1))
        return 0;
    if (b >> 4 == 4) {
        __u8 h[20];
        if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) || h[9] != SL_IPPROTO_TCP)
            return 0;
        seg->tcp_off = (b & 0xf) * 4;
        ip_len = ((__u32)h[2] << 8) | h[3];
        __builtin_memcpy(&seg->key.src[0], &h[12], 4);
        __builtin_memcpy(&seg->key.dst[0], &h[16], 4);
        seg->key.family = SL_FAMILY_V4;
    } else if (b >> 4 == 6) {
        __u8 h[40];
        if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
            return 0;
        seg->tcp_off = ipv6_skip(skb, h[6], 40);
        if (!seg->tcp_off)
            return -1;
        ip_len = 40 + (((__u32)h[4] << 8) | h[5]);
        __builtin_memcpy(seg->key.src, &h[8], 16);
        __builtin_memcpy(seg->key.dst, &h[24], 16);
        seg->key.family = SL_FAMILY_V6;
        unmap_pair(seg->key.src, seg->key.dst, &seg->key.family);
    } else {
        return 0;
    }
    __u8 t[14];
    if (bpf_skb_load_bytes(skb, seg->tcp_off, t, sizeof(t)))
        return 0;
    __builtin_memcpy(&seg->key.src_port, &t[0], 2);
    __builtin_memcpy(&seg->key.dst_port, &t[2], 2);
    seg->doff = (t[12] >> 4) * 4;
    seg->flags = t[13];
    __u32 headers = seg->tcp_off + seg->doff;
    seg->payload = ip_len > headers ? ip_len - headers : 0;
    return seg->doff >= 20;
}

/* The walk over a SYN's options, one option per step of bpf_loop (which
 * the verifier checks once, whatever the number of steps). */
struct sl_option_walk {
    __u8 opt[64]; /* options are at most 40 bytes; indexes are masked to 64 */
    __u32 len;
    __u32 at;
    __u32 tag;
};

static long option_step(__u64 step, void *ctx)
{
    struct sl_option_walk *w = ctx;
    __u32 i = w->at;
    if (i >= w->len || i >= SL_TCP_MAX_OPTIONS)
        return 1;
    __u8 kind = w->opt[i & 63];
    if (kind == 0) /* end of options */
        return 1;
    if (kind == 1) { /* no-op */
        w->at = i + 1;
        return 0;
    }
    __u8 olen = w->opt[(i + 1) & 63];
    if (olen < 2 || i + olen > w->len)
        return 1;
    if (kind == SL_TAG_KIND && olen == SL_TAG_LEN &&
        (((__u16)w->opt[(i + 2) & 63] << 8) | w->opt[(i + 3) & 63]) == SL_TAG_EXID) {
        w->tag = ((__u32)w->opt[(i + 4) & 63] << 24) | ((__u32)w->opt[(i + 5) & 63] << 16) |
                 ((__u32)w->opt[(i + 6) & 63] << 8) | w->opt[(i + 7) & 63];
        return 1;
    }
    w->at = i + olen;
    return 0;
}

/* syn_tag returns the identity a SYN's tag claims, or 0. */
static __always_inline __u32 syn_tag(struct __sk_buff *skb, const struct sl_segment *seg)
{
    struct sl_option_walk w = {};
    w.len = seg->doff - 20;
    if (w.len == 0 || w.len > SL_TCP_MAX_OPTIONS)
        return 0;
    if (bpf_skb_load_bytes(skb, seg->tcp_off + 20, w.opt, w.len))
        return 0;
    bpf_loop(SL_TCP_MAX_OPTIONS, option_step, &w, 0);
    return w.tag;
}

/* judge_handshake decides, from what the handshake's SYN showed, whether
 * a connection from seg's source would be denied. */
static __always_inline int judge_handshake(const struct sl_segment *seg, __u32 tag)
{
    __u32 identity = trusted_identity(seg->key.src, seg->key.family, tag);
    struct sl_decision d = {};
    if (decide(seg->key.dst, seg->key.dst_port, seg->key.family, seg->key.src, 1, identity, &d) !=
        DECIDE_DONE)
        return 0;
    return d.v.flags & SL_VERDICT_DENY;
}

/* listener_filter guards a listening socket. The segment that completes a
 * handshake may carry payload, which the kernel queues to the new
 * connection before its policy is decided; if the connection will be
 * denied, that segment is dropped here. The client retransmits it, and
 * the listener its SYN-ACK, sooner than usual for a denied handshake
 * (sl_sockops, TIMEOUT_INIT): the client's answer to that completes the
 * handshake without payload, and the connection is refused as any other.
 * To judge the segment, the tag of each SYN to a destination with a
 * policy is kept until the handshake ends. */
static __always_inline int listener_filter(struct __sk_buff *skb)
{
    struct sl_segment seg = {};
    int parsed = parse_segment(skb, &seg);
    if (parsed < 0) {
        /* It cannot be judged, so it could carry payload past a policy. */
        count(SL_STAT_DROPPED);
        return 0;
    }
    if (!parsed)
        return 1;
    __u8 flags = seg.flags & (SL_TCPHDR_SYN | SL_TCPHDR_ACK | SL_TCPHDR_RST);
    if (flags == SL_TCPHDR_SYN) {
        struct sl_dest_key dk = {.gen = policy_gen(), .port = seg.key.dst_port, .family = seg.key.family};
        __builtin_memcpy(dk.addr, seg.key.dst, sizeof(dk.addr));
        if (!bpf_map_lookup_elem(&sl_dests, &dk))
            return 1;
        struct sl_handshake h = {.tag = syn_tag(skb, &seg)};
        struct sl_handshake *seen = bpf_map_lookup_elem(&sl_handshakes, &seg.key);
        if (seen && seen->tag != h.tag)
            h.tag = 0; /* SYNs that disagree: no tag */
        h.denied = judge_handshake(&seg, h.tag);
        bpf_map_update_elem(&sl_handshakes, &seg.key, &h, BPF_ANY);
        /* Payload on a SYN (fast open) is judged below, as any. */
    }
    if (!seg.payload || (seg.flags & SL_TCPHDR_RST))
        return 1;
    __u32 tag = 0;
    struct sl_handshake *seen = bpf_map_lookup_elem(&sl_handshakes, &seg.key);
    if (seen)
        tag = seen->tag;
    if (!judge_handshake(&seg, tag))
        return 1;
    count(SL_STAT_EARLY_DATA);
    return 0;
}

/* SYN-ACK retransmission timeout of a denied handshake, in jiffies: 50 is
 * 50 to 500 ms, as the kernel's HZ is 1000 to 100 (the default is 1 s). */
#define SL_DENIED_SYNACK_RTO 50

/* synack_timeout shortens the SYN-ACK timeout of a handshake its SYN
 * showed to be denied (skops is the request socket). */
static __always_inline void synack_timeout(struct bpf_sock_ops *skops)
{
    struct sl_handshake_key hk = {};
    if (!handshake_key(skops, &hk))
        return;
    struct sl_handshake *h = bpf_map_lookup_elem(&sl_handshakes, &hk);
    if (h && h->denied)
        skops->reply = SL_DENIED_SYNACK_RTO;
}

/* listening reports whether skb is delivered to a listening socket. */
static __always_inline int listening(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 0;
    sk = bpf_sk_fullsock(sk);
    return sk && sk->state == SL_TCP_LISTEN && sk->protocol == SL_IPPROTO_TCP;
}

/* --- Flows and the same-node fast path ------------------------------------ */

#define SL_TCP_FIN_WAIT2 5
#define SL_TCP_CLOSE 7
#define SL_TCP_LAST_ACK 9
#define SL_TCP_CLOSING 11
#define SL_RCV_SHUTDOWN 1
/* Bytes of events pending before a flow event wakes the reader. */
#define SL_FLOW_WAKEUP_BYTES (64 * 1024)

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 2);
    __type(key, struct sl_fast_key);
    __type(value, __u64);
} sl_fast SEC(".maps");

/* The bytes each fast-path connection carried, by its client's key. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_fast_key);
    __type(value, struct sl_fast_count);
} sl_fast_bytes SEC(".maps");

/* Addresses of this node's workloads: their fast-path settings (SL_FAST_*). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2);
    __type(key, struct sl_addr_key);
    __type(value, __u32);
} sl_fast_addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct sl_node_config);
} sl_settings SEC(".maps");

/* Only what is used of these kernel types; CO-RE relocates the accesses. */
struct sock {
    unsigned char sk_shutdown;
} __attribute__((preserve_access_index));

static __always_inline int flows_on(void)
{
    __u32 zero = 0;
    struct sl_node_config *s = bpf_map_lookup_elem(&sl_settings, &zero);
    return s && (s->flags & SL_SET_FLOWS);
}

/* own_key fills k with skops's own 4-tuple; fast_key also reports whether
 * the connection takes the fast path: both ends are this node's workloads
 * and the settings allow it (SL_FAST_*, docs/fastpath.md). */
static __always_inline int own_key(struct bpf_sock_ops *skops, struct sl_fast_key *k)
{
    if (!sock_addrs(skops, k->local, k->remote, &k->family))
        return 0;
    k->lport = bpf_htons((__u16)skops->local_port);
    k->rport = bpf_htons((__u16)bpf_ntohl(skops->remote_port));
    return 1;
}

static __always_inline int fast_key(struct bpf_sock_ops *skops, struct sl_fast_key *k)
{
    if (!own_key(skops, k))
        return 0;
    struct sl_addr_key a = {.family = k->family};
    __builtin_memcpy(a.addr, k->local, sizeof(a.addr));
    __u32 *local = bpf_map_lookup_elem(&sl_fast_addrs, &a);
    __builtin_memcpy(a.addr, k->remote, sizeof(a.addr));
    __u32 *remote = bpf_map_lookup_elem(&sl_fast_addrs, &a);
    if (!local || !remote || *local == SL_FAST_OFF || *remote == SL_FAST_OFF)
        return 0;
    if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1; /* the server follows its client's choice */
    /* The client chooses: the service it dialed decides if it has a
     * setting, else both workloads must be on. */
    struct bpf_sock *sk = skops->sk;
    struct sl_sock_origin *o = sk ? bpf_sk_storage_get(&sl_origins, sk, 0, 0) : NULL;
    __u8 svc = o ? o->fast : SL_FAST_UNSET;
    if (svc != SL_FAST_UNSET)
        return svc == SL_FAST_ON;
    return *local == SL_FAST_ON && *remote == SL_FAST_ON;
}

static __always_inline void reverse_key(const struct sl_fast_key *k, struct sl_fast_key *r)
{
    __builtin_memcpy(r->local, k->remote, sizeof(r->local));
    __builtin_memcpy(r->remote, k->local, sizeof(r->remote));
    r->lport = k->rport;
    r->rport = k->lport;
    r->family = k->family;
}

/* client_key fills k with the key of c's connection in sl_fast_bytes:
 * the client's 4-tuple. */
static __always_inline int client_key(struct bpf_sock_ops *skops, const struct sl_conn *c,
                                      struct sl_fast_key *k)
{
    struct sl_fast_key own = {};
    if (!own_key(skops, &own))
        return 0;
    if (c->flags & SL_CONN_SERVER)
        reverse_key(&own, k);
    else
        *k = own;
    return 1;
}

/* flow_emit sends a flow's open or close event for the socket skops. */
static __always_inline void flow_emit(struct bpf_sock_ops *skops, const struct sl_conn *c, __u8 kind,
                                      __u64 sent, __u64 recv)
{
    __u32 local[4] = {}, remote[4] = {};
    __u8 family = 0;
    if (!sock_addrs(skops, local, remote, &family))
        return;
    struct sl_event *e = bpf_ringbuf_reserve(&sl_events, sizeof(*e), 0);
    if (!e) {
        count(SL_STAT_EVENT_LOST);
        return;
    }
    __builtin_memset(e, 0, sizeof(*e));
    __u64 now = bpf_ktime_get_ns();
    __u16 lport = bpf_htons((__u16)skops->local_port);
    __u16 rport = bpf_htons((__u16)bpf_ntohl(skops->remote_port));
    e->time_ns = now;
    e->cookie = bpf_get_socket_cookie(skops);
    e->netns = bpf_get_netns_cookie(skops);
    if (c->flags & SL_CONN_SERVER) {
        __builtin_memcpy(e->src, remote, sizeof(e->src));
        __builtin_memcpy(e->dst, local, sizeof(e->dst));
        e->src_port = rport;
        e->dst_port = lport;
        e->side = SL_SIDE_SERVER;
    } else {
        __builtin_memcpy(e->src, local, sizeof(e->src));
        __builtin_memcpy(e->dst, remote, sizeof(e->dst));
        e->src_port = lport;
        e->dst_port = rport;
        e->side = SL_SIDE_CLIENT;
        struct bpf_sock *sk = skops->sk;
        struct sl_sock_origin *o = sk ? bpf_sk_storage_get(&sl_origins, sk, 0, 0) : NULL;
        if (o) {
            __builtin_memcpy(e->vip, o->vip, sizeof(e->vip));
            e->vport = o->vport;
        }
    }
    e->family = family;
    e->kind = kind;
    e->identity = c->identity;
    e->rule = c->rule;
    e->fast = (c->flags & SL_CONN_FAST) && !(c->flags & SL_CONN_NORMAL);
    e->rtt_us = skops->srtt_us >> 3;
    e->retrans = skops->total_retrans;
    if (kind == SL_EV_CLOSE) {
        e->duration_ns = now - c->opened_ns;
        /* Bytes go from the client to the server and back. */
        if (c->flags & SL_CONN_SERVER) {
            e->bytes_sent = recv;
            e->bytes_recv = sent;
        } else {
            e->bytes_sent = sent;
            e->bytes_recv = recv;
        }
    }
    /* Flow events wake the reader only once some have gathered (64 KiB,
     * or a quarter of a smaller ring); it reads the rest on a short timer.
     * One wake-up per event costs a busy node a tenth of its connection
     * rate. */
    __u64 wake = bpf_ringbuf_query(&sl_events, BPF_RB_RING_SIZE) / 4;
    if (wake > SL_FLOW_WAKEUP_BYTES)
        wake = SL_FLOW_WAKEUP_BYTES;
    __u64 pending = bpf_ringbuf_query(&sl_events, BPF_RB_AVAIL_DATA);
    bpf_ringbuf_submit(e, pending >= wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* flow_open starts the accounting of an established connection and asks
 * for the state callbacks that end it. */
static __always_inline void flow_open(struct bpf_sock_ops *skops, struct sl_conn *c)
{
    c->opened_ns = bpf_ktime_get_ns();
    c->base_acked = skops->bytes_acked;
    c->base_recv = skops->bytes_received;
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    if ((c->flags & SL_CONN_TRACKED) && flows_on())
        flow_emit(skops, c, SL_EV_OPEN, 0, 0);
}

/* flow_close sends a closing connection's totals: TCP's payload counts
 * (the SYN and FINs excluded) plus what the fast path carried. */
static __always_inline void flow_close(struct bpf_sock_ops *skops, struct sl_conn *c, __u32 old)
{
    __u64 sent = skops->bytes_acked - c->base_acked;
    __u64 recv = skops->bytes_received - c->base_recv;
    /* Our FIN was acknowledged if we closed through these states with
     * nothing outstanding. */
    if ((old == SL_TCP_FIN_WAIT2 || old == SL_TCP_LAST_ACK || old == SL_TCP_CLOSING) &&
        skops->snd_una == skops->snd_nxt && sent > 0)
        sent--;
    struct bpf_sock *sk = skops->sk;
    struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : NULL;
    if (tp && (((struct sock *)tp)->sk_shutdown & SL_RCV_SHUTDOWN) && recv > 0)
        recv--; /* the peer's FIN */
    if (c->flags & SL_CONN_FAST) {
        struct sl_fast_key k = {};
        if (client_key(skops, c, &k)) {
            struct sl_fast_count *b = bpf_map_lookup_elem(&sl_fast_bytes, &k);
            if (b) {
                int server = c->flags & SL_CONN_SERVER;
                sent += server ? b->to_client : b->to_server;
                recv += server ? b->to_server : b->to_client;
                if (__sync_fetch_and_add(&b->refs, -1) == 1)
                    bpf_map_delete_elem(&sl_fast_bytes, &k);
            }
        }
    }
    if ((c->flags & SL_CONN_TRACKED) && flows_on())
        flow_emit(skops, c, SL_EV_CLOSE, sent, recv);
}

/* fast_register puts an established socket on the fast path. The client
 * goes first (its handshake completes first) and opens the connection's
 * byte counts; the server follows only if they are there, so a connection
 * is on it at both ends or at none. A failure leaves the connection on the
 * normal path, counted. */
static __always_inline void fast_register(struct bpf_sock_ops *skops, struct sl_conn *c)
{
    struct sl_fast_key k = {}, ck = {};
    if (!fast_key(skops, &k))
        return;
    struct sl_fast_count first = {.refs = 1};
    struct sl_fast_count *b = NULL;
    if (c->flags & SL_CONN_SERVER) {
        reverse_key(&k, &ck);
        b = bpf_map_lookup_elem(&sl_fast_bytes, &ck);
        if (!b)
            return;
    } else if (bpf_map_update_elem(&sl_fast_bytes, &k, &first, BPF_ANY)) {
        count(SL_STAT_FAST_FULL);
        return;
    }
    if (bpf_sock_hash_update(skops, &sl_fast, &k, BPF_NOEXIST)) {
        count(SL_STAT_FAST_FULL);
        if (!b)
            bpf_map_delete_elem(&sl_fast_bytes, &k);
        return;
    }
    if (b)
        __sync_fetch_and_add(&b->refs, 1);
    c->flags |= SL_CONN_FAST;
    count(SL_STAT_FAST_REGISTERED);
}

/* established runs at both ends once a connection is up (not denied). */
static __always_inline void established(struct bpf_sock_ops *skops)
{
    struct sl_conn *c = conn_of(skops);
    if (!c || (c->flags & SL_CONN_DENIED))
        return;
    fast_register(skops, c);
    if (c->flags & (SL_CONN_TRACKED | SL_CONN_FAST))
        flow_open(skops, c);
}

SEC("sockops")
int sl_sockops(struct bpf_sock_ops *skops)
{
    int one = 1;

    switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
        tag_enable(skops);
        l7_record(skops);
        break;
    case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
        tag_reserve(skops);
        break;
    case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
        tag_write(skops);
        break;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
        client_established(skops);
        established(skops);
        break;
    case BPF_SOCK_OPS_TCP_LISTEN_CB:
        /* Keep each SYN so the tag can be read once the connection is up. */
        bpf_setsockopt(skops, SL_SOL_TCP, SL_TCP_SAVE_SYN, &one, sizeof(one));
        break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        authorize_ingress(skops);
        established(skops);
        break;
    case BPF_SOCK_OPS_STATE_CB:
        if (skops->args[1] == SL_TCP_CLOSE) {
            struct sl_conn *c = conn_of(skops);
            if (c && (c->flags & (SL_CONN_TRACKED | SL_CONN_FAST)))
                flow_close(skops, c, skops->args[0]);
        }
        break;
    case BPF_SOCK_OPS_TIMEOUT_INIT:
        synack_timeout(skops);
        break;
    }
    return 1;
}

/* sl_msg redirects each message a fast-path socket sends into its peer's
 * receive queue. A socket whose peer is not on the fast path when it first
 * sends stays on the normal path for good: its bytes must never overtake
 * bytes already in flight. */
SEC("sk_msg")
int sl_msg(struct sk_msg_md *msg)
{
    struct bpf_sock *sk = msg->sk;
    if (!sk)
        return SK_PASS;
    struct sl_conn *c = bpf_sk_storage_get(&sl_conns, sk, 0, 0);
    if (!c || !(c->flags & SL_CONN_FAST) || (c->flags & SL_CONN_NORMAL))
        return SK_PASS;

    /* peer: the receiving socket's own key, the reverse of this one's. */
    struct sl_fast_key peer = {};
    if (msg->family == SL_AF_INET) {
        peer.local[0] = msg->remote_ip4;
        peer.remote[0] = msg->local_ip4;
        peer.family = SL_FAMILY_V4;
    } else {
        peer.local[0] = msg->remote_ip6[0];
        peer.local[1] = msg->remote_ip6[1];
        peer.local[2] = msg->remote_ip6[2];
        peer.local[3] = msg->remote_ip6[3];
        peer.remote[0] = msg->local_ip6[0];
        peer.remote[1] = msg->local_ip6[1];
        peer.remote[2] = msg->local_ip6[2];
        peer.remote[3] = msg->local_ip6[3];
        peer.family = SL_FAMILY_V6;
        unmap_pair(peer.local, peer.remote, &peer.family);
    }
    peer.lport = bpf_htons((__u16)bpf_ntohl(msg->remote_port));
    peer.rport = bpf_htons((__u16)msg->local_port);

    if (bpf_msg_redirect_hash(msg, &sl_fast, &peer, BPF_F_INGRESS) != SK_PASS) {
        c->flags |= SL_CONN_NORMAL;
        count(SL_STAT_FAST_FALLBACK);
        return SK_PASS;
    }
    __u32 n = msg->size;
    int server = c->flags & SL_CONN_SERVER;
    struct sl_fast_key ck = {};
    if (server) {
        ck = peer;
    } else {
        reverse_key(&peer, &ck);
    }
    struct sl_fast_count *b = bpf_map_lookup_elem(&sl_fast_bytes, &ck);
    if (b) {
        if (server)
            __sync_fetch_and_add(&b->to_client, n);
        else
            __sync_fetch_and_add(&b->to_server, n);
    }
    count_n(SL_STAT_FAST_BYTES, n);
    return SK_PASS;
}

/* denied_socket reports whether skb belongs to a connection policy denied. */
static __always_inline int denied_socket(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 0;
    sk = bpf_sk_fullsock(sk);
    if (!sk)
        return 0;
    struct sl_conn *c = bpf_sk_storage_get(&sl_conns, sk, 0, 0);
    return c && (c->flags & SL_CONN_DENIED);
}

/* is_rst reports whether skb (starting at its IP header) is a TCP reset. */
static __always_inline int is_rst(struct __sk_buff *skb)
{
    __u8 b = 0, flags = 0;
    __u32 off;
    if (bpf_skb_load_bytes(skb, 0, &b, 1))
        return 0;
    if (b >> 4 == 4)
        off = (b & 0xf) * 4 + 13;
    else if (b >> 4 == 6)
        off = 40 + 13;
    else
        return 0;
    if (bpf_skb_load_bytes(skb, off, &flags, 1))
        return 0;
    return flags & SL_TCPHDR_RST;
}

SEC("cgroup_skb/ingress")
int sl_ingress(struct __sk_buff *skb)
{
    if (denied_socket(skb)) {
        count(SL_STAT_DROPPED);
        return 0;
    }
    if (listening(skb))
        return listener_filter(skb);
    return 1;
}

/* sl_egress drops what the server of a denied connection sends, except
 * the reset that ends it. */
SEC("cgroup_skb/egress")
int sl_egress(struct __sk_buff *skb)
{
    if (denied_socket(skb) && !is_rst(skb)) {
        count(SL_STAT_DROPPED);
        return 0;
    }
    return 1;
}

/* --- Terminating denied connections -------------------------------------- */

/* Only what is used of these kernel types; CO-RE relocates the accesses. */
struct sock_common {
    unsigned short skc_family;
    volatile unsigned char skc_state;
} __attribute__((preserve_access_index));

struct tcp_sock;
struct bpf_iter_meta;

struct bpf_iter__tcp {
    struct bpf_iter_meta *meta;
    struct sock_common *sk_common;
    __u32 uid;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* sl_sweep visits the TCP sockets of the network namespace it is run in.
 * It destroys (with a reset to the peer) the connections policy denied:
 * marked at their destination, or denied by a continuous policy since
 * they opened. And it makes listeners that were listening before the
 * programs were attached keep their SYNs, as new ones do, so that the tag
 * can be read. */
SEC("iter/tcp")
int sl_sweep(struct bpf_iter__tcp *ctx)
{
    struct sock_common *skc = ctx->sk_common;
    if (!skc)
        return 0;
    struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
    if (!tp)
        return 0;
    if (skc->skc_state == SL_TCP_LISTEN) {
        int one = 1;
        bpf_setsockopt(tp, SL_SOL_TCP, SL_TCP_SAVE_SYN, &one, sizeof(one));
        return 0;
    }
    struct sl_conn *c = bpf_sk_storage_get(&sl_conns, tp, 0, 0);
    if (!c)
        return 0;
    struct sl_decision d = {.v = {.flags = SL_VERDICT_DENY, .rule = c->rule}};
    if (!(c->flags & SL_CONN_DENIED)) {
        if (decide(c->dst, c->dst_port, c->family, c->src, c->flags & SL_CONN_SRC_KNOWN,
                   c->identity, &d) != DECIDE_DONE)
            return 0;
        if ((d.v.flags & (SL_VERDICT_DENY | SL_VERDICT_TERMINATE)) !=
            (SL_VERDICT_DENY | SL_VERDICT_TERMINATE))
            return 0;
        c->flags |= SL_CONN_DENIED;
    }
    if (bpf_sock_destroy(skc))
        return 0;
    count(SL_STAT_TERMINATED);
    emit(SL_EV_TERMINATED, &d, 0, 0, c->src, 0, c->dst, c->dst_port, c->family, c->identity);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
