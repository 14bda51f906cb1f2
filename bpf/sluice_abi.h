/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ABI shared by Sluice's BPF programs and the Go agent. Every struct that
 * crosses the kernel/user boundary is defined here, once. Go types are
 * generated from the BTF of these definitions by bpf2go (-type flags), so a
 * layout change here is a layout change there.
 *
 * Addresses are stored in network byte order in a 4 x u32 array: IPv4 uses
 * addr[0] and leaves the rest zero, IPv6 uses all four words. Ports are
 * network byte order in a u16.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

#define SL_FAMILY_V4 4
#define SL_FAMILY_V6 6

/* Upper bound of binary-search steps when picking a backend; with 17 steps a
 * service may have up to 2^17 backends in its active set. */
#define SL_MAX_SEARCH_STEPS 17

/* Indexes into sl_stats (a per-CPU array of u64 counters). */
enum sl_stat {
    SL_STAT_TRANSLATED = 0,   /* connect/sendmsg rewritten to a backend */
    SL_STAT_NO_BACKEND = 1,   /* service with no usable endpoint: refused */
    SL_STAT_BACKEND_MISS = 2, /* service entry without its backend entry (must stay 0) */
    SL_STAT_DENY_CONNECT = 3, /* connects refused by policy at the client (EPERM) */
    SL_STAT_DENY_INGRESS = 4, /* connections denied by policy at the destination */
    SL_STAT_TAG_SENT = 5,     /* SYNs that carried the client's identity */
    SL_STAT_TAG_TRUSTED = 6,  /* accepted connections whose tag matched the source address */
    SL_STAT_TAG_REJECTED = 7, /* accepted connections whose tag did not (treated as unknown) */
    SL_STAT_UNTAGGED = 8,     /* accepted connections without a tag (unknown source) */
    SL_STAT_DROPPED = 9,      /* packets dropped to or from a denied connection */
    SL_STAT_VERDICT_MISS = 10, /* policy set without a verdict entry: denied (must stay 0) */
    SL_STAT_EVENT_LOST = 11,  /* events the ring buffer had no room for */
    SL_STAT_TERMINATED = 12,  /* denied connections destroyed */
    SL_STAT_EARLY_DATA = 13,  /* payload dropped at a listener: it would open a denied connection */
    SL_STAT_FAST_REGISTERED = 14, /* sockets put on the same-node fast path */
    SL_STAT_FAST_FULL = 15,       /* sockets left off it: sl_fast was full or refused them */
    SL_STAT_FAST_FALLBACK = 16,   /* connections left off it: the peer was not on it in time */
    SL_STAT_FAST_BYTES = 17,      /* bytes the fast path carried */
    SL_STAT_MAX = 18,
};

/* Slots in sl_stats: more than the counters, so that adding one keeps the
 * pinned map compatible. */
#define SL_STAT_SLOTS 32

/* sl_active[0]: the generation programs read from. The agent writes the
 * inactive generation, then flips active_gen with one store. */
struct sl_config {
    __u32 active_gen;
    __u32 flags;
};

/* Key of sl_services: a service VIP:port/protocol within one generation. */
struct sl_svc_key {
    __u32 gen;
    __u32 addr[4];
    __u16 port;
    __u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 family; /* SL_FAMILY_V4 or SL_FAMILY_V6 */
};

/* Value of sl_services. count == 0 means the service has no usable endpoint
 * and new connections are refused with ECONNREFUSED. */
struct sl_svc_value {
    __u32 id;           /* stable service id, keys sl_backends */
    __u32 count;        /* backends in the active set, indexes 0..count-1 */
    __u32 total_weight; /* sum of the active set's weights */
    __u32 flags;        /* SL_SVC_FAST_MASK: the fast-path setting (SL_FAST_*); SL_SVC_L7 */
};

/* Fast-path settings, of a service (sl_svc_value.flags) or of a local
 * workload's address (value of sl_fast_addrs). */
#define SL_FAST_UNSET 0
#define SL_FAST_ON 1
#define SL_FAST_OFF 2
#define SL_SVC_FAST_MASK 3
/* An L7 service: its one backend is the node's L7 proxy, which must learn
 * the VIP the client dialed and who the client is (sl_l7_conns). */
#define SL_SVC_L7 4

/* Key of sl_backends: the index-th backend of a service's active set. */
struct sl_be_key {
    __u32 gen;
    __u32 svc_id;
    __u32 index;
};

/* Value of sl_backends. Backends are sorted by index with cumulative weights:
 * the backend at index i owns the interval [cum_weight(i-1), cum_weight(i)). */
struct sl_be_value {
    __u32 addr[4];
    __u16 port;
    __u8 family;
    __u8 pad;
    __u32 cum_weight;
};

/* Per-socket record (socket-local storage) of a translated connect: the
 * destination the application dialed and the backend it got. */
struct sl_sock_origin {
    __u32 vip[4];
    __u32 be_addr[4];
    __u32 svc_id;
    __u16 vport;
    __u16 be_port;
    __u8 family;
    __u8 proto;
    __u8 fast; /* the service's fast-path setting (SL_FAST_*) */
    __u8 l7;   /* the service is an L7 service: be_addr is the L7 proxy */
};

/* Key of sl_revnat (LRU): an unconnected UDP socket that sent to a backend. */
struct sl_revnat_key {
    __u64 cookie;
    __u32 addr[4];
    __u16 port;
    __u8 family;
    __u8 pad[5];
};

/* Value of sl_revnat: the VIP:port the reply must appear to come from. */
struct sl_revnat_value {
    __u32 vip[4];
    __u32 svc_id;
    __u16 vport;
    __u8 pad[2];
};

/* --- Identity and policy -------------------------------------------------
 *
 * A numeric identity (u32) names a SPIFFE ID; 0 is the unknown source. The
 * client's identity travels in a TCP option on its SYN: kind 253
 * (experimental, RFC 6994), length 8, ExID SL_TAG_EXID, the identity in
 * network byte order. The destination trusts the tag only when the source
 * address belongs to the same identity (sl_addrs); otherwise the source is
 * unknown.
 */
#define SL_TAG_KIND 253
#define SL_TAG_LEN 8
#define SL_TAG_EXID 0x51CE

/* Where a verdict was enforced; indexes sl_rule_stat's arrays. */
#define SL_AT_CONNECT 0
#define SL_AT_INGRESS 1

/* Value of sl_cgroups (key: cgroup v2 id): a local workload. */
struct sl_cgroup_value {
    __u32 identity;
    __u32 addr4;    /* the workload's IPv4 address, 0 if none */
    __u32 addr6[4]; /* its IPv6 address, zero if none */
};

/* Key of sl_addrs: a workload address; value: its identity (__u32). */
struct sl_addr_key {
    __u32 addr[4];
    __u8 family;
    __u8 pad[3];
};

/* sl_policy_active[0]: the policy generation programs read. */
struct sl_policy_config {
    __u32 gen;
    __u32 flags;
};

/* Key of sl_dests: a destination endpoint address:port within one policy
 * generation. Only TCP destinations carry policy. */
struct sl_dest_key {
    __u32 gen;
    __u32 addr[4];
    __u16 port;
    __u8 family;
    __u8 pad;
};

#define SL_DEST_HAS_CIDR 1 /* the set's principals test source addresses */

struct sl_dest_value {
    __u32 set; /* policy set, keys sl_verdicts and sl_classes */
    __u32 flags;
};

/* Key of sl_classes (LPM trie): prefixlen counts the bits after it, so an
 * entry for a /p CIDR has prefixlen 96 + p. Value: the class (__u32). */
struct sl_class_key {
    __u32 prefixlen;
    __u32 gen;
    __u32 set;
    __u32 family;
    __u32 addr[4];
};

/* Key of sl_verdicts. A lookup with the source identity that misses falls
 * back to identity 0: only identities whose verdict differs are stored. */
struct sl_verdict_key {
    __u32 gen;
    __u32 set;
    __u32 identity;
    __u32 class;
};

#define SL_VERDICT_DENY 1      /* deny the connection */
#define SL_VERDICT_TERMINATE 2 /* terminate existing connections it now denies */

#define SL_SHADOW_NONE 0
#define SL_SHADOW_ALLOW 1
#define SL_SHADOW_DENY 2

struct sl_verdict {
    __u8 flags;  /* SL_VERDICT_* */
    __u8 shadow; /* SL_SHADOW_*: what the dry-run rules would have done */
    __u16 pad;
    __u32 rule;        /* rule that decided, indexes sl_rule_stats; 0: none */
    __u32 shadow_rule; /* dry-run rule that decided; 0: none */
};

/* Value of sl_rule_stats (per-CPU array, index: rule): verdicts a rule
 * decided, at the client (SL_AT_CONNECT) and at the destination. */
struct sl_rule_stat {
    __u64 allow[2];
    __u64 deny[2];
};

#define SL_CONN_CLIENT 1     /* the client's socket */
#define SL_CONN_SERVER 2     /* an accepted socket */
#define SL_CONN_DENIED 4     /* denied: traffic is dropped until it is destroyed */
#define SL_CONN_TAGGED 8     /* the client's SYN carried a trusted tag */
#define SL_CONN_SRC_KNOWN 16 /* src holds the source address */
#define SL_CONN_TRACKED 32   /* a flow: open and close events are sent */
#define SL_CONN_FAST 64      /* registered in sl_fast */
#define SL_CONN_NORMAL 128   /* its messages take the normal path for good */

/* Per-socket record (socket-local storage) of a TCP connection's identity
 * and policy destination, kept for tags and re-evaluation. */
struct sl_conn {
    __u32 identity; /* the client's identity */
    __u32 flags;    /* SL_CONN_* */
    __u32 dst[4];   /* the policy destination: the backend (client side) or local address */
    __u32 src[4];   /* the source address, if SL_CONN_SRC_KNOWN */
    __u32 rule;     /* rule that decided when the connection opened */
    __u16 dst_port;
    __u8 family;
    __u8 pad;
    /* Flow accounting, if SL_CONN_TRACKED. */
    __u64 opened_ns;  /* CLOCK_MONOTONIC at establishment */
    __u64 base_acked; /* bytes_acked at establishment (the SYN) */
    __u64 base_recv;  /* bytes_received at establishment */
};

enum sl_event_kind {
    SL_EV_DENY_CONNECT = 1,        /* a client was refused at connect */
    SL_EV_DENY_INGRESS = 2,        /* a connection was denied at its destination */
    SL_EV_SHADOW_DENY_CONNECT = 3, /* dry-run rules would have refused a connect */
    SL_EV_SHADOW_DENY_INGRESS = 4, /* dry-run rules would have denied at the destination */
    SL_EV_TERMINATED = 5,          /* a connection the policy now denies was destroyed */
    SL_EV_OPEN = 6,                /* a tracked connection was established */
    SL_EV_CLOSE = 7,               /* a tracked connection closed */
};

#define SL_SIDE_CLIENT 1 /* the event's socket is the client's */
#define SL_SIDE_SERVER 2 /* the event's socket is the server's */

/* An event, sent through the sl_events ring buffer: a policy event, or a
 * flow's open or close. src is always the client's end. */
struct sl_event {
    __u64 time_ns; /* CLOCK_MONOTONIC */
    __u64 cookie;  /* socket cookie */
    __u64 netns;   /* network namespace cookie */
    __u32 src[4];
    __u32 dst[4]; /* the policy destination */
    __u32 identity;
    __u32 rule;
    __u32 shadow_rule;
    __u32 set;
    __u16 src_port;
    __u16 dst_port;
    __u8 family;
    __u8 kind; /* enum sl_event_kind */
    __u8 flags; /* the verdict's SL_VERDICT_* */
    __u8 shadow;
    /* Flow events (SL_EV_OPEN, SL_EV_CLOSE). Bytes are payload: on a
     * close, client to server (sent) and back (recv), fast path included. */
    __u64 bytes_sent;
    __u64 bytes_recv;
    __u64 duration_ns;
    __u32 vip[4]; /* the service the client dialed, if known (vport != 0) */
    __u32 rtt_us; /* smoothed RTT */
    __u32 retrans;
    __u16 vport;
    __u8 side; /* SL_SIDE_* */
    __u8 fast; /* the fast path carried the socket's messages */
    __u32 pad2;
};

/* --- Same-node fast path ---------------------------------------------------
 *
 * Both sockets of an established TCP connection between two local workloads
 * whose fast path is on are kept in sl_fast (a sockhash), keyed by their
 * own 4-tuple. An sk_msg program redirects each message a socket sends into
 * the receive queue of its peer, found by the reversed tuple.
 */
struct sl_fast_key {
    __u32 local[4];
    __u32 remote[4];
    __u16 lport; /* network byte order */
    __u16 rport;
    __u8 family;
    __u8 pad[3];
};

/* Value of sl_fast_bytes (key: the client's sl_fast_key): the bytes the
 * fast path carried each way, and how many of the connection's sockets
 * are on it and not closed; the last to close deletes the entry. */
struct sl_fast_count {
    __u64 to_server;
    __u64 to_client;
    __s32 refs;
    __u32 pad;
};

/* --- The L7 proxy ----------------------------------------------------------
 *
 * A connection to an L7 service goes to the node's L7 proxy. When the
 * client sends its SYN, the client's address:port is recorded in sl_l7_conns
 * (LRU) with the service it dialed and its identity; the proxy looks its
 * accepted connection up there by the client's address and deletes the
 * entry. The proxy's own upstream sockets carry the identity of the client
 * they serve: the proxy stores it on the socket (sl_proxied, socket-local
 * storage written through the socket's fd) before connecting, and the
 * connect hook uses it instead of the proxy's own. A destination trusts
 * such a tag when the source address is a proxy's (SL_OWNER_PROXY in
 * sl_addrs).
 */
#define SL_OWNER_PROXY 0xffffffff

struct sl_l7_key {
    __u32 addr[4]; /* the client's address */
    __u16 port;    /* the client's port, network byte order */
    __u8 family;
    __u8 pad;
};

struct sl_l7_origin {
    __u32 vip[4]; /* the service the client dialed */
    __u32 identity; /* the client's identity; 0 unknown */
    __u32 svc_id;
    __u16 vport;
    __u8 family;
    __u8 pad;
};

struct sl_proxied_value {
    __u32 identity; /* the identity an upstream socket of the proxy carries */
    __u32 pad;
};

/* sl_settings[0]: node settings the agent sets. */
#define SL_SET_FLOWS 1 /* send flow open and close events */

struct sl_node_config {
    __u32 flags;
    __u32 pad;
};

#endif /* SLUICE_ABI_H */
