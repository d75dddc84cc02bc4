package tracer

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// listenPoller is the fallback for kernels where tcp_conn_request can't be
// hooked (function tracing forbidden). A SYN refused for a full accept
// queue, or for a full SYN queue with syncookies off, is consume_skb'd, so
// kfree_skb never sees it; but every network namespace counts them
// (TcpExtListenOverflows, TcpExtTCPReqQFullDrop; a cookie sent instead:
// TcpExtTCPReqQFullDoCookies), and every listener counts its own drops
// (sock_diag SK_MEMINFO_DROPS, the `d` of `ss -ltnm`). When a namespace
// counter rises, the listeners whose drop counters rose get events carrying
// the exact deltas, their queue length and its limit; what no listener can
// be told for (several listeners dropped for both queues, a listener that
// closed) comes as an event of the namespace without an address. No
// listener counts the cookies it sent: they go to the one listener whose
// SYN queue is full (cookieListener), else to the namespace.
type listenPoller struct {
	somax    *somaxconns
	interval time.Duration
	filter   Filter
	log      *zap.Logger
	ns       map[uint32]*nsWatch
	left     map[uint32]*nsWatch // closed, where they were when they left
	scanned  bool
}

type listenerKey struct {
	addr  netip.AddrPort
	inode uint32
}

type nsWatch struct {
	inode     uint32
	netstat   *os.File // /proc/net/netstat opened inside the namespace
	diag      int      // NETLINK_SOCK_DIAG socket created inside it
	last      listenCounters
	listeners map[listenerKey]listenerState // per listener, at the last poll
	// counted by the namespace, no listener's counter yet: a listener's
	// drop counter moves after the namespace's (tcp_syn_flood_action,
	// then tcp_listendrop), so they wait one poll for it
	pendOverflow, pendSyn uint64
	// the request sockets by port, dumped at most once a poll
	requests map[uint16]uint32
}

// listenCounters are a namespace's TcpExt counters of refused SYNs.
type listenCounters struct {
	overflows uint64 // ListenOverflows: accept queue full
	drops     uint64 // ListenDrops: every SYN or ACK a listener dropped
	synDrops  uint64 // TCPReqQFullDrop: SYN queue full, no cookie
	cookies   uint64 // TCPReqQFullDoCookies: SYN queue full, cookie sent
}

func newListenPoller(interval time.Duration, f Filter, somax *somaxconns, log *zap.Logger) *listenPoller {
	p := &listenPoller{somax: somax, interval: interval, filter: f, log: log, ns: map[uint32]*nsWatch{}, left: map[uint32]*nsWatch{}}
	p.discover() // baseline now: only overflows after start are reported
	return p
}

func (p *listenPoller) run(ctx context.Context, emit func(*Event)) {
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	lastDiscover := time.Now()
	for {
		select {
		case <-ctx.Done():
			p.poll(emit, true) // report what happened up to the end
			return
		case <-tick.C:
		}
		if time.Since(lastDiscover) >= time.Second {
			p.discover()
			lastDiscover = time.Now()
		}
		p.poll(emit, false)
	}
}

func (p *listenPoller) close() {
	for k, w := range p.ns {
		w.close()
		delete(p.ns, k)
	}
}

func (w *nsWatch) close() {
	w.netstat.Close()
	unix.Close(w.diag)
}

// discover watches namespaces that appeared and lets go of those that left.
// The first scan takes a baseline: only what happens after start counts. A
// namespace seen later is new, so everything it counted happened while
// kdrop ran; unless it was watched before (a namespace no path showed for
// a while, e.g. between a process leaving and a mount): it goes on from
// where it was left, unless its counters went back (a new namespace took
// the inode).
func (p *listenPoller) discover() {
	initial := !p.scanned
	p.scanned = true
	found := listNetns()
	for ino, w := range p.ns {
		if _, ok := found[ino]; !ok {
			// holding a namespace's files keeps it alive
			w.close()
			delete(p.ns, ino)
			p.rememberLeft(w)
		}
	}
	for ino, path := range found {
		if _, ok := p.ns[ino]; ok || (p.filter.Netns != 0 && ino != p.filter.Netns) {
			continue
		}
		w, err := openNsWatch(path, ino)
		if err != nil {
			p.log.Debug("cannot watch netns", zap.String("path", path), zap.Error(err))
			continue
		}
		p.ns[ino] = w
		w.listeners = map[listenerKey]listenerState{}
		left, wasLeft := p.left[ino]
		delete(p.left, ino)
		switch {
		case initial:
			w.last, _ = w.counters()
			w.listeners, _ = w.dumpListeners()
		case wasLeft:
			if c, err := w.counters(); err == nil && c.covers(left.last) {
				w.last, w.listeners, w.pendOverflow, w.pendSyn = left.last, left.listeners, left.pendOverflow, left.pendSyn
			}
		}
	}
}

// maxLeft bounds the namespaces remembered after they left.
const maxLeft = 4096

// rememberLeft keeps where a namespace that left was, for when it shows
// up again.
func (p *listenPoller) rememberLeft(w *nsWatch) {
	if len(p.left) >= maxLeft {
		for k := range p.left { // any one: a rare, arbitrary loss
			delete(p.left, k)
			break
		}
	}
	p.left[w.inode] = w
}

// covers reports whether every counter of c is at least b's: the same
// namespace, later.
func (c listenCounters) covers(b listenCounters) bool {
	return c.overflows >= b.overflows && c.drops >= b.drops && c.synDrops >= b.synDrops && c.cookies >= b.cookies
}

// openNsWatch opens the namespace's netstat file and a sock_diag socket;
// both stay bound to it.
func openNsWatch(path string, ino uint32) (*nsWatch, error) {
	w := &nsWatch{inode: ino, diag: -1}
	err := inNetns(path, func() error {
		var err error
		if w.netstat, err = os.Open("/proc/thread-self/net/netstat"); err != nil {
			return err
		}
		w.diag, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	})
	if err != nil {
		if w.netstat != nil {
			w.netstat.Close()
		}
		return nil, err
	}
	return w, nil
}

func (p *listenPoller) poll(emit func(*Event), final bool) {
	for _, w := range p.ns {
		c, err := w.counters()
		if err != nil || (c == w.last && w.pendOverflow+w.pendSyn == 0) {
			continue
		}
		// The listeners first, then the namespace's counters again: a
		// listener's drop counter moves after the namespace's (the
		// overflow or SYN-queue count, then tcp_listendrop), so every drop
		// the dump shows is in the counters read after it; a drop the
		// namespace counted that no listener shows yet waits a poll.
		w.requests = nil
		listeners, err := w.dumpListeners()
		if err != nil { // counted at the next poll that dumps
			p.log.Warn("sock_diag dump failed", zap.Uint32("netns", w.inode), zap.Error(err))
			continue
		}
		if again, err := w.counters(); err == nil {
			c = again
		}
		dOverflow, dSyn, dCookies := c.overflows-w.last.overflows, c.synDrops-w.last.synDrops, c.cookies-w.last.cookies
		oldOverflow, oldSyn := w.pendOverflow, w.pendSyn
		dOverflow, dSyn = dOverflow+oldOverflow, dSyn+oldSyn
		w.last = c
		now := time.Now()
		ev := func(count uint64, k *listenerKey, l listenerState, q Queue, cookie bool) {
			e := Event{Time: now, Type: ListenOverflow, Count: count, Source: string(ModeSockDiag), Netns: w.inode,
				Proto: unix.IPPROTO_TCP, Queue: q, Syncookie: cookie}
			if k != nil { // the listener is its destination, the peer is unknown
				e.Family, e.Dst = familyOf(k.addr.Addr()), k.addr
				// as the kernel side says them, for either queue: the
				// accept queue's length and the limit of both (a
				// listener's rqueue and wqueue), and the SYN queue's
				// length, counted from its request sockets
				e.QueueLen, e.QueueMax, e.SynQueueLen = l.rqueue, l.wqueue, l.synq
				if q == QueueSYN && l.synq == 0 {
					if perPort, err := w.requestsByPort(); err == nil {
						e.SynQueueLen = perPort[k.addr.Port()]
					}
				}
			}
			// each event goes through the same filter as the kernel's
			p.emitMatching(emit, &e)
		}
		var rose []listenerKey
		for k, l := range listeners {
			if l.drops > w.listeners[k].drops {
				rose = append(rose, k)
			}
		}
		// A listener's drops are its accept-queue overflows plus its
		// SYN-queue drops: told apart when one kind happened, or one
		// listener dropped, or by each listener's own queues when
		// exactly one of its two is full.
		var attOverflow, attSyn uint64
		var acceptFull map[listenerKey]bool
		if dOverflow > 0 && dSyn > 0 && len(listeners) > 1 {
			acceptFull = w.fullQueue(rose, listeners)
		}
		for _, k := range rose {
			l := listeners[k]
			d := l.drops - w.listeners[k].drops
			accept, told := acceptFull[k]
			// (never more than the namespace counted: ListenDrops has
			// other causes too)
			switch {
			case dSyn == 0 || told && accept:
				if n := min(d, dOverflow-attOverflow); n > 0 {
					ev(n, &k, l, QueueAccept, false)
					attOverflow += n
				}
			case dOverflow == 0 || told:
				if n := min(d, dSyn-attSyn); n > 0 {
					ev(n, &k, l, QueueSYN, false)
					attSyn += n
				}
			case len(rose) == 1:
				attOverflow, attSyn = min(d, dOverflow), min(d-min(d, dOverflow), dSyn)
				if attOverflow > 0 {
					ev(attOverflow, &k, l, QueueAccept, false)
				}
				if attSyn > 0 {
					ev(attSyn, &k, l, QueueSYN, false)
				}
			}
		}
		// What no listener could be told for after waiting a poll (or at
		// the end): a listener that closed between two polls took its
		// counter with it. The rest waits for the next poll.
		flush := func(rem, old, att uint64, q Queue) uint64 {
			// the listeners' counts went to the oldest first: what is
			// left is the newest, in flight, unless they fell short of
			// what waited
			n := min(rem, old-min(old, att))
			if final {
				n = rem
			}
			if n > 0 {
				ev(n, nil, listenerState{}, q, false)
			}
			return rem - n
		}
		w.pendOverflow = flush(dOverflow-attOverflow, oldOverflow, attOverflow, QueueAccept)
		w.pendSyn = flush(dSyn-attSyn, oldSyn, attSyn, QueueSYN)
		if dCookies > 0 {
			// no listener counts the cookies it sent: the one whose SYN
			// queue is full sent them (the kernel answers with cookies
			// only then, tcp_syn_flood_action)
			if k, l, ok := w.cookieListener(listeners); ok {
				ev(dCookies, &k, l, QueueSYN, true)
			} else {
				ev(dCookies, nil, listenerState{}, QueueSYN, true)
			}
		}
		w.listeners = listeners
	}
}

// emitMatching emits ev, with its namespace's somaxconn, if the filter
// selects it.
func (p *listenPoller) emitMatching(emit func(*Event), ev *Event) {
	if !p.filter.Match(ev) {
		return
	}
	ev.Somaxconn = p.somax.get(ev.Netns)
	emit(ev)
}

func familyOf(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

// counters reads the namespace's TcpExt counters of refused SYNs.
func (w *nsWatch) counters() (listenCounters, error) {
	var c listenCounters
	buf := make([]byte, 16<<10)
	n, err := w.netstat.ReadAt(buf, 0)
	if n == 0 && err != nil {
		return c, err
	}
	lines := strings.Split(string(buf[:n]), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "TcpExt:") || !strings.HasPrefix(lines[i+1], "TcpExt:") {
			continue
		}
		names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j := 1; j < len(names) && j < len(vals); j++ {
			v, _ := strconv.ParseUint(vals[j], 10, 64)
			switch names[j] {
			case "ListenOverflows":
				c.overflows = v
			case "ListenDrops":
				c.drops = v
			case "TCPReqQFullDrop":
				c.synDrops = v
			case "TCPReqQFullDoCookies":
				c.cookies = v
			}
		}
		return c, nil
	}
	return c, fmt.Errorf("no TcpExt counters in netstat")
}

type listenerState struct {
	rqueue, wqueue uint32 // accept queue length and its limit
	drops          uint64
	synq           uint32 // SYN queue length, where cookieListener counted it
}

// Kernel ABI constants of sock_diag (linux/inet_diag.h, linux/sock_diag.h).
const (
	sockDiagByFamily  = 20
	inetDiagSkmeminfo = 7
	skMeminfoDrops    = 8
	tcpListen         = 10
	tcpSynRecv        = 3
	tcpNewSynRecv     = 12 // a request socket (include/net/tcp_states.h)
)

// dumpListeners lists the namespace's TCP listeners (both families) with
// their queue and drop counters, as `ss -ltnm` shows them.
func (w *nsWatch) dumpListeners() (map[listenerKey]listenerState, error) {
	out := map[listenerKey]listenerState{}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := w.dumpFamily(fam, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (w *nsWatch) dumpFamily(family uint8, out map[listenerKey]listenerState) error {
	return w.dump(family, 1<<tcpListen, func(k listenerKey, st listenerState) { out[k] = st })
}

// fullQueue tells, of listeners that dropped, which had its accept queue
// full (true: more waiting than its limit, sk_acceptq_is_full) and which
// its SYN queue (false: as many requests as its limit,
// inet_csk_reqsk_queue_is_full). A listener with both or neither full, or
// sharing its port with another (its requests do not say whose), is left
// out.
func (w *nsWatch) fullQueue(rose []listenerKey, listeners map[listenerKey]listenerState) map[listenerKey]bool {
	perPort, err := w.requestsByPort()
	if err != nil {
		return nil
	}
	ports := map[uint16]int{}
	for k := range listeners {
		ports[k.addr.Port()]++
	}
	out := map[listenerKey]bool{}
	for _, k := range rose {
		l := listeners[k]
		if ports[k.addr.Port()] > 1 {
			continue
		}
		if accept, syn := l.rqueue > l.wqueue, perPort[k.addr.Port()] >= l.wqueue; accept != syn {
			out[k] = accept
		}
	}
	return out
}

// requestsByPort counts the namespace's request sockets (its listeners'
// SYN queues: `ss -tn state syn-recv`) by local port, once per poll (poll
// forgets the count before it dumps the listeners).
func (w *nsWatch) requestsByPort() (map[uint16]uint32, error) {
	if w.requests != nil {
		return w.requests, nil
	}
	perPort := map[uint16]uint32{}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := w.dump(fam, 1<<tcpSynRecv|1<<tcpNewSynRecv, func(k listenerKey, _ listenerState) {
			perPort[k.addr.Port()]++
		})
		if err != nil {
			return nil, err
		}
	}
	w.requests = perPort
	return perPort, nil
}

// cookieListener names the listener whose syncookies the namespace counted:
// cookies are sent only while a listener's SYN queue is full
// (inet_csk_reqsk_queue_is_full), and its queue is its request sockets,
// which sock_diag lists (`ss -tn state syn-recv`), by local address and
// port, with the SYN queue's length. ok is false when not exactly one listener's queue is full, or a
// full queue's port has several listeners (SO_REUSEPORT, an address and
// the wildcard): their requests do not say whose they are.
func (w *nsWatch) cookieListener(listeners map[listenerKey]listenerState) (listenerKey, listenerState, bool) {
	if len(listeners) == 1 { // even when not full (tcp_syncookies=2: always)
		for k, l := range listeners {
			return k, l, true
		}
	}
	perPort, err := w.requestsByPort()
	if err != nil {
		return listenerKey{}, listenerState{}, false
	}
	byPort := map[uint16][]listenerKey{}
	for k := range listeners {
		byPort[k.addr.Port()] = append(byPort[k.addr.Port()], k)
	}
	var found []listenerKey
	var synq uint32
	for port, n := range perPort {
		ks := byPort[port]
		full := false
		for _, k := range ks {
			full = full || n >= listeners[k].wqueue
		}
		switch {
		case !full:
		case len(ks) == 1:
			found, synq = append(found, ks[0]), n
		default:
			return listenerKey{}, listenerState{}, false
		}
	}
	if len(found) != 1 {
		return listenerKey{}, listenerState{}, false
	}
	l := listeners[found[0]]
	l.synq = synq
	return found[0], l, true
}

// dump asks sock_diag for the family's TCP sockets in states (a bit per
// TCP_* state) and calls fn for each.
func (w *nsWatch) dump(family uint8, states uint32, fn func(listenerKey, listenerState)) error {
	// nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte sockid)
	req := make([]byte, 16+56)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	req[16] = family
	req[17] = unix.IPPROTO_TCP
	req[18] = 1 << (inetDiagSkmeminfo - 1)
	binary.NativeEndian.PutUint32(req[20:], states)
	if err := unix.Sendto(w.diag, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(w.diag, buf, 0)
		if err != nil {
			return fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				return fmt.Errorf("sock_diag: kernel returned an error for family %d", family)
			}
			if k, st, ok := parseDiagMsg(family, m.Data); ok {
				fn(k, st)
			}
		}
	}
}

// parseDiagMsg reads an inet_diag_msg and its SKMEMINFO attribute.
func parseDiagMsg(family uint8, b []byte) (listenerKey, listenerState, bool) {
	const msgLen = 72
	if len(b) < msgLen {
		return listenerKey{}, listenerState{}, false
	}
	port := binary.BigEndian.Uint16(b[4:6])
	var addr netip.Addr
	if family == unix.AF_INET {
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	} else {
		addr = netip.AddrFrom16([16]byte(b[8:24]))
	}
	k := listenerKey{addr: netip.AddrPortFrom(addr, port), inode: binary.NativeEndian.Uint32(b[68:72])}
	st := listenerState{rqueue: binary.NativeEndian.Uint32(b[56:60]), wqueue: binary.NativeEndian.Uint32(b[60:64])}
	for a := b[msgLen:]; len(a) >= 4; {
		l := int(binary.NativeEndian.Uint16(a[0:2]))
		typ := binary.NativeEndian.Uint16(a[2:4])
		if l < 4 || l > len(a) {
			break
		}
		if typ == inetDiagSkmeminfo && l >= 4+4*(skMeminfoDrops+1) {
			st.drops = uint64(binary.NativeEndian.Uint32(a[4+4*skMeminfoDrops:]))
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	return k, st, true
}
