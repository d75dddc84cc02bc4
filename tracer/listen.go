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
// queue is consume_skb'd, so kfree_skb never sees it; but every network
// namespace counts it in TcpExtListenOverflows, and every listener counts
// its own drops (sock_diag SK_MEMINFO_DROPS, the `d` of `ss -ltnm`). When the
// namespace counter rises, the listeners whose drop counters rose get an
// event carrying the exact delta, their queue length and its limit.
type listenPoller struct {
	somax    *somaxconns
	interval time.Duration
	filter   Filter
	log      *zap.Logger
	ns       map[uint32]*nsWatch
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
	overflows uint64
	drops     uint64
	listeners map[listenerKey]listenerState // per listener, at the last poll
}

func newListenPoller(interval time.Duration, f Filter, somax *somaxconns, log *zap.Logger) *listenPoller {
	p := &listenPoller{somax: somax, interval: interval, filter: f, log: log, ns: map[uint32]*nsWatch{}}
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
			p.poll(emit) // report what happened up to the end
			return
		case <-tick.C:
		}
		if time.Since(lastDiscover) >= time.Second {
			p.discover()
			lastDiscover = time.Now()
		}
		p.poll(emit)
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
// Only the first scan takes a baseline: a namespace seen later is new, so
// everything it counted happened while kdrop ran.
func (p *listenPoller) discover() {
	initial := !p.scanned
	p.scanned = true
	found := listNetns()
	for ino, w := range p.ns {
		if _, ok := found[ino]; !ok {
			// holding a namespace's files keeps it alive
			w.close()
			delete(p.ns, ino)
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
		if initial {
			w.overflows, w.drops, _ = w.counters()
			w.listeners, _ = w.dumpListeners()
		}
	}
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

func (p *listenPoller) poll(emit func(*Event)) {
	for _, w := range p.ns {
		ov, dr, err := w.counters()
		if err != nil || (ov == w.overflows && dr == w.drops) {
			continue
		}
		dOverflow := ov - w.overflows
		w.overflows, w.drops = ov, dr
		now := time.Now()
		listeners, err := w.dumpListeners()
		if err != nil {
			p.log.Warn("sock_diag dump failed", zap.Uint32("netns", w.inode), zap.Error(err))
			continue
		}
		// Each event goes through the same filter as the kernel's: the
		// listener is its destination, the peer is unknown.
		var attributed uint64
		for k, l := range listeners {
			prev := w.listeners[k].drops
			if l.drops <= prev {
				continue
			}
			d := l.drops - prev
			attributed += d
			p.emitMatching(emit, &Event{Time: now, Type: ListenOverflow, Count: d, Source: string(ModeSockDiag),
				Netns: w.inode, Family: familyOf(k.addr.Addr()), Proto: unix.IPPROTO_TCP, Dst: k.addr,
				Queue: QueueAccept, QueueLen: l.rqueue, QueueMax: l.wqueue})
		}
		// A listener that closed between two polls took its counter with
		// it; the namespace counter still has the overflows, without an
		// address or port (so a port or CIDR filter leaves them out).
		if dOverflow > attributed {
			p.emitMatching(emit, &Event{Time: now, Type: ListenOverflow, Count: dOverflow - attributed,
				Source: string(ModeSockDiag), Netns: w.inode, Proto: unix.IPPROTO_TCP, Queue: QueueAccept})
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

// counters reads TcpExtListenOverflows and TcpExtListenDrops.
func (w *nsWatch) counters() (overflows, drops uint64, err error) {
	buf := make([]byte, 16<<10)
	n, err := w.netstat.ReadAt(buf, 0)
	if n == 0 && err != nil {
		return 0, 0, err
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
				overflows = v
			case "ListenDrops":
				drops = v
			}
		}
		return overflows, drops, nil
	}
	return 0, 0, fmt.Errorf("no TcpExt counters in netstat")
}

type listenerState struct {
	rqueue, wqueue uint32 // accept queue length and its limit
	drops          uint64
}

// Kernel ABI constants of sock_diag (linux/inet_diag.h, linux/sock_diag.h).
const (
	sockDiagByFamily  = 20
	inetDiagSkmeminfo = 7
	skMeminfoDrops    = 8
	tcpListen         = 10
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
	// nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte sockid)
	req := make([]byte, 16+56)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	req[16] = family
	req[17] = unix.IPPROTO_TCP
	req[18] = 1 << (inetDiagSkmeminfo - 1)
	binary.NativeEndian.PutUint32(req[20:], 1<<tcpListen)
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
				out[k] = st
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
