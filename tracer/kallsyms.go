package tracer

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Symbolizer turns kernel text addresses (a drop's location) into
// function+offset using /proc/kallsyms. It loads on first use and caches
// every address it resolved, so the event path costs one map lookup.
type Symbolizer struct {
	path  string
	once  sync.Once
	addrs []uint64
	names []string
	err   error

	mu    sync.Mutex
	cache map[uint64]string
}

// NewSymbolizer reads symbols from path ("" means /proc/kallsyms).
func NewSymbolizer(path string) *Symbolizer {
	if path == "" {
		path = "/proc/kallsyms"
	}
	return &Symbolizer{path: path, cache: map[uint64]string{}}
}

func (s *Symbolizer) load() {
	var mods string
	if s.path == "/proc/kallsyms" {
		mods = loadedModules()
		lastKallsyms.Lock()
		defer lastKallsyms.Unlock()
		if lastKallsyms.addrs != nil && lastKallsyms.modules == mods {
			s.addrs, s.names = lastKallsyms.addrs, lastKallsyms.names
			return
		}
	}
	f, err := os.Open(s.path)
	if err != nil {
		s.err = err
		return
	}
	defer f.Close()
	s.addrs, s.names, s.err = parseKallsyms(f)
	// kept only if no module came or went while the file was read
	if s.err == nil && s.path == "/proc/kallsyms" && loadedModules() == mods {
		lastKallsyms.addrs, lastKallsyms.names, lastKallsyms.modules = s.addrs, s.names, mods
	}
}

// lastKallsyms is the running kernel's table as the last Symbolizer of the
// process read it, for the next (a tracer started again: each read cost
// ~1 s under emulation). Kernel text never moves; module text moves only
// when modules load or unload, which loadedModules tells.
var lastKallsyms struct {
	sync.Mutex
	modules string
	addrs   []uint64
	names   []string
}

// loadedModules is each loaded module's name, state and address from
// /proc/modules (not its use count, which changes without moving it; a
// module still loading has init text it frees when live). A kernel
// without it has no modules: its text never moves.
func loadedModules() string {
	raw, err := os.ReadFile("/proc/modules")
	if err != nil {
		return "unreadable"
	}
	var b strings.Builder
	for line := range bytes.Lines(raw) {
		// "nf_tables 364544 5 nft_chain_nat, Live 0xffffffffc0a00000"
		f := bytes.Fields(line)
		if len(f) >= 6 {
			b.Write(bytes.Join([][]byte{f[0], f[4], f[5]}, []byte(" ")))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// parseKallsyms keeps the text symbols ("t"/"T") of a kallsyms listing,
// sorted by address (stable: a name's first line stays first among equal
// addresses). Lines are cut by hand, names kept in one string: every
// tracer start reads ~150k lines, and field splitting cost 1.4 s of each
// start under emulation.
func parseKallsyms(r io.Reader) ([]uint64, []string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, nil, err
	}
	type sym struct {
		a          uint64
		start, end int // the name in blob
	}
	var syms []sym
	var blob strings.Builder
	for line := range bytes.Lines(data) {
		// "ffffffff81000000 T _stext\t[module]"
		line = bytes.TrimSuffix(line, []byte("\n"))
		sp := bytes.IndexByte(line, ' ')
		if sp <= 0 || len(line) < sp+4 || line[sp+2] != ' ' || (line[sp+1] != 't' && line[sp+1] != 'T') {
			continue
		}
		name := line[sp+3:]
		if i := bytes.IndexAny(name, " \t"); i >= 0 {
			name = name[:i]
		}
		a, err := strconv.ParseUint(string(line[:sp]), 16, 64)
		if err != nil || a == 0 || len(name) == 0 {
			continue
		}
		syms = append(syms, sym{a, blob.Len(), blob.Len() + len(name)})
		blob.Write(name)
	}
	if len(syms) == 0 {
		return nil, nil, fmt.Errorf("no readable text symbols (addresses hidden: kdrop needs root, or kernel.kptr_restrict < 2)")
	}
	slices.SortStableFunc(syms, func(x, y sym) int { return cmp.Compare(x.a, y.a) })
	names := blob.String()
	addrs := make([]uint64, len(syms))
	out := make([]string, len(syms))
	for i, s := range syms {
		addrs[i], out[i] = s.a, names[s.start:s.end]
	}
	return addrs, out, nil
}

// Resolve returns "func+0xoff", or the bare address when it is unknown.
func (s *Symbolizer) Resolve(pc uint64) string {
	if pc == 0 {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.cache[pc]; ok {
		return n
	}
	s.once.Do(s.load)
	n := fmt.Sprintf("0x%x", pc)
	if i := sort.Search(len(s.addrs), func(i int) bool { return s.addrs[i] > pc }) - 1; i >= 0 {
		n = fmt.Sprintf("%s+0x%x", s.names[i], pc-s.addrs[i])
	}
	s.cache[pc] = n
	return n
}

// Range returns the text addresses [start, end) of the kernel function
// name (end: the next text symbol's address). ok is false when kallsyms
// has no such function (not in this kernel, or inlined everywhere). A
// name that appears more than once (static functions of several files)
// gives the first.
func (s *Symbolizer) Range(name string) (start, end uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.once.Do(s.load)
	for i, n := range s.names {
		if n == name && i+1 < len(s.addrs) {
			return s.addrs[i], s.addrs[i+1], true
		}
	}
	return 0, 0, false
}

// Err reports why symbols could not be loaded, if they could not.
func (s *Symbolizer) Err() error {
	s.once.Do(s.load)
	return s.err
}
