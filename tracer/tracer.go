package tracer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Filter selects events. Zero fields match everything. Everything but the
// event types is applied in the kernel, where it saves work.
type Filter struct {
	Types         []EventType    // nil: all
	Reasons       []string       // drop reasons to report (names); nil: all but benign
	IncludeBenign bool           // also report DefaultBenignReasons
	CIDRs         []netip.Prefix // either end inside one of them
	Port          uint16         // either end
	Proto         uint8
	Netns         uint32 // network namespace inode
}

// Options configure a Tracer.
type Options struct {
	Filter Filter
	// RateLimit caps events per second for each flow (type, reason and
	// destination); the rest are counted, not lost. 0: no limit.
	RateLimit uint32
	// Modes restricts attach modes (for tests and odd kernels); nil: all.
	Modes []Mode
	// ListenPoll is the sock_diag fallback's poll interval (default 100ms).
	ListenPoll time.Duration
	// RingBytes sizes the ring buffer to userspace (a power of two, at
	// least a page; default 4 MiB).
	RingBytes uint32
	// SweepInterval is how often rate-limited counts and lost events are
	// reported (default 1s).
	SweepInterval time.Duration
	Log           *zap.Logger
}

// Stats are the tracer's own counters, summed over CPUs. They tell apart
// the two ways output can fall short, which mean different things:
//
//   - LostLines: events that found the ring buffer full. Their occurrences
//     were counted in the kernel and come back in summary lines, so counts
//     stay exact; only the per-packet detail is gone.
//   - Missed: hook invocations the kernel did not run kdrop's program for
//     (recursion protection, bpf_prog_stats.misses, 5.12+). Those
//     occurrences were never seen: counts are short by that much.
type Stats struct {
	LostLines [eventTypeMax]uint64 // per EventType
	Missed    uint64
	// Coarsened counts occurrences rate-limited under a coarser key than
	// their flow because the flow table was full (see Event.Coarse); their
	// counts are exact, their destinations are not told apart.
	Coarsened uint64
}

// LostLinesTotal sums LostLines over event types.
func (s Stats) LostLinesTotal() uint64 {
	var n uint64
	for _, v := range s.LostLines {
		n += v
	}
	return n
}

// Tracer owns the loaded programs, their links and maps.
type Tracer struct {
	opts     Options
	log      *zap.Logger
	Reasons  *Reasons
	Symbols  *Symbolizer
	hooks    []HookStatus
	attached []attachedHook
	maps     map[string]*ebpf.Map
	reader   *ringbuf.Reader
	bootTime time.Time
	listen   *listenPoller
	somax    *somaxconns

	emitMu sync.Mutex
	seen   map[kdropFlowKey]uint64 // last cumulative count reported per flow
}

type attachedHook struct {
	hook hookDef
	prog *ebpf.Program
	link link.Link
}

// New loads kdrop's programs and attaches every hook it can. It fails only
// when nothing useful can run; a hook the kernel refuses is reported in
// Hooks() and the others go on.
func New(opts Options) (*Tracer, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.ListenPoll == 0 {
		opts.ListenPoll = 100 * time.Millisecond
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = time.Second
	}
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel has no usable BTF (%v): kdrop needs CONFIG_DEBUG_INFO_BTF=y", err)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones
	// use memcg, and raising the limit may be denied (no CAP_SYS_RESOURCE).
	_ = rlimit.RemoveMemlock()

	reasons, err := LoadReasons(kspec)
	if err != nil {
		return nil, err
	}
	t := &Tracer{opts: opts, log: opts.Log, Reasons: reasons, Symbols: NewSymbolizer(""),
		seen: map[kdropFlowKey]uint64{}, bootTime: bootTime(), somax: newSomaxconns()}

	spec, err := loadKdrop()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded BPF object: %w", err)
	}
	if err := t.configure(spec); err != nil {
		return nil, err
	}
	if opts.RingBytes != 0 {
		if opts.RingBytes < uint32(os.Getpagesize()) || opts.RingBytes&(opts.RingBytes-1) != 0 {
			return nil, fmt.Errorf("ring buffer size %d: must be a power of two and at least %d", opts.RingBytes, os.Getpagesize())
		}
		spec.Maps["events"].MaxEntries = opts.RingBytes
	}
	t.maps = map[string]*ebpf.Map{}
	for _, name := range []string{"events", "stats", "flows", "addr_filter"} {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("creating BPF map %s: %w", name, err)
		}
		t.maps[name] = m
	}
	if err := t.fillAddrFilter(); err != nil {
		t.Close()
		return nil, err
	}
	t.attachAll(spec)

	attached := 0
	for _, h := range t.hooks {
		if h.Mode != "" {
			attached++
		}
	}
	if attached == 0 {
		t.Close()
		return nil, fmt.Errorf("no hook could attach on this kernel: %v", t.hooks)
	}
	if t.reader, err = ringbuf.NewReader(t.maps["events"]); err != nil {
		t.Close()
		return nil, fmt.Errorf("opening the ring buffer: %w", err)
	}
	return t, nil
}

func (t *Tracer) wants(ev EventType) bool {
	if len(t.opts.Filter.Types) == 0 {
		return true
	}
	for _, x := range t.opts.Filter.Types {
		if x == ev {
			return true
		}
	}
	return false
}

func (t *Tracer) modeAllowed(m Mode) bool {
	if len(t.opts.Modes) == 0 {
		return true
	}
	for _, x := range t.opts.Modes {
		if x == m {
			return true
		}
	}
	return false
}

func (t *Tracer) attachAll(spec *ebpf.CollectionSpec) {
	for _, h := range hookDefs {
		if !t.wants(h.event) {
			continue
		}
		st := HookStatus{Hook: h.name, Event: h.event}
		for _, c := range h.cands {
			if !t.modeAllowed(c.mode) {
				continue
			}
			prog, err := loadProgram(spec, c.prog, t.maps)
			if err != nil {
				st.Failed = append(st.Failed, fmt.Sprintf("%s: load: %s", c.mode, shortErr(err)))
				t.log.Debug("load failed", zap.String("prog", c.prog), zap.Error(err))
				continue
			}
			l, err := attach(c, prog)
			if err != nil {
				prog.Close()
				st.Failed = append(st.Failed, fmt.Sprintf("%s: attach: %s", c.mode, shortErr(err)))
				continue
			}
			t.attached = append(t.attached, attachedHook{h, prog, l})
			st.Mode, st.Target = c.mode, c.target
			break
		}
		t.hooks = append(t.hooks, st)
	}
	t.listenFallback()
}

// listenFallback: without tcp_conn_request in the kernel, listen overflows
// are read from each network namespace's TcpExtListenOverflows and the
// listeners' own drop counters (sock_diag), so they are still counted
// exactly, only later and without the peer's address.
func (t *Tracer) listenFallback() {
	for i := range t.hooks {
		h := &t.hooks[i]
		if h.Hook != "tcp_conn_request" || h.Mode != "" {
			continue
		}
		// The syn_recv_sock hooks alone would count a subset; the poller
		// counts all, so don't run both.
		for j := range t.hooks {
			if t.hooks[j].Event == ListenOverflow && t.hooks[j].Mode != "" {
				t.hooks[j].Failed = append(t.hooks[j].Failed, string(t.hooks[j].Mode)+": detached, sock_diag counts all overflows")
				t.hooks[j].Mode = ""
			}
		}
		t.detachListenHooks()
		if !t.modeAllowed(ModeSockDiag) {
			return
		}
		for j := range t.hooks {
			if t.hooks[j].Event == ListenOverflow {
				t.hooks[j].Mode, t.hooks[j].Target = ModeSockDiag, "TcpExtListenOverflows"
			}
		}
		t.listen = newListenPoller(t.opts.ListenPoll, t.opts.Filter, t.somax, t.log)
	}
}

func (t *Tracer) detachListenHooks() {
	var keep []attachedHook
	for _, a := range t.attached {
		if a.hook.event == ListenOverflow {
			a.link.Close()
			a.prog.Close()
			continue
		}
		keep = append(keep, a)
	}
	t.attached = keep
}

// program returns the program attached for a hook (for benchmarks).
func (t *Tracer) program(hook string) *ebpf.Program {
	for _, a := range t.attached {
		if a.hook.name == hook {
			return a.prog
		}
	}
	return nil
}

// Hooks reports how each hook was attached.
func (t *Tracer) Hooks() []HookStatus { return t.hooks }

// Stats reads the in-kernel loss counters.
func (t *Tracer) Stats() (Stats, error) {
	var s Stats
	for i := uint32(0); i < uint32(statMax); i++ {
		var per []uint64
		if err := t.maps["stats"].Lookup(i, &per); err != nil {
			return s, fmt.Errorf("reading stats: %w", err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		if i == statUntracked {
			s.Coarsened = sum
		} else if i < uint32(eventTypeMax) {
			s.LostLines[i] = sum
		}
	}
	for _, a := range t.attached {
		if st, err := a.prog.Stats(); err == nil { // recursion misses: 5.12+
			s.Missed += st.RecursionMisses
		}
	}
	return s, nil
}

// Close detaches everything and frees the maps. Safe to call twice.
func (t *Tracer) Close() error {
	if t.reader != nil {
		t.reader.Close()
		t.reader = nil
	}
	for _, a := range t.attached {
		a.link.Close()
		a.prog.Close()
	}
	t.attached = nil
	for _, m := range t.maps {
		m.Close()
	}
	t.maps = nil
	if t.listen != nil {
		t.listen.close()
	}
	return nil
}

// Run reads events until ctx is done and passes each to emit, one at a time
// (the Event is reused: copy what you keep). Every SweepInterval it reports
// flows whose events the rate limit folded (Summary events); on return all
// counts have been reported, so their sum is exact.
func (t *Tracer) Run(ctx context.Context, emit func(*Event)) error {
	if t.listen != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			t.listen.run(ctx, func(e *Event) { t.emitMu.Lock(); emit(e); t.emitMu.Unlock() })
		}()
	}
	var rec ringbuf.Record
	var ev Event
	stopping := false
	for {
		deadline := time.Now().Add(t.opts.SweepInterval)
		if stopping {
			deadline = time.Now() // drain what is there, don't wait
		}
		t.reader.SetDeadline(deadline)
		err := t.reader.ReadInto(&rec)
		switch {
		case err == nil:
			if t.decode(rec.RawSample, &ev) {
				t.emitMu.Lock()
				emit(&ev)
				t.emitMu.Unlock()
			}
			if !stopping && ctx.Err() != nil {
				stopping = true
			}
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("reading the ring buffer: %w", err)
		}
		t.sweep(emit)
		if stopping {
			return nil
		}
		if ctx.Err() != nil {
			stopping = true
		}
	}
}

// decode turns a ring buffer record into ev. It returns false for a record
// that is not an event (never expected; counted as an error in the log).
func (t *Tracer) decode(raw []byte, ev *Event) bool {
	if len(raw) < rawEventSize {
		t.log.Error("short ring buffer record", zap.Int("len", len(raw)))
		return false
	}
	r := (*rawEvent)(unsafe.Pointer(&raw[0]))
	t.fill(r, ev)
	ev.Count = t.take(flowKeyOf(r), r.Seen, r.Flags&flagUntracked != 0)
	return true
}

func (t *Tracer) fill(r *rawEvent, ev *Event) {
	*ev = Event{
		Time:        t.bootTime.Add(time.Duration(r.TsNs)),
		Type:        EventType(r.Type),
		Netns:       r.Netns,
		Ifindex:     r.Ifindex,
		Family:      r.Family,
		Proto:       r.Proto,
		Src:         netip.AddrPortFrom(addrFrom(r.Family, &r.Saddr), r.Sport),
		Dst:         netip.AddrPortFrom(addrFrom(r.Family, &r.Daddr), r.Dport),
		TCPFlags:    r.TcpFlags,
		ICMPType:    r.IcmpType,
		ICMPCode:    r.IcmpCode,
		Queue:       Queue(r.Queue),
		QueueLen:    r.Qlen,
		QueueMax:    r.Qmax,
		SynQueueLen: r.Synq,
		Syncookie:   r.Flags&flagSyncookie != 0,
	}
	if int(r.Mode) < len(modeNames) {
		ev.Source = modeNames[r.Mode]
	}
	if ev.Type == ListenOverflow {
		ev.Somaxconn = t.somax.get(r.Netns)
	}
	if ev.Type == Drop {
		ev.ReasonCode = r.Reason
		ev.Reason = t.Reasons.Name(r.Reason)
		ev.LocationPC = r.Location
		ev.Location = t.Symbols.Resolve(r.Location)
	}
}

func flowKeyOf(r *rawEvent) kdropFlowKey {
	k := kdropFlowKey{Daddr: r.Daddr, Netns: r.Netns, Dport: r.Dport, Type: r.Type, Proto: r.Proto, Family: r.Family}
	switch EventType(r.Type) {
	case Drop:
		k.Reason = r.Reason
	case ListenOverflow:
		k.Reason = uint32(r.Queue)
	case Unreachable:
		k.Reason = uint32(r.IcmpType)<<8 | uint32(r.IcmpCode)
	}
	return k
}

// take turns a flow's cumulative count into the occurrences not yet
// reported. Callers hold emitMu or run on the reader goroutine.
func (t *Tracer) take(k kdropFlowKey, seen uint64, untracked bool) uint64 {
	if untracked {
		return 1
	}
	prev := t.seen[k]
	if seen <= prev {
		return 0 // an earlier event (or summary) of this flow counted it
	}
	t.seen[k] = seen
	return seen - prev
}

// sweep reports, as Summary events, occurrences the rate limit (or a full
// ring buffer) kept from being sent, and logs new losses.
func (t *Tracer) sweep(emit func(*Event)) {
	var k kdropFlowKey
	var st kdropFlowState
	var ev Event
	it := t.maps["flows"].Iterate()
	for it.Next(&k, &st) {
		prev := t.seen[k]
		if st.Seen <= prev {
			continue
		}
		t.seen[k] = st.Seen
		r := rawEvent{Type: k.Type, Netns: k.Netns, Family: k.Family, Proto: k.Proto, Daddr: k.Daddr, Dport: k.Dport}
		switch EventType(k.Type) {
		case Drop:
			r.Reason = k.Reason
		case ListenOverflow:
			r.Queue = uint8(k.Reason)
		case Unreachable:
			r.IcmpType, r.IcmpCode = uint8(k.Reason>>8), uint8(k.Reason)
		}
		t.fill(&r, &ev)
		ev.Time = time.Now()
		ev.Count = st.Seen - prev
		ev.Summary = true
		t.emitMu.Lock()
		emit(&ev)
		t.emitMu.Unlock()
	}
	if err := it.Err(); err != nil {
		t.log.Warn("reading the flow table", zap.Error(err))
	}
}

// bootTime is the wall clock time of CLOCK_MONOTONIC zero, which is what
// bpf_ktime_get_ns counts from.
func bootTime() time.Time {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now().Add(-time.Duration(ts.Nano()))
}

// CheckPrivileges tells, before anything is loaded, whether this process
// may load tracing programs.
func CheckPrivileges() error {
	caps, err := effectiveCaps()
	if err != nil {
		return nil // can't tell: let the kernel decide
	}
	const capSysAdmin, capPerfmon, capBPF = 21, 38, 39
	has := func(c uint) bool { return caps&(1<<c) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	return fmt.Errorf("kdrop must run as root (it needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN, to load tracing programs): run it with sudo")
}

func effectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	var caps uint64
	for _, line := range strings.Split(string(b), "\n") {
		if n, _ := fmt.Sscanf(line, "CapEff:\t%x", &caps); n == 1 {
			return caps, nil
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// Lock holds back emit calls, for a sink that flushes from another
// goroutine; Unlock lets them go on.
func (t *Tracer) Lock()   { t.emitMu.Lock() }
func (t *Tracer) Unlock() { t.emitMu.Unlock() }
