package netfilter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer"
)

// iptables-legacy: the ip_tables and ip6_tables blobs, read with
// getsockopt(IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES) on a raw socket opened
// inside the namespace (include/uapi/linux/netfilter_ipv4/ip_tables.h,
// netfilter_ipv6/ip6_tables.h). Rules have no handle there: they are named
// by their 1-based position in their chain, and a built-in chain's policy
// has a counter of its own.

const (
	soGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	soGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES
	getinfoSize  = 84 // struct ipt_getinfo
	getEntriesHd = 40 // struct ipt_get_entries up to entrytable (8-aligned)
	xtNameLen    = 29 // XT_EXTENSION_MAXNAMELEN
	maxBlob      = 64 << 20
)

// legacyFamily is what differs between ip_tables and ip6_tables.
type legacyFamily struct {
	nfproto        byte   // NFPROTO_IPV4, NFPROTO_IPV6
	name           string // "ip", "ip6"
	domain, level  int    // socket domain, getsockopt level
	names          string // /proc/thread-self/net/ip_tables_names
	ipSize         int    // sizeof(struct ipt_ip), sizeof(struct ip6t_ip6)
	targetOff      int    // offsetof(struct ipt_entry, target_offset)
	countersOff    int    // offsetof(struct ipt_entry, counters)
	entrySize      int    // sizeof(struct ipt_entry): where matches start
	rejectWithName func(uint32) string
}

var legacyFamilies = []legacyFamily{
	{unix.NFPROTO_IPV4, "ip", unix.AF_INET, unix.SOL_IP, "/proc/thread-self/net/ip_tables_names", 84, 88, 96, 112,
		func(w uint32) string { return nameAt(xtRejectNames[:], w) }},
	{unix.NFPROTO_IPV6, "ip6", unix.AF_INET6, unix.SOL_IPV6, "/proc/thread-self/net/ip6_tables_names", 136, 140, 152, 168,
		func(w uint32) string { return nameAt(xt6RejectNames[:], w) }},
}

func nameAt(names []string, i uint32) string {
	if int(i) < len(names) {
		return names[i]
	}
	return fmt.Sprintf("with-%d", i)
}

var hookChains = [...]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// errNoLegacy: the kernel has no ip_tables (CONFIG_IP_NF_IPTABLES unset,
// or a module not loaded, so no legacy rule exists).
var errNoLegacy = errors.New("no iptables-legacy in this kernel: ip_tables not built or not loaded")

// readLegacy adds the namespace's drop-capable iptables-legacy rules to rs.
// It must run on a thread inside the namespace. errNoLegacy when the
// kernel has none.
func readLegacy(rs *ruleset) error {
	have := false
	for _, f := range legacyFamilies {
		b, err := os.ReadFile(f.names)
		if err != nil {
			continue // this family's ip_tables is not in the kernel
		}
		have = true
		tables := strings.Fields(string(b))
		if len(tables) == 0 {
			continue
		}
		fd, err := unix.Socket(f.domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return classify(err)
		}
		for _, t := range tables {
			if err := readLegacyTable(fd, &f, t, rs); err != nil {
				unix.Close(fd)
				return err
			}
		}
		unix.Close(fd)
	}
	if !have {
		return errNoLegacy
	}
	return nil
}

func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return e
	}
	return nil
}

func readLegacyTable(fd int, f *legacyFamily, table string, rs *ruleset) error {
	info := make([]byte, getinfoSize)
	copy(info, table)
	if err := getsockopt(fd, f.level, soGetInfo, info); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil // unloaded meanwhile
		}
		return classify(err)
	}
	ne := binary.NativeEndian
	valid := ne.Uint32(info[32:])
	var hookEntry, underflow [5]uint32
	for h := range 5 {
		hookEntry[h] = ne.Uint32(info[36+4*h:])
		underflow[h] = ne.Uint32(info[56+4*h:])
	}
	size := ne.Uint32(info[80:])
	if size > maxBlob {
		return fmt.Errorf("iptables-legacy table %s is %d bytes: too big to read", table, size)
	}
	buf := make([]byte, getEntriesHd+int(size))
	copy(buf, table)
	ne.PutUint32(buf[32:], size)
	if err := getsockopt(fd, f.level, soGetEntries, buf); err != nil {
		if errors.Is(err, unix.EAGAIN) { // the table changed between the two calls
			return errChanged
		}
		return classify(err)
	}
	blob := buf[getEntriesHd:]
	chain, pos := "", 0
	same := map[legacyContent]int{} // rules of the same content so far, by chain
	for off := 0; off+f.entrySize <= len(blob); {
		e := blob[off:]
		targetOff, nextOff := int(ne.Uint16(e[f.targetOff:])), int(ne.Uint16(e[f.targetOff+2:]))
		if nextOff < f.entrySize || off+nextOff > len(blob) || targetOff < f.entrySize || targetOff+32 > nextOff {
			return fmt.Errorf("iptables-legacy table %s: malformed entry at %d", table, off)
		}
		e = e[:nextOff]
		for h := range 5 {
			if valid&(1<<h) != 0 && uint32(off) == hookEntry[h] {
				chain, pos = hookChains[h], 0
			}
		}
		pos++
		tname := string(bytes.TrimRight(e[targetOff+2:targetOff+2+xtNameLen], "\x00"))
		tdata := e[targetOff+32:]
		policy := false
		for h := range 5 {
			policy = policy || valid&(1<<h) != 0 && uint32(off) == underflow[h]
		}
		var verdict string
		switch tname {
		case "ERROR": // a user chain's head (or the table's end)
			chain, pos = string(bytes.TrimRight(tdata[:min(len(tdata), 30)], "\x00")), 0
		case "": // standard target: int verdict, -NF_DROP-1 is DROP
			if len(tdata) >= 4 && int32(ne.Uint32(tdata)) == -1 {
				verdict = "DROP"
			}
		case "DROP":
			verdict = "DROP"
		case "REJECT":
			if len(tdata) >= 4 {
				verdict = "REJECT " + f.rejectWithName(ne.Uint32(tdata))
			}
		}
		if verdict != "" {
			if policy {
				verdict = "DROP (policy)"
			}
			// Across reads a rule is known by what it is, not where: a rule
			// inserted before it moves it down.
			c := legacyContent{chain, contentHash(e[:f.ipSize], e[f.entrySize:])}
			ri := &ruleInfo{Ref: Ref{Family: f.name, Table: table, Chain: chain, Position: pos, Verdict: verdict},
				family: f.nfproto, hasCounter: true, packets: ne.Uint64(e[f.countersOff:]),
				legacy: parseLegacyMatch(f, e, targetOff), legacyID: c.hash, legacyDup: same[c]}
			same[c]++
			ri.Comment = ri.legacy.comment
			rs.add(ri)
		}
		off += nextOff
	}
	return nil
}

// legacyContent is an iptables-legacy rule's identity across reads: its
// chain and a hash of what it matches and does (struct ipt_ip, the
// matches and the target: the entry without its counters, offsets and
// hook marks).
type legacyContent struct {
	chain string
	hash  uint64
}

func contentHash(parts ...[]byte) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum64()
}

// legacyMatch is what kdrop can evaluate of an iptables-legacy rule.
type legacyMatch struct {
	family     byte
	src, dst   netip.Prefix // invalid: any
	invSrc     bool
	invDst     bool
	proto      uint8
	invProto   bool
	sport      [2]uint16 // ranges from -m udp/tcp; {0, 0xffff}: any
	dport      [2]uint16
	invS, invD bool
	unknown    bool // an interface or a match kdrop does not evaluate
	comment    string
	ctState    bool // a conntrack or state match (-m conntrack --ctstate, -m state)
}

// parseLegacyMatch reads struct ipt_ip/ip6t_ip6 and the matches.
func parseLegacyMatch(f *legacyFamily, e []byte, targetOff int) *legacyMatch {
	m := &legacyMatch{family: f.nfproto, sport: [2]uint16{0, 0xffff}, dport: [2]uint16{0, 0xffff}}
	alen := 4
	if f.nfproto == unix.NFPROTO_IPV6 {
		alen = 16
	}
	addr := func(b []byte) netip.Addr { a, _ := netip.AddrFromSlice(b[:alen]); return a }
	src, dst, smsk, dmsk := addr(e[0:]), addr(e[alen:]), e[2*alen:3*alen], e[3*alen:4*alen]
	ones := func(mask []byte) int {
		n := 0
		for _, c := range mask {
			for c&0x80 != 0 {
				n, c = n+1, c<<1
			}
		}
		return n
	}
	if n := ones(smsk); n > 0 {
		m.src = netip.PrefixFrom(src, n).Masked()
	}
	if n := ones(dmsk); n > 0 {
		m.dst = netip.PrefixFrom(dst, n).Masked()
	}
	ifaces := e[4*alen : 4*alen+64]
	if bytes.ContainsFunc(ifaces, func(r rune) bool { return r != 0 }) {
		m.unknown = true
	}
	p := 4*alen + 64 // proto u16, then (ip6: tos u8), flags u8, invflags u8
	m.proto = uint8(binary.NativeEndian.Uint16(e[p:]))
	inv := e[p+3]
	if f.nfproto == unix.NFPROTO_IPV6 {
		inv = e[p+4]
	}
	m.invSrc, m.invDst, m.invProto = inv&0x08 != 0, inv&0x10 != 0, inv&0x40 != 0
	for off := f.entrySize; off+32 <= targetOff; {
		size := int(binary.NativeEndian.Uint16(e[off:]))
		if size < 32 || off+size > targetOff {
			m.unknown = true
			break
		}
		name := string(bytes.TrimRight(e[off+2:off+2+xtNameLen], "\x00"))
		data := e[off+32 : off+size]
		if name == "conntrack" || name == "state" {
			m.ctState = true
		}
		switch {
		case name == "comment":
			m.comment = cleanComment(data)
		case (name == "udp" || name == "tcp") && len(data) >= 8:
			ne := binary.NativeEndian
			m.sport = [2]uint16{ne.Uint16(data[0:]), ne.Uint16(data[2:])}
			m.dport = [2]uint16{ne.Uint16(data[4:]), ne.Uint16(data[6:])}
			invAt := 8 // struct xt_udp: spts, dpts, invflags
			if name == "tcp" {
				invAt = 11 // struct xt_tcp: spts, dpts, option, flg_mask, flg_cmp, invflags
			}
			if len(data) > invAt {
				m.invS, m.invD = data[invAt]&0x01 != 0, data[invAt]&0x02 != 0
				if name == "tcp" && data[9] != 0 { // TCP flags tested
					m.unknown = true
				}
			}
		default:
			m.unknown = true
		}
		off += size
	}
	return m
}

// match evaluates the rule against the event's packet.
func (m *legacyMatch) match(ev *tracer.Event) matchResult {
	if (m.family == unix.NFPROTO_IPV4) != (ev.Family == 4) {
		return matchNo
	}
	check := func(pfx netip.Prefix, a netip.Addr, inv bool) matchResult {
		if !pfx.IsValid() {
			return matchYes
		}
		if !a.IsValid() {
			return matchMaybe
		}
		if pfx.Contains(a.Unmap()) != inv {
			return matchYes
		}
		return matchNo
	}
	res := matchYes
	for _, r := range []matchResult{
		check(m.src, ev.Src.Addr(), m.invSrc),
		check(m.dst, ev.Dst.Addr(), m.invDst),
	} {
		if r == matchNo {
			return matchNo
		}
		res = min(res, r) // maybe < yes
	}
	if m.proto != 0 && (m.proto == ev.Proto) == m.invProto {
		return matchNo
	}
	inRange := func(r [2]uint16, p uint16, inv bool) bool { return (p >= r[0] && p <= r[1]) != inv }
	if m.sport != [2]uint16{0, 0xffff} || m.dport != [2]uint16{0, 0xffff} || m.invS || m.invD {
		if !ev.Dst.IsValid() {
			res = matchMaybe
		} else if !inRange(m.sport, ev.Src.Port(), m.invS) || !inRange(m.dport, ev.Dst.Port(), m.invD) {
			return matchNo
		}
	}
	if m.unknown {
		return matchMaybe
	}
	return res
}
