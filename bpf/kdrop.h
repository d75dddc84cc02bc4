/* The one event kdrop's BPF programs send to userspace, and every constant
 * both sides share. tracer/ uses the Go types and constants bpf2go generates
 * from this file (kdropKdropEvent, kdropFlowKey, kdropKdropEventType...),
 * never copies: keep every field naturally aligned and the padding
 * explicit, and give each new enum a -type in tracer/gen.go and a reference
 * in kdrop.bpf.c (an enum only used for its constants is not in BTF). */
#ifndef KDROP_H
#define KDROP_H

enum kdrop_event_type {
	KDROP_EV_DROP = 1,          /* skb freed with a drop reason (kfree_skb) */
	KDROP_EV_LISTEN_OVERFLOW = 2, /* listener's accept or SYN queue full */
	KDROP_EV_UNREACH = 3,       /* kernel sent an ICMP/ICMPv6 error */
	KDROP_EV_MAX = 4,
};

/* Which queue of a listener overflowed. */
enum kdrop_queue {
	KDROP_Q_NONE = 0,
	KDROP_Q_ACCEPT_SYN = 1,  /* SYN refused: accept queue full (tcp_conn_request) */
	KDROP_Q_ACCEPT_ACK = 2,  /* final ACK refused: accept queue full (syn_recv_sock) */
	KDROP_Q_SYN = 3,         /* SYN queue full */
	KDROP_Q_ACCEPT = 4,      /* userspace only: accept queue, seen by sock_diag,
	                          * which can't tell SYN from ACK */
};

enum kdrop_flags {
	KDROP_F_SYNCOOKIE = 1 << 0,    /* SYN queue full, answered with a syncookie */
	KDROP_F_COARSE_NETNS = 1 << 1, /* flow table full: rate-limited per (type, reason, netns) */
	KDROP_F_COARSE_TYPE = 1 << 2,  /* both tables full: rate-limited per event type */
	KDROP_F_LINK_MULTI = 1 << 3,   /* drop: the frame came as link-layer broadcast or multicast */
};

/* The program variant that produced an event, so output can say how it was
 * seen. Userspace names them (tracer/event.go). */
enum kdrop_mode {
	KDROP_MODE_FENTRY = 1,
	KDROP_MODE_KPROBE = 2,
	KDROP_MODE_TP_BTF = 3,
	KDROP_MODE_RAW_TP = 4,
};

/* Indexes of the per-CPU stats array. */
enum kdrop_stat {
	KDROP_STAT_LOST_DROP = KDROP_EV_DROP,       /* ring buffer full */
	KDROP_STAT_LOST_OVERFLOW = KDROP_EV_LISTEN_OVERFLOW,
	KDROP_STAT_LOST_UNREACH = KDROP_EV_UNREACH,
	KDROP_STAT_COARSENED = 4,                   /* flow table full: coarser key used */
	KDROP_STAT_MAX = 5,
};

/* Bits of the gen map's value beside the generation number. */
enum kdrop_gen {
	KDROP_GEN_STOPPED = 1U << 31, /* the run is over: count nothing */
};

struct kdrop_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 location;   /* kfree_skb: kernel text address of the caller */
	__u32 netns;      /* network namespace inode */
	__u32 ifindex;
	__u32 reason;     /* enum skb_drop_reason value (0 where the kernel has none) */
	__u32 qlen;       /* listener: accept queue length (sk_ack_backlog) */
	__u32 qmax;       /* listener: its limit (sk_max_ack_backlog) */
	__u32 synq;       /* listener: SYN queue length */
	__u32 icmp_info;  /* unreach, and drop of an ICMP packet: the ICMP
	                   * header's second word, host order (next-hop MTU,
	                   * parameter-problem pointer, redirect gateway); 0
	                   * where the hook cannot see it (the icmp_send
	                   * tracepoint) */
	__u8 saddr[16];   /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;      /* host byte order */
	__u16 dport;
	__u8 type;        /* enum kdrop_event_type */
	__u8 family;      /* 4 or 6, 0 when not IP */
	__u8 proto;       /* IPPROTO_* of the packet (or of the offending packet) */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 queue;       /* enum kdrop_queue */
	__u8 flags;       /* enum kdrop_flags */
	__u8 mode;        /* enum kdrop_mode */
	__u8 _pad[7];
};

/* Rate limiting groups events by what they hit: type, reason, netns and the
 * destination side. A SYN flood from random ports is one key, not millions.
 * When the flow table is full, daddr and dport are zeroed and the key goes
 * to the smaller coarse table (KDROP_F_COARSE_NETNS). */
struct flow_key {
	__u8 daddr[16];
	__u32 netns;
	__u32 reason;     /* drop reason, or icmp type<<8|code, or queue */
	__u16 dport;
	__u8 type;
	__u8 proto;
	__u8 family;
	__u8 _pad[3];
};

/* One flow in one generation of the tables (one sweep interval). Both are
 * only ever incremented atomically; userspace reads them once no program can
 * touch the generation any more, and reports seen - sent as a summary. */
struct flow_state {
	__u64 seen; /* occurrences */
	__u64 sent; /* events the ring buffer took (each a line counting 1) */
};

/* Key of the address filter (LPM trie): IPv4 as ::ffff:a.b.c.d. */
struct addr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#endif
