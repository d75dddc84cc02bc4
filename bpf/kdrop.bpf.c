// SPDX-License-Identifier: GPL-2.0
/* kdrop's kernel side: every place where the kernel gives up on traffic.
 *
 *   kfree_skb          -> KDROP_EV_DROP            (tp_btf, else raw_tp)
 *   tcp_conn_request,
 *   tcp_v{4,6}_syn_recv_sock -> KDROP_EV_LISTEN_OVERFLOW (fentry, else kprobe)
 *   icmp_send tp, ip{,6}_push_pending_frames -> KDROP_EV_UNREACH
 *
 * Each hook has one body shared by its attach modes; userspace picks the
 * first mode that loads and attaches on the running kernel (tracer/hooks.go).
 * Everything that can differ between kernels is read through CO-RE. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kdrop.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define NSEC_PER_SEC 1000000000ULL
#define IPPROTO_ICMPV6 58 /* a #define in uapi, so not in BTF */

/* Filters and limits, set by userspace before load. Being read-only data,
 * a disabled filter is a constant the verifier prunes away. */
volatile const __u32 cfg_netns = 0;       /* 0: any */
volatile const __u16 cfg_port = 0;        /* 0: any; matches either end */
volatile const __u8 cfg_proto = 0;        /* 0: any */
volatile const __u8 cfg_addr_filter = 0;  /* 1: either end must match addr_filter */
volatile const __u32 cfg_rate_limit = 0;  /* events per flow per generation; 0: no limit */
volatile const __u8 cfg_skip_subsys = 0;  /* 1: skip subsystem drop reasons */
/* Bit n set: do not report drop reason n (benign ones, or not asked for). */
volatile const __u64 cfg_reason_skip[16] = {};
/* Benign by place: frees with reason cfg_place_reason (NOT_SPECIFIED; 0
 * before 5.17) whose location lies in one of cfg_benign_n text ranges
 * [start, end), resolved from kallsyms (tracer.BenignPlaces). */
#define KDROP_BENIGN_PLACES 8
volatile const __u64 cfg_benign_pc[2 * KDROP_BENIGN_PLACES] = {};
volatile const __u32 cfg_benign_n = 0;
volatile const __u32 cfg_place_reason = 0;
/* 1: also skip cfg_place_reason frees of frames that came as link-layer
 * broadcast or multicast (mDNS, SSDP, DHCP, subnet broadcasts nobody
 * here listens to): no connection of this host was owed them. */
volatile const __u8 cfg_hide_link_multi = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KDROP_STAT_MAX);
} stats SEC(".maps");

/* Flow tables come in two generations. Programs count into the one `gen`
 * selects; every sweep interval userspace moves `gen` on, waits until no
 * program can still hold the previous generation (an update of a map-in-map
 * waits for an RCU grace period, see maybe_wait_bpf_programs in
 * kernel/bpf/syscall.c), then reads and empties it. So counts are exact,
 * summaries come every interval whatever the traffic, and the tables hold
 * only the flows of the last interval. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 2);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__type(key, struct flow_key);
		__type(value, struct flow_state);
		__uint(max_entries, 65536);
	});
} flow_tables SEC(".maps");

/* Where flows go when their generation's flow table is full (a scan, late
 * DNS answers to many closed ports): keyed without the destination. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 2);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__type(key, struct flow_key);
		__type(value, struct flow_state);
		__uint(max_entries, 4096);
	});
} coarse_tables SEC(".maps");

/* The last resort, never full: one flow per event type and generation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_state);
	__uint(max_entries, 2 * KDROP_EV_MAX);
} spill SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct addr_key);
	__type(value, __u8);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} addr_filter SEC(".maps");

/* Make bpf2go emit the Go mirrors: put the flow key's full type in BTF
 * (an inner map definition alone leaves a forward declaration), and the
 * enums, which the code only uses for their constants. */
struct kdrop_event *unused_event __attribute__((unused));
struct flow_key *unused_flow_key __attribute__((unused));
enum kdrop_event_type *unused_event_type __attribute__((unused));
enum kdrop_queue *unused_queue __attribute__((unused));
enum kdrop_flags *unused_flags __attribute__((unused));
enum kdrop_mode *unused_mode __attribute__((unused));
enum kdrop_stat *unused_stat __attribute__((unused));
enum kdrop_gen *unused_gen __attribute__((unused));

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

/* ---- packet parsing: raw bytes, wire formats never change ---- */

/* Ports, TCP flags or the ICMP header from l4[0..13], of which len bytes
 * belong to the packet: nothing is read past its end. An ICMP packet's
 * second word is kept too: a dropped frag-needed says the MTU it carried. */
static __always_inline void parse_l4(struct kdrop_event *e, const __u8 *h, __u32 len)
{
	if (e->proto == IPPROTO_ICMP || e->proto == IPPROTO_ICMPV6) {
		if (len >= 2) {
			e->icmp_type = h[0];
			e->icmp_code = h[1];
		}
		if (len >= 8)
			e->icmp_info = (__u32)h[4] << 24 | (__u32)h[5] << 16 | (__u32)h[6] << 8 | h[7];
		return;
	}
	if ((e->proto != IPPROTO_TCP && e->proto != IPPROTO_UDP) || len < 4)
		return;
	if (e->proto == IPPROTO_TCP && len >= 14)
		e->tcp_flags = h[13];
	e->sport = (__u16)h[0] << 8 | h[1];
	e->dport = (__u16)h[2] << 8 | h[3];
}

/* IPv6 extension headers kdrop walks past (RFC 8200 4.1; ipv6_ext_hdr in
 * include/net/ipv6.h): hop-by-hop, routing, fragment, destination options,
 * authentication. */
static __always_inline bool ipv6_ext_hdr(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 60 || nh == 51;
}

#define KDROP_IPV6_MAX_EXT 16 /* more than any real packet carries */

/* Walks the extension headers after the fixed IPv6 header at ip, as
 * ipv6_skip_exthdr does: sets e->proto to the upper-layer protocol and
 * returns the offset of its header from ip, or 0 when it has no ports to
 * read (a fragment other than the first, too many headers, a read fault). */
static __always_inline __u32 ipv6_skip_ext(struct kdrop_event *e, unsigned char *ip, __u32 end)
{
	__u32 off = 40;
	__u8 nh = e->proto;

	for (int i = 0; i < KDROP_IPV6_MAX_EXT; i++) {
		__u8 x[4];

		if (!ipv6_ext_hdr(nh)) {
			e->proto = nh;
			return off + 4 <= end ? off : 0; /* ports within the packet */
		}
		/* a header the packet's own length does not hold: stop, never
		 * read what lies past it */
		if (off + 8 > end || bpf_probe_read_kernel(x, sizeof(x), ip + off))
			return 0;
		if (nh == 44) { /* fragment: 8 bytes; only offset 0 has ports */
			e->proto = x[0];
			if (((__u16)x[2] << 8 | x[3]) & 0xfff8)
				return 0;
			off += 8;
		} else if (nh == 51) { /* AH: length in 4-byte units, minus 2 */
			off += ((__u32)x[1] + 2) * 4;
		} else { /* length in 8-byte units, not counting the first 8 */
			off += ((__u32)x[1] + 1) * 8;
		}
		nh = x[0];
		off &= 0xffff; /* bounded for the verifier; headers end below 64k */
	}
	e->proto = nh;
	/* the last header walked may be followed by the upper layer's */
	return !ipv6_ext_hdr(nh) && off + 4 <= end ? off : 0;
}

/* Fills family, addresses, protocol and ports from an IP header at ip
 * (proto: its ETH_P_*), of which avail bytes are in memory (the skb's
 * linear data): nothing past the packet's own length, or past what is
 * there (a truncated packet), is read as ports. One read of 54 bytes
 * covers an IPv4 header without options or an IPv6 header, and what
 * follows up to the TCP flags: each helper call counts on a path that
 * runs for every drop. */
static __always_inline void parse_ip(struct kdrop_event *e, unsigned char *ip, __u16 proto, __u32 avail)
{
	__u8 b[54];
	bool whole = true;
	__u32 end;

	if (proto != ETH_P_IP && proto != ETH_P_IPV6)
		return;
	/* near the end of a page the long read can fault: then header first */
	if (bpf_probe_read_kernel(b, sizeof(b), ip)) {
		whole = false;
		if (bpf_probe_read_kernel(b, proto == ETH_P_IP ? 20 : 40, ip))
			return;
	}
	if (proto == ETH_P_IP) {
		__u8 ihl = (b[0] & 0xf) * 4;

		if ((b[0] >> 4) != 4)
			return;
		e->family = 4;
		e->proto = b[9];
		__builtin_memcpy(e->saddr, &b[12], 4);
		__builtin_memcpy(e->daddr, &b[16], 4);
		/* a header shorter than 20 bytes (ip_rcv_core drops it): what
		 * follows its IHL is the addresses, not ports */
		if (ihl < 20)
			return;
		/* only the first fragment carries ports */
		if (((b[6] & 0x1f) << 8 | b[7]) != 0)
			return;
		end = (__u32)b[2] << 8 | b[3]; /* 0: BIG TCP's GSO packet, over 64k */
		if (!end || end > avail)
			end = avail;
		if (end <= ihl)
			return;
		if (ihl == 20 && whole) {
			parse_l4(e, &b[20], end - ihl);
		} else {
			__u8 h[14] = {};

			if (!bpf_probe_read_kernel(h, sizeof(h), ip + ihl))
				parse_l4(e, h, end - ihl);
		}
	} else {
		__u8 h[14] = {};
		__u32 off;

		if ((b[0] >> 4) != 6)
			return;
		e->family = 6;
		e->proto = b[6];
		__builtin_memcpy(e->saddr, &b[8], 16);
		__builtin_memcpy(e->daddr, &b[24], 16);
		end = 40 + ((__u32)b[4] << 8 | b[5]); /* 40: a jumbogram, or BIG TCP */
		if (end == 40 || end > avail)
			end = avail;
		if (!ipv6_ext_hdr(e->proto)) {
			if (end <= 40)
				return;
			if (whole) {
				parse_l4(e, &b[40], end - 40);
			} else if (!bpf_probe_read_kernel(h, sizeof(h), ip + 40)) {
				parse_l4(e, h, end - 40);
			}
			return;
		}
		/* the packet's length bounds the walk (quoted packets too) */
		off = ipv6_skip_ext(e, ip, end);
		if (off && off < end && !bpf_probe_read_kernel(h, sizeof(h), ip + off))
			parse_l4(e, h, end - off);
	}
}

/* Parses the packet itself: most drops on the receive path have no socket,
 * so skb->sk tells nothing. btf (a constant): skb is a BTF pointer (tp_btf,
 * fentry), whose fields are plain loads; else each is a probe read. What
 * lies between the network header and the linear data's end (skb->tail)
 * is the packet's as far as kdrop reads it. */
static __always_inline void parse_skb(struct sk_buff *skb, struct kdrop_event *e, bool btf)
{
	/* head is probe-read even from a BTF pointer: a plain load of it made
	 * the verifier walk the header parser's paths ~70 times over (595k of
	 * its 1M instructions on 6.18, 6 s per load under emulation) */
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = btf ? skb->network_header : BPF_CORE_READ(skb, network_header);
	__u16 proto = btf ? skb->protocol : BPF_CORE_READ(skb, protocol);
	__u32 tail = btf ? skb->tail : BPF_CORE_READ(skb, tail);

	if (!head || nh == (__u16)~0U || tail <= nh)
		return;
	parse_ip(e, head + nh, bpf_ntohs(proto), tail - nh);
}

static __always_inline __u32 sk_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void skb_where(struct sk_buff *skb, struct kdrop_event *e, bool btf)
{
	struct net_device *dev = btf ? skb->dev : BPF_CORE_READ(skb, dev);
	struct sock *sk;

	if (dev) {
		if (btf) {
			e->ifindex = dev->ifindex;
			e->netns = dev->nd_net.net->ns.inum;
		} else {
			e->ifindex = BPF_CORE_READ(dev, ifindex);
			e->netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		}
		return;
	}
	sk = btf ? skb->sk : BPF_CORE_READ(skb, sk);
	if (sk)
		e->netns = btf ? sk->__sk_common.skc_net.net->ns.inum : sk_netns(sk);
}

/* ---- filters, exact counting, rate limiting, output ---- */

/* Userspace mirrors these two in tracer.Filter.Match: change both. */
static __always_inline bool addr_match(const __u8 *a, __u8 family)
{
	struct addr_key k = { .prefixlen = 128 };

	if (family != 4 && family != 6)
		return false; /* not IP: no address to match (not ::) */
	if (family == 4) {
		k.addr[10] = 0xff;
		k.addr[11] = 0xff;
		__builtin_memcpy(&k.addr[12], a, 4);
	} else {
		__builtin_memcpy(k.addr, a, 16);
	}
	return bpf_map_lookup_elem(&addr_filter, &k) != NULL;
}

static __always_inline bool pass_filters(struct kdrop_event *e)
{
	if (cfg_netns && e->netns != cfg_netns)
		return false;
	if (cfg_proto && e->proto != cfg_proto)
		return false;
	if (cfg_port && e->sport != cfg_port && e->dport != cfg_port)
		return false;
	if (cfg_addr_filter && !addr_match(e->saddr, e->family) &&
	    !addr_match(e->daddr, e->family))
		return false;
	return true;
}

/* The flow state of key k in table slot of an outer map, created if new;
 * NULL when that table is full. */
static __always_inline struct flow_state *flow_get(void *tables, __u32 slot, struct flow_key *k)
{
	struct flow_state init = {}, *st;
	void *tbl = bpf_map_lookup_elem(tables, &slot);

	if (!tbl)
		return NULL;
	st = bpf_map_lookup_elem(tbl, k);
	if (st)
		return st;
	bpf_map_update_elem(tbl, k, &init, BPF_NOEXIST);
	return bpf_map_lookup_elem(tbl, k);
}

/* Counts the event in its flow, exactly, and returns the flow's state if the
 * event is to be sent (NULL: rate-limited; userspace reports seen - sent
 * when it empties the generation). A full flow table never turns the rate
 * limit off: the key is coarsened instead, and the event says so. */
static __always_inline struct flow_state *account(struct kdrop_event *e, __u32 key_reason)
{
	struct flow_key k = {};
	struct flow_state *st;
	__u32 zero = 0, slot = 0, *g;

	g = bpf_map_lookup_elem(&gen, &zero);
	if (g) {
		if (*g & KDROP_GEN_STOPPED)
			return NULL; /* the run is over: its counts are final */
		slot = *g & 1;
	}
	__builtin_memcpy(k.daddr, e->daddr, 16);
	k.netns = e->netns;
	k.reason = key_reason;
	k.dport = e->dport;
	k.type = e->type;
	k.proto = e->proto;
	k.family = e->family;

	st = flow_get(&flow_tables, slot, &k);
	if (!st) {
		__builtin_memset(k.daddr, 0, sizeof(k.daddr));
		k.dport = 0;
		e->flags |= KDROP_F_COARSE_NETNS;
		st = flow_get(&coarse_tables, slot, &k);
		if (!st) {
			__u32 i = slot * KDROP_EV_MAX + (e->type & 3);

			e->flags ^= KDROP_F_COARSE_NETNS | KDROP_F_COARSE_TYPE;
			st = bpf_map_lookup_elem(&spill, &i);
			if (!st)
				return NULL; /* unreachable: an array lookup in bounds */
		}
		stat_inc(KDROP_STAT_COARSENED);
	}
	__sync_fetch_and_add(&st->seen, 1);
	/* racy across CPUs: only the limit is approximate, never the count */
	if (cfg_rate_limit && st->sent >= cfg_rate_limit)
		return NULL;
	return st;
}

static __always_inline void emit(struct kdrop_event *e, __u32 key_reason)
{
	struct flow_state *st;

	if (!pass_filters(e))
		return;
	st = account(e, key_reason);
	if (!st)
		return;
	e->ts_ns = bpf_ktime_get_ns(); /* only events that are sent need it */
	if (bpf_ringbuf_output(&events, e, sizeof(*e), 0))
		stat_inc(e->type); /* a lost line, its count in seen - sent */
	else
		__sync_fetch_and_add(&st->sent, 1);
}

/* ---- kfree_skb: every drop, with the kernel's own reason ---- */

static __always_inline bool skip_reason(__u32 reason)
{
	if (reason >> 16)
		return cfg_skip_subsys;
	if (reason >= 16 * 64)
		return false;
	/* the mask keeps the verifier sure of the bounds */
	return (cfg_reason_skip[(reason >> 6) & 15] >> (reason & 63)) & 1;
}

/* The frame came as link-layer broadcast or multicast (skb->pkt_type
 * PACKET_BROADCAST, PACKET_MULTICAST: eth_type_trans). */
static __always_inline bool link_multi(struct sk_buff *skb)
{
	__u8 t = BPF_CORE_READ_BITFIELD_PROBED(skb, pkt_type);

	return t == 1 || t == 2;
}

static __always_inline int report_drop(__u64 *ctx, __u32 reason, bool btf, __u8 mode)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	struct kdrop_event e = {};

	e.type = KDROP_EV_DROP;
	e.mode = mode;
	e.reason = reason;
	e.location = ctx[1];
	if (link_multi(skb))
		e.flags |= KDROP_F_LINK_MULTI;
	skb_where(skb, &e, btf);
	parse_skb(skb, &e, btf);
	emit(&e, reason);
	return 0;
}

static __always_inline bool benign_place(__u64 pc)
{
	for (int i = 0; i < KDROP_BENIGN_PLACES; i++) {
		if (i >= cfg_benign_n)
			break;
		if (pc >= cfg_benign_pc[2 * i] && pc < cfg_benign_pc[2 * i + 1])
			return true;
	}
	return false;
}

/* The fast path, run for every freed skb: read the reason, test one bit.
 * The event is built only past it (declaring it up front lets the compiler
 * zero it before the test). */
static __always_inline int on_kfree_skb(__u64 *ctx, bool btf, __u8 mode)
{
	__u32 reason = 0;

	/* The reason argument came with the enum (5.17); on older kernels
	 * this branch is pruned before the verifier checks ctx[2]. */
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED))
		reason = (__u32)ctx[2];
	if (skip_reason(reason))
		return 0;
	if (reason == cfg_place_reason) {
		if (cfg_benign_n && benign_place(ctx[1]))
			return 0;
		if (cfg_hide_link_multi && link_multi((struct sk_buff *)ctx[0]))
			return 0;
	}
	return report_drop(ctx, reason, btf, mode);
}

SEC("tp_btf/kfree_skb")
int tp_btf_kfree_skb(__u64 *ctx)
{
	return on_kfree_skb(ctx, true, KDROP_MODE_TP_BTF);
}

SEC("raw_tp/kfree_skb")
int raw_tp_kfree_skb(__u64 *ctx)
{
	return on_kfree_skb(ctx, false, KDROP_MODE_RAW_TP);
}

/* ---- listen queue overflow: tcp_conn_request and the final ACK ---- */

static __always_inline int listen_overflow(struct sock *sk, struct sk_buff *skb,
					   __u32 acc, __u32 max, __u32 synq,
					   __u8 queue, __u8 mode)
{
	struct kdrop_event e = {};
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	/* where netns_ipv4 lies in struct net, relocated explicitly */
	struct netns_ipv4 *ipv4 = (void *)net + bpf_core_field_offset(struct net, ipv4);
	/* an int on older kernels, a u8 on newer: read whatever size it is */
	int cookies = BPF_CORE_READ_BITFIELD_PROBED(ipv4, sysctl_tcp_syncookies);

	e.type = KDROP_EV_LISTEN_OVERFLOW;
	e.mode = mode;
	e.qlen = acc;
	e.qmax = max;
	e.synq = synq;
	e.queue = queue;
	/* tcp_conn_request answers a full SYN queue with a cookie when cookies
	 * are on (TCPReqQFullDoCookies), else drops the SYN (TCPReqQFullDrop) */
	if (queue == KDROP_Q_SYN && cookies)
		e.flags |= KDROP_F_SYNCOOKIE;
	skb_where(skb, &e, false);
	e.netns = BPF_CORE_READ(net, ns.inum);
	parse_skb(skb, &e, false);
	emit(&e, queue);
	return cookies != 0;
}

/* Since 6.2 a BTF pointer can be retyped (inet_connection_sock lies beyond
 * struct sock, out of a plain fentry load's reach); where the kfunc is
 * missing this resolves to 0 and the verifier drops that branch. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

static __always_inline __u32 syn_queue_len(struct sock *sk, bool btf)
{
	if (btf && bpf_rdonly_cast) {
		struct inet_connection_sock *icsk =
			bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct inet_connection_sock));
		return icsk->icsk_accept_queue.qlen.counter;
	}
	return BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_accept_queue.qlen.counter);
}

/* A SYN reached a listener. Mirrors tcp_conn_request's own checks, in its
 * order (include/net/inet_connection_sock.h, net/ipv4/tcp_input.c): SYN queue full (a cookie, or the SYN dropped there: each counted
 * as the kernel does), then accept queue full (drop, counted as
 * TcpExtListenOverflows, even after a cookie was counted). The fast path
 * is three loads and two compares. */
static __always_inline int conn_request(struct sock *sk, struct sk_buff *skb,
					__u32 acc, __u32 max, bool btf, __u8 mode)
{
	__u32 synq = syn_queue_len(sk, btf);

	/* inet_csk_reqsk_queue_is_full: "> max" since 2025 (backported to the
	 * stable kernels), ">= max" before, where the SYN that fills the
	 * queue's last place shows here as refused though it was taken */
	if (synq > max && !listen_overflow(sk, skb, acc, max, synq, KDROP_Q_SYN, mode))
		return 0; /* no cookie: dropped for the full SYN queue */
	if (acc > max)
		listen_overflow(sk, skb, acc, max, synq, KDROP_Q_ACCEPT_SYN, mode);
	return 0;
}

SEC("fentry/tcp_conn_request")
int BPF_PROG(fentry_tcp_conn_request, struct request_sock_ops *rsk_ops,
	     const struct tcp_request_sock_ops *af_ops, struct sock *sk, struct sk_buff *skb)
{
	return conn_request(sk, skb, sk->sk_ack_backlog, sk->sk_max_ack_backlog, true, KDROP_MODE_FENTRY);
}

SEC("kprobe/tcp_conn_request")
int BPF_KPROBE(kprobe_tcp_conn_request, struct request_sock_ops *rsk_ops,
	       const struct tcp_request_sock_ops *af_ops, struct sock *sk, struct sk_buff *skb)
{
	return conn_request(sk, skb, BPF_CORE_READ(sk, sk_ack_backlog),
			    BPF_CORE_READ(sk, sk_max_ack_backlog), false, KDROP_MODE_KPROBE);
}

/* The final ACK of a handshake found the accept queue full. */
static __always_inline int syn_recv_overflow(struct sock *sk, struct sk_buff *skb,
					     __u32 acc, __u32 max, bool v6, __u8 mode)
{
	__u32 synq;

	if (acc <= max)
		return 0;
	/* IPv4-mapped on a v6 listener: tcp_v6_syn_recv_sock calls
	 * tcp_v4_syn_recv_sock, whose hook reports it. Don't count it twice. */
	if (v6 && BPF_CORE_READ(skb, protocol) == bpf_htons(ETH_P_IP))
		return 0;
	synq = syn_queue_len(sk, false);
	listen_overflow(sk, skb, acc, max, synq, KDROP_Q_ACCEPT_ACK, mode);
	return 0; /* an fentry program must: the verifier refuses any other value */
}

SEC("fentry/tcp_v4_syn_recv_sock")
int BPF_PROG(fentry_tcp_v4_syn_recv_sock, struct sock *sk, struct sk_buff *skb)
{
	return syn_recv_overflow(sk, skb, sk->sk_ack_backlog, sk->sk_max_ack_backlog, false,
				 KDROP_MODE_FENTRY);
}

SEC("kprobe/tcp_v4_syn_recv_sock")
int BPF_KPROBE(kprobe_tcp_v4_syn_recv_sock, struct sock *sk, struct sk_buff *skb)
{
	return syn_recv_overflow(sk, skb, BPF_CORE_READ(sk, sk_ack_backlog),
				 BPF_CORE_READ(sk, sk_max_ack_backlog), false, KDROP_MODE_KPROBE);
}

SEC("fentry/tcp_v6_syn_recv_sock")
int BPF_PROG(fentry_tcp_v6_syn_recv_sock, struct sock *sk, struct sk_buff *skb)
{
	return syn_recv_overflow(sk, skb, sk->sk_ack_backlog, sk->sk_max_ack_backlog, true,
				 KDROP_MODE_FENTRY);
}

SEC("kprobe/tcp_v6_syn_recv_sock")
int BPF_KPROBE(kprobe_tcp_v6_syn_recv_sock, struct sock *sk, struct sk_buff *skb)
{
	return syn_recv_overflow(sk, skb, BPF_CORE_READ(sk, sk_ack_backlog),
				 BPF_CORE_READ(sk, sk_max_ack_backlog), true, KDROP_MODE_KPROBE);
}

/* ---- ICMP errors the kernel sends: "unreachable" and friends ---- */

static __always_inline bool icmp_error_type(__u8 type, bool v6)
{
	if (v6) /* dest unreach, packet too big, time exceeded, param problem */
		return type >= 1 && type <= 4;
	/* dest unreach, redirect (its gateway in the second word), time
	 * exceeded, parameter problem; IPv6's redirects go out through
	 * ndisc's socket, not the ICMPv6 one */
	return type == 3 || type == 5 || type == 11 || type == 12;
}

/* The icmp_send tracepoint (IPv4 only): skb is the offending packet, the
 * one the ICMP error answers. */
static __always_inline int icmp_sent(struct sk_buff *skb, int type, int code, bool btf, __u8 mode)
{
	struct kdrop_event e = {};

	if (!icmp_error_type(type, false))
		return 0;
	e.type = KDROP_EV_UNREACH;
	e.mode = mode;
	skb_where(skb, &e, btf);
	parse_skb(skb, &e, btf);
	/* parse_skb put the offending packet's own ICMP header here, if any;
	 * the error's second word is not an argument of the tracepoint */
	e.icmp_type = type;
	e.icmp_code = code;
	e.icmp_info = 0;
	emit(&e, (__u32)type << 8 | (__u8)code);
	return 0;
}

/* Since 6.9: fires after the rate limit, so it sees what was sent. */
SEC("tp_btf/icmp_send")
int BPF_PROG(tp_btf_icmp_send, const struct sk_buff *skb, int type, int code)
{
	return icmp_sent((struct sk_buff *)skb, type, code, true, KDROP_MODE_TP_BTF);
}

SEC("raw_tp/icmp_send")
int raw_tp_icmp_send(__u64 *ctx)
{
	return icmp_sent((struct sk_buff *)ctx[0], (int)ctx[1], (int)ctx[2], false,
			 KDROP_MODE_RAW_TP);
}

/* sk is one of the kernel's own ICMP (or ICMPv6) sockets, which send its
 * errors: a user's raw socket is not the kernel answering. */
static __always_inline bool kernel_icmp_sock(struct sock *sk, bool v6)
{
	if (BPF_CORE_READ(sk, sk_protocol) != (v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP))
		return false;
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_kern_sock);
}

/* skb holds an ICMP message of sk from its transport header on: when it is
 * an error, report it with the offending packet it quotes and the header's
 * second word (MTU, pointer). */
static __always_inline int icmp_error_out(struct sk_buff *skb, __u32 netns, __u32 ifindex, bool v6, __u8 mode)
{
	struct kdrop_event e = {};
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u32 mtu = 0, tail;
	__u8 h[8];

	if (!head || th == (__u16)~0U || bpf_probe_read_kernel(h, sizeof(h), head + th))
		return 0;
	if (!icmp_error_type(h[0], v6))
		return 0;
	e.type = KDROP_EV_UNREACH;
	e.mode = mode;
	e.netns = netns;
	e.ifindex = ifindex;
	tail = BPF_CORE_READ(skb, tail);
	/* the quoted packet ends with the linear data; where the error's data
	 * is not all linear (tail before it), the quote's own lengths bound it */
	parse_ip(&e, head + th + 8, v6 ? ETH_P_IPV6 : ETH_P_IP, tail > th + 8 ? tail - (th + 8) : 0xffff);
	e.icmp_type = h[0];
	e.icmp_code = h[1];
	e.icmp_info = (__u32)h[4] << 24 | (__u32)h[5] << 16 | (__u32)h[6] << 8 | h[7];
	/* an MTU (frag-needed, packet-too-big; 16 bits in practice) keys the
	 * flow too, so a summary of folded errors still says it */
	if ((!v6 && h[0] == 3 && h[1] == 4) || (v6 && h[0] == 2))
		mtu = e.icmp_info & 0xffff;
	emit(&e, mtu << 16 | (__u32)h[0] << 8 | h[1]);
	return 0;
}

/* Without the tracepoint: the error as it leaves. __icmp_send and icmp6_send
 * run before their rate limits; once an error passes them, its packet is
 * built on the ICMP socket's write queue and pushed out by
 * ip{,6}_push_pending_frames, which is where IcmpOutDestUnreachs and
 * Icmp6OutDestUnreachs are counted (__ip{,6}_make_skb). The first skb
 * queued holds the ICMP header, already filled in, then the offending
 * packet from its IP header on. Only the kernel's own ICMP sockets count:
 * a user's raw socket is not the kernel answering. */
static __always_inline int icmp_pushed(struct sock *sk, bool v6, __u8 mode)
{
	struct sk_buff *skb;

	if (!kernel_icmp_sock(sk, v6))
		return 0;
	if (!BPF_CORE_READ(sk, sk_write_queue.qlen))
		return 0;
	skb = BPF_CORE_READ(sk, sk_write_queue.next);
	/* the error leaves where the offending packet came in */
	return icmp_error_out(skb, sk_netns(sk), BPF_CORE_READ((struct inet_sock *)sk, cork.base.dst, dev, ifindex), v6, mode);
}

/* A device an skb passes on its way to the one that sends it (a bridge,
 * then its port; a VLAN, macvlan or ipvlan, then its lower device; a VRF,
 * bond, team, failover or macsec device; an Open vSwitch internal port):
 * counted there too, an error would count twice. ipvlan has no flag of its
 * own: its kind says it. */
static __always_inline bool upper_dev(struct net_device *dev)
{
	__u32 f = BPF_CORE_READ_BITFIELD_PROBED(dev, priv_flags);
	const char *kind;
	char k[8] = {};

	if (f & (bpf_core_enum_value(enum netdev_priv_flags, IFF_EBRIDGE) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_BONDING) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_802_1Q_VLAN) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_TEAM) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_MACVLAN) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_L3MDEV_MASTER) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_FAILOVER) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_MACSEC) |
		 bpf_core_enum_value(enum netdev_priv_flags, IFF_OPENVSWITCH)))
		return true;
	kind = BPF_CORE_READ(dev, rtnl_link_ops, kind);
	if (!kind || bpf_probe_read_kernel_str(k, sizeof(k), kind) != 7)
		return false;
	return k[0] == 'i' && k[1] == 'p' && k[2] == 'v' &&
	       ((k[3] == 'l' && k[4] == 'a' && k[5] == 'n') || (k[3] == 't' && k[4] == 'a' && k[5] == 'p'));
}

/* Where an ICMP error left by first, while it passes the devices below:
 * a pod's macvlan or ipvlan is in the pod's namespace, its lower device in
 * the node's. Stacked devices transmit synchronously on one CPU, so the
 * lower device sees the same buffer (skb->head; a bridge's flood clones
 * share it) moments later. */
struct icmp_upper {
	__u64 head;
	__u64 at;
	__u32 netns;
	__u32 ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct icmp_upper);
	__uint(max_entries, 1);
} icmp_upper SEC(".maps");

/* how long a stacked device's transmit may take to reach the one below */
#define ICMP_UPPER_NS 10000000ULL

/* The packet at the network header is ICMP (ICMPv6) itself, its header
 * where the transport header points: not a tunnel's outer packet, which
 * keeps the inner packet's socket and transport header. */
static __always_inline bool icmp_at_network_header(struct sk_buff *skb, bool v6)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header), th = BPF_CORE_READ(skb, transport_header);
	__u8 ip[10];

	if (!head || bpf_probe_read_kernel(ip, sizeof(ip), head + nh))
		return false;
	if (v6)
		return (ip[0] >> 4) == 6 && ip[6] == IPPROTO_ICMPV6 && th == nh + 40;
	return (ip[0] >> 4) == 4 && ip[9] == IPPROTO_ICMP && th == nh + (ip[0] & 0xf) * 4;
}

/* Where neither the icmp_send tracepoint nor function tracing exists (and
 * IPv6 has no such tracepoint at all): the error as a device queues it to
 * send (net_dev_queue, in __dev_queue_xmit), past every rate limit. The
 * fast path, run for every packet sent, tests the protocol and the
 * socket; an error generated by the kernel belongs to its ICMP socket. */
static __always_inline int icmp_tx(struct sk_buff *skb, bool v6, bool btf, __u8 mode)
{
	__u16 proto = btf ? skb->protocol : BPF_CORE_READ(skb, protocol);
	__u32 zero = 0, netns, ifindex;
	struct icmp_upper *u;
	struct net_device *dev;
	struct sock *sk;
	__u64 head, now;
	bool fresh;

	if (proto != bpf_htons(v6 ? ETH_P_IPV6 : ETH_P_IP))
		return 0;
	sk = btf ? skb->sk : BPF_CORE_READ(skb, sk);
	if (!sk || !kernel_icmp_sock(sk, v6))
		return 0;
	dev = btf ? skb->dev : BPF_CORE_READ(skb, dev);
	if (!dev || !icmp_at_network_header(skb, v6))
		return 0;
	/* the device's namespace: the ICMP socket is per CPU and shared by
	 * every namespace (net switched for each send), and an error that
	 * waited for neighbour resolution leaves after it was switched back */
	netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	ifindex = BPF_CORE_READ(dev, ifindex);
	head = (__u64)BPF_CORE_READ(skb, head);
	now = bpf_ktime_get_ns();
	u = bpf_map_lookup_elem(&icmp_upper, &zero);
	if (!u)
		return 0;
	fresh = u->head == head && now - u->at < ICMP_UPPER_NS;
	if (upper_dev(dev)) {
		if (!fresh) /* the first device it left by names it */
			*u = (struct icmp_upper){.head = head, .at = now, .netns = netns, .ifindex = ifindex};
		return 0;
	}
	if (fresh) {
		netns = u->netns;
		ifindex = u->ifindex;
	}
	u->head = 0;
	return icmp_error_out(skb, netns, ifindex, v6, mode);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(tp_btf_net_dev_queue_icmp, struct sk_buff *skb)
{
	return icmp_tx(skb, false, true, KDROP_MODE_TP_BTF);
}

SEC("raw_tp/net_dev_queue")
int raw_tp_net_dev_queue_icmp(__u64 *ctx)
{
	return icmp_tx((struct sk_buff *)ctx[0], false, false, KDROP_MODE_RAW_TP);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(tp_btf_net_dev_queue_icmp6, struct sk_buff *skb)
{
	return icmp_tx(skb, true, true, KDROP_MODE_TP_BTF);
}

SEC("raw_tp/net_dev_queue")
int raw_tp_net_dev_queue_icmp6(__u64 *ctx)
{
	return icmp_tx((struct sk_buff *)ctx[0], true, false, KDROP_MODE_RAW_TP);
}

SEC("fentry/ip_push_pending_frames")
int BPF_PROG(fentry_ip_push_pending_frames, struct sock *sk)
{
	return icmp_pushed(sk, false, KDROP_MODE_FENTRY);
}

SEC("kprobe/ip_push_pending_frames")
int BPF_KPROBE(kprobe_ip_push_pending_frames, struct sock *sk)
{
	return icmp_pushed(sk, false, KDROP_MODE_KPROBE);
}

SEC("fentry/ip6_push_pending_frames")
int BPF_PROG(fentry_ip6_push_pending_frames, struct sock *sk)
{
	return icmp_pushed(sk, true, KDROP_MODE_FENTRY);
}

SEC("kprobe/ip6_push_pending_frames")
int BPF_KPROBE(kprobe_ip6_push_pending_frames, struct sock *sk)
{
	return icmp_pushed(sk, true, KDROP_MODE_KPROBE);
}

/* ---- empty programs: the baseline `make bench` measures against ---- */

SEC("fentry")
int baseline_fentry(void *ctx) { return 0; }

SEC("kprobe")
int baseline_kprobe(void *ctx) { return 0; }

SEC("tp_btf")
int baseline_tp_btf(void *ctx) { return 0; }

SEC("raw_tp")
int baseline_raw_tp(void *ctx) { return 0; }
