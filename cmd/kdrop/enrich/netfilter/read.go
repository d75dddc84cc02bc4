package netfilter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer"
)

// Why a read of a namespace's rules failed: the Unknown of its events.
var (
	errNetnsGone = errors.New("network namespace gone")
	errChanged   = errors.New("rules changed while reading")
	// errReadTimeout: a read took longer than ReadTimeout. It is not the
	// events' last word: they wait for the next read, up to MaxWait.
	errReadTimeout = errors.New("reading rules timed out")
	errDeleted     = errors.New("table or chain deleted while reading")
	// errRenewed: a rule of the same generation and handle is not the
	// one read before: another namespace under the inode number (found
	// by the rules' fingerprints where the kernel has no netns cookie)
	errRenewed    = errors.New("another namespace under the same inode number")
	errPermission = errors.New("permission denied reading rules (needs CAP_NET_ADMIN in the namespace)")
)

// ruleset is one read of a namespace's drop-capable nftables rules.
type ruleset struct {
	// at is when the read started: every counter increment before it is
	// in the counters read. end is when it ended: no increment after it
	// is. (Counters are read while the dump runs, in between.)
	at, end time.Time
	gen     uint32 // the nf_tables ruleset generation (NFT_MSG_GETGEN) read
	rules   map[ruleKey]*ruleInfo
	// noLegacy: the kernel has no iptables-legacy (ip_tables) to read.
	noLegacy bool
	// renewed: the namespace is not the one the reader read before under
	// the same inode number (the kernel reuses them): its netns cookie
	// differs, or (before 5.14, without cookies) its ruleset generation
	// went back or a rule's fingerprint changed within one generation.
	// Nothing earlier applies to it.
	renewed bool
	// reach is how the chains of each table are reached (jumps and gotos),
	// from the last discovery.
	reach map[tableKey]*tableReach
	// compact: only the counters are kept (ruleInfo's Ref, family,
	// hasCounter, packets), as the baseline of a quiet namespace.
	compact bool
}

// tableKey names a table.
type tableKey struct {
	family byte
	table  string
}

// tableReach is how a table's chains are reached: base chains by their
// hook; others only from the rules that jump or goto them (referrers by
// chain name), unless a verdict map may (vmaps: then any chain may be).
type tableReach struct {
	base      map[string]bool
	referrers map[string][]*ruleInfo
	vmaps     bool
}

// reached says whether a packet can reach the rule's chain: matchNo when
// every rule jumping or going to it (recursively) cannot match the
// packet. iptables-legacy rules and chains a verdict map may reach are
// taken as reached.
func (rs *ruleset) reached(ri *ruleInfo, ev *tracer.Event, depth int) matchResult {
	if ri.legacy != nil || rs.reach == nil {
		return matchYes
	}
	tr := rs.reach[tableKey{ri.family, ri.Table}]
	if tr == nil || tr.vmaps || tr.base[ri.Chain] || depth > 16 {
		return matchYes
	}
	res := matchNo
	for _, j := range tr.referrers[ri.Chain] {
		r := both(matches(j, ev), rs.reached(j, ev, depth+1))
		if r == matchYes {
			return matchYes
		}
		if r == matchMaybe {
			res = matchMaybe
		}
	}
	return res
}

// both is the result of two conditions that must both hold.
func both(a, b matchResult) matchResult {
	switch {
	case a == matchNo || b == matchNo:
		return matchNo
	case a == matchMaybe || b == matchMaybe:
		return matchMaybe
	}
	return matchYes
}

// counters is rs with only what a baseline needs.
func (rs *ruleset) counters() *ruleset {
	c := &ruleset{at: rs.at, end: rs.end, gen: rs.gen, noLegacy: rs.noLegacy, compact: true,
		rules: make(map[ruleKey]*ruleInfo, len(rs.rules))}
	for k, ri := range rs.rules {
		if ri.hasCounter {
			c.rules[k] = &ruleInfo{Ref: ri.Ref, family: ri.family, hasCounter: true, packets: ri.packets,
				legacy: ri.legacy, legacyID: ri.legacyID, legacyDup: ri.legacyDup}
		}
	}
	return c
}

// ruleKey identifies a rule across reads. Handles are unique within a
// table; a table deleted and created again starts over, which shows as a
// counter going backwards. An iptables-legacy rule has no handle: it is
// known by its content (legacyID), and dup tells rules of the same
// content in one chain apart.
type ruleKey struct {
	family byte
	table  string
	chain  string
	handle uint64 // nftables: the handle; iptables-legacy: legacyID
	dup    int
	legacy bool
}

func (ri *ruleInfo) key() ruleKey {
	if ri.legacy != nil {
		return ruleKey{ri.family, ri.Table, ri.Chain, ri.legacyID, ri.legacyDup, true}
	}
	return ruleKey{ri.family, ri.Table, ri.Chain, ri.Handle, 0, false}
}

// ruleInfo is one drop-capable rule as read.
type ruleInfo struct {
	Ref
	family     byte
	hasCounter bool
	packets    uint64 // the counter's packets (cumulative, as read)
	exprs      []expr.Any
	legacy     *legacyMatch // iptables-legacy: what its ipt_entry matches
	pod        *podChain    // a rule of kube-router's pod chain: the chain's pod and policies
	// legacyID, legacyDup: an iptables-legacy rule's content hash, and
	// how many rules of the same content come before it in its chain
	legacyID  uint64
	legacyDup int
	// sets are the elements of the sets and maps its lookups use, by
	// name (shared by the rules of its table, read with them).
	sets map[string]*setInfo
}

// setInfo is one set or map as read: its elements by key (the key's bytes
// as the kernel holds them: each part of a concatenation padded to 4
// bytes), and an interval set's ranges. partial: not every element is
// known (more than maxElements), so a lookup in it is not evaluated.
type setInfo struct {
	// dynamic: the packet path may add or expire elements (dynamic sets,
	// timeouts) without a new generation: read again every time.
	dynamic bool
	keyLen  int
	elems   map[string]*element
	ranges  []keyRange
	partial bool
	reread  *ruleset // the read that read it again (rereadDynamic)
}

// keyRange is one interval of an interval set: keys from from up to to
// (inclusive; nil: to the end of the key space).
type keyRange struct {
	from, to []byte
	el       *element
}

// find is the element holding key k, exact or in a range.
func (s *setInfo) find(k []byte) (*element, bool) {
	if el, ok := s.elems[string(k)]; ok {
		return el, true
	}
	for _, r := range s.ranges {
		if bytes.Compare(k, r.from) >= 0 && (r.to == nil || bytes.Compare(k, r.to) <= 0) {
			return r.el, true
		}
	}
	return nil, false
}

// intervals turns an interval set's elements into ranges. A concatenation
// carries each range's end in KeyEnd (inclusive); a single key type has
// one element where a range starts and one flagged NFT_SET_ELEM_INTERVAL_END
// where it has ended (the first key past it), as nft_set_rbtree dumps
// them.
func intervals(elems []nftables.SetElement, mk func(nftables.SetElement) *element) []keyRange {
	var out []keyRange
	if slices.ContainsFunc(elems, func(e nftables.SetElement) bool { return len(e.KeyEnd) > 0 }) {
		for _, e := range elems {
			if len(e.KeyEnd) > 0 {
				out = append(out, keyRange{from: e.Key, to: e.KeyEnd, el: mk(e)})
			}
		}
		return out
	}
	sorted := slices.Clone(elems)
	slices.SortStableFunc(sorted, func(a, b nftables.SetElement) int { return bytes.Compare(a.Key, b.Key) })
	for i, e := range sorted {
		if e.IntervalEnd {
			continue
		}
		r := keyRange{from: e.Key, el: mk(e)}
		if i+1 < len(sorted) && sorted[i+1].IntervalEnd {
			r.to = before(sorted[i+1].Key)
		}
		out = append(out, r)
	}
	return out
}

// before is the key just before k (k minus one, big endian).
func before(k []byte) []byte {
	b := slices.Clone(k)
	for i := len(b) - 1; i >= 0; i-- {
		b[i]--
		if b[i] != 0xff {
			break
		}
	}
	return b
}

// element is one set or map element: a verdict map's verdict ("drop",
// "accept", "goto reject-chain", "jump …"; "" for a set) and its comment
// (kube-proxy's maps name the Service there: "shop/cart:http").
type element struct {
	verdict string
	comment string
}

// maxElements bounds the elements read of one set (kube-proxy's maps hold
// one per Service port, address and node port).
const maxElements = 65536

// chainRef is a chain found to hold drop-capable rules (or a drop policy).
type chainRef struct {
	table  *nftables.Table
	chain  *nftables.Chain
	policy bool // base chain with policy drop
}

// netnsReader reads one namespace. It remembers which chains can drop, so
// that while the ruleset generation stays the same only those are read.
type netnsReader struct {
	ino    uint32
	chains []chainRef
	gen    uint32
	known  bool // chains and gen are from a discovery
	reach  map[tableKey]*tableReach
	// prev is the last read (its rules reused while the generation stays)
	prev *ruleset
	// cookie is the namespace's netns cookie (SO_NETNS_COOKIE, unique
	// for the boot, unlike inode numbers), 0 before 5.14.
	cookie uint64
	// fps are the fingerprints of the counted chains' rules by handle, as
	// last read, kept where the kernel has no cookie: a new namespace
	// under the inode number whose ruleset generation happens to be the
	// same shows by other rules under the same handles.
	fps map[chainID]map[uint64]uint64
	// timeout bounds a whole read (0: none): netlink socket deadlines.
	timeout time.Duration
	// hook, for tests: called at "start" and when the chains are "listed",
	// so a test can change rules mid-read.
	hook func(stage string)
}

// read reads the namespace at path (checked to be inode r.ino), retrying
// once when the rules change under it.
func (r *netnsReader) read(path string) (*ruleset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errNetnsGone
	}
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || uint32(st.Ino) != r.ino {
		return nil, errNetnsGone
	}
	fd := int(f.Fd())
	var deadline time.Time
	if r.timeout > 0 {
		deadline = time.Now().Add(r.timeout)
	}
	setDeadline := func(c *netlink.Conn) error { return c.SetDeadline(deadline) }
	// Both sockets are opened inside the namespace (netlink.Config.NetNS:
	// the library switches a locked thread there and back).
	conn, err := nftables.New(nftables.WithNetNSFd(fd), nftables.AsLasting(), nftables.WithSockOptions(setDeadline))
	if err != nil {
		return nil, classify(err)
	}
	defer conn.CloseLasting()
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd})
	if err != nil {
		return nil, classify(err)
	}
	defer nl.Close()
	if err := setDeadline(nl); err != nil {
		return nil, classify(err)
	}
	// A namespace behind a known inode number may be a new one: the old
	// one died and the kernel gave its number to the next.
	renewed := false
	if c := netnsCookie(nl); c != 0 {
		renewed = r.cookie != 0 && c != r.cookie
		r.cookie = c
	}
	if renewed {
		r.known, r.gen = false, 0
	}
	for attempt := 0; ; attempt++ {
		rs, err := r.readOnce(conn, nl)
		if errors.Is(err, errRenewed) && attempt == 0 {
			renewed, r.known, r.gen, r.prev = true, false, 0, nil
			continue
		}
		if err == nil {
			// the namespace by its open file (/proc/self/fd), not its path:
			// the path may have gone or been reused meanwhile
			err = tracer.InNetns(fmt.Sprintf("/proc/self/fd/%d", fd), func() error { return readLegacy(rs) })
			var pe *os.PathError
			switch {
			case errors.Is(err, errNoLegacy):
				rs.noLegacy, err = true, nil
			case errors.As(err, &pe) && errors.Is(err, os.ErrNotExist):
				err = errNetnsGone // never the raw "open /proc/…: no such file"
			}
		}
		if err == nil || attempt == 1 || !(errors.Is(err, errChanged) || errors.Is(err, errDeleted)) {
			if err == nil {
				rs.end = time.Now()
				rs.renewed = rs.renewed || renewed
			}
			return rs, err
		}
		r.known = false // discover again
	}
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14).
const soNetnsCookie = 71

// netnsCookie is the cookie of the namespace the socket was opened in; 0
// when the kernel has none (before 5.14).
func netnsCookie(c *netlink.Conn) uint64 {
	sc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var cookie uint64
	sc.Control(func(fd uintptr) {
		v, err := unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, soNetnsCookie)
		if err == nil {
			cookie = v
		}
	})
	return cookie
}

func (r *netnsReader) readOnce(conn *nftables.Conn, nl *netlink.Conn) (*ruleset, error) {
	rs := &ruleset{at: time.Now(), rules: map[ruleKey]*ruleInfo{}}
	if r.hook != nil {
		r.hook("start")
	}
	gen, err := getGen(nl)
	if err != nil {
		return nil, err
	}
	rs.gen = gen
	if r.known && gen < r.gen {
		// the generation only grows: a smaller one is another namespace
		// (how a reused inode number shows before 5.14, without cookies)
		rs.renewed, r.known = true, false
	}
	var listed map[*nftables.Chain][]*nftables.Rule // by discover, this read
	if !r.known || gen != r.gen {
		if listed, err = r.discover(conn); err != nil {
			return nil, err
		}
	}
	if r.hook != nil {
		r.hook("listed")
	}
	// The same generation: the same rules and sets. Only the counters are
	// read again (a lean dump of handles and counters), the rest reused.
	fast := r.prev != nil && r.known && gen == r.gen
	rs.reach = r.reach
	var fps map[chainID]map[uint64]uint64 // without cookies only
	if r.cookie == 0 {
		fps = map[chainID]map[uint64]uint64{}
	}
	var policyCounters map[chainID]uint64
	for _, c := range r.chains {
		if c.policy {
			if policyCounters == nil {
				if policyCounters, err = chainCounters(nl); err != nil {
					return nil, err
				}
			}
			ri := &ruleInfo{Ref: Ref{Family: familyName(c.table.Family), Table: c.table.Name, Chain: c.chain.Name,
				Verdict: "DROP (policy)"}, family: byte(c.table.Family)}
			// iptables-nft's base chains count what their policy decides
			ri.packets, ri.hasCounter = policyCounters[chainID{byte(c.table.Family), c.table.Name, c.chain.Name}]
			rs.add(ri)
			continue
		}
		if fast {
			if err := r.recount(nl, c, rs, fps); err != nil {
				return nil, err
			}
			continue
		}
		if fps != nil { // the fingerprints the next reads compare with
			counts, err := ruleCounters(nl, c, true)
			if err != nil {
				return nil, err
			}
			fps[c.id()] = fingerprints(counts)
		}
		rules, ok := listed[c.chain]
		if !ok {
			if rules, err = conn.GetRules(c.table, c.chain); err != nil {
				return nil, classify(err)
			}
		}
		var pod *podChain
		if isPodChain(c.table, c.chain) {
			pod = &podChain{}
			for _, nr := range rules {
				pod.note(nr)
			}
		}
		for _, nr := range rules {
			if ri := parseRule(c.table, c.chain, nr); ri != nil {
				ri.pod = pod
				rs.add(ri)
			}
		}
	}
	if !fast {
		if err := readSets(conn, rs); err != nil {
			return nil, err
		}
	} else if err := rereadDynamic(conn, rs); err != nil {
		return nil, err
	}
	gen2, err := getGen(nl)
	if err != nil {
		return nil, err
	}
	if gen2 != gen {
		return nil, r.whatChanged(conn)
	}
	r.gen, r.known = gen, true
	r.prev, r.fps = rs, fps
	return rs, nil
}

func (c chainRef) id() chainID { return chainID{byte(c.table.Family), c.table.Name, c.chain.Name} }

func fingerprints(counts map[uint64]ruleCount) map[uint64]uint64 {
	fp := make(map[uint64]uint64, len(counts))
	for h, rc := range counts {
		fp[h] = rc.fp
	}
	return fp
}

// recount adds the chain's rules of the previous read to rs with their
// counters read again. With fps (no netns cookie), it checks each rule is
// still the one read before (errRenewed if not) and notes it in fps.
func (r *netnsReader) recount(nl *netlink.Conn, c chainRef, rs *ruleset, fps map[chainID]map[uint64]uint64) error {
	counts, err := ruleCounters(nl, c, fps != nil)
	if err != nil {
		return err
	}
	if fps != nil {
		was := r.fps[c.id()]
		for h, rc := range counts {
			if f, ok := was[h]; ok && f != rc.fp {
				return errRenewed
			}
		}
		fps[c.id()] = fingerprints(counts)
	}
	fam := byte(c.table.Family)
	for k, ri := range r.prev.rules {
		if ri.legacy != nil || k.family != fam || k.table != c.table.Name || k.chain != c.chain.Name || ri.Handle == 0 {
			continue
		}
		n, ok := counts[ri.Handle]
		if !ok {
			return errChanged // the generation says otherwise: caught below too
		}
		nri := *ri
		nri.packets = n.packets
		rs.add(&nri)
	}
	return nil
}

// ruleCount is a rule's counter (packets; 0 without one) and, when asked
// for, its fingerprint: a hash of its expressions but those whose state
// changes as packets pass (counter, quota, limit, last, connlimit), and of
// its comment.
type ruleCount struct {
	packets, fp uint64
}

// stateful are the expressions whose dump changes as packets pass.
var stateful = map[string]bool{"counter": true, "quota": true, "limit": true, "last": true, "connlimit": true}

// ruleCounters dumps one chain's rules (NFT_MSG_GETRULE) and decodes only
// each rule's handle and its counter's packets, and with fp its
// fingerprint: much less work than the library's decoding of every
// expression, for a chain of thousands of rules read every Interval.
func ruleCounters(nl *netlink.Conn, c chainRef, fp bool) (map[uint64]ruleCount, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_RULE_TABLE, c.table.Name)
	ae.String(unix.NFTA_RULE_CHAIN, c.chain.Name)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{byte(c.table.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := nl.Execute(req)
	if err != nil {
		return nil, classify(err)
	}
	out := make(map[uint64]ruleCount, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var handle, packets uint64
		h := fnv.New64a()
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_HANDLE:
				handle = ad.Uint64()
			case unix.NFTA_RULE_USERDATA:
				if fp {
					h.Write(ad.Bytes())
				}
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(list *netlink.AttributeDecoder) error {
					for list.Next() {
						var raw []byte
						if fp {
							raw = list.Bytes()
						}
						list.Nested(func(e *netlink.AttributeDecoder) error {
							counter := false
							for e.Next() {
								switch e.Type() {
								case unix.NFTA_EXPR_NAME:
									name := e.String()
									counter = name == "counter"
									if fp && !stateful[name] {
										h.Write(raw)
									}
								case unix.NFTA_EXPR_DATA:
									if counter {
										e.Nested(func(d *netlink.AttributeDecoder) error {
											for d.Next() {
												if d.Type() == unix.NFTA_COUNTER_PACKETS {
													packets = d.Uint64()
												}
											}
											return nil
										})
									}
								}
							}
							return nil
						})
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, classify(err)
		}
		out[handle] = ruleCount{packets: packets, fp: h.Sum64()}
	}
	return out, nil
}

// whatChanged tells a table deleted while reading from other changes.
func (r *netnsReader) whatChanged(conn *nftables.Conn) error {
	tables, err := conn.ListTables()
	if err != nil {
		return errChanged
	}
	for _, c := range r.chains {
		if !slices.ContainsFunc(tables, func(t *nftables.Table) bool {
			return t.Name == c.table.Name && t.Family == c.table.Family
		}) {
			return errDeleted
		}
	}
	return errChanged
}

func (rs *ruleset) add(ri *ruleInfo) {
	rs.rules[ri.key()] = ri
}

// discover lists every table and chain and keeps the chains with a rule
// whose verdict is drop or reject, or a drop policy. It returns the rules
// of those chains as it listed them, for this read to use (the same
// generation: a chain of thousands of rules is listed once, not twice).
func (r *netnsReader) discover(conn *nftables.Conn) (map[*nftables.Chain][]*nftables.Rule, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, classify(err)
	}
	listed := map[*nftables.Chain][]*nftables.Rule{}
	r.chains = r.chains[:0]
	r.reach = map[tableKey]*tableReach{}
	for _, c := range chains {
		if c.Table == nil {
			continue
		}
		t := &nftables.Table{Name: c.Table.Name, Family: c.Table.Family}
		tk := tableKey{byte(t.Family), t.Name}
		tr := r.reach[tk]
		if tr == nil {
			tr = &tableReach{base: map[string]bool{}, referrers: map[string][]*ruleInfo{}}
			r.reach[tk] = tr
		}
		if c.Hooknum != nil {
			tr.base[c.Name] = true
		}
		ref := chainRef{table: t, chain: c}
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop && c.Hooknum != nil {
			r.chains = append(r.chains, chainRef{table: t, chain: c, policy: true})
		}
		rules, err := conn.GetRules(t, c)
		if err != nil {
			return nil, classify(err)
		}
		drops := false
		for _, nr := range rules {
			if !drops && (verdictOf(nr.Exprs) != "" || vmapOf(nr.Exprs) != "") {
				r.chains = append(r.chains, ref)
				listed[c] = rules
				drops = true
			}
			for _, e := range nr.Exprs {
				switch e := e.(type) {
				case *expr.Verdict:
					if (e.Kind == expr.VerdictJump || e.Kind == expr.VerdictGoto) && e.Chain != "" {
						tr.referrers[e.Chain] = append(tr.referrers[e.Chain], &ruleInfo{
							Ref: Ref{Table: t.Name, Chain: c.Name}, family: byte(t.Family), exprs: nr.Exprs})
					}
				case *expr.Lookup:
					if e.IsDestRegSet && e.DestRegister == 0 {
						tr.vmaps = true // a verdict map may jump anywhere
					}
				}
			}
		}
	}
	return listed, nil
}

// chainID names a chain.
type chainID struct {
	family       byte
	table, chain string
}

// chainCounters reads the packet counters of the base chains that have
// them (NFT_MSG_GETCHAIN dump, NFTA_CHAIN_COUNTERS: iptables-nft makes its
// base chains with counters, which count what the policy decides). The
// library does not decode them.
func chainCounters(nl *netlink.Conn) (map[chainID]uint64, error) {
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETCHAIN),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	msgs, err := nl.Execute(req)
	if err != nil {
		return nil, classify(err)
	}
	out := map[chainID]uint64{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		id := chainID{family: m.Data[0]}
		var packets uint64
		has := false
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_CHAIN_TABLE:
				id.table = ad.String()
			case unix.NFTA_CHAIN_NAME:
				id.chain = ad.String()
			case unix.NFTA_CHAIN_COUNTERS:
				ad.Nested(func(nad *netlink.AttributeDecoder) error {
					for nad.Next() {
						if nad.Type() == unix.NFTA_COUNTER_PACKETS {
							packets, has = nad.Uint64(), true
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		if has {
			out[id] = packets
		}
	}
	return out, nil
}

// parseRule returns the rule if it can drop (verdict drop or reject), else nil.
func parseRule(t *nftables.Table, c *nftables.Chain, nr *nftables.Rule) *ruleInfo {
	v := fixRejectFamily(verdictOf(nr.Exprs), t.Family)
	if v == "" {
		if m := vmapOf(nr.Exprs); m != "" {
			v = "vmap @" + m // DROP when the element the packet hits says drop
		} else {
			return nil
		}
	}
	ri := &ruleInfo{Ref: Ref{Family: familyName(t.Family), Table: t.Name, Chain: c.Name, Handle: nr.Handle, Verdict: v},
		family: byte(t.Family), exprs: nr.Exprs}
	if b, ok := userdata.GetString(nr.UserData, userdata.TypeComment); ok {
		ri.Comment = cleanComment([]byte(b))
	}
	for _, e := range nr.Exprs {
		switch e := e.(type) {
		case *expr.Counter:
			ri.hasCounter, ri.packets = true, e.Packets
		case *expr.Match:
			if e.Name == "comment" && ri.Comment == "" {
				ri.Comment = xtComment(e.Info)
			}
		}
	}
	return ri
}

// xtComment decodes iptables' `-m comment` (struct xt_comment_info: char
// comment[256]), which the library gives as xt.Comment or, for a size it
// does not expect, raw bytes.
func xtComment(info xt.InfoAny) string {
	switch c := info.(type) {
	case *xt.Comment:
		return cleanComment([]byte(*c))
	case *xt.Unknown:
		return cleanComment(*c)
	}
	return ""
}

// vmapOf is the name of the named verdict map the rule looks the packet up
// in (`... vmap @no-endpoint-services`: the element's verdict may be drop),
// else "". Anonymous maps (kube-proxy's per-Service endpoint choice) are
// left out: they jump to chains, and reading them would cost a read per
// Service.
func vmapOf(exprs []expr.Any) string {
	for _, e := range exprs {
		if l, ok := e.(*expr.Lookup); ok && l.IsDestRegSet && l.DestRegister == 0 && !strings.HasPrefix(l.SetName, "__") {
			return l.SetName
		}
	}
	return ""
}

// readSets reads the elements of the sets and maps the rules look up in,
// once per table, and gives each rule its table's.
func readSets(conn *nftables.Conn, rs *ruleset) error {
	type tk struct {
		family byte
		table  string
	}
	byTable := map[tk]map[string]*setInfo{}
	for _, ri := range rs.rules {
		if ri.legacy != nil {
			continue
		}
		k := tk{ri.family, ri.Table}
		sets := byTable[k]
		if sets == nil {
			sets = map[string]*setInfo{}
			byTable[k] = sets
		}
		ri.sets = sets
		for _, e := range ri.exprs {
			l, ok := e.(*expr.Lookup)
			if !ok || sets[l.SetName] != nil {
				continue
			}
			si, err := readSet(conn, &nftables.Table{Name: ri.Table, Family: nftables.TableFamily(ri.family)}, l.SetName)
			if err != nil {
				return err
			}
			sets[l.SetName] = si
		}
	}
	return nil
}

// rereadDynamic reads again the dynamic sets the rules (reused from the
// last read) look up in.
func rereadDynamic(conn *nftables.Conn, rs *ruleset) error {
	for _, ri := range rs.rules {
		for name, si := range ri.sets {
			if !si.dynamic || si.reread == rs {
				continue
			}
			nsi, err := readSet(conn, &nftables.Table{Name: ri.Table, Family: nftables.TableFamily(ri.family)}, name)
			if err != nil {
				return err
			}
			nsi.reread = rs
			ri.sets[name] = nsi
		}
	}
	return nil
}

// readSet reads one set's elements (NFT_MSG_GETSETELEM), at most
// maxElements.
func readSet(conn *nftables.Conn, t *nftables.Table, name string) (*setInfo, error) {
	set, err := conn.GetSetByName(t, name)
	if err != nil {
		return nil, classify(err)
	}
	si := &setInfo{elems: map[string]*element{}, dynamic: set.Dynamic || set.HasTimeout}
	elems, err := conn.GetSetElements(set)
	if err != nil {
		return nil, classify(err)
	}
	if len(elems) > maxElements {
		si.partial = true
		return si, nil
	}
	mk := func(el nftables.SetElement) *element {
		e := &element{comment: cleanComment([]byte(el.Comment))}
		// google/nftables v0.3.0 records a verdict map's data type in
		// KeyType (its NFTA_SET_DATA_TYPE special case).
		if set.IsMap && (set.DataType.Name == "verdict" || set.KeyType.Name == "verdict") {
			e.verdict = elementVerdict(el.Val)
		}
		return e
	}
	for _, el := range elems {
		si.keyLen = max(si.keyLen, len(el.Key))
	}
	if set.Interval {
		si.ranges = intervals(elems, mk)
		return si, nil
	}
	for _, el := range elems {
		si.elems[string(el.Key)] = mk(el)
	}
	return si, nil
}

// elementVerdict decodes a verdict map element's data as the library
// leaves it: the nested attributes of NFTA_DATA_VERDICT (NFTA_VERDICT_CODE,
// a big endian int32 of NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO…, and
// NFTA_VERDICT_CHAIN).
func elementVerdict(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	var code int32
	var chain string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	switch code {
	case 0: // NF_DROP
		return "drop"
	case 1: // NF_ACCEPT
		return "accept"
	case unix.NFT_JUMP:
		return "jump " + chain
	case unix.NFT_GOTO:
		return "goto " + chain
	case unix.NFT_RETURN:
		return "return"
	case unix.NFT_CONTINUE:
		return "continue"
	}
	return fmt.Sprintf("verdict-%d", code)
}

// verdictOf is the rule's verdict if it drops: "DROP", "REJECT <with>",
// else "".
func verdictOf(exprs []expr.Any) string {
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Verdict:
			if e.Kind == expr.VerdictDrop {
				return "DROP"
			}
		case *expr.Reject:
			return "REJECT " + nftRejectWith(e)
		case *expr.Target:
			switch e.Name {
			case "REJECT":
				return "REJECT " + xtRejectWith(e.Info)
			case "DROP":
				return "DROP"
			}
		}
	}
	return ""
}

// nftRejectWith names a native reject (enum nft_reject_types; codes of
// enum nft_reject_inet_code for icmpx, else the ICMP code of the family).
func nftRejectWith(e *expr.Reject) string {
	switch e.Type {
	case unix.NFT_REJECT_TCP_RST:
		return "tcp-reset"
	case unix.NFT_REJECT_ICMPX_UNREACH:
		switch e.Code {
		case unix.NFT_REJECT_ICMPX_NO_ROUTE:
			return "icmpx-no-route"
		case unix.NFT_REJECT_ICMPX_PORT_UNREACH:
			return "icmpx-port-unreachable"
		case unix.NFT_REJECT_ICMPX_HOST_UNREACH:
			return "icmpx-host-unreachable"
		case unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED:
			return "icmpx-admin-prohibited"
		}
		return fmt.Sprintf("icmpx-code-%d", e.Code)
	}
	return fmt.Sprintf("icmp-code-%d", e.Code)
}

// xtRejectNames are iptables' --reject-with names by enum ipt_reject_with
// (struct ipt_reject_info { u32 with; }); xt6RejectNames by enum
// ip6t_reject_with. The two cannot be told apart by size: a rule's table
// family picks (see verdictOf's caller); here both are tried by value.
var xtRejectNames = [...]string{"icmp-net-unreachable", "icmp-host-unreachable", "icmp-proto-unreachable",
	"icmp-port-unreachable", "icmp-echo-reply", "icmp-net-prohibited", "icmp-host-prohibited", "tcp-reset",
	"icmp-admin-prohibited"}

var xt6RejectNames = [...]string{"icmp6-no-route", "icmp6-adm-prohibited", "icmp6-not-neighbour",
	"icmp6-addr-unreachable", "icmp6-port-unreachable", "icmp6-echo-reply", "tcp-reset", "icmp6-policy-fail",
	"icmp6-reject-route"}

// xtRejectWith decodes REJECT's info (4 bytes, host order); the family is
// fixed up by fixRejectFamily once the table's is known.
func xtRejectWith(info xt.InfoAny) string {
	u, ok := info.(*xt.Unknown)
	if !ok || len(*u) < 4 {
		return "?"
	}
	return fmt.Sprintf("with-%d", binary.NativeEndian.Uint32((*u)[:4]))
}

// fixRejectFamily turns "REJECT with-N" into its name for the family.
func fixRejectFamily(v string, fam nftables.TableFamily) string {
	n, ok := strings.CutPrefix(v, "REJECT with-")
	if !ok {
		return v
	}
	var i int
	fmt.Sscanf(n, "%d", &i)
	if fam == nftables.TableFamilyIPv6 {
		if i >= 0 && i < len(xt6RejectNames) {
			return "REJECT " + xt6RejectNames[i]
		}
	} else if i >= 0 && i < len(xtRejectNames) {
		return "REJECT " + xtRejectNames[i]
	}
	return v
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

// getGen asks for the ruleset generation (NFT_MSG_GETGEN; the reply's
// NFTA_GEN_ID, big endian). It changes with every committed change.
func getGen(nl *netlink.Conn) (uint32, error) {
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, // struct nfgenmsg
	}
	msgs, err := nl.Execute(req)
	if err != nil {
		return 0, classify(err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("no generation id in the kernel's answer")
}

// classify maps a netlink error to why events go out unknown. The library
// wraps errors with %v, so errno values are recognised by their text too.
func classify(err error) error {
	s := err.Error()
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES),
		strings.Contains(s, "operation not permitted"), strings.Contains(s, "permission denied"):
		return errPermission
	case errors.Is(err, unix.ENOENT), strings.Contains(s, "no such file or directory"):
		return errDeleted
	case errors.Is(err, os.ErrDeadlineExceeded), strings.Contains(s, "i/o timeout"):
		return errReadTimeout
	case errors.Is(err, unix.EINTR), strings.Contains(s, "interrupted system call"),
		errors.Is(err, unix.EBUSY), strings.Contains(s, "device or resource busy"):
		// a dump interrupted by a ruleset change (NLM_F_DUMP_INTR)
		return errChanged
	}
	return fmt.Errorf("reading rules: %w", err)
}
