package tracer

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Mode is how a hook is attached. Which ones work depends on the kernel:
// kdrop tries them in order and keeps the first that loads and attaches.
type Mode string

const (
	ModeFentry   Mode = "fentry"
	ModeKprobe   Mode = "kprobe"
	ModeTPBTF    Mode = "tp_btf"
	ModeRawTP    Mode = "raw_tp"
	ModeSockDiag Mode = "sock_diag" // userspace fallback for listen overflows
)

// AllModes in the order kdrop prefers them.
var AllModes = []Mode{ModeFentry, ModeKprobe, ModeTPBTF, ModeRawTP, ModeSockDiag}

// ParseModes reads a comma-separated list ("auto" or "" for all).
func ParseModes(s string) ([]Mode, error) {
	if s == "" || s == "auto" {
		return nil, nil
	}
	var out []Mode
	for _, f := range strings.Split(s, ",") {
		m := Mode(strings.TrimSpace(f))
		found := false
		for _, a := range AllModes {
			found = found || a == m
		}
		if !found {
			return nil, fmt.Errorf("unknown attach mode %q: use auto or a list of fentry, kprobe, tp_btf, raw_tp, sock_diag", m)
		}
		out = append(out, m)
	}
	return out, nil
}

type candidate struct {
	mode   Mode
	prog   string // program name in bpf/kdrop.bpf.c
	target string // kernel function or tracepoint
}

type hookDef struct {
	name  string
	event EventType
	cands []candidate
}

// hookDefs is every place kdrop hooks, best attach mode first.
var hookDefs = []hookDef{
	{"kfree_skb", Drop, []candidate{
		{ModeTPBTF, "tp_btf_kfree_skb", "kfree_skb"},
		{ModeRawTP, "raw_tp_kfree_skb", "kfree_skb"},
	}},
	{"tcp_conn_request", ListenOverflow, []candidate{
		{ModeFentry, "fentry_tcp_conn_request", "tcp_conn_request"},
		{ModeKprobe, "kprobe_tcp_conn_request", "tcp_conn_request"},
	}},
	{"tcp_v4_syn_recv_sock", ListenOverflow, []candidate{
		{ModeFentry, "fentry_tcp_v4_syn_recv_sock", "tcp_v4_syn_recv_sock"},
		{ModeKprobe, "kprobe_tcp_v4_syn_recv_sock", "tcp_v4_syn_recv_sock"},
	}},
	{"tcp_v6_syn_recv_sock", ListenOverflow, []candidate{
		{ModeFentry, "fentry_tcp_v6_syn_recv_sock", "tcp_v6_syn_recv_sock"},
		{ModeKprobe, "kprobe_tcp_v6_syn_recv_sock", "tcp_v6_syn_recv_sock"},
	}},
	// ICMP errors counted as sent, after the kernel's rate limits, best
	// first: seen as ip{,6}_push_pending_frames sends them (where the
	// kernel counts Icmp{,6}OutDestUnreachs), with the whole ICMP header
	// (the MTU of frag-needed); else as a device queues them (the
	// net_dev_queue tracepoint: every packet sent runs a short test);
	// else the icmp_send tracepoint (6.9+, IPv4 only), which has no MTU.
	// __icmp_send and icmp6_send themselves run before the limits, so they
	// would count errors never sent.
	{"icmp_send", Unreachable, []candidate{
		{ModeFentry, "fentry_ip_push_pending_frames", "ip_push_pending_frames"},
		{ModeKprobe, "kprobe_ip_push_pending_frames", "ip_push_pending_frames"},
		{ModeTPBTF, "tp_btf_net_dev_queue_icmp", "net_dev_queue"},
		{ModeRawTP, "raw_tp_net_dev_queue_icmp", "net_dev_queue"},
		{ModeTPBTF, "tp_btf_icmp_send", "icmp_send"},
		{ModeRawTP, "raw_tp_icmp_send", "icmp_send"},
	}},
	{"icmp6_send", Unreachable, []candidate{
		{ModeFentry, "fentry_ip6_push_pending_frames", "ip6_push_pending_frames"},
		{ModeKprobe, "kprobe_ip6_push_pending_frames", "ip6_push_pending_frames"},
		{ModeTPBTF, "tp_btf_net_dev_queue_icmp6", "net_dev_queue"},
		{ModeRawTP, "raw_tp_net_dev_queue_icmp6", "net_dev_queue"},
	}},
}

// HookStatus says how one hook ended up: attached in Mode, or missing
// (Mode == "") with the reason each mode failed.
type HookStatus struct {
	Hook   string    `json:"hook"`
	Event  EventType `json:"-"`
	Mode   Mode      `json:"mode,omitempty"`
	Target string    `json:"target,omitempty"`
	Failed []string  `json:"failed,omitempty"` // "mode: why", for modes tried before
}

func (h HookStatus) String() string {
	s := fmt.Sprintf("%-22s ", h.Hook)
	if h.Mode != "" {
		s += string(h.Mode)
		if h.Target != "" && h.Target != h.Hook {
			s += " (" + h.Target + ")"
		}
	} else {
		s += "MISSING"
	}
	if len(h.Failed) > 0 {
		s += "  [" + strings.Join(h.Failed, "; ") + "]"
	}
	return s
}

// loadProgram loads one program of the collection on its own, sharing the
// already created maps, so that a program the kernel refuses (an fentry
// where function tracing is forbidden) does not take the others down.
func loadProgram(spec *ebpf.CollectionSpec, name string, maps map[string]*ebpf.Map) (*ebpf.Program, error) {
	s := spec.Copy()
	for n := range s.Programs {
		if n != name {
			delete(s.Programs, n)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(name), nil
}

func attach(c candidate, prog *ebpf.Program) (link.Link, error) {
	switch c.mode {
	case ModeFentry, ModeTPBTF:
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case ModeRawTP:
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: c.target, Program: prog})
	case ModeKprobe:
		return link.Kprobe(c.target, prog, nil)
	}
	return nil, fmt.Errorf("mode %s cannot attach a program", c.mode)
}

// shortErr says in a few words why a load or attach failed; the full error
// goes to the debug log.
func shortErr(err error) string {
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		last := ""
		if n := len(ve.Log); n > 1 {
			last = ": " + ve.Log[n-2]
		}
		return "rejected by the verifier" + last
	case errors.Is(err, unix.EPERM):
		return "not permitted (the kernel forbids this kind of tracing)"
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, os.ErrNotExist):
		return "not supported by this kernel"
	case errors.Is(err, btf.ErrNotFound):
		return "not in this kernel's BTF"
	}
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
