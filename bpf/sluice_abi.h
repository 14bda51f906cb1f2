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
    SL_STAT_MAX = 3,
};

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
    __u32 flags;
};

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
    __u8 pad[2];
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

#endif /* SLUICE_ABI_H */
