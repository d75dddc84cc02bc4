package tracer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
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

// Options configure a Tracer.
type Options struct {
	Filter Filter
	// RateLimit caps events for each flow (type, reason and destination)
	// per SweepInterval, so per second at the default interval; the rest
	// are counted, not lost, and come out as one summary per flow at the
	// end of the interval. 0: no limit.
	RateLimit uint32
	// Modes restricts attach modes (for tests and odd kernels); nil: all.
	Modes []Mode
	// ListenPoll is the sock_diag fallback's poll interval (default 100ms).
	ListenPoll time.Duration
	// RingBytes sizes the ring buffer to userspace (a power of two, at
	// least a page; default 4 MiB).
	RingBytes uint32
	// SweepInterval is how often the flow tables change generation: the
	// counts the rate limit folded come out as summaries, and flows idle
	// for a whole interval leave the tables (default 1s).
	SweepInterval time.Duration
	// FlowTableSize is how many flows one sweep interval can tell apart
	// (default 65536). Beyond it, flows are rate-limited per network
	// namespace (a table of FlowTableSize/16, at least 64), then per event
	// type; counts stay exact (see Event.Coarse, Stats.Coarsened).
	FlowTableSize uint32
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
	tables   [2][2]*ebpf.Map // [flow_tables, coarse_tables][slot]
	reader   *ringbuf.Reader
	bootNs   atomic.Int64 // wall clock of CLOCK_MONOTONIC zero, ns since the epoch
	listen   *listenPoller
	somax    *somaxconns

	emitMu  sync.Mutex
	rotMu   sync.Mutex     // one rotation at a time
	gen     uint32         // generation the programs count into; under rotMu
	stopped bool           // Run has ended: programs count nothing; under rotMu
	keys    []kdropFlowKey // a drained table's keys; under rotMu, reused
	sweeps  atomic.Uint64
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
	if opts.FlowTableSize == 0 {
		opts.FlowTableSize = 65536
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
	t := &Tracer{opts: opts, log: opts.Log, Reasons: reasons, Symbols: NewSymbolizer(""), somax: newSomaxconns()}
	t.anchorClock()

	spec, err := loadKdrop()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded BPF object: %w", err)
	}
	kf, err := t.configure(spec)
	if err != nil {
		return nil, err
	}
	if opts.RingBytes != 0 {
		if opts.RingBytes < uint32(os.Getpagesize()) || opts.RingBytes&(opts.RingBytes-1) != 0 {
			return nil, fmt.Errorf("ring buffer size %d: must be a power of two and at least %d", opts.RingBytes, os.Getpagesize())
		}
		spec.Maps["events"].MaxEntries = opts.RingBytes
	}
	spec.Maps["flow_tables"].InnerMap.MaxEntries = opts.FlowTableSize
	spec.Maps["coarse_tables"].InnerMap.MaxEntries = max(opts.FlowTableSize/16, 64)
	t.maps = map[string]*ebpf.Map{}
	for _, name := range []string{"events", "stats", "gen", "flow_tables", "coarse_tables", "spill", "addr_filter"} {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("creating BPF map %s: %w", name, err)
		}
		t.maps[name] = m
	}
	if err := t.createTables(spec); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.fillAddrFilter(kf.addrKeys); err != nil {
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
				st.Failed = append(st.Failed, fmt.Sprintf("%s: not tried (attach modes restricted)", c.mode))
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
	for i := uint32(0); i < statMax; i++ {
		var per []uint64
		if err := t.maps["stats"].Lookup(i, &per); err != nil {
			return s, fmt.Errorf("reading stats: %w", err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		if i == statCoarsened {
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

// createTables makes both generations of the flow and coarse tables and
// puts them in their outer maps; the programs start counting into slot 0.
func (t *Tracer) createTables(spec *ebpf.CollectionSpec) error {
	for level, outer := range []string{"flow_tables", "coarse_tables"} {
		for slot := range 2 {
			m, err := ebpf.NewMap(spec.Maps[outer].InnerMap)
			if err != nil {
				return fmt.Errorf("creating BPF map %s[%d]: %w", outer, slot, err)
			}
			t.tables[level][slot] = m
			if err := t.maps[outer].Put(uint32(slot), m); err != nil {
				return fmt.Errorf("installing BPF map %s[%d]: %w", outer, slot, err)
			}
		}
	}
	return nil
}

// Close detaches everything and frees the maps. Safe to call twice.
func (t *Tracer) Close() error {
	if t.reader != nil {
		t.reader.Close()
		t.reader = nil
	}
	t.detach()
	for _, a := range t.attached {
		a.prog.Close()
	}
	t.attached = nil
	for _, m := range t.maps {
		m.Close()
	}
	t.maps = nil
	for i := range t.tables {
		for j, m := range t.tables[i] {
			if m != nil {
				m.Close()
				t.tables[i][j] = nil
			}
		}
	}
	if t.listen != nil {
		t.listen.close()
	}
	return nil
}

// detach closes the links; the programs stay loaded for Stats.
func (t *Tracer) detach() {
	for i := range t.attached {
		if t.attached[i].link != nil {
			t.attached[i].link.Close()
			t.attached[i].link = nil
		}
	}
}

// slowQueue bounds the overflow events waiting for their namespace's
// somaxconn to be read; beyond it they go out without it.
const slowQueue = 1024

// Run reads events until ctx is done and passes each to emit, one at a time
// (the Event is reused: copy what you keep). Every SweepInterval, whatever
// the traffic, flows whose occurrences the rate limit (or a full ring
// buffer) kept from being sent come out as Summary events. When ctx is
// done, Run stops counting and reports every count before it returns:
// summed over the run, counts equal the kernel's. Run once per Tracer.
func (t *Tracer) Run(ctx context.Context, emit func(*Event)) error {
	var wg sync.WaitGroup
	locked := func(e *Event) { t.emitMu.Lock(); emit(e); t.emitMu.Unlock() }
	if t.listen != nil {
		wg.Add(1)
		go func() { defer wg.Done(); t.listen.run(ctx, locked) }()
	}
	// Reading a namespace's somaxconn the first time may walk /proc: done
	// here, never on the ring buffer's reader.
	slow := make(chan Event, slowQueue)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range slow {
			ev.Somaxconn = t.somax.get(ev.Netns)
			locked(&ev)
		}
	}()
	rotCtx, stopRotating := context.WithCancel(ctx)
	rotDone := make(chan struct{})
	go func() {
		defer close(rotDone)
		tick := time.NewTicker(t.opts.SweepInterval)
		defer tick.Stop()
		for {
			select {
			case <-rotCtx.Done():
				return
			case <-tick.C:
				t.rotate(locked)
			}
		}
	}()
	stopped := false
	shutdown := func() {
		if !stopped {
			stopped = true
			stopRotating()
			<-rotDone
			t.stop(locked)
		}
	}
	defer func() {
		shutdown()
		close(slow)
		wg.Wait()
	}()

	var rec ringbuf.Record
	var ev Event
	done := ctx.Done()
	for {
		deadline := time.Now().Add(100 * time.Millisecond)
		select {
		case <-done:
			// Stop counting and empty the tables; what the ring holds
			// then is all there is: read it up to empty.
			shutdown()
			deadline = time.Now()
		default:
		}
		t.reader.SetDeadline(deadline)
		err := t.reader.ReadInto(&rec)
		switch {
		case err == nil:
			t.deliver(rec.RawSample, &ev, slow, locked)
		case errors.Is(err, os.ErrDeadlineExceeded):
			if stopped {
				return nil
			}
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("reading the ring buffer: %w", err)
		}
	}
}

// deliver decodes one record and emits it, or queues it for a somaxconn
// read when its namespace's value is not known yet.
func (t *Tracer) deliver(raw []byte, ev *Event, slow chan<- Event, emit func(*Event)) {
	if !t.decode(raw, ev) {
		return
	}
	if ev.Type == ListenOverflow {
		v, ok := t.somax.cached(ev.Netns)
		if !ok {
			select {
			case slow <- *ev:
				return
			default: // queue full: out now, without it
			}
		}
		ev.Somaxconn = v
	}
	emit(ev)
}

// stop tells the programs to count nothing more and empties both
// generations of the tables, so every occurrence seen so far is reported.
// (Closing the links instead can take seconds: detaching an fentry program
// waits for every task to schedule.)
func (t *Tracer) stop(emit func(*Event)) {
	t.rotMu.Lock()
	t.stopped = true
	t.rotMu.Unlock()
	t.rotate(emit)
	t.rotate(emit)
}

// genStopped in the gen map tells the programs to count nothing.
const genStopped = uint32(kdropKdropGenKDROP_GEN_STOPPED)

// Sweeps says how many times the tables changed generation (for tests).
func (t *Tracer) Sweeps() uint64 { return t.sweeps.Load() }

// decode turns a ring buffer record into ev. It returns false for a record
// that is not an event (never expected; counted as an error in the log).
func (t *Tracer) decode(raw []byte, ev *Event) bool {
	if len(raw) < rawEventSize {
		t.log.Error("short ring buffer record", zap.Int("len", len(raw)))
		return false
	}
	r := (*rawEvent)(unsafe.Pointer(&raw[0]))
	t.fill(r, ev)
	ev.Time = time.Unix(0, t.bootNs.Load()+int64(r.TsNs))
	ev.Count = 1 // what the rate limit folded comes in the flow's summary
	return true
}

func (t *Tracer) fill(r *rawEvent, ev *Event) {
	*ev = Event{
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
		ICMPInfo:    r.IcmpInfo,
		Queue:       Queue(r.Queue),
		QueueLen:    r.Qlen,
		QueueMax:    r.Qmax,
		SynQueueLen: r.Synq,
		Syncookie:   r.Flags&flagSyncookie != 0,
		LinkMulti:   r.Flags&flagLinkMulti != 0,
	}
	switch {
	case r.Flags&flagCoarseType != 0:
		ev.Coarse = CoarseType
	case r.Flags&flagCoarseNetns != 0:
		ev.Coarse = CoarseNetns
	}
	if int(r.Mode) < len(modeNames) {
		ev.Source = modeNames[r.Mode]
	}
	if ev.Type == Drop {
		ev.ReasonCode = r.Reason
		ev.Reason = t.Reasons.Name(r.Reason)
		ev.LocationPC = r.Location
		ev.Location = t.Symbols.Resolve(r.Location)
	}
}

// rotate moves the programs on to the other generation of the tables,
// waits until none can still count into the one they leave, and reports
// what it holds: a Summary for every flow with occurrences not sent as
// events (rate-limited, or lost in a full ring buffer). Then it empties
// that generation, so the tables hold only the flows of one interval.
func (t *Tracer) rotate(emit func(*Event)) {
	t.rotMu.Lock()
	defer t.rotMu.Unlock()
	if t.maps == nil {
		return
	}
	old := t.gen & 1
	next := t.gen + 1
	if t.stopped {
		next |= genStopped
	}
	if err := t.maps["gen"].Put(uint32(0), next); err != nil {
		t.log.Error("switching the flow tables' generation; summaries are late until it works", zap.Error(err))
		return
	}
	t.gen++
	// Updating an outer map returns only after an RCU grace period: then
	// no program still counts into the generation it left.
	if err := t.maps["flow_tables"].Put(uint32(t.gen&1), t.tables[0][t.gen&1]); err != nil {
		t.log.Error("waiting for programs to leave the old flow tables; their counts follow in a later summary", zap.Error(err))
		return
	}
	t.anchorClock()
	now := time.Now().Round(0) // wall clock only, as event times are
	for level := range t.tables {
		t.drain(t.tables[level][old], level == 1, now, emit)
	}
	t.drainSpill(old, now, emit)
	t.sweeps.Add(1)
}

func (t *Tracer) drain(m *ebpf.Map, coarse bool, now time.Time, emit func(*Event)) {
	var k kdropFlowKey
	var st kdropFlowState
	var ev Event
	keys := t.keys[:0]
	defer func() { t.keys = keys[:0] }()
	it := m.Iterate()
	for it.Next(&k, &st) {
		keys = append(keys, k)
		if st.Seen <= st.Sent {
			continue
		}
		t.summary(&k, st.Seen-st.Sent, now, &ev)
		if coarse {
			ev.Coarse, ev.Dst = CoarseNetns, netip.AddrPort{}
		}
		emit(&ev)
	}
	if err := it.Err(); err != nil {
		t.log.Warn("reading a flow table", zap.Error(err))
	}
	if len(keys) == 0 {
		return
	}
	// One syscall for the lot where the kernel has batch ops (5.6+).
	if _, err := m.BatchDelete(keys, nil); err == nil {
		return
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.log.Warn("emptying a flow table", zap.Error(err))
			break
		}
	}
}

// drainSpill reports and zeroes the per-type flows of a generation.
func (t *Tracer) drainSpill(slot uint32, now time.Time, emit func(*Event)) {
	var ev Event
	for typ := uint32(1); typ < uint32(eventTypeMax); typ++ {
		idx := slot*uint32(eventTypeMax) + typ
		var st kdropFlowState
		if err := t.maps["spill"].Lookup(idx, &st); err != nil || st.Seen == 0 {
			continue
		}
		if st.Seen > st.Sent {
			ev = Event{Time: now, Type: EventType(typ), Count: st.Seen - st.Sent, Summary: true, Coarse: CoarseType}
			emit(&ev)
		}
		if err := t.maps["spill"].Put(idx, kdropFlowState{}); err != nil {
			t.log.Warn("emptying the spill table", zap.Error(err))
		}
	}
}

// summary fills ev as the Summary of n occurrences of flow k.
func (t *Tracer) summary(k *kdropFlowKey, n uint64, now time.Time, ev *Event) {
	r := rawEvent{Type: k.Type, Netns: k.Netns, Family: k.Family, Proto: k.Proto, Daddr: k.Daddr, Dport: k.Dport}
	switch EventType(k.Type) {
	case Drop:
		r.Reason = k.Reason
	case ListenOverflow:
		r.Queue = uint8(k.Reason)
	case Unreachable:
		r.IcmpType, r.IcmpCode = uint8(k.Reason>>8), uint8(k.Reason)
		r.IcmpInfo = k.Reason >> 16 // an MTU, which keys the flow (icmp_error_out)
	}
	t.fill(&r, ev)
	ev.Src = netip.AddrPort{} // a flow is keyed by its destination: sources vary
	ev.Time, ev.Count, ev.Summary = now, n, true
	if ev.Type == ListenOverflow {
		ev.Somaxconn = t.somax.get(ev.Netns)
	}
}

// anchorClock pins event times to the wall clock: bpf_ktime_get_ns counts
// CLOCK_MONOTONIC, and the wall clock's offset from it moves with NTP (and
// with suspend), so it is read again at every sweep.
func (t *Tracer) anchorClock() {
	var ts unix.Timespec
	now := time.Now()
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	t.bootNs.Store(now.UnixNano() - ts.Nano())
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
